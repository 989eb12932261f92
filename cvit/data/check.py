"""`cvit data check`: a data root against a benchmark spec, every problem listed (not stopped at the
first): missing files, malformed JSON or records, record counts against the published sizes, missing
and unreadable images."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from cvit.data.datasets import image_problem
from cvit.data.records import parse_test, parse_train, read_json_records
from cvit.errors import DataError


@dataclass
class SplitCheck:
    task: str
    split: str  # train | test
    file: Path
    records: int = 0
    expected: int | None = None
    images_ok: int = 0
    problems: list[str] = field(default_factory=list)


def check_split(task: str, split: str, file: Path, root: Path, expected: int | None, tolerance: float) -> SplitCheck:
    result = SplitCheck(task, split, file, expected=expected)
    try:
        raw = read_json_records(file)
    except DataError as err:
        result.problems.append(str(err))
        return result
    parse = parse_train if split == "train" else parse_test
    records = []
    for where, record in raw:
        try:
            records.append((where, parse(record, where, root, check_image=False)))
        except DataError as err:
            result.problems.append(str(err))
    result.records = len(raw)
    if expected is not None and abs(result.records - expected) > tolerance * expected:
        slack = f" (tolerance {tolerance:.0%})" if tolerance else ""
        result.problems.append(f"{file}: {result.records} records, the published size is {expected}{slack}")
    with ThreadPoolExecutor(max_workers=8) as pool:
        verdicts = list(pool.map(lambda item: image_problem(item[1].image), records))
    for (where, record), problem in zip(records, verdicts, strict=True):
        if problem is None:
            result.images_ok += 1
        else:
            result.problems.append(f"{where} (id {record.uid}): {problem}")
    return result


def check_benchmark(bench: DictConfig) -> list[SplitCheck]:
    """One SplitCheck per task and split of the spec (all tasks, whatever the order)."""
    root = Path(bench.root)
    checks = []
    for name, spec in bench.tasks.items():
        for split in ("train", "test"):
            relative = spec[split]
            if relative is not None:
                expected = spec.size.get(split)
                checks.append(check_split(name, split, root / relative, root, expected, bench.size_tolerance))
    return checks


def format_checks(checks: list[SplitCheck], max_listed: int = 20) -> str:
    """A summary table, then every split's problems (at most `max_listed` each, then a count)."""
    lines = [f"{'task':<16} {'split':<5} {'records':>8} {'published':>9} {'images ok':>9} {'problems':>8}"]
    for c in checks:
        published = "-" if c.expected is None else str(c.expected)
        lines.append(f"{c.task:<16} {c.split:<5} {c.records:>8} {published:>9} {c.images_ok:>9} {len(c.problems):>8}")
    for c in checks:
        if c.problems:
            lines.append(f"\n{c.task} {c.split}: {len(c.problems)} problem(s)")
            lines += [f"  {p}" for p in c.problems[:max_listed]]
            if len(c.problems) > max_listed:
                lines.append(f"  ... and {len(c.problems) - max_listed} more")
    total = sum(len(c.problems) for c in checks)
    lines.append(f"\n{total} problem(s) in {len(checks)} file(s)" if total else f"\nall {len(checks)} file(s) OK")
    return "\n".join(lines)
