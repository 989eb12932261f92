"""Write the synthetic benchmark to disk in the LLaVA formats the real benchmarks ship (DESIGN §5).

Layout under OUT_DIR (image paths in records are relative to OUT_DIR):
  images/<task>/<split>_<i>.png
  <task>/train.json   [{id, image, conversations: [{from: human, value: "<image>\\n..."}, {from: gpt, ...}]}]
  <task>/test.json    [{question_id, image, text, answer}]       (unseen tasks: test only); `answer` one
                      annotator's answer, or a list of several where the task's scorer reads several (VQA's ten
                      answers, five captions)
  base/align.json     base training's first stage: its instructions about CLEAR scenes (when sizes.base > 0)
  base/train.json     the base-training mixture (see `tasks.base_sample`; when sizes.base > 0)
  manifest.json       the world's version, seed and sizes; written last, so its presence means the benchmark is
                      complete
Every image, scene and answer is drawn from generators keyed by the seed and the record (`cvit.seeding`): the same
files on every machine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from cvit.run.atomic import atomic_path
from cvit.seeding import keyed_numpy, keyed_random
from cvit.synthetic.tasks import TASKS, Sample, SyntheticTask, base_sample
from cvit.synthetic.version import WORLD_VERSION


@dataclass(frozen=True)
class SyntheticSizes:
    train: int = 1600  # one epoch = 200 steps at the tiny model's batch 8
    test: int = 200
    base: int = 16000  # records of each base-training stage; 0: none (the stream alone)
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
            write_split(staged, task.name, "test", sizes.test, sizes.seed, task.generate, task.references)
        if sizes.base:  # only base training reads them (`cvit world build`); runs use the committed base
            write_split(staged, "base", "align", sizes.base, sizes.seed, partial(base_sample, clear_share=1.0))
            write_split(staged, "base", "train", sizes.base, sizes.seed, base_sample)
        manifest = {"benchmark": "synthetic", "world": WORLD_VERSION, **asdict(sizes), "tasks": sorted(tasks)}
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir


def write_split(root: Path, task: str, split: str, count: int, seed: int, generate, references: int = 1) -> None:
    """`count` records of `task`'s `split`: a training record (any split but "test") holds one annotator's answer, a
    test record `references` annotators' answers (a string when one)."""
    rng = keyed_random(seed, task, split)
    image_dir = root / "images" / task
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        sample: Sample = generate(rng)
        image = f"images/{task}/{split}_{index}.png"
        uid = f"{task}-{split}-{index}"
        sample.scene.render(keyed_numpy(seed, uid, "pixels")).save(root / image)
        answers = [sample.answer(keyed_random(seed, uid, "annotator", k)) for k in range(references)]
        if split != "test":
            records.append({"id": uid, "image": image, "conversations": [
                {"from": "human", "value": f"<image>\n{sample.question}"},
                {"from": "gpt", "value": answers[0]},
            ]})
        else:
            answer = answers[0] if references == 1 else answers
            records.append({"question_id": uid, "image": image, "text": sample.question, "answer": answer})
    (root / task).mkdir(parents=True, exist_ok=True)
    (root / task / f"{split}.json").write_text(json.dumps(records, indent=1))


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of a complete benchmark at OUT_DIR, or None if absent."""
    path = Path(out_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def is_current(out_dir: str | Path, sizes: SyntheticSizes = SyntheticSizes(),
               tasks: dict[str, SyntheticTask] = TASKS) -> bool:
    """Whether OUT_DIR holds a complete benchmark of this world's version, these sizes and tasks."""
    manifest = read_manifest(out_dir)
    return manifest is not None and manifest.get("world") == WORLD_VERSION and manifest.get("tasks") == sorted(
        tasks) and all(
        manifest.get(key) == value for key, value in asdict(sizes).items())
