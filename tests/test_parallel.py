"""Data parallelism on CPU with 2 processes (gloo, Lightning's own subprocess launcher, started from `cvit fit`):
every method trains and evaluates as one process does at the same global batch, every rank holds the same
method state, and a 2-process run killed mid-task resumes. One process runs at batch 16, two at batch 8 each.
The methods' 2-process runs are `cvit fit` called in turn inside one pair of processes (tests/parallel/fit_each.py);
the killed run and its resumption are `cvit fit` commands of their own.

Tolerance: the two runs see the same 16 samples per step and take the same mean over their answer tokens
(cvit.module.rank_share_of_tokens); they differ in the order of floating-point sums only, which AdamW amplifies
where a gradient is near zero (LoRA's A at the first steps) — measured below 1e-5 on the adapters after two tasks;
asserted at 1e-4 (weights) and 2e-3 (relative, method statistics). Every rank must hold the same state exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cvit.data.collate import IGNORE_INDEX
from cvit.run.loop import ContinualRun
from tests.conftest import CONFIGS, REPO

# one xdist worker runs the module, so its two-process runs are made once (`two_process_runs`, per session:
# a worker may run other modules' tests between this module's)
pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("two_processes")]

PROBE = REPO / "tests" / "parallel" / "rank_probe.yaml"
FIT_EACH = REPO / "tests" / "parallel" / "fit_each.py"
STREAM = ("benchmark.order=[colour_mc,count_vqa]", "eval.unseen=false", "data.max_test_samples=7")
METHODS = ("seqlora", "joint", "replay", "ewc", "lwf", "olora", "moelora", "llaca", "proglora_static",
           "proglora_dynamic", "hide", "smolora")
RESUMED = "llaca"
CHECKPOINT_EVERY_STEP = "train.checkpoint_every_n_steps=1"


def method_files(method: str) -> list[Path]:
    return [CONFIGS / "model" / "tiny_llava.yaml", CONFIGS / "benchmark" / "synthetic.yaml",
            CONFIGS / "method" / f"{method}.yaml", PROBE]


def two_process_arguments(method: str, overrides: list[str], resume: Path | None = None) -> list[str]:
    """`cvit fit`'s arguments (after `fit`) for a 2-process CPU run at batch 8 per process."""
    return [*[f"-c={path}" for path in method_files(method)], *overrides, "train.devices=2", "train.strategy=ddp",
            "train.accelerator=cpu", "data.batch_size=8", *(["--resume", str(resume)] if resume else [])]


def in_two_processes(command: list[str], kill_at: str = "") -> subprocess.CompletedProcess:
    """`command` started as rank 0 (Lightning's launcher re-runs it for rank 1); `kill_at`: "<task>:<step>" where
    every rank kills itself (tests/parallel/rank_probe.py)."""
    env = {**os.environ, "RANK_PROBE_KILL_AT": kill_at}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def fit_two_processes(method: str, overrides: list[str], resume: Path | None = None,
                      kill_at: str = "") -> subprocess.CompletedProcess:
    """`cvit fit` itself on 2 CPU processes."""
    return in_two_processes([sys.executable, "-m", "cvit.cli", "fit", *two_process_arguments(method, overrides,
                                                                                              resume)], kill_at)


def small(synthetic_root, tiny_model_dir, tmp_path, name: str) -> list[str]:
    from tests.conftest import small_overrides

    return [*small_overrides(synthetic_root, tiny_model_dir, tmp_path / "runs"), *STREAM, f"run.name={name}",
            f"callbacks.probe.folder={tmp_path / name}"]


def adapters(run: Path) -> dict[str, torch.Tensor]:
    stage = sorted((run / "stages").iterdir())[-1] / "adapters"
    return {f"{file.parent.name}/{key}": value for file in stage.rglob("*.safetensors")
            for key, value in load_file(file).items()}


def tensors(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor (and number) inside a nested state, by path."""
    if isinstance(state, dict):
        return {k: v for key, item in state.items() for k, v in tensors(item, f"{prefix}/{key}").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for index, item in enumerate(state) for k, v in tensors(item, f"{prefix}/{index}").items()}
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    return {prefix: torch.tensor(float(state))} if isinstance(state, (int, float)) else {}


@pytest.fixture(scope="session")
def two_process_runs(synthetic_root, tiny_model_dir, tmp_path_factory) -> Path:
    """Every method's 2-process run (runs/<method>, probe states in <method>/), and the uninterrupted run the
    resume test compares with (runs/straight), made by `cvit fit` in turn inside one pair of processes."""
    folder = tmp_path_factory.mktemp("two-processes")
    runs = [two_process_arguments(method, small(synthetic_root, tiny_model_dir, folder, method)) for method in METHODS]
    runs.append(two_process_arguments(RESUMED, [*small(synthetic_root, tiny_model_dir, folder, "straight"),
                                                CHECKPOINT_EVERY_STEP]))
    (folder / "runs.json").write_text(json.dumps(runs))
    made = in_two_processes([sys.executable, str(FIT_EACH), str(folder / "runs.json")])
    assert made.returncode == 0, made.stderr[-3000:]
    return folder


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_train_as_one_at_equal_global_batch(method, two_process_runs, synthetic_root, tiny_model_dir,
                                                          tmp_path):
    from cvit.config.load import load_config

    cfg, sources = load_config(method_files(method), small(synthetic_root, tiny_model_dir, tmp_path, "one"))
    one = ContinualRun(cfg, sources).run()
    two_dir = two_process_runs / "runs" / method

    doc_one, doc_two = (json.loads((run / "matrix.json").read_text()) for run in (one, two_dir))
    assert doc_two["setup"]["world_size"] == 2 and doc_two["setup"]["global_batch"] == doc_one["setup"]["global_batch"]
    assert doc_two["matrix"] == doc_one["matrix"]
    for file in (one / "predictions").rglob("*.jsonl"):  # every item once, in the records' order
        assert (two_dir / file.relative_to(one)).read_text() == file.read_text()
    expected, got = adapters(one), adapters(two_dir)
    assert expected.keys() == got.keys()
    assert all(torch.allclose(expected[k], got[k], atol=1e-4) for k in expected)

    for stage in doc_one["stages"]:
        single = torch.load(tmp_path / "one" / f"rank0-{stage}.pt", weights_only=True)
        ranks = [torch.load(two_process_runs / method / f"rank{r}-{stage}.pt", weights_only=True) for r in (0, 1)]
        per_rank = [tensors(state) for state in ranks]
        assert per_rank[0].keys() == per_rank[1].keys() == tensors(single).keys()
        for key, value in per_rank[0].items():  # the same state on every rank (EMA, anchors, Fisher, ...)
            assert torch.equal(value, per_rank[1][key]), f"{method} {stage}: rank 1 differs at {key}"
        for key, value in tensors(single).items():  # and the single process's, at the stated tolerance
            assert torch.allclose(value.double(), per_rank[0][key].double(), rtol=2e-3, atol=1e-4), \
                f"{method} {stage}: 2 processes differ from 1 at {key}"


def test_a_two_process_run_killed_mid_task_resumes(two_process_runs, synthetic_root, tiny_model_dir, tmp_path):
    args = [*small(synthetic_root, tiny_model_dir, tmp_path, "killed"), CHECKPOINT_EVERY_STEP]
    killed = fit_two_processes(RESUMED, args, kill_at="count_vqa:1")
    assert killed.returncode != 0
    run = tmp_path / "runs" / "killed"
    assert json.loads((run / "matrix.json").read_text())["completed"] == 1
    assert (run / "inflight" / "01_count_vqa" / "inflight.ckpt").is_file()
    resumed = fit_two_processes(RESUMED, args, resume=run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = two_process_runs / "runs" / "straight"
    assert json.loads((run / "matrix.json").read_text())["matrix"] == \
        json.loads((straight / "matrix.json").read_text())["matrix"]
    expected, got = adapters(straight), adapters(run)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def halves_gradient(rank: int, logits: torch.Tensor, labels: torch.Tensor, port: int, out: str) -> None:
    """Rank `rank` of 2 (gloo): the gradient of its half of the batch under the token share, averaged as DDP does."""
    import torch.distributed as dist

    from cvit.module import answer_loss, rank_share_of_tokens
    from cvit.run.parallel import mean_over_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    part = slice(rank * 2, rank * 2 + 2)
    mine = logits[part].clone().requires_grad_(True)
    loss = answer_loss(mine, labels[part], torch.ones(2), rank_share_of_tokens(labels[part]))
    loss.backward()
    full = torch.zeros_like(logits)
    full[part] = mine.grad
    mean_over_ranks([full])
    torch.save(full, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_take_the_gradient_of_one_mean_over_all_answer_tokens(tmp_path):
    # halves with 1 + 1 and 4 + 3 answer tokens: a plain per-rank mean would weigh the first half's tokens 3.5x
    import socket

    from cvit.module import answer_loss

    torch.manual_seed(0)
    logits = torch.randn(4, 6, 5)
    labels = torch.full((4, 6), IGNORE_INDEX)
    labels[0, 5], labels[1, 5] = 1, 2
    labels[2, 2:] = torch.tensor([1, 2, 3, 4])
    labels[3, 3:] = torch.tensor([0, 1, 2])
    whole = logits.clone().requires_grad_(True)
    answer_loss(whole, labels, torch.ones(4)).backward()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torch.multiprocessing.spawn(halves_gradient, args=(logits, labels, port, str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        assert torch.allclose(torch.load(tmp_path / f"rank{rank}.pt"), whole.grad, atol=1e-7)
