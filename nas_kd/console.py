"""Progress bars for the long steps before a search (decoding a folder of images, training a teacher).

A bar is drawn on stderr only when stderr is a terminal; in CI or a log file the callers print their plain
lines instead, so a piped run stays readable (no carriage-return bar fragments).
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str, unit: str, initial: int = 0) -> tqdm | None:
    """A tqdm bar on a terminal's stderr; None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)
