"""Shared fixtures: a small synthetic benchmark and the tiny LLaVA, built once per test session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from cvit.config.load import load_config
from cvit.model.tiny import save_tiny_llava
from cvit.synthetic.writer import SyntheticSizes, make_synthetic

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def pytest_configure(config) -> None:
    """Under pytest-xdist, each worker's torch (and every process a test starts) gets an equal share of the cores:
    workers with a thread per core each would oversubscribe them, which made the suite slower on 2 workers than
    on one."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data") / "synthetic", SyntheticSizes(train=48, test=8, base=64))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava")


def small_overrides(root: Path, model: Path, run_root: Path) -> list[str]:
    """Shrink the embedded default for tests: few records, few steps, short generations."""
    return [
        f"benchmark.root={root}", f"model.path={model}", f"run.root={run_root}",
        "data.batch_size=16", "data.eval_batch_size=8", "data.max_train_samples=32",
        "data.max_test_samples=8", "benchmark.tasks.caption.max_new_tokens=12", "train.log_every_n_steps=1",
    ]


@pytest.fixture
def small_config(synthetic_root, tiny_model_dir, tmp_path):
    """A loader of the demo config shrunk for tests; extra overrides are appended."""

    def load(*extra: str, method: str = "seqlora", files=()):
        base = [CONFIGS / "model" / "tiny_llava.yaml", CONFIGS / "benchmark" / "synthetic.yaml",
                CONFIGS / "method" / f"{method}.yaml", *files]
        return load_config(base, small_overrides(synthetic_root, tiny_model_dir, tmp_path / "runs") + list(extra))

    return load


@pytest.fixture
def qwen_config_dir(tmp_path) -> Path:
    """A Qwen2-VL folder's config.json alone: enough for the checks that run before any model loads."""
    folder = tmp_path / "qwen-config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    return folder


def run_cli(capsys, *arguments) -> tuple[int, str, str]:
    """`cvit ARGUMENTS` in this process (the command's code without a new interpreter's 8 s of imports):
    (exit code, stdout, stderr); a parser error is argparse's exit code 2."""
    from cvit.cli import main

    try:
        code = main([str(argument) for argument in arguments])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
