"""report.md and matrix.png from a run directory's matrix.json."""

from __future__ import annotations

import json

import pytest

from cvit.errors import DataError
from cvit.reports.run_report import heatmap_figure, write_report
from cvit.run.document import RunDocument, read_run_document

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DOC = {
    "tasks": ["t1", "t2"], "matrix": [[80.0], [60.0, 90.0]],
    "unseen_tasks": ["u1"], "unseen": [[10.0], [12.5]],
    "details": {
        "t1": {"00_t1": {"score": 80.0}, "01_t2": {"score": 60.0}},
        "t2": {"01_t2": {"score": 90.0, "bleu1": 55.5, "cider": 90.0}},
    },
    "method": "seqlora", "benchmark": "synthetic", "scorers": {"t1": "choice", "t2": "caption"},
    "completed": 2, "stages": ["t1", "t2"],
}


def write_doc(run_dir, doc):
    """A full run document: `doc`'s keys over those of a sequential run with one stage per task."""
    full = RunDocument(**{"stages": doc["tasks"], "protocol": {"bwt_denominator": "T-1"}, **doc})
    (run_dir / "matrix.json").write_text(json.dumps(full.to_json()))


def table_row(text: str, label: str) -> list[str]:
    """The cells of the markdown table row starting with `label`."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_write_report(tmp_path):
    write_doc(tmp_path, DOC)
    report = write_report(tmp_path)
    assert report == tmp_path / "report.md"
    text = report.read_text()
    assert text.startswith("# seqlora on synthetic\n")
    assert "2 of 2 stages completed." in text and "0-100" in text and "T-1" in text
    assert table_row(text, "after t1") == ["after t1", "80.00", ""]
    assert table_row(text, "after t2") == ["after t2", "60.00", "90.00"]
    # all tasks: last = (60 + 90) / 2 = 75; bwt = 60 - 80 = -20; forgetting = 80 - 60 = 20; maa = (80 + 75) / 2
    # without the caption task t2: last = 60; bwt and forgetting as above; maa = (80 + 60) / 2 = 70
    assert table_row(text, "metric") == ["metric", "all tasks", "without captions"]
    assert table_row(text, "Last (ACC)") == ["Last (ACC)", "75.00", "60.00"]
    assert table_row(text, "BWT") == ["BWT", "-20.00", "-20.00"]
    assert table_row(text, "Forgetting") == ["Forgetting", "20.00", "20.00"]
    assert table_row(text, "MAA") == ["MAA", "77.50", "70.00"]
    assert table_row(text, "t1") == ["t1", "choice"] and table_row(text, "t2") == ["t2", "caption"]
    unseen = text.split("## Unseen tasks")[1]
    assert table_row(unseen, "") == ["", "u1"]
    assert table_row(unseen, "after t2") == ["after t2", "12.50"]
    assert "- t2 (after 01_t2): bleu1 55.50, cider 90.00" in text
    assert "![accuracy matrix](matrix.png)" in text
    assert (tmp_path / "matrix.png").read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["matrix.json", "matrix.png", "report.md"]


def test_rewrite_leaves_no_temporaries(tmp_path):
    write_doc(tmp_path, DOC)
    write_report(tmp_path)
    write_doc(tmp_path, {**DOC, "method": "replay"})
    assert write_report(tmp_path).read_text().startswith("# replay on synthetic\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["matrix.json", "matrix.png", "report.md"]


def test_incomplete_run(tmp_path):
    doc = {"tasks": ["t1", "t2", "t3"], "matrix": [[70.0]], "method": "seqlora", "benchmark": "b",
           "stages": ["t1", "t2", "t3"], "completed": 1}
    write_doc(tmp_path, doc)
    text = write_report(tmp_path).read_text()
    assert "1 of 3 stages completed (an incomplete run)." in text
    assert table_row(text, "after t1") == ["after t1", "70.00", "", ""]
    assert table_row(text, "BWT") == ["BWT", "-"]
    assert "Unseen" not in text and "Scorers" not in text


def test_no_stage_yet(tmp_path):
    write_doc(tmp_path, {"tasks": ["t1"], "matrix": [], "method": "seqlora", "benchmark": "b"})
    assert "No stage has completed yet." in write_report(tmp_path).read_text()
    assert not (tmp_path / "matrix.png").exists()


def test_single_stage_joint_run(tmp_path):
    doc = {"tasks": ["t1", "t2"], "stages": ["joint"], "matrix": [[40.0, 70.0]], "mode": "joint",
           "method": "joint", "benchmark": "b"}
    write_doc(tmp_path, doc)
    text = write_report(tmp_path).read_text()
    assert table_row(text, "after joint") == ["after joint", "40.00", "70.00"]
    assert table_row(text, "Last (ACC)") == ["Last (ACC)", "55.00"]
    assert table_row(text, "BWT") == ["BWT", "-"]  # undefined for a single stage


def test_missing_or_invalid_matrix_json(tmp_path):
    with pytest.raises(DataError, match="matrix.json: cannot read"):
        write_report(tmp_path)
    (tmp_path / "matrix.json").write_text(json.dumps({"tasks": ["t1"], "matrix": [[1, 2]]}))
    with pytest.raises(DataError, match="matrix.json: matrix row 0 has 2 entries"):
        write_report(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_the_run_document_is_typed_and_versioned(tmp_path):
    write_doc(tmp_path, DOC)
    path = tmp_path / "matrix.json"
    stored = json.loads(path.read_text())
    assert stored["version"] == 3 and read_run_document(path) == RunDocument.from_json(stored, path)
    first = {k: v for k, v in stored.items() if k not in ("version", "timing", "answer_loss")}  # unversioned
    path.write_text(json.dumps(first))
    assert read_run_document(path).version == 1 and read_run_document(path).timing == []
    second = {k: v for k, v in stored.items() if k != "answer_loss"}
    path.write_text(json.dumps({**second, "version": 2}))
    assert read_run_document(path).answer_loss == []
    for change, message in (({"version": 4}, r"key 'version': run document layout 4; this kit reads up to 3"),
                            ({"seconds": None}, r"missing key 'seconds'"), ({"timing": None}, r"missing key 'timing'"),
                            ({"answer_loss": None}, r"missing key 'answer_loss'"),
                            ({"extra": 1}, r"unknown key 'extra'")):
        doc = {k: v for k, v in {**stored, **change}.items() if v is not None}
        path.write_text(json.dumps(doc))
        with pytest.raises(DataError, match=rf"matrix\.json: {message}"):
            read_run_document(path)


def test_heatmap_figure_annotates_present_cells():
    figure = heatmap_figure(["a", "b", "c"], [[1.0], [2.0, 3.0]], title="run")
    axes = figure.axes[0]
    assert sorted(text.get_text() for text in axes.texts) == ["1.0", "2.0", "3.0"]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["after a", "after b"]
    assert axes.get_title() == "run"
    with pytest.raises(ValueError):
        heatmap_figure(["a"], [[1.0, 2.0]])


def test_mif_section_of_a_single_stage_run_lists_every_task(tmp_path):
    doc = {"tasks": ["t1", "t2"], "stages": ["joint"], "matrix": [[40.0, 70.0]], "mode": "joint",
           "mif": [[50.0, 100.0]], "unseen_tasks": ["u"], "unseen_mif": [[None]]}
    write_doc(tmp_path, doc)
    text = write_report(tmp_path).read_text()
    assert table_row(text, "t1") == ["t1", "50.00"] and table_row(text, "t2") == ["t2", "100.00"]
    assert "MIF (trained tasks): 75.00; all judged tasks: 75.00." in text
