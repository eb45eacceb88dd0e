"""The search's progress display: plain lines when not a terminal, a live table in one."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from nas_kd.search.progress import LiveProgress, PlainProgress, duration, human, make_progress
from nas_kd.testing.synthetic_run import RunSpec, write_synthetic_run

OBJECTIVES = ["val_accuracy", "latency_ms"]
SPEC = RunSpec(
    12, objectives=tuple(OBJECTIVES), max_epochs=4, prune_every=5, fail_every=7, students=False, optuna=False
)


def plain_lines(tmp_path: Path, **options: object) -> list[str]:
    lines: list[str] = []
    progress = PlainProgress(OBJECTIVES, 12, 4, log=lines.append, **options)
    write_synthetic_run(tmp_path / "run", SPEC, progress=progress)
    return lines


def test_plain_lines_one_per_finished_trial_and_periodic_summaries(tmp_path: Path) -> None:
    lines = plain_lines(tmp_path, summary_seconds=0.0)  # a summary on every turn of the loop
    trial_lines = [line for line in lines if re.search(r"\] +\d+/12 t\d{4}  ", line)]
    assert len(trial_lines) == 12
    assert sum(" COMPLETE " in line for line in trial_lines) == 9
    assert sum(" FAILED " in line and "RuntimeError" in line for line in trial_lines) == 1
    summaries = [line for line in lines if "finished (" in line]
    assert len(summaries) > 12  # periodic, and one at the end
    final = summaries[-1]
    assert "12/12 finished (9 complete, 2 pruned, 1 failed, 0 rejected), 0 running" in final
    assert "front " in final and "(val_accuracy vs latency_ms)" in final and " ms" in final
    assert "params" not in "\n".join(lines)  # the study's own objectives, not always params
    assert "ETA 0s" in final and "hypervolume 0." in final
    assert not any(re.search(r"epoch +\d+/4", line) for line in lines)


def test_summaries_wait_for_their_interval(tmp_path: Path) -> None:
    lines = plain_lines(tmp_path, summary_seconds=3600.0)
    assert sum("finished (" in line for line in lines) == 1  # only the one at the end
    assert len(lines) == 13


def test_verbose_adds_a_line_per_epoch(tmp_path: Path) -> None:
    lines = plain_lines(tmp_path, summary_seconds=3600.0, verbose=True)
    epochs = [line for line in lines if re.search(r"epoch +\d+/4", line)]
    assert len(epochs) == (tmp_path / "run" / "curves.csv").read_text().count("\n") - 1


def test_live_table_shows_the_front_in_the_study_objectives(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", SPEC, progress=PlainProgress(OBJECTIVES, log=lambda _: None))
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(LiveProgress(OBJECTIVES, 12, 4).table(run))
    text = console.export_text()
    assert "Pareto front so far (val_accuracy vs latency_ms)" in text
    assert "latency_ms" in text and "params" not in text
    assert "12/12 finished" in text and "hypervolume" in text and "ETA" in text
    smallest = min(run.front.values(), key=lambda r: r["latency_ms"])
    assert smallest["trial_id"] in text


def test_make_progress_is_plain_when_not_a_terminal() -> None:
    assert type(make_progress(OBJECTIVES, 10, 4)) is PlainProgress  # pytest captures stdout: not a TTY
    assert type(make_progress(OBJECTIVES, 10, 4, log=lambda _: None)) is PlainProgress


def test_formatting() -> None:
    assert human(12345) == "12.3k" and human(float("nan")) == "-"
    assert duration(59) == "59s" and duration(61) == "1m01s" and duration(7300) == "2h01m" and duration(None) == "?"
