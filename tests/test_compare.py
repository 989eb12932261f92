"""`cvit compare` on hand-written run documents with hand-computed metrics."""

from __future__ import annotations

from cvit.reports.compare import Group, compare_runs, tradeoff_figure
from cvit.run.document import RunDocument
from cvit.run.rundir import RunDirectory
from tests.conftest import run_cli

SEQUENTIAL = RunDocument(
    tasks=["colour", "caption"], method="seqlora", stages=["colour", "caption"],
    scorers={"colour": "exact", "caption": "caption"}, matrix=[[50.0], [40.0, 120.0]],
    parameters=[{"trainable": 10, "stored": 10, "inference": 10}, {"trainable": 10, "stored": 20, "inference": 12}],
    seconds=[1.5, 2.5], completed=2,
)
JOINT = RunDocument(
    tasks=["colour", "caption"], method="joint", mode="joint", stages=["joint"],
    scorers={"colour": "exact", "caption": "caption"}, matrix=[[60.0, 130.0]],
    parameters=[{"trainable": 10, "stored": 10, "inference": 10}], seconds=[7.0], completed=1,
)


def runs(tmp_path):
    folders = []
    for name, doc in (("demo-seqlora", SEQUENTIAL), ("demo-joint", JOINT)):
        (tmp_path / name).mkdir()
        RunDirectory(tmp_path / name).save_matrix(doc)
        folders.append(tmp_path / name)
    return folders


def row(text: str, section: int, name: str) -> list[str]:
    """The cells of run `name` in the `section`-th table of `text`."""
    table = [line for line in text.split("\n\n")[section].splitlines() if line.startswith(f"| {name} ")][0]
    return [cell.strip() for cell in table.strip("|").split("|")]


def test_runs_side_by_side_with_and_without_captions(tmp_path):
    text = compare_runs(runs(tmp_path), tmp_path / "out")
    # seqlora: last (40 + 120) / 2 = 80, MAA (50 + 80) / 2 = 65, BWT 40 - 50 = -10; without captions last 40;
    # joint: last (60 + 130) / 2 = 95, 60 without captions
    assert row(text, 0, "demo-seqlora")[1:4] == ["80.00", "65.00", "-10.00"]
    assert row(text, 0, "demo-joint")[1] == "95.00" and row(text, 0, "demo-joint")[3] == "-"
    assert row(text, 1, "demo-seqlora")[1] == "40.00" and row(text, 1, "demo-joint")[1] == "60.00"
    assert row(text, 2, "demo-seqlora") == ["demo-seqlora", "10", "20", "12", "4"]
    assert (tmp_path / "out" / "comparison.md").read_text().startswith(text)
    for image in ("tradeoff.png", "matrices.png"):
        assert (tmp_path / "out" / image).read_bytes()[:4] == b"\x89PNG"


def test_the_command_compares_and_names_a_folder_without_a_run(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "compare", *runs(tmp_path))
    assert code == 0 and "demo-joint" in out and "demo-seqlora" in out
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "compare", tmp_path / "empty")
    assert code != 0 and "empty" in err and "matrix.json" in err


def test_tradeoff_plots_sequential_points_and_single_stage_lines_without_captions(tmp_path):
    docs = {"demo-seqlora": Group((SEQUENTIAL,)), "demo-joint": Group((JOINT,))}
    axes = tradeoff_figure(docs).axes[0]
    # seqlora without captions: last 40, BWT 40 - 50 = -10; joint (no BWT) a line at its colour score 60
    assert [tuple(p) for c in axes.collections for p in c.get_offsets()] == [(-10.0, 40.0)]
    assert [line.get_ydata()[0] for line in axes.lines] == [60.0]
    assert {text.get_text() for text in axes.texts} == {"demo-seqlora", "demo-joint"}
    assert "without the caption tasks" in axes.get_ylabel()


def seeded_runs(tmp_path, lrs=(0.1, 0.1, 0.1), seeds=(0, 1, 2)):
    """Three SeqLoRA runs of BWT -10, -20, -30 (last 40, 50, 60 on the colour task) under `seeds`."""
    import yaml

    folders = []
    for k, (lr, seed) in enumerate(zip(lrs, seeds, strict=True)):
        folder = tmp_path / f"demo-seqlora-seed{k}"
        folder.mkdir(parents=True)
        doc = RunDocument(tasks=["colour", "count"], method="seqlora", stages=["colour", "count"],
                          scorers={"colour": "exact", "count": "vqa"}, matrix=[[50.0 + 20 * k], [40.0 + 10 * k, 80.0]],
                          setup={"seed": seed}, completed=2, seconds=[1.0, 2.0])
        RunDirectory(folder).save_matrix(doc)
        (folder / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": seed, "lr": lr},
                                                            "run": {"name": folder.name}}))
        folders.append(folder)
    return folders


def test_a_seed_group_is_one_row_of_mean_and_sample_standard_deviation(tmp_path):
    text = compare_runs([seeded_runs(tmp_path)])
    # BWT per seed: 40 - 50 = -10, 50 - 70 = -20, 60 - 90 = -30: mean -20, sample std sqrt((100 + 0 + 100) / 2) = 10;
    # Last: (40 + 80) / 2 = 60, 65, 70: mean 65, std 5
    cells = row(text, 0, "demo-seqlora-seed0 (seeds 0, 1, 2)")
    assert cells[1] == "65.00 ± 5.00" and cells[3] == "-20.00 ± 10.00"


def test_a_seed_group_that_differs_in_more_than_the_seed_is_refused(tmp_path, capsys):
    import pytest

    from cvit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"differ in more than the seed: train\.lr"):
        compare_runs([seeded_runs(tmp_path, lrs=(0.1, 0.1, 0.2))])
    with pytest.raises(ConfigError, match="share a seed"):
        compare_runs([seeded_runs(tmp_path / "same", seeds=(0, 1, 1))])
    folders = seeded_runs(tmp_path / "cli", lrs=(0.1, 0.3, 0.1))
    code, _, err = run_cli(capsys, "compare", "--seeds", *folders)
    assert code == 2 and "differ in more than the seed: train.lr" in err
