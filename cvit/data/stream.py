"""The task stream of a benchmark spec: which tasks, in which order, with which templates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from cvit.config.load import Sources
from cvit.errors import ConfigError
from cvit.eval.mif import default_rule


@dataclass(frozen=True)
class Task:
    name: str
    index: int  # position in the training stream; -1 for evaluation-only (unseen) tasks
    train_file: Path | None
    test_file: Path
    scorer: str
    max_new_tokens: int
    templates: tuple[str, ...]  # instruction templates appended to the question; empty = none
    mif: str = "short"  # instruction-following rule (cvit.eval.mif)
    known_templates: tuple[str, ...] = ()  # every variant's templates (stripped from data that carries one)

    @property
    def unseen(self) -> bool:
        return self.index < 0


def resolve_order(bench: DictConfig, sources: Sources) -> list[str]:
    """The training order: a named order of the spec or an explicit list of task names."""
    origin = sources.of("benchmark.order")
    if isinstance(bench.order, ListConfig | list):
        order = [str(t) for t in bench.order]
    elif str(bench.order) in bench.orders:
        order = list(bench.orders[str(bench.order)])
    elif bench.order == "default":
        order = [name for name, spec in bench.tasks.items() if not spec.unseen]
    else:
        raise ConfigError(
            f"{origin}: key 'benchmark.order': unknown order {bench.order!r}; "
            f"known: {', '.join(dict.fromkeys(['default', *bench.orders]))} (or an explicit list of task names)"
        )
    for name in order:
        if name not in bench.tasks:
            raise ConfigError(
                f"{origin}: key 'benchmark.order': unknown task {name!r}; known: {', '.join(bench.tasks)}"
            )
        if bench.tasks[name].unseen or bench.tasks[name].train is None:
            raise ConfigError(f"{origin}: key 'benchmark.order': task {name!r} has no training data")
    if len(set(order)) != len(order):
        raise ConfigError(f"{origin}: key 'benchmark.order': a task appears twice in {order}")
    if not order:
        raise ConfigError(f"{origin}: key 'benchmark.order': the stream is empty")
    return order


def build_tasks(bench: DictConfig, sources: Sources) -> tuple[list[Task], list[Task]]:
    """(training stream in order, unseen evaluation-only tasks)."""
    root = Path(bench.root)
    order = resolve_order(bench, sources)

    def make(name: str, index: int) -> Task:
        spec = bench.tasks[name]
        templates: tuple[str, ...] = ()
        if spec.instructions and bench.templates != "as_is":
            if bench.templates not in spec.instructions:
                raise ConfigError(
                    f"{sources.of(f'benchmark.tasks.{name}.instructions')}: key "
                    f"'benchmark.tasks.{name}.instructions': no {bench.templates!r} templates "
                    f"(benchmark.templates); has: {', '.join(spec.instructions)}"
                )
            templates = tuple(spec.instructions[bench.templates])
        return Task(
            name=name, index=index, train_file=root / spec.train if spec.train else None,
            test_file=root / spec.test, scorer=spec.scorer, max_new_tokens=spec.max_new_tokens,
            templates=templates, mif=spec.mif or default_rule(spec.scorer),
            known_templates=tuple(t for variant in spec.instructions.values() for t in variant),
        )

    stream = [make(name, i) for i, name in enumerate(order)]
    unseen = [make(name, -1) for name, spec in bench.tasks.items() if spec.unseen]
    return stream, unseen
