"""LLaCA's instruction grouping: one parameter set (adapter) per group of similar instructions.

Thin glue over `cvit.methods.codebook.InstructionCodebook` (similarity rules there). Hooks:
  on_task_start  the task's format instructions (`datamodule.templates(task)`) are matched against the
                 codebook (`similarity: max` paper, `mean` released): at similarity >= `threshold` the matching
                 group's adapter is retrained (it starts from its stored weights); otherwise a new adapter is
                 added to the pool, freshly initialised (`new_group: fresh`, paper Algorithm 1) or copied from the
                 adapter the previous task trained (`previous`, released scripts). That adapter alone is active
                 and trainable (the shared projector, when trained, trains beside it).
  on_task_end    the codebook records the task's instructions under its group (the adapter already holds
                 the trained, or EMA, weights: it is the pool entry) and the router is installed:
                 `routing: instance` (paper) generates each test instance with the adapter of the group its
                 instruction matches; `test_set` (released) routes a task's whole test set once, by all its
                 instructions. Below the threshold, `fallback: best` (paper) still takes the most similar group,
                 `created_last` (released) the group created last.
Thresholds of the released scripts: 0.90 for single-template benchmarks, 0.30 for diverse templates.
"""

from __future__ import annotations

from typing import Any

from cvit.callbacks.base import ContinualCallback, Shared

from cvit.config.registry import register_callback
from cvit.methods.codebook import FALLBACKS, SIMILARITIES, InstructionCodebook, unique
from cvit.model.pool import DEFAULT_ADAPTER
from cvit.model.routing import Router, RowGroups, rows_by_key

ROUTINGS = ("instance", "test_set")
NEW_GROUPS = ("fresh", "previous")


class GroupRouter(Router):
    """Generation rows grouped by the codebook group of their instruction template, or of their task's test set
    (`by_task`: task name -> group, for `routing: test_set`)."""

    def __init__(self, pool, codebook: InstructionCodebook, threshold: float, fallback: str,
                 by_task: dict[str, int] | None = None) -> None:
        self.pool, self.codebook, self.threshold, self.fallback = pool, codebook, threshold, fallback
        self.by_task = by_task

    def route(self, batch: dict[str, Any]) -> RowGroups:
        if self.by_task is not None:
            chosen = [self.by_task[task] for task in batch["tasks"]]
        else:
            chosen = self.codebook.route(batch["templates"], self.threshold, self.fallback)
        return [(rows, self.pool.activated([self.codebook.groups[g].adapter]))
                for g, rows in rows_by_key(chosen).items()]

    def inference_parameters(self, pool) -> int:
        return pool.parameter_count([group.adapter for group in self.codebook.groups])


@register_callback("instruction_grouping")
class InstructionGrouping(ContinualCallback):
    owns = (Shared.ADAPTER_POOL, Shared.ROUTER)
    sequential_only = True

    def __init__(self, threshold: float = 0.9, similarity: str = "max", new_group: str = "fresh",
                 routing: str = "instance", fallback: str = "best") -> None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        choices = (("similarity", similarity, tuple(SIMILARITIES)), ("new_group", new_group, NEW_GROUPS),
                   ("routing", routing, ROUTINGS), ("fallback", fallback, FALLBACKS))
        for arg, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"{arg} must be one of {', '.join(allowed)}, got {value!r}")
        self.threshold, self.similarity, self.new_group = threshold, similarity, new_group
        self.routing, self.fallback = routing, fallback
        self.codebook = InstructionCodebook(similarity=similarity)
        self.current: int | None = None  # the group retrained by the running task; None: a new group
        self.adapter = DEFAULT_ADAPTER  # the running task's adapter
        self.decisions: list[dict[str, Any]] = []  # per task: group, adapter, new, best similarity

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        instructions = unique(datamodule.templates(task))
        self.current, similarity = self.codebook.match(instructions, self.threshold)
        init_from = None
        if self.current is not None:
            self.adapter = self.codebook.groups[self.current].adapter
        elif self.codebook.groups:  # the first group uses the pool's initial adapter
            previous, self.adapter = self.adapter, f"group{len(self.codebook.groups)}"
            init_from = previous if self.new_group == "previous" else None
        module.pool.train_only(self.adapter, init_from)
        self.decisions.append({"task": task.name, "adapter": self.adapter, "new": self.current is None,
                               "similarity": round(similarity, 4)})

    def on_task_end(self, trainer, module, datamodule, task) -> None:
        group = self.codebook.add(self.current, self.adapter, unique(datamodule.templates(task)))
        self.decisions[-1]["group"] = group
        by_task = None
        if self.routing == "test_set":
            by_task = {name: self.codebook.route_one(unique(datamodule.templates(t, split="test")), self.threshold,
                                                     self.fallback)
                       for name, t in datamodule.tasks.items()}
        module.set_router(GroupRouter(module.pool, self.codebook, self.threshold, self.fallback, by_task))

    def state_dict(self) -> dict[str, Any]:
        return {"codebook": self.codebook.state(), "decisions": self.decisions}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.codebook = InstructionCodebook.from_state(state_dict.get("codebook", {}), self.similarity)
        self.decisions = list(state_dict.get("decisions", []))
        if self.decisions:  # the adapter the last completed task trained (what `new_group: previous` copies)
            self.adapter = self.decisions[-1]["adapter"]
