"""The embedded world: the synthetic benchmark and the base-trained tiny LLaVA, the same on every machine.

The benchmark is written by keyed generators (`cvit.synthetic.writer`): identical files everywhere. The base model
is not rebuilt on each machine: base training's 3000 full-parameter steps amplify the rounding differences between
CPU kernels (a vectorised normal draw at initialisation, the BLAS and reduction kernels, the thread count) until two
machines hold different models (zero-shot 23 against 59.8 on the same command). So its weights are built once by
`cvit world build` (`make world`) and committed in cvit/synthetic/base/ (`model.safetensors`, about 3 MB, with its
checksum and build settings in `world.json`); `materialise_base` writes a model folder from them. The continual
stream that follows trains LoRA at the papers' learning rate, where the same rounding differences stay at 1e-5 of
the weights and no prediction changes (`make world-check` measures it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from cvit.errors import DataError, RunDirError
from cvit.model.tiny import build_tiny_llava
from cvit.run.atomic import atomic_path
from cvit.run.vision_pretrain import PerceptionTraining, pretrain_vision
from cvit.synthetic.lexicon import vocabulary
from cvit.synthetic.version import WORLD_VERSION
from cvit.synthetic.writer import SyntheticSizes, is_current, make_synthetic, read_manifest

WORLD_SIZES = SyntheticSizes()  # the benchmark with the base mixture, as `make world` writes it
STREAM_SIZES = SyntheticSizes(base=0)  # what runs read: the stream's tasks (the base mixture only for `make world`)
COMMITTED = Path(__file__).resolve().parents[1] / "synthetic" / "base"  # installed with the package
WEIGHTS = "model.safetensors"
RECORD = "world.json"
PERCEPTION = PerceptionTraining()  # the committed base's perception pretraining


@dataclass(frozen=True)
class BaseTraining:
    """How the committed base was trained (`cvit.run.pretrain.base_train`'s arguments)."""

    align_steps: int = 600
    steps: int = 2400
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def vocabulary_sha256() -> str:
    """A checksum of the tiny tokenizer's words: base weights fit only the vocabulary they were trained with."""
    return hashlib.sha256("\n".join(vocabulary()).encode()).hexdigest()


def read_record(folder: Path) -> dict:
    """The world record (world.json) of a committed base or a model folder; DataError naming the file and key."""
    path = folder / RECORD
    if not path.is_file():
        raise DataError(f"{path}: no world record; build the base with `make world`")
    record = json.loads(path.read_text())
    for key in ("world", "weights_sha256", "vocabulary_sha256"):
        if key not in record:
            raise DataError(f"{path}: missing key {key!r}")
    return record


def check_record(record: dict, where: Path) -> None:
    """Refuse a base of another world version or vocabulary than this kit's, naming `where`."""
    if record["world"] != WORLD_VERSION:
        raise DataError(f"{where / RECORD}: key 'world': base built for world {record['world']}, this kit's world is "
                        f"{WORLD_VERSION}; rebuild it with `make world`")
    if record["vocabulary_sha256"] != vocabulary_sha256():
        raise DataError(f"{where / RECORD}: key 'vocabulary_sha256': base built for another vocabulary than this "
                        "kit's; rebuild it with `make world`")


def materialise_base(out_dir: Path, committed: Path = COMMITTED) -> Path:
    """A model folder at OUT_DIR (config, processor, the committed weights and their world record), written
    atomically; DataError when the committed base is of another world or its weights fail their checksum."""
    record = read_record(committed)
    check_record(record, committed)
    weights = committed / WEIGHTS
    if file_sha256(weights) != record["weights_sha256"]:
        raise DataError(f"{weights}: checksum differs from {committed / RECORD}'s 'weights_sha256'; rebuild it with "
                        "`make world`")
    model, processor = build_tiny_llava()
    with atomic_path(out_dir) as staged:
        model.config.save_pretrained(staged)
        model.generation_config.save_pretrained(staged)
        processor.save_pretrained(staged)
        shutil.copyfile(weights, staged / WEIGHTS)
        (staged / RECORD).write_text(json.dumps(record, indent=2))
    return out_dir


def base_is_current(folder: Path, committed: Path = COMMITTED) -> bool:
    """Whether FOLDER is a model folder written from the committed base as it is now."""
    try:
        return read_record(folder) == read_record(committed)
    except DataError:
        return False


def world_identity(data_root: str | Path, model_path: str | Path) -> dict:
    """Which embedded world a run uses, recorded in its setup: {"benchmark": the synthetic benchmark's world version,
    "base": {"world", "weights_sha256"} of a base model folder written from committed weights}, each present only
    where the data root or the model folder is the embedded world's (empty for real data and models). A benchmark
    written before versions were recorded is world 1."""
    identity: dict = {}
    manifest = read_manifest(data_root)
    if manifest is not None and manifest.get("benchmark") == "synthetic":
        identity["benchmark"] = manifest.get("world", 1)
    record_file = Path(model_path) / RECORD
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        identity["base"] = {key: record.get(key) for key in ("world", "weights_sha256")}
    return identity


def check_same_world(recorded: dict, current: dict, run_dir: Path) -> None:
    """Refuse to resume a run made on another embedded world than the data root and model folder hold now."""
    if recorded != current:
        raise RunDirError(f"{run_dir}: made on another embedded world ({recorded or 'none recorded'}) than its data "
                          f"root and model folder hold now ({current or 'none'}); start a new run")


def prepare_world(work: Path) -> tuple[Path, Path]:
    """(data root, base model folder) under `work`, each written once: work/synthetic and work/tiny-llava-base."""
    data, base = work / "synthetic", work / "tiny-llava-base"
    if not is_current(data, STREAM_SIZES):  # missing, or written by another world version or with other sizes
        print(f"writing the synthetic benchmark to {data}")
        make_synthetic(data, STREAM_SIZES)
    if not base_is_current(base):
        materialise_base(base)
    return data, base


def build_base(work: Path, training: BaseTraining = BaseTraining(), committed: Path = COMMITTED,
               sizes: SyntheticSizes = WORLD_SIZES, perception: PerceptionTraining = PERCEPTION) -> Path:
    """Perception-pretrain a fresh tiny LLaVA's vision tower, base-train it on work/synthetic's base mixture and commit
    its weights (`make world`): writes COMMITTED/model.safetensors and world.json (world version, checksums, training
    settings, the perception heads' held-out accuracy, library versions)."""
    from cvit.model.tiny import build_tiny_llava, save_model
    from cvit.run.pretrain import base_train
    from cvit.run.provenance import cpu_model, library_versions

    data = work / "synthetic"
    if not is_current(data, sizes):
        make_synthetic(data, sizes)
    model, processor = build_tiny_llava(seed=training.seed)
    perception_accuracy = pretrain_vision(model, processor, perception)
    tiny = save_model(work / "tiny-llava", model, processor)
    trained = base_train(tiny, data, work / "tiny-llava-trained", steps=training.steps, lr=training.lr,
                         batch_size=training.batch_size, seed=training.seed, align_steps=training.align_steps)
    committed.mkdir(parents=True, exist_ok=True)
    with atomic_path(committed / WEIGHTS) as staged:
        shutil.copyfile(trained / WEIGHTS, staged)
    record = {
        "world": WORLD_VERSION, "weights_sha256": file_sha256(committed / WEIGHTS),
        "vocabulary_sha256": vocabulary_sha256(), "benchmark": asdict(sizes), "perception": asdict(perception),
        "perception_held_out": {key: round(value, 4) for key, value in perception_accuracy.items()},
        "training": asdict(training),
        "built_with": {"command": "make world", "cpu": cpu_model(), "versions": library_versions()},
    }
    with atomic_path(committed / RECORD) as staged:
        staged.write_text(json.dumps(record, indent=2) + "\n")
    return committed
