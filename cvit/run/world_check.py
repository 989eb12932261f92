"""`cvit world check` (`make world-check`): the embedded world gives the same numbers whatever the CPU's kernels
and thread count.

The world is built four times on this machine, under the CPU capability torch picks here and under
ATEN_CPU_CAPABILITY=default (plain, unvectorised kernels), each with 1 and with 2 threads; each time from nothing
(the benchmark written, the base model folder written from the committed weights), then zero-shot and SeqLoRA run on
it. The comparison prints whether the benchmark files and the base weights are identical, the base's zero-shot score
on every task (within ZERO_SHOT_TOLERANCE points of the first setting's) and every cell of the SeqLoRA matrix (within
MATRIX_TOLERANCE).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cvit.reports.run_report import markdown_table
from cvit.synthetic.version import WORLD_VERSION

SETTINGS = (("native", 1), ("default", 1), ("native", 2), ("default", 2))  # the 1-thread ones run side by side
ZERO_SHOT_TOLERANCE = 2.0
MATRIX_TOLERANCE = 3.0


def tree_sha256(root: Path) -> str:
    """One checksum of every file under `root` (relative paths and contents, in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def check_one(work: Path, configs: Path) -> dict:
    """Build the world under `work` in this process (its CPU capability and threads as the environment set them),
    run zero-shot and SeqLoRA on it; returns what the comparison reads (also written to work/check.json)."""
    import torch

    from cvit.run.demo import run_method
    from cvit.run.document import read_run_document
    from cvit.run.world import WEIGHTS, file_sha256, prepare_world

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    data, base = prepare_world(work)
    docs = {method: read_run_document(run_method(method, work, configs, data, base) / "matrix.json")
            for method in ("zeroshot", "seqlora")}
    summary = {
        "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
        "benchmark_sha256": tree_sha256(data), "base_sha256": file_sha256(base / WEIGHTS),
        "tasks": docs["seqlora"].tasks, "zeroshot": docs["zeroshot"].matrix[0], "seqlora": docs["seqlora"].matrix,
    }
    (work / "check.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_setting(work: Path, configs: Path, capability: str, threads: int) -> dict:
    """`check_one` in a child process under the setting; its output goes to work/check.log."""
    env = {key: value for key, value in os.environ.items() if key != "ATEN_CPU_CAPABILITY"}
    if capability != "native":
        env["ATEN_CPU_CAPABILITY"] = capability
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    shutil.rmtree(work, ignore_errors=True)  # from nothing: runs of an earlier world would be refused at resume
    work.mkdir(parents=True)
    with open(work / "check.log", "w") as log:
        subprocess.run([sys.executable, "-m", "cvit.run.world_check", "--one", str(work), "--configs", str(configs)],
                       env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads((work / "check.json").read_text())


def comparison(summaries: list[dict]) -> tuple[str, bool]:
    """(the comparison's text, whether every figure is within its tolerance of the first setting's)."""
    first = summaries[0]
    labels = [f"{s['capability']}, {s['threads']} thread{'s' * (s['threads'] > 1)}" for s in summaries]
    same_files = all(s["benchmark_sha256"] == first["benchmark_sha256"] for s in summaries)
    same_base = all(s["base_sha256"] == first["base_sha256"] for s in summaries)
    zero_gap = max(abs(a - b) for s in summaries for a, b in zip(s["zeroshot"], first["zeroshot"], strict=True))
    cell_gap = max(abs(a - b) for s in summaries for row, ref in zip(s["seqlora"], first["seqlora"], strict=True)
                   for a, b in zip(row, ref, strict=True))
    zero_rows = [[task, *(f"{s['zeroshot'][i]:.1f}" for s in summaries)] for i, task in enumerate(first["tasks"])]
    last_rows = [[task, *(f"{s['seqlora'][-1][i]:.1f}" for s in summaries)] for i, task in enumerate(first["tasks"])]
    holds = same_files and same_base and zero_gap <= ZERO_SHOT_TOLERANCE and cell_gap <= MATRIX_TOLERANCE
    text = "\n".join([
        f"benchmark files identical in every setting: {'yes' if same_files else 'NO'}",
        f"base weights identical in every setting: {'yes' if same_base else 'NO'}",
        "", "Zero-shot score per task:", markdown_table(["task", *labels], zero_rows),
        "", "SeqLoRA, last row of the matrix:", markdown_table(["task", *labels], last_rows),
        "", f"largest zero-shot difference: {zero_gap:.2f} points (tolerance {ZERO_SHOT_TOLERANCE:g})",
        f"largest difference over every SeqLoRA cell: {cell_gap:.2f} points (tolerance {MATRIX_TOLERANCE:g})",
        f"verdict: {'the same world in every setting' if holds else 'the settings DIFFER'}",
    ])
    return text, holds


def world_check(work: Path, configs: Path, out: Path | None = None) -> tuple[str, bool]:
    """Run every setting under `work`/<capability>-<threads> (the 1-thread ones side by side) and compare them; with
    `out`, the comparison is also written to `out`/world-check.md."""
    def run(setting: tuple[str, int]) -> dict:
        capability, threads = setting
        print(f"building and running the world under {capability} kernels, {threads} thread(s): "
              f"{work / f'{capability}-{threads}'}", flush=True)
        return run_setting(work / f"{capability}-{threads}", configs, capability, threads)

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        single = list(pool.map(run, SETTINGS[:2]))
    text, holds = comparison(single + [run(setting) for setting in SETTINGS[2:]])
    if out is not None:
        from cvit.run.atomic import write_text
        from cvit.run.provenance import cpu_model

        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "world-check.md", "# The same world under other CPU kernels and thread counts\n\n"
                   f"Written by `make world-check` (`cvit world check`) for the embedded world {WORLD_VERSION}, on "
                   f"{cpu_model()} ({os.cpu_count()} cores) in "
                   f"{(time.perf_counter() - started) / 60:.0f} min: the world built from nothing four times (the "
                   "benchmark written, the base model folder written from the committed weights), then zero-shot "
                   "and SeqLoRA on each; capability `default` is ATEN_CPU_CAPABILITY=default (torch's plain kernels), "
                   "the other the machine's own.\n\n" + text + "\n")
    return text, holds


def main() -> None:
    parser = argparse.ArgumentParser(description="one setting of `cvit world check`")
    parser.add_argument("--one", required=True, help="work folder of this setting")
    parser.add_argument("--configs", default="configs")
    args = parser.parse_args()
    check_one(Path(args.one), Path(args.configs))


if __name__ == "__main__":
    main()
