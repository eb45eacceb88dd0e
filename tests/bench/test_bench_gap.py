"""``nas-kd bench gap``: paired gains over ``ce``, the ladder of students, and a tiny real run on digits."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nas_kd.bench import BenchError
from nas_kd.bench.gap import LADDER, gain_curve, ladder_students, parse_sizes
from nas_kd.cli import main
from nas_kd.distill.helpers import params_of

QUICKSTART = Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml"
CNN = {"family": "cnn", "stem": 16, "stages": [{"channels": 16, "depth": 1}, {"channels": 32, "depth": 2}]}


def runs(rows: list[tuple[str, int, int, float]], teacher_params: int = 100_000) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"arm": a, "seed": s, "params": p, "test_accuracy": t, "teacher_params": teacher_params}
            for a, s, p, t in rows
        ]
    )


def test_gains_are_paired_by_seed() -> None:
    # seed 1 is 10 pp harder for both arms: paired gains are exactly +1 and +1 (sd 0); unpaired means would
    # agree but their spread would not
    table = runs([("ce", 0, 1000, 0.90), ("ce", 1, 1000, 0.80), ("kd", 0, 1000, 0.91), ("kd", 1, 1000, 0.81)])
    curve = gain_curve(table)
    assert curve.to_dict("records") == [
        {"params": 1000, "capacity_ratio": 0.01, "arm": "kd", "gain": pytest.approx(1.0), "gain_sd": pytest.approx(0.0),
         "seeds": 2},
    ]  # fmt: skip


def test_a_seed_without_its_ce_run_is_left_out_of_the_pair() -> None:
    table = runs([("ce", 0, 1000, 0.90), ("kd", 0, 1000, 0.92), ("kd", 1, 1000, 0.50), ("kd", 0, 3000, 0.95)])
    curve = gain_curve(table)
    assert curve[["params", "gain", "seeds"]].to_dict("records") == [
        {"params": 1000, "gain": pytest.approx(2.0), "seeds": 1}
    ]
    assert curve["gain_sd"].isna().all()  # one pair has no spread


def test_without_ce_there_is_nothing_to_gain_over() -> None:
    with pytest.raises(BenchError, match="include it in --arms"):
        gain_curve(runs([("kd", 0, 1000, 0.9)]))


def test_the_ladder_stays_below_the_teacher_and_keeps_the_family_and_depths() -> None:
    students = ladder_students(CNN, 50_000, (1, 8, 8), 10)
    sizes = [params_of(arch, (1, 8, 8), 10) for arch in students]
    assert len(students) == 3  # 3.2k, 10k, 32k: the 100k rung is above the teacher
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    for size, target in zip(sizes, LADDER, strict=False):
        assert 0.6 < size / target < 1.6
    assert {arch["family"] for arch in students} == {"cnn"}
    assert {tuple(stage["depth"] for stage in arch["stages"]) for arch in students} == {(1, 2)}
    with pytest.raises(BenchError, match="no ladder size below it"):
        ladder_students(CNN, 3000, (1, 8, 8), 10)


@pytest.mark.slow
def test_a_tiny_run_writes_runs_table_and_figure_then_rebuilds_from_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gap.csv"
    settings = ["--set", f"runs_dir={tmp_path}", "--set", "teacher.train.epochs=1"]
    args = ["bench", "gap", str(QUICKSTART), "--seeds", "1", "--epochs", "1", "--arms", "ce,offline-response"]
    assert main([*args, "--out", str(out), *settings]) == 0
    measured = pd.read_csv(out)
    sizes = measured["params"].nunique()
    assert sizes >= 3 and len(measured) == 2 * sizes  # every size, both arms
    assert (measured["params"] < measured["teacher_params"]).all()
    figure = (tmp_path / "gap.html").read_text()
    assert '"name":"offline-response"' in figure and "capacity ratio" in figure  # one trace per arm over ce
    first = capsys.readouterr().out
    rebuilt = tmp_path / "rebuilt.md"
    assert main(["bench", "gap", "--from-runs", str(out), "--out", str(rebuilt)]) == 0
    assert rebuilt.read_text().split("\n\n")[1] in first  # the same table, from the runs alone
    assert "offline-response gain (pp)" in rebuilt.read_text()

    # a piece without ce (one rung) measures, keeps its runs and succeeds; its gains come with a ce piece
    piece = tmp_path / "kd.csv"
    piece_args = [*args[:-1], "offline-response", "--sizes", "3k", "--out", str(piece), *settings]
    assert main(piece_args) == 0
    assert list(pd.read_csv(piece)["arm"]) == ["offline-response"]
    assert "--from-runs" in capsys.readouterr().out


def test_sizes_pick_the_rungs_of_a_piece() -> None:
    assert parse_sizes("3.2k, 10000,1M") == (3200.0, 10000.0, 1_000_000.0)
    students = ladder_students(CNN, 50_000, (1, 8, 8), 10, targets=(32_000.0,))
    assert len(students) == 1 and 0.6 < params_of(students[0], (1, 8, 8), 10) / 32_000 < 1.6
    with pytest.raises(BenchError, match="--sizes: 60,000 not below the teacher's 50,000 params"):
        ladder_students(CNN, 50_000, (1, 8, 8), 10, targets=(10_000.0, 60_000.0))
    for bad in ("ten", "0", "3.2x", "3.2kk", "1km", ""):
        with pytest.raises(BenchError, match="--sizes"):
            parse_sizes(bad)
