"""The embedded world against the real regime: `cvit world calibration` (`make calibration`).

Published figures of SeqLoRA on LLaVA-1.5-7B (sources in docs/world.md) beside the same quantities measured on
the embedded default from three runs only, zero-shot, SeqLoRA and joint (the world is calibrated with these and
never with another method's numbers): accuracy right after each task, joint against it, BWT, zero-shot on the
open-format tasks, the answer loss at each task's end, the size of one task's LoRA next to the weight it adapts,
and the learning rates.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from cvit.eval.metrics import run_metrics
from cvit.model.pool import DEFAULT_ADAPTER
from cvit.reports.run_report import markdown_table
from cvit.run.document import RunDocument, read_run_document
from cvit.run.rundir import stage_name
from cvit.synthetic.version import WORLD_VERSION

CLOSED_FORMATS = ("choice",)  # scorers whose answers are picked from given options; all others are open-format
CLEARLY_BELOW = 10.0  # points: what "zero-shot clearly below right-after" asks


@dataclass(frozen=True)
class Row:
    quantity: str
    real: str  # the published range and its source
    target: str  # what the world must show
    world: str  # what it shows
    holds: bool | None  # None: reported, not a target


def lora_update_ratios(adapter_dir: Path, base_dir: Path) -> dict[str, float]:
    """||scaling B A||_F / ||W||_F for every LoRA pair in a saved peft adapter folder (adapter_config.json and
    adapter_model.safetensors), W the adapted weight in the base model folder's safetensors; keyed by the adapted
    module's name. Weights are read directly, so a model of any size is never built."""
    import json

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]
    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    base: dict[str, torch.Tensor] = {}
    for shard in sorted(base_dir.glob("*.safetensors")):
        base.update(load_file(shard))
    ratios = {}
    for key, down in adapter.items():
        if ".lora_A." not in key:
            continue
        up = adapter[key.replace(".lora_A.", ".lora_B.")]
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        weight = base[base_weight_key(module, base)]
        update = scaling * up.double() @ down.double()
        ratios[module] = float(update.norm() / weight.double().norm())
    return ratios


def base_weight_key(module: str, weights: dict[str, torch.Tensor]) -> str:
    """The key of `module`'s weight in a checkpoint: as named in the model (`model.language_model.layers.0...`), or
    in the layout transformers writes for LLaVA (`language_model.model.layers.0...`)."""
    candidates = [f"{module}.weight"]
    if module.startswith("model.language_model."):
        candidates.append("language_model.model." + module.removeprefix("model.language_model.") + ".weight")
    for key in candidates:
        if key in weights:
            return key
    raise KeyError(f"no weight for the adapted module {module!r} in the base model's checkpoint")


def _scores(tasks: list[str], values: list[float]) -> str:
    return ", ".join(f"{task} {value:.1f}" for task, value in zip(tasks, values, strict=True))


def calibration_rows(zeroshot: RunDocument, seqlora: RunDocument, joint: RunDocument,
                     ratios: dict[str, float], lrs: tuple[float, float]) -> list[Row]:
    """The table's rows from the three runs' documents (same stream), the LoRA ratios of SeqLoRA's first task and
    the (LoRA, projector) learning rates."""
    tasks = seqlora.tasks
    diagonal = [seqlora.matrix[i][i] for i in range(len(tasks))]
    metrics = run_metrics(seqlora)
    joint_scores = joint.matrix[0]
    zero = zeroshot.matrix[0]
    open_tasks = [i for i, task in enumerate(tasks) if seqlora.scorers[task] not in CLOSED_FORMATS]
    closed = [i for i in range(len(tasks)) if i not in open_tasks]
    losses = [stage["end"] for stage in seqlora.answer_loss]
    median = statistics.median(ratios.values())
    gap = statistics.fmean(joint_scores) - statistics.fmean(diagonal)
    return [
        Row("accuracy right after training each task (SeqLoRA diagonal)",
            "CoIN 31-62 (TextVQA 50, GQA 56, VizWiz 55, Grounding 31, VQAv2 62, OCR-VQA 57); UCIT 53-93",
            "30-95 on every task", _scores(tasks, diagonal), all(30 <= v <= 95 for v in diagonal)),
        Row("joint (multitask) against right-after, mean over tasks", "within about 3 points (CoIN, open-ended)",
            "within 5 points", f"joint {statistics.fmean(joint_scores):.1f}, right-after "
            f"{statistics.fmean(diagonal):.1f} ({gap:+.1f})", abs(gap) <= 5),
        Row("SeqLoRA BWT", "UCIT about -17; CoIN about -23 (VQA tasks); CVIT -48", "-50 to -15",
            f"{metrics['bwt']:.1f}", -50 <= metrics["bwt"] <= -15),
        Row("zero-shot on the open-format tasks, strict scoring (against right-after)",
            "CoIN's start 0-3 on open-ended tasks; UCIT's start ImageNet-R 32",
            f"each at least {CLEARLY_BELOW:.0f} points below right-after",
            "; ".join(f"{tasks[i]} {zero[i]:.1f} ({diagonal[i]:.1f})" for i in open_tasks),
            all(zero[i] <= diagonal[i] - CLEARLY_BELOW for i in open_tasks)),
        Row("zero-shot on multiple choice", "about 50 on ScienceQA (CoIN's start)", "reported",
            "; ".join(f"{tasks[i]} {zero[i]:.1f}" for i in closed) or "-", None),
        Row("answer loss at the end of each task (nats per answer token, last tenth of its steps)",
            "0.2-1.0 (LLaVA-style instruction tuning logs)", "at least 0.15 on every task",
            ", ".join(f"{task} {loss:.2f}" for task, loss in zip(tasks, losses, strict=True)),
            all(loss >= 0.15 for loss in losses)),
        Row("one task's LoRA, median ‖BA‖_F / ‖W‖_F over adapted matrices (SeqLoRA after its first task)",
            "0.06-0.11 (LoRA paper, Table 7: GPT-3, r 4-64)", "at most 0.10",
            f"{median:.3f} (range {min(ratios.values()):.3f}-{max(ratios.values()):.3f} over {len(ratios)})",
            median <= 0.10),
        Row("learning rate, LoRA / projector", "2e-4 / 2e-5 (the papers)", "the papers' ratio of 10",
            f"{lrs[0]:g} / {lrs[1]:g}", abs(lrs[0] / lrs[1] - 10) < 1e-9),
    ]


def calibration_table(rows: list[Row]) -> str:
    verdict = {True: "yes", False: "NO", None: "-"}
    return markdown_table(["quantity", "real runs (source)", "target", "embedded world", "holds"],
                          [[r.quantity, r.real, r.target, r.world, verdict[r.holds]] for r in rows])


def calibrate(runs: dict[str, Path], base_model: Path) -> list[Row]:
    """The rows for the finished runs `runs` ({"zeroshot", "seqlora", "joint"} -> run directory) on the base model
    folder `base_model`."""
    docs = {name: read_run_document(path / "matrix.json") for name, path in runs.items()}
    seqlora = docs["seqlora"]
    first = runs["seqlora"] / "stages" / stage_name(0, seqlora.stages[0]) / "adapters" / DEFAULT_ADAPTER
    setup = seqlora.setup
    lrs = (setup["lora"]["lr"], setup["projector"]["lr"])
    return calibration_rows(docs["zeroshot"], seqlora, docs["joint"], lora_update_ratios(first, base_model), lrs)


def write_calibration(work: Path, configs: Path, out: Path, jobs: int = 1) -> Path:
    """Run (or reuse) the demo's zero-shot, SeqLoRA and joint runs on the embedded default, print the calibration
    table and write it to `out`/calibration.md; returns its path."""
    from cvit.run.atomic import write_text
    from cvit.run.demo import run_methods
    from cvit.run.world import prepare_world

    data, base = prepare_world(work)
    runs = run_methods(("zeroshot", "seqlora", "joint"), jobs, work, configs, data, base)
    table = calibration_table(calibrate(runs, base))
    print(table)
    path = out / "calibration.md"
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, "# The embedded world against the real regime\n\nWritten by `make calibration` (`cvit world "
               f"calibration`) from the demo's zero-shot, SeqLoRA and joint runs (work/runs/demo-*, seed 0) on the "
               f"embedded world {WORLD_VERSION}; the sources and what each row means: docs/world.md.\n\n{table}\n")
    return path
