"""What ``nas-kd search`` shows while it runs: a live table in a terminal, short periodic lines otherwise.

``RunDirectory`` (the bookkeeping callback) hands every Tune event to a display:
``start``/``epoch``/``finished``/``tick``/``close``, each with the ``RunDirectory`` itself, whose ``counts``
(status -> rows), ``front`` (trial_id -> row), ``hypervolume``, ``finished`` and ``wall_seconds()`` it reads.

- ``LiveProgress`` (a TTY): a rich table redrawn in place: trials running/finished/complete/pruned/failed/
  rejected, the best front so far in the study's own objectives, hypervolume, elapsed and ETA. Finished
  trials scroll above it, one line each.
- ``PlainProgress`` (CI, logs, a pipe): one line per finished trial and a summary every ``summary_seconds``.

``verbose`` adds one line per trial epoch to either.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

SUMMARY_SECONDS = 30.0
REFRESH_SECONDS = 0.25  # the live table is redrawn at most this often
FRONT_ROWS = 8  # front members the live table lists (smallest first)
UNITS = {"params": "params", "flops": "FLOPs", "model_bytes": "bytes", "latency_ms": "ms"}
STATUSES = ("COMPLETE", "PRUNED", "FAILED", "REJECTED", "INTERRUPTED")


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def human(value: Any) -> str:
    """12345 -> 12.3k; NaN or missing -> '-'."""
    number = _finite(value)
    if number is None:
        return "-"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= factor:
            return f"{number / factor:.3g}{suffix}"
    return f"{number:.3g}"


def size_text(name: str, value: Any) -> str:
    if name == "latency_ms":
        number = _finite(value)
        return "- ms" if number is None else f"{number:.3g} ms"
    return f"{human(value)} {UNITS.get(name, name)}"


def accuracy_text(value: Any) -> str:
    """A fraction (0.9721) or a percentage (97.21) as '97.21%'."""
    number = _finite(value)
    if number is None:
        return "-"
    return f"{100 * number:.2f}%" if number <= 1.0 else f"{number:.2f}%"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class SearchProgress:
    """The state and wording both displays share; subclasses decide where it goes."""

    def __init__(
        self,
        objectives: list[str],
        trials_requested: int | None = None,
        max_epochs: int | None = None,
        *,
        verbose: bool = False,
        summary_seconds: float = SUMMARY_SECONDS,
        log: Any = print,
    ):
        self.objectives = list(objectives)
        self.sizes = self.objectives[1:]
        self.trials_requested = trials_requested
        self.max_epochs = max_epochs
        self.verbose = verbose
        self.summary_seconds = summary_seconds
        self.log = log
        self._session_start = time.monotonic()
        self._finished_at_start = 0

    # -- events (RunDirectory calls these) ----------------------------------------------------------
    def start(self, run: Any) -> None:
        self._session_start = time.monotonic()
        self._finished_at_start = run.finished

    def epoch(self, run: Any, row: dict[str, Any]) -> None:
        if self.verbose:
            self.emit(self.epoch_line(run, row))

    def finished(self, run: Any, row: dict[str, Any]) -> None:
        self.emit(self.trial_line(run, row))

    def tick(self, run: Any) -> None:
        """Called on every turn of Tune's loop (often): cheap unless something is due."""

    def close(self, run: Any) -> None:
        self.emit(self.summary_line(run))

    def emit(self, line: str) -> None:
        self.log(line)

    # -- wording ------------------------------------------------------------------------------------
    def eta_seconds(self, run: Any) -> float | None:
        """Remaining trials at this session's rate of finishing them; None until one finished."""
        if not self.trials_requested:
            return None
        done = run.finished - self._finished_at_start
        remaining = max(0, self.trials_requested - run.finished)
        if remaining == 0:
            return 0.0
        if done <= 0:
            return None
        return remaining * (time.monotonic() - self._session_start) / done

    def metrics_text(self, row: dict[str, Any]) -> str:
        sizes = "  ".join(size_text(name, row.get(name)) for name in self.sizes)
        return f"val {accuracy_text(row.get('val_accuracy'))}  {sizes}"

    def epoch_line(self, run: Any, row: dict[str, Any]) -> str:
        return (
            f"[{run.wall_seconds():6.0f}s] {row['trial_id']}  epoch {row.get('epochs', 0):>3}/{self.max_epochs or '?'}  "
            f"{self.metrics_text(row)}  {row['distiller']}  {row['arch_summary']}"
        )

    def trial_line(self, run: Any, row: dict[str, Any]) -> str:
        total = f"/{self.trials_requested}" if self.trials_requested else ""
        error = f"  error: {row['error']}" if row.get("error") and row["status"] != "COMPLETE" else ""
        front = "  (joins the front)" if row.get("pareto") else ""
        return (
            f"[{run.wall_seconds():6.0f}s] {run.finished:>4}{total} {row['trial_id']}  {row['status']:<8} "
            f"{self.metrics_text(row)}  {row['distiller']}  {row['arch_summary']}{front}{error}"
        )

    def counts_text(self, run: Any) -> str:
        total = f"/{self.trials_requested}" if self.trials_requested else ""
        parts = [f"{run.counts[s]} {s.lower()}" for s in STATUSES if run.counts.get(s) or s != "INTERRUPTED"]
        return f"{run.finished}{total} finished ({', '.join(parts)}), {run.counts.get('RUNNING', 0)} running"

    def front_members(self, run: Any) -> list[dict[str, Any]]:
        """The front, smallest first by the first size objective."""
        return sorted(run.front.values(), key=lambda r: float(r.get(self.sizes[0]) or 0))

    def front_text(self, run: Any) -> str:
        """``front 4 (val_accuracy vs params): most accurate 97.21% at 12.3k params; smallest ...``."""
        head = f"front {len(run.front)} ({' vs '.join(self.objectives)})"
        members = self.front_members(run)
        if not members:
            return head
        best = max(members, key=lambda r: float(r.get("val_accuracy") or 0))
        smallest = members[0]
        return f"{head}: most accurate {self.metrics_text(best)}; smallest {self.metrics_text(smallest)}"

    def summary_line(self, run: Any) -> str:
        hypervolume = f"{run.hypervolume:.4f}" if math.isfinite(run.hypervolume) else "-"
        return (
            f"[{run.wall_seconds():6.0f}s] {self.counts_text(run)} | {self.front_text(run)} | "
            f"hypervolume {hypervolume} | ETA {duration(self.eta_seconds(run))}"
        )


class PlainProgress(SearchProgress):
    """Short lines for a log: one per finished trial, a summary every ``summary_seconds`` and at the end."""

    def start(self, run: Any) -> None:
        super().start(run)
        self._last_summary = time.monotonic()

    def tick(self, run: Any) -> None:
        if time.monotonic() - getattr(self, "_last_summary", 0.0) >= self.summary_seconds:
            self._last_summary = time.monotonic()
            self.emit(self.summary_line(run))


class LiveProgress(SearchProgress):
    """A rich table redrawn in place (needs a terminal); finished trials scroll above it."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_live", "_console")}

    def start(self, run: Any) -> None:
        from rich.console import Console
        from rich.live import Live

        super().start(run)
        self._console = Console()
        self._live = Live(self.table(run), console=self._console, auto_refresh=False, transient=False)
        self._live.start()
        self._last_refresh = 0.0

    def emit(self, line: str) -> None:
        live = getattr(self, "_live", None)
        if live is None:
            self.log(line)
        else:
            live.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def epoch(self, run: Any, row: dict[str, Any]) -> None:
        super().epoch(run, row)
        self.tick(run)

    def finished(self, run: Any, row: dict[str, Any]) -> None:
        super().finished(run, row)
        self.tick(run, force=True)

    def tick(self, run: Any, force: bool = False) -> None:
        live = getattr(self, "_live", None)
        if live is None or (not force and time.monotonic() - self._last_refresh < REFRESH_SECONDS):
            return
        self._last_refresh = time.monotonic()
        live.update(self.table(run), refresh=True)

    def close(self, run: Any) -> None:
        live = getattr(self, "_live", None)
        if live is not None:
            live.update(self.table(run), refresh=True)
            live.stop()
            self._live = None

    def table(self, run: Any) -> Any:
        from rich.table import Table

        hypervolume = f"{run.hypervolume:.4f}" if math.isfinite(run.hypervolume) else "-"
        eta = duration(self.eta_seconds(run))
        caption = (
            f"{self.counts_text(run)}   hypervolume {hypervolume}   elapsed {duration(run.wall_seconds())}   ETA {eta}"
        )
        table = Table(title=f"Pareto front so far ({' vs '.join(self.objectives)})", caption=caption)
        table.add_column("trial", no_wrap=True)
        for name in self.objectives:  # numbers never wrap: the architecture column gives way first
            table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
        table.add_column("distiller")
        table.add_column("architecture", overflow="ellipsis", no_wrap=True, max_width=40)
        members = self.front_members(run)
        for row in members[:FRONT_ROWS]:
            table.add_row(
                row["trial_id"],
                accuracy_text(row.get("val_accuracy")),
                *(size_text(name, row.get(name)) for name in self.sizes),
                row["distiller"],
                row["arch_summary"],
            )
        if len(members) > FRONT_ROWS:
            table.add_row(f"... {len(members) - FRONT_ROWS} more", *[""] * (len(self.sizes) + 3))
        return table


def make_progress(
    objectives: list[str],
    trials_requested: int | None,
    max_epochs: int | None,
    *,
    verbose: bool = False,
    log: Any = print,
    summary_seconds: float = SUMMARY_SECONDS,
) -> SearchProgress:
    """A live table when printing to a terminal, plain lines otherwise (or when ``log`` is not ``print``)."""
    live = log is print and sys.stdout.isatty()
    kind = LiveProgress if live else PlainProgress
    return kind(objectives, trials_requested, max_epochs, verbose=verbose, summary_seconds=summary_seconds, log=log)
