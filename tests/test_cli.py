from __future__ import annotations

import json

from cvit.cli import main
from tests.conftest import CONFIGS, small_overrides


def test_metrics_command_json(tmp_path, capsys):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"tasks": ["a", "b"], "matrix": [[80.0], [60.0, 90.0]]}))
    assert main(["metrics", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"last": 75.0, "maa": 77.5, "bwt": -20.0, "forgetting": 20.0, "new_acc": 85.0, "mif": None}


def test_metrics_command_reports_bad_input_without_traceback(tmp_path, capsys):
    path = tmp_path / "m.json"
    path.write_text('{"tasks": ["a"],\n "matrix": [[1.0]')
    assert main(["metrics", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "m.json" in err and "line 2" in err and "Traceback" not in err


def test_validate_lists_the_stream_without_loading_a_model(synthetic_root, tiny_model_dir, tmp_path, capsys):
    args = ["validate", "-c", str(CONFIGS / "experiment" / "demo.yaml"),
            *small_overrides(synthetic_root, tiny_model_dir, tmp_path / "runs")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "colour_mc" in out and "unseen" in out and "scorer choice" in out and "images decode" in out
    assert main([*args, f"model.path={tmp_path / 'no-model-here'}"]) == 2
    assert "the command line: key 'model.path': model folder not found" in capsys.readouterr().err


def test_metrics_with_a_reference_matched_by_task_name(tmp_path, capsys):
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"tasks": ["a", "b", "c"], "matrix": [[80.0], [60.0, 90.0]]}))
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"tasks": ["b", "a"], "matrix": [[50.0, 70.0]], "mode": "zeroshot"}))
    assert main(["metrics", str(run), "--reference", str(ref), "--json"]) == 0
    # triangular rows: fwt = mean_i (A[i][i] - ref[i]) = ((80 - 70) + (90 - 50)) / 2 = 25
    assert json.loads(capsys.readouterr().out)["fwt"] == 25.0
    ref.write_text(json.dumps({"tasks": ["b"], "matrix": [[50.0]]}))
    assert main(["metrics", str(run), "--reference", str(ref)]) == 2
    assert "no score for task(s) a" in capsys.readouterr().err


def test_metrics_of_a_run_with_no_completed_stage(tmp_path, capsys):
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"tasks": ["a"], "matrix": []}))
    assert main(["metrics", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["last"] is None


def test_fit_with_unknown_key_names_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian:\n  lr: 1\n")
    assert main(["fit", "-c", str(bad)]) == 2
    assert f"{bad}: key 'trian'" in capsys.readouterr().err


def test_fit_resume_and_report_commands(synthetic_root, tiny_model_dir, tmp_path, capsys):
    args = ["fit", "-c", str(CONFIGS / "experiment" / "demo.yaml"),
            *small_overrides(synthetic_root, tiny_model_dir, tmp_path / "runs"),
            "benchmark.order=[colour_mc]", "train.max_steps=1", "run.name=cli"]
    assert main(args) == 0
    run_dir = tmp_path / "runs" / "cli"
    assert f"run directory: {run_dir}" in capsys.readouterr().out
    assert main(args) == 2  # the directory exists: refused, nothing overwritten
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume", str(run_dir)]) == 0  # complete: nothing left to do
    (run_dir / "report.md").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text().startswith("# seqlora on synthetic")


def test_demo_settings_apply_only_where_the_method_has_the_key(small_config):
    from cvit.run.demo import applicable

    settings = ("callbacks.smolora.r=8", "train.lr=0.1", "callbacks.hide.epsilon=0.5")
    seqlora, _ = small_config()
    smolora, _ = small_config(files=[CONFIGS / "method" / "smolora.yaml"])
    assert applicable(seqlora, settings) == ["train.lr=0.1"]
    assert applicable(smolora, settings) == ["callbacks.smolora.r=8", "train.lr=0.1"]
