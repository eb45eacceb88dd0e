"""``nas-kd bench driver --trials 10000 --epochs 20``: the driver's bookkeeping cost per Tune event, and the report.

Feeds the real ``RunDirectory`` synthetic Tune events (``nas_kd.testing.synthetic_run``: fake trials, 8 in
flight, about 1 in 7 pruned, 1 in 17 failed, 1 in 500 rejected) and times only the callback calls, so the
figure is what Tune's event loop would spend on the run directory. One line per block of trials (blocks end
at 100, 200, 500, 1000, 2000, 5000, ... trials): ``trials N: X.XX ms/event`` over that block's events. It
should stay flat: per-event work does not grow with the study (summaries are rewritten every
``--flush-seconds``, 5 s as in a search). Then ``nas-kd report`` on the same run directory, timed, and its
size. The Optuna study is not synthesised (SQLite inserts of 10,000 trials take minutes here): the report's
importances panel then says so, and its fANOVA time is not in the figure.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nas_kd.bench import BenchError
from nas_kd.search.bookkeeping import FLUSH_SECONDS

DEFAULT_TRIALS = 10_000
DEFAULT_EPOCHS = 20


def block_ends(trials: int) -> list[int]:
    """100, 200, 500, 1000, 2000, 5000, ... below ``trials``, then ``trials``."""
    ends, scale = [], 100
    while True:
        for step in (1, 2, 5):
            if step * scale >= trials:
                return [*ends, trials]
            ends.append(step * scale)
        scale *= 10


class EventTimer:
    """Times each event's delivery; closes a block when the trial count reaches the next block end."""

    def __init__(self, ends: list[int], log: Any = print):
        self.ends, self.log = list(ends), log
        self.started = 0
        self.events = 0
        self.seconds = 0.0
        self.blocks: list[tuple[int, float]] = []  # (trials so far, ms/event in the block)

    @contextlib.contextmanager
    def __call__(self, kind: str, trial: Any) -> Iterator[None]:
        if kind == "start":
            if self.ends and self.started == self.ends[0]:
                self.close_block()
            self.started += 1
        start = time.perf_counter()
        yield
        self.seconds += time.perf_counter() - start
        self.events += 1

    def close_block(self) -> None:
        if not self.events:
            return
        per_event = 1000 * self.seconds / self.events
        self.blocks.append((self.ends.pop(0), per_event))
        self.log(f"trials {self.blocks[-1][0]}: {per_event:.2f} ms/event ({self.events} events)")
        self.events, self.seconds = 0, 0.0


def bench_driver(
    trials: int,
    epochs: int,
    run_dir: Path,
    *,
    flush_seconds: float = FLUSH_SECONDS,
    report: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Write a ``trials``-trial synthetic run into ``run_dir``; returns the blocks and the report figures."""
    from nas_kd.testing.synthetic_run import RunSpec, write_synthetic_run

    spec = RunSpec(
        trials,
        max_epochs=epochs,
        distillers=("ce", "offline"),
        prune_every=7,
        fail_every=17,
        reject=tuple(range(499, trials, 500)),
        concurrent=8,
        optuna=False,
    )
    timer = EventTimer(block_ends(trials), log)
    wall = time.perf_counter()
    write_synthetic_run(run_dir, spec, flush_seconds=flush_seconds, timer=timer)
    timer.close_block()
    out: dict[str, Any] = {"blocks": timer.blocks, "wall_seconds": time.perf_counter() - wall}
    log(f"{trials} trials x {epochs} epochs written in {out['wall_seconds']:.1f} s of wall")
    if report:
        from nas_kd.report import write_report

        start = time.perf_counter()
        path = write_report(run_dir)
        out["report_seconds"] = time.perf_counter() - start
        out["report_bytes"] = path.stat().st_size
        log(f"report: {out['report_seconds']:.1f} s, {out['report_bytes'] / 1e6:.1f} MB ({path})")
    return out


def run(args: argparse.Namespace) -> int:
    trials = args.trials or DEFAULT_TRIALS
    epochs = args.epochs or DEFAULT_EPOCHS
    if trials < 1 or epochs < 2:
        raise BenchError(f"bench driver: --trials must be >= 1 and --epochs >= 2 (got {trials}, {epochs})")
    root = Path(tempfile.mkdtemp(prefix="nas-kd-bench-driver-"))
    run_dir = Path(args.out) if args.out else root / "driver"
    if run_dir.exists():
        raise BenchError(f"bench driver: {run_dir} exists; name a new folder with --out")
    try:
        bench_driver(trials, epochs, run_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0
