"""``nas-kd bench distillers``: a tiny real run on digits, and the table rebuilt from pieces (``--from-runs``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nas_kd.cli import main

pytestmark = pytest.mark.slow  # Ray, searches or end-to-end runs: left out of `make test-fast`

QUICKSTART = Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml"
SETUP = {"study": "fashion_mnist", "student": "cnn 16|16x1 32x1 64x1", "params": 26394, "epochs": 10}


def write_runs(path: Path, rows: list[tuple[str, int, float, float]], **setup: object) -> Path:
    frame = pd.DataFrame(
        [
            {"arm": arm, "seed": seed, "val_accuracy": val, "test_accuracy": test, "train_seconds": 250.0}
            for arm, seed, val, test in rows
        ]
    )
    frame.assign(**{**SETUP, **setup}).to_csv(path, index=False)
    return path


def table_rows(markdown_file: Path) -> dict[str, list[str]]:
    """The summary table of a ``--out X.md`` file: arm -> its cells."""
    summary = markdown_file.read_text().split("### Runs")[0]
    rows = [line.strip("|").split("|") for line in summary.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows[2:]}  # past header and rule


def test_pieces_make_one_table(tmp_path: Path) -> None:
    first = write_runs(tmp_path / "a.csv", [("ce", 0, 0.92, 0.91), ("ce", 1, 0.93, 0.92)])
    second = write_runs(tmp_path / "b.csv", [("self", 0, 0.93, 0.925), ("self", 1, 0.94, 0.935)])
    out = tmp_path / "table.md"
    assert main(["bench", "distillers", "--from-runs", str(first), str(second), "--out", str(out)]) == 0
    rows = table_rows(out)
    assert list(rows) == ["ce", "self"]  # canonical arm order
    assert rows["ce"][2] == "91.50 ± 0.71"  # test accuracy in percent, mean ± sample std
    assert rows["self"][3] == "+1.50"  # test vs ce, in points
    text = out.read_text()
    assert text.startswith("### fashion_mnist: cnn 16|16x1 32x1 64x1 (26,394 params), 10 epochs, 2 seeds")
    assert "| self | 1 | 0.9400 | 0.9350 |" in text  # every run, accuracies to 4 places


@pytest.mark.parametrize(
    ("second_rows", "setup", "message"),
    [
        ([("self", 0, 0.9, 0.9)], {"epochs": 5}, "epochs: the pieces differ"),
        ([("ce", 0, 0.9, 0.9)], {}, "arm ce seed 0 appears more than once"),
        ([("nope", 0, 0.9, 0.9)], {}, "arm: unknown ['nope']"),
    ],
)
def test_pieces_that_do_not_fit_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], second_rows: list, setup: dict, message: str
) -> None:
    first = write_runs(tmp_path / "a.csv", [("ce", 0, 0.92, 0.91)])
    second = write_runs(tmp_path / "b.csv", second_rows, **setup)
    out = tmp_path / "table.md"
    assert main(["bench", "distillers", "--from-runs", str(first), str(second), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not out.exists()


def test_a_csv_of_something_else_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    assert main(["bench", "distillers", "--from-runs", str(other)]) == 2
    assert f"{other}: not a runs CSV of this benchmark" in capsys.readouterr().err


def test_unknown_arm_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "distillers", str(QUICKSTART), "--arms", "ce,telepathy"]) == 2
    assert "--arms: unknown ['telepathy']" in capsys.readouterr().err


def test_a_study_without_a_teacher_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "distillers", str(QUICKSTART), "--arms", "ce", "--set", "teacher=null", "--set", "distiller=ce"]
    out = tmp_path / "runs.csv"
    assert main([*argv, "--set", f"runs_dir={tmp_path}", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "quickstart.yaml: teacher: every arm's student is sized against the teacher" in error
    assert error.count("\n") == 1 and not out.exists()


def test_a_real_run_rebuilds_from_its_csv(tmp_path: Path) -> None:
    """One epoch of two arms on digits; the CSV it writes gives back the same table."""
    runs_csv, direct, rebuilt = tmp_path / "runs.csv", tmp_path / "direct.md", tmp_path / "rebuilt.md"
    argv = ["bench", "distillers", str(QUICKSTART), "--epochs", "1", "--seeds", "2", "--arms", "ce,offline-response"]
    argv += ["--set", f"runs_dir={tmp_path}", "--set", "teacher.train.epochs=2"]
    assert main([*argv, "--out", str(runs_csv)]) == 0
    runs = pd.read_csv(runs_csv)
    assert sorted(zip(runs["arm"], runs["seed"], strict=True)) == [
        ("ce", 0),
        ("ce", 1),
        ("offline-response", 0),
        ("offline-response", 1),
    ]
    assert runs["val_accuracy"].between(0.3, 1).all()  # one epoch on digits learns something
    assert main([*argv, "--out", str(direct)]) == 0
    assert main(["bench", "distillers", "--from-runs", str(runs_csv), "--out", str(rebuilt)]) == 0
    # CPU training is deterministic for a seed: the accuracy columns agree (the seconds do not)
    assert [row[:3] for row in table_rows(direct).values()] == [row[:3] for row in table_rows(rebuilt).values()]
