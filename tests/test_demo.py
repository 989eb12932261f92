"""`cvit demo --jobs N`: runs in worker processes give the runs one process gives, with their output in a log each."""

from __future__ import annotations

import json

import pytest
import torch

from cvit.run.demo import run_methods
from tests.conftest import CONFIGS

SMALL = ("train.max_steps=2", "data.max_train_samples=32", "data.max_test_samples=4", "eval.unseen=false",
         "benchmark.order=[colour_mc,count_vqa]", "benchmark.tasks.caption.max_new_tokens=4")


@pytest.mark.multiprocess
def test_two_jobs_run_the_methods_one_process_runs(synthetic_root, tiny_model_dir, tmp_path):
    methods = ("zeroshot", "seqlora")
    alone = run_methods(methods, 1, tmp_path / "one", CONFIGS, synthetic_root, tiny_model_dir, "single", SMALL)
    jobs = run_methods(methods, 2, tmp_path / "two", CONFIGS, synthetic_root, tiny_model_dir, "single", SMALL)
    assert list(jobs) == list(methods)
    for method in methods:
        one, two = (json.loads((runs[method] / "matrix.json").read_text()) for runs in (alone, jobs))
        assert one["completed"] == two["completed"] == (1 if method == "zeroshot" else 2)
        assert f"{max(1, torch.get_num_threads() // 2)} threads" in two["setup"]["device"]
        # one thread instead of two changes float summation order only: the scores agree here
        assert one["matrix"] == two["matrix"]
        log = (tmp_path / "two" / "runs" / f"demo-{method}.log").read_text()
        assert "Predicting" in log  # Lightning's output went to the run's log, not to the terminal
