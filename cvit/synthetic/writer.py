"""Write the synthetic benchmark to disk in the LLaVA formats the real benchmarks ship (DESIGN §5).

Layout under OUT_DIR (image paths in records are relative to OUT_DIR):
  images/<task>/<split>_<i>.png
  <task>/train.json   [{id, image, conversations: [{from: human, value: "<image>\\n..."}, {from: gpt, ...}]}]
  <task>/test.json    [{question_id, image, text, answer}]       (unseen tasks: test only)
  base/train.json     the base-training mixture (see `tasks.base_sample`)
  manifest.json       seed and sizes; written last, so its presence means the benchmark is complete
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cvit.run.atomic import atomic_path
from cvit.seeding import keyed_random
from cvit.synthetic.tasks import TASKS, Sample, SyntheticTask, base_sample


@dataclass(frozen=True)
class SyntheticSizes:
    train: int = 3200  # one epoch = 200 steps at the tiny model's batch 16
    test: int = 100
    base: int = 16000
    seed: int = 0


def make_synthetic(out_dir: str | Path, sizes: SyntheticSizes = SyntheticSizes(),
                   tasks: dict[str, SyntheticTask] = TASKS) -> Path:
    """Write the benchmark of `tasks` (the embedded default's, or `LONG_TASKS` for the long stream) atomically (a
    crash leaves no partial OUT_DIR). Returns OUT_DIR. A task's records depend on its name and the seed only, so
    the tasks two streams share have the same records."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as staged:
        for task in tasks.values():
            if not task.unseen:
                write_split(staged, task.name, "train", sizes.train, sizes.seed, task.generate)
            write_split(staged, task.name, "test", sizes.test, sizes.seed, task.generate)
        write_split(staged, "base", "train", sizes.base, sizes.seed, base_sample)
        manifest = {"benchmark": "synthetic", **asdict(sizes), "tasks": sorted(tasks)}
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir


def write_split(root: Path, task: str, split: str, count: int, seed: int, generate) -> None:
    rng = keyed_random(seed, task, split)
    image_dir = root / "images" / task
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        sample: Sample = generate(rng)
        scene, question, answer = sample
        image = f"images/{task}/{split}_{index}.png"
        scene.render().save(root / image)
        uid = f"{task}-{split}-{index}"
        if split == "train":
            records.append({"id": uid, "image": image, "conversations": [
                {"from": "human", "value": f"<image>\n{question}"},
                {"from": "gpt", "value": answer},
            ]})
        else:
            records.append({"question_id": uid, "image": image, "text": question, "answer": answer})
    (root / task).mkdir(parents=True, exist_ok=True)
    (root / task / f"{split}.json").write_text(json.dumps(records, indent=1))


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of a complete benchmark at OUT_DIR, or None if absent."""
    path = Path(out_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def is_current(out_dir: str | Path, sizes: SyntheticSizes = SyntheticSizes(),
               tasks: dict[str, SyntheticTask] = TASKS) -> bool:
    """Whether OUT_DIR holds a complete benchmark of these sizes and tasks."""
    manifest = read_manifest(out_dir)
    return manifest is not None and manifest.get("tasks") == sorted(tasks) and all(
        manifest.get(key) == value for key, value in asdict(sizes).items())
