"""``nas-kd bench trainer``: arms chosen by name, every arm's throughput against the minimal loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas_kd.bench import BenchError
from nas_kd.bench.trainer import chosen_arms
from nas_kd.cli import main

QUICKSTART = Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml"


def test_arms_always_include_the_baseline_in_a_fixed_order() -> None:
    assert chosen_arms(None) == ["minimal", "tuned", "cached", "live"]
    assert chosen_arms("live,tuned") == ["minimal", "tuned", "live"]
    with pytest.raises(BenchError, match=r"--arms: unknown \['fast'\]"):
        chosen_arms("tuned,fast")


def test_unknown_arm_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "trainer", str(QUICKSTART), "--arms", "fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--arms: unknown ['fast']" in err


@pytest.mark.slow
def test_prints_each_arm_against_the_minimal_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "trainer", str(QUICKSTART), "--repeats", "1", "--arms", "tuned,live"]
    settings = [f"runs_dir={tmp_path}", "teacher.train.epochs=1", "train.samples_per_epoch=256"]
    assert main(args + [item for s in settings for item in ("--set", s)]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert [r[0].strip() for r in rows] == [
        "minimal fp32 loop (ce)",
        "trainer ce (tuned)",
        "trainer offline, live teacher",
    ]
    assert rows[0][3].strip() == "1.00x the minimal loop"
    assert all(r[3].strip().endswith("x the minimal loop") and float(r[3].split("x")[0]) > 0 for r in rows)
    assert rows[2][4].strip().endswith("x") and not rows[1][4].strip()  # the KD arm's cost vs trainer ce
