"""``nas-kd bench search`` runs end to end on the quickstart study with a tiny budget (not a benchmark)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from nas_kd.bench.search import ARMS
from nas_kd.cli import main

QUICKSTART = Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml"


@pytest.mark.slow
def test_bench_search_on_quickstart(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    argv = ["bench", "search", str(QUICKSTART), "--budget", "2", "--epochs", "2", "--seeds", "1", "--out", str(out)]
    argv += ["--set", f"runs_dir={tmp_path}", "--set", "teacher.train.epochs=2"]
    try:
        assert main(argv) == 0
    finally:
        ray.shutdown()  # the bench stops its cluster itself; this covers a failure before it could
    text = out.read_text()
    assert all(f"| {arm.name} | 1 |" in text for arm in ARMS)
    assert "± nan" in text  # one seed: no spread
