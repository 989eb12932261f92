"""The README's "Write your own method" example (examples/l2_anchor): run by the `cvit` command from another
folder with no PYTHONPATH (its class_path found beside its YAML), its loss term logged, resumed mid-stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import CONFIGS, small_overrides
from tests.test_loop import refused_before_loading, stage_events, straight_and_resumed

EXAMPLE = CONFIGS.parent / "examples" / "l2_anchor" / "method.yaml"
TWO = ("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=2", "eval.unseen=false")


def test_the_example_runs_from_the_cvit_command_without_pythonpath(synthetic_root, tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [str(Path(sys.executable).parent / "cvit"), "fit", "-c", str(CONFIGS / "model" / "tiny_llava.yaml"),
               "-c", str(CONFIGS / "benchmark" / "synthetic.yaml"), "-c", str(EXAMPLE),
               *small_overrides(synthetic_root, tiny_model_dir, tmp_path / "runs"), *TWO, "run.name=l2"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "l2"
    assert json.loads((run_dir / "matrix.json").read_text())["completed"] == 2
    events = stage_events(run_dir, "01_count_vqa")
    assert events.Scalars("loss/l2_anchor")[-1].value > 0  # the second task is pulled towards the first's end
    anchor = torch.load(run_dir / "stages" / "01_count_vqa" / "callbacks.pt", weights_only=True)["anchor"]["anchor"]
    assert anchor and all(isinstance(t, torch.Tensor) for t in anchor.values())


def test_the_example_resumes_to_the_same_matrix_and_anchor(small_config):
    straight, resumed = straight_and_resumed(small_config, (*TWO, "benchmark.order=[colour_mc,count_vqa,grounding]"),
                                             [EXAMPLE], "grounding")
    a, b = straight.callbacks["anchor"].anchor, resumed.callbacks["anchor"].anchor
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n].to(a[n].device)) for n in a)


def test_the_examples_bad_weight_is_refused_before_loading(small_config):
    refused_before_loading(small_config, [EXAMPLE], "callbacks.anchor.weight=-1",
                           r"command line: key 'callbacks\.anchor\.weight': weight must be >= 0")
