from __future__ import annotations

import json

from cvit.cli import main
from tests.conftest import CONFIGS, small_overrides


def test_metrics_command_json(tmp_path, capsys):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"tasks": ["a", "b"], "matrix": [[80.0], [60.0, 90.0]]}))
    assert main(["metrics", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"last": 75.0, "maa": 77.5, "bwt": -20.0, "forgetting": 20.0, "new_acc": 85.0}


def test_metrics_command_reports_bad_input_without_traceback(tmp_path, capsys):
    path = tmp_path / "m.json"
    path.write_text('{"tasks": ["a"],\n "matrix": [[1.0]')
    assert main(["metrics", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "m.json" in err and "line 2" in err and "Traceback" not in err


def test_validate_lists_the_stream_without_loading_a_model(synthetic_root, tmp_path, capsys):
    args = ["validate", "-c", str(CONFIGS / "experiment" / "demo.yaml"),
            *small_overrides(synthetic_root, tmp_path / "no-model-here", tmp_path / "runs")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "colour_mc" in out and "unseen" in out and "scorer choice" in out


def test_fit_with_unknown_key_names_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian:\n  lr: 1\n")
    assert main(["fit", "-c", str(bad)]) == 2
    assert f"{bad}: key 'trian'" in capsys.readouterr().err
