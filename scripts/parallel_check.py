"""`make parallel-check`: every method on 1 CPU process and on 2 (DDP over gloo, Lightning's own launcher) at the
same global batch, on the embedded default (base-trained tiny LLaVA, first three tasks of the synthetic stream,
128 training and 40 test records per task), side by side: Last and BWT of each, the largest difference between
the two accuracy matrices and between the final adapters, and the wall time of each run.

    .venv/bin/python scripts/parallel_check.py [--work work] [--methods seqlora llaca ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from cvit.eval.metrics import format_value, run_metrics
from cvit.reports.run_report import markdown_table
from cvit.run.rundir import RunDirectory
from cvit.run.world import prepare_world

REPO = Path(__file__).resolve().parents[1]
METHODS = ("seqlora", "joint", "replay", "ewc", "lwf", "olora", "moelora", "llaca", "proglora_static",
           "proglora_dynamic", "hide", "smolora")
STREAM = ("benchmark.order=[colour_mc,count_vqa,grounding]", "data.max_train_samples=128",
          "data.max_test_samples=40", "eval.unseen=false")
GLOBAL_BATCH = 32


def fit(method: str, processes: int, work: Path, data: Path, model: Path) -> tuple[Path, float]:
    """Run `method` on `processes` CPU processes at the global batch; (run directory, seconds)."""
    name = f"parallel-{method}-{processes}p"
    files = [REPO / "configs" / "model" / "tiny_llava.yaml", REPO / "configs" / "benchmark" / "synthetic.yaml",
             REPO / "configs" / "method" / f"{method}.yaml"]
    command = [sys.executable, "-m", "cvit.cli", "fit", *[f"-c={f}" for f in files], *STREAM,
               f"benchmark.root={data}", f"model.path={model}", f"run.root={work / 'runs'}", f"run.name={name}",
               f"data.batch_size={GLOBAL_BATCH // processes}", f"train.devices={processes}",
               f"train.strategy={'ddp' if processes > 1 else 'auto'}", "train.accelerator=cpu"]
    run_dir = work / "runs" / name
    if (run_dir / "config.yaml").is_file():
        command.append(f"--resume={run_dir}")  # a finished run returns at once
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return run_dir, time.perf_counter() - started


def adapters(run: Path) -> dict[str, torch.Tensor]:
    stage = sorted((run / "stages").iterdir())[-1] / "adapters"
    return {f"{f.relative_to(stage)}:{k}": v for f in stage.rglob("*.safetensors") for k, v in load_file(f).items()}


def compare(method: str, work: Path, data: Path, model: Path) -> list[str]:
    (one, t1), (two, t2) = fit(method, 1, work, data, model), fit(method, 2, work, data, model)
    doc1, doc2 = RunDirectory(one).load_matrix(), RunDirectory(two).load_matrix()
    m1, m2 = run_metrics(doc1), run_metrics(doc2)
    cells = [abs(a - b) for r1, r2 in zip(doc1.matrix, doc2.matrix, strict=True) for a, b in zip(r1, r2, strict=True)]
    w1, w2 = adapters(one), adapters(two)
    weights = max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1)
    return [method, *(format_value(m[key]) for key in ("last", "bwt") for m in (m1, m2)),
            f"{max(cells):.2f}", f"{weights:.1e}", f"{t1:.0f}", f"{t2:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "work")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    data, model = prepare_world(args.work)
    rows = [compare(method, args.work, data, model) for method in args.methods]
    print(f"\n1 process at batch {GLOBAL_BATCH} against 2 processes at batch {GLOBAL_BATCH // 2} each (DDP, gloo):")
    print(markdown_table(["method", "Last 1p", "Last 2p", "BWT 1p", "BWT 2p", "max |dA|", "max |dW|", "s 1p", "s 2p"],
                         rows))


if __name__ == "__main__":
    main()
