"""Score a predictions file produced elsewhere with a benchmark task's scorer (`cvit score`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cvit.config.load import Sources
from cvit.config.validate import choose, validate_benchmark
from cvit.data.records import field, load_test, read_json_records
from cvit.data.stream import build_tasks
from cvit.errors import ConfigError, DataError
from cvit.eval.scorers import SCORINGS
from cvit.run.evaluate import score_outputs


def read_predictions(path: Path) -> dict[str, str]:
    """question_id -> text from a JSONL (or JSON list) file; DataError naming the line on a bad record
    or a repeated id."""
    texts: dict[str, str] = {}
    for where, record in read_json_records(path):
        uid = str(field(record, "question_id", where, (str, int)))
        if uid in texts:
            raise DataError(f"{where}: question_id {uid} appears twice")
        texts[uid] = field(record, "text", where)
    return texts


def score_predictions(cfg: DictConfig, sources: Sources, task_name: str, path: Path) -> dict[str, Any]:
    """{task, scorer, scoring, items, score, <scorer extras>, mif (0-100, if judged), protocol} for `path`,
    the references taken from the task's test file (images need not be present); `eval.scoring` picks
    official or lenient scoring (override eval.scoring=lenient)."""
    validate_benchmark(cfg, sources)
    choose(cfg.eval.scoring, SCORINGS, "eval.scoring", sources)
    stream, unseen = build_tasks(cfg.benchmark, sources)
    tasks = {task.name: task for task in stream + unseen}
    if task_name not in tasks:
        raise ConfigError(f"unknown task {task_name!r} in benchmark {cfg.benchmark.name}; known: {', '.join(tasks)}")
    task = tasks[task_name]
    records = load_test(task.test_file, Path(cfg.benchmark.root), check_images=False)
    texts = read_predictions(path)
    missing = [record.uid for record in records if record.uid not in texts]
    extra = sorted(set(texts) - {record.uid for record in records})
    if missing or extra:
        raise DataError(
            f"{path}: predictions do not match {task.test_file}: {len(missing)} question_id(s) missing "
            f"{missing[:5]}, {len(extra)} unknown {extra[:5]}"
        )
    protocol = cfg.benchmark.protocol
    result = score_outputs(
        task, records, [texts[r.uid] for r in records], False, protocol.caption_metric, cfg.eval.scoring,
        cfg.eval.meteor,
    )
    return {"task": task.name, "scorer": task.scorer, "scoring": cfg.eval.scoring, "items": len(records),
            **result.scores, "mif_rule": task.mif, "caption_metric": protocol.caption_metric}
