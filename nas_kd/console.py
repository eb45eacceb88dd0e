"""Progress bars for the long steps before a search (decoding a folder of images, training a teacher).

A bar is drawn on stderr only when stderr is a terminal; in CI or a log file the callers print their plain
lines instead, so a piped run stays readable. rich draws it, as it draws the search's live table.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

REFRESH_SECONDS = 0.1  # redraw at most this often: a folder can have 100,000 images, each one a step


class ProgressBar:
    """``advance`` a step (with a short note, e.g. the last accuracy); ``close`` when done."""

    def __init__(self, total: int, description: str, initial: int = 0):
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
            TimeRemainingColumn(), console=Console(file=sys.stderr), auto_refresh=False, transient=True,
        )  # fmt: skip
        self._task = self._progress.add_task(description, total=total, completed=initial, note="")
        self._drawn = 0.0
        self._progress.start()

    def advance(self, note: str = "") -> None:
        self._progress.update(self._task, advance=1, note=note)
        if time.monotonic() - self._drawn >= REFRESH_SECONDS:
            self._progress.refresh()
            self._drawn = time.monotonic()

    def close(self) -> None:
        self._progress.refresh()
        self._progress.stop()


def progress_bar(total: int, description: str, initial: int = 0) -> ProgressBar | None:
    """A bar on a terminal's stderr; None when stderr is not a terminal."""
    return ProgressBar(total, description, initial) if sys.stderr.isatty() else None
