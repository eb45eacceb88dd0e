"""Table helpers the benchmarks share: a pipe table, "mean ± std" cells, and run CSVs written as they finish
and read back in pieces (``--out X.csv`` then ``--from-runs``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import pandas as pd

from nas_kd.bench import BenchError


def markdown(table: pd.DataFrame) -> str:
    """A pipe table (pandas' to_markdown needs the optional tabulate package)."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    lines = [list(map(str, table.columns)), ["---"] * len(table.columns), *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def mean_std(values: pd.Series, digits: int) -> str:
    """``mean ± sample std``; the spread of a single value is nan."""
    spread = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():.{digits}f} ± {spread:.{digits}f}"


def new_runs_csv(out: str | None) -> Path | None:
    """The ``--out`` CSV that runs are added to as they finish (None for Markdown or no ``--out``); an existing
    file is refused rather than mixed with or overwritten."""
    if not out or Path(out).suffix == ".md":
        return None
    if Path(out).exists():
        raise BenchError(f"--out: {out} exists; runs go to a new file (move it away or pick another name)")
    return Path(out)


def append_run(path: Path, run: dict) -> None:
    """Add one finished run to a runs CSV, so a benchmark cut off halfway keeps what it measured."""
    pd.DataFrame([run]).to_csv(path, mode="a", header=not path.exists() or path.stat().st_size == 0, index=False)


def read_runs(
    paths: Sequence[str],
    run_columns: Collection[str],
    setup_columns: Collection[str],
    arms: Collection[str],
    keys: Sequence[str] = ("arm", "seed"),
) -> pd.DataFrame:
    """``--from-runs a.csv b.csv``: runs written by earlier ``--out X.csv`` calls, as one table.

    A long benchmark can so run in pieces; the pieces must agree on every setup column, and no run
    (its ``keys``) may appear twice.
    """
    frames = []
    for path in paths:
        try:
            frame = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise BenchError(f"{path}: cannot read the runs: {error}") from None
        missing = sorted(set(run_columns) - set(frame.columns))
        if missing:
            raise BenchError(f"{path}: not a runs CSV of this benchmark (missing {', '.join(missing)})")
        frames.append(frame)
    runs, where = pd.concat(frames, ignore_index=True), ", ".join(paths)
    for column in setup_columns:
        if runs[column].nunique() > 1:
            raise BenchError(f"{where}: {column}: the pieces differ ({sorted(runs[column].unique())})")
    repeated = runs[runs.duplicated(list(keys))]
    if not repeated.empty:
        first = repeated.iloc[0]
        run = " ".join(f"{key} {first[key]}" for key in keys)
        raise BenchError(f"{where}: {run} appears more than once")
    unknown = set(runs["arm"]) - set(arms)
    if unknown:
        raise BenchError(f"{where}: arm: unknown {sorted(unknown)}")
    return runs


def publish(
    title: str, table: pd.DataFrame, runs: pd.DataFrame, listed: pd.DataFrame, out: str | None, merge: bool
) -> None:
    """Print the summary; ``--out X.md`` also gets it with every run (``listed``: the runs as shown), and
    ``--from-runs ... --out X.csv`` (``merge``) the pieces' runs as one CSV."""
    print(f"\n{title}:\n\n{markdown(table)}")
    if out and Path(out).suffix == ".md":
        Path(out).write_text(f"### {title}\n\n{markdown(table)}\n\n### Runs\n\n{markdown(listed)}\n")
        print(f"\nwritten to {out}")
    elif merge and (merged := new_runs_csv(out)):
        runs.to_csv(merged, index=False)
        print(f"\nruns written to {merged}")
