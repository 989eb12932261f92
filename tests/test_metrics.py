"""Continual metrics against hand arithmetic and against ProgLoRA's published matrices."""

from __future__ import annotations

import json

import pytest

from cvit.errors import DataError
from cvit.eval.metrics import continual_metrics, format_metrics, read_matrix_doc

# A[j][i] = score on task i after training task j
TRIANGULAR = [
    [80.0],
    [85.0, 90.0],
    [50.0, 70.0, 100.0],
]


def test_triangular_3x3_by_hand():
    metrics = continual_metrics(TRIANGULAR)
    # last = (50 + 70 + 100) / 3 = 220 / 3
    assert metrics["last"] == pytest.approx(220 / 3)
    # maa = (80 + (85 + 90) / 2 + (50 + 70 + 100) / 3) / 3 = (80 + 87.5 + 73.333...) / 3 = 80.2777...
    assert metrics["maa"] == pytest.approx((80 + 87.5 + 220 / 3) / 3)
    assert metrics["maa"] == pytest.approx(80.27778, abs=1e-5)
    # bwt = ((50 - 80) + (70 - 90)) / 2 = -25
    assert metrics["bwt"] == pytest.approx(-25.0)
    # forgetting = ((max(80, 85) - 50) + (max(90) - 70)) / 2 = (35 + 20) / 2 = 27.5
    assert metrics["forgetting"] == pytest.approx(27.5)
    # new_acc = (80 + 90 + 100) / 3 = 90
    assert metrics["new_acc"] == pytest.approx(90.0)
    assert "fwt" not in metrics


def test_fwt_with_triangular_rows_uses_the_diagonal():
    # mean_i (A[i][i] - ref[i]) = ((80 - 10) + (90 - 20) + (100 - 30)) / 3 = 70
    assert continual_metrics(TRIANGULAR, [10, 20, 30])["fwt"] == pytest.approx(70.0)


def test_full_rows():
    full = [
        [80.0, 30.0, 20.0],
        [85.0, 90.0, 45.0],
        [50.0, 70.0, 100.0],
    ]
    metrics = continual_metrics(full, [10.0, 20.0, 30.0])
    # entries above the diagonal are ignored by everything but fwt
    assert {k: v for k, v in metrics.items() if k != "fwt"} == pytest.approx(continual_metrics(TRIANGULAR))
    # fwt = ((A[0][1] - ref[1]) + (A[1][2] - ref[2])) / 2 = ((30 - 20) + (45 - 30)) / 2 = 12.5
    assert metrics["fwt"] == pytest.approx(12.5)


def test_single_task():
    metrics = continual_metrics([[42.0]], [40.0])
    expected = {"last": 42.0, "maa": 42.0, "bwt": None, "forgetting": None, "new_acc": 42.0, "fwt": 2.0}
    assert metrics == expected


def test_incomplete_full_rows_are_accepted():
    # two of three stages done, every row evaluated on all three tasks: T = 2
    metrics = continual_metrics([[80, 10, 5], [60, 90, 7]])
    assert metrics["last"] == pytest.approx(75.0)  # (60 + 90) / 2; task 3 is not trained yet
    assert metrics["bwt"] == pytest.approx(-20.0)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([], "non-empty"),
        ("80", "non-empty"),
        ([[80], [90]], "row 1 has 1 entries, needs at least 2"),
        ([[80], 90], "row 1: expected a list"),
        ([["80"]], "row 0, entry 0: expected a finite number, got '80'"),
        ([[True]], "expected a finite number"),
        ([[float("nan")]], "expected a finite number"),
        ([[None]], "expected a finite number"),
    ],
)
def test_malformed_matrix(matrix, message):
    with pytest.raises(ValueError, match=message):
        continual_metrics(matrix)


def test_reference_of_wrong_size():
    with pytest.raises(ValueError, match="reference must be a list of 3 scores"):
        continual_metrics(TRIANGULAR, [1.0, 2.0])


def test_format_metrics_aligns_and_shows_none():
    text = format_metrics(continual_metrics([[42.0]], [40.0]))
    lines = text.splitlines()
    assert lines[0].split() == ["Last", "(ACC)", "42.00"]
    assert lines[2].split() == ["BWT", "-"]
    assert lines[-1].split() == ["FWT", "2.00"]
    assert len({len(line) for line in lines}) == 1  # values right-aligned in one column


# ---- files ---------------------------------------------------------------------------------------------


def test_load_matrix(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"tasks": ["a", "b", "c"], "matrix": TRIANGULAR, "method": "x"}))
    doc = read_matrix_doc(path)
    assert (doc["tasks"], doc["matrix"], doc["method"]) == (["a", "b", "c"], TRIANGULAR, "x")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"tasks": ["a"],\n "matrix": [[1]\n', "malformed JSON at line 3"),
        ('{"tasks": ["a"]}', "missing key 'matrix'"),
        ('{"matrix": [[1]]}', "missing key 'tasks'"),
        ("[1, 2]", "expected a JSON object"),
        ('{"tasks": "a", "matrix": [[1]]}', "'tasks' must be a list"),
        ('{"tasks": ["a"], "matrix": [[1], [1, 2]]}', "at most 1 rows"),
        ('{"tasks": ["a", "b"], "matrix": [[1, 2, 3]]}', "row 0 has 3 entries but there are 2 tasks"),
        ('{"tasks": ["a", "b"], "matrix": [[1], [2]]}', "row 1 has 1 entries"),
        ('{"tasks": ["a"], "matrix": [["x"]]}', "expected a finite number"),
    ],
)
def test_load_matrix_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        read_matrix_doc(path)
    assert str(path) in str(error.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.json: cannot read"):
        read_matrix_doc(tmp_path / "nope.json")


# ---- published matrices: ProgLoRA (arXiv 2025), appendix Tables 6-8, LLaVA-1.5-7B on CoIN ---------------
# Rows: after training ScienceQA, TextVQA, ImageNet, GQA, VizWiz, Grounding, VQAv2, OCR-VQA.
# ProgLoRA's BWT divides the sum over the first T-1 tasks by T, so its number is our bwt * (T-1) / T.
# The papers print two decimals; 0.006 allows for that rounding.

MOELORA = [  # Table 6, summary numbers in Table 1: ACC 37.13, MAA 42.76, BWT -25.91
    [75.78],
    [31.40, 51.73],
    [40.98, 13.15, 96.70],
    [37.42, 35.53, 6.62, 59.42],
    [47.15, 41.69, 5.53, 45.27, 58.88],
    [59.06, 13.97, 0.25, 32.62, 30.40, 37.50],
    [33.27, 50.48, 8.15, 51.75, 28.52, 0.97, 64.22],
    [63.09, 38.63, 10.50, 37.38, 43.62, 0.59, 43.15, 60.08],
]
PROGLORA_STATIC = [  # Table 7, summary numbers in Tables 2 and 3: ACC 58.73, MAA 66.44, BWT -2.57
    [76.27],
    [75.72, 60.07],
    [74.95, 58.56, 92.65],
    [74.60, 56.08, 88.86, 58.45],
    [75.58, 57.38, 89.67, 54.66, 57.33],
    [74.53, 56.66, 90.20, 54.67, 56.01, 17.68],
    [73.58, 57.02, 92.24, 52.45, 56.43, 13.28, 64.45],
    [72.70, 57.08, 91.20, 53.12, 56.04, 12.54, 63.64, 63.54],
]
PROGLORA_DYNAMIC = [  # Table 8, summary numbers in Table 1: ACC 59.09, MAA 62.38, BWT -6.59
    [76.27],
    [59.06, 60.78],
    [70.92, 52.57, 97.32],
    [51.56, 50.33, 79.68, 61.27],
    [65.62, 50.79, 81.17, 48.99, 60.16],
    [40.08, 47.53, 77.75, 50.61, 48.30, 39.35],
    [76.90, 56.79, 73.90, 53.64, 40.63, 35.96, 65.83],
    [74.84, 51.83, 83.90, 49.93, 53.87, 31.19, 62.71, 64.44],
]


@pytest.mark.parametrize(
    ("matrix", "acc", "maa", "bwt"),
    [(MOELORA, 37.13, 42.76, -25.91), (PROGLORA_STATIC, 58.73, 66.44, -2.57)],
)
def test_reproduces_published_summary(matrix, acc, maa, bwt):
    metrics = continual_metrics(matrix)
    size = len(matrix)
    assert metrics["last"] == pytest.approx(acc, abs=0.006)
    assert metrics["maa"] == pytest.approx(maa, abs=0.006)
    assert metrics["bwt"] * (size - 1) / size == pytest.approx(bwt, abs=0.006)
    # our own scale: the same sum divided by T-1
    assert metrics["bwt"] == pytest.approx(bwt * size / (size - 1), abs=0.006 * size / (size - 1))
    # ProgLoRA's protocol (benchmark.protocol.bwt_denominator=T) prints the paper's number directly
    assert continual_metrics(matrix, bwt_denominator="T")["bwt"] == pytest.approx(bwt, abs=0.006)


def test_bwt_denominator_by_hand():
    matrix = [[80.0], [60.0, 90.0], [50.0, 70.0, 100.0]]  # drops: -30 and -20, sum -50
    assert continual_metrics(matrix)["bwt"] == pytest.approx(-50 / 2)
    assert continual_metrics(matrix, bwt_denominator="T")["bwt"] == pytest.approx(-50 / 3)


def test_proglora_dynamic_table():
    metrics = continual_metrics(PROGLORA_DYNAMIC)
    assert metrics["last"] == pytest.approx(59.09, abs=0.006)
    assert metrics["bwt"] * 7 / 8 == pytest.approx(-6.59, abs=0.006)
    # Table 8's cells give MAA 62.40, while the paper prints 62.38: the printed cells do not round-trip
    # exactly (a 0.02 gap, larger than rounding of the summary alone), so MAA is checked loosely here.
    assert metrics["maa"] == pytest.approx(62.38, abs=0.03)
