"""``nas-kd bench driver``: the bookkeeping's cost per Tune event does not grow with the study."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nas_kd.bench.driver import bench_driver, block_ends


def test_block_ends() -> None:
    assert block_ends(300) == [100, 200, 300]
    assert block_ends(10_000) == [100, 200, 500, 1000, 2000, 5000, 10_000]
    assert block_ends(50) == [50]


def test_cost_per_event_stays_flat(tmp_path: Path) -> None:
    lines: list[str] = []
    out = bench_driver(300, 10, tmp_path / "run", report=False, log=lines.append)
    blocks = out["blocks"]
    assert [trials for trials, _ in blocks] == [100, 200, 300]
    first, last = blocks[0][1], blocks[-1][1]
    # Rewriting the tables on every event (flush_seconds=0, the old bookkeeping) measured 17.7, 30.6, 48.9 ms/event
    assert last <= 2 * first + 0.2, blocks
    assert lines[0].startswith("trials 100: ") and " ms/event" in lines[0]
    assert (tmp_path / "run" / "trials.csv").read_text().count("\n") == 301  # the summaries were written at the end


@pytest.mark.slow
def test_cli_prints_blocks_and_the_report(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nas_kd.cli", "bench", "driver", "--trials", "120", "--epochs", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["trials 100", "trials 120"]
    assert any(line.startswith("report: ") and " MB " in line for line in lines)
