"""Run directories in every state the report must handle, written by the real ``RunDirectory`` from synthetic
Tune events (``nas_kd.testing.synthetic_run``), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas_kd.report import write_report
from nas_kd.results import write_json
from nas_kd.testing.synthetic_run import RunSpec, write_synthetic_run

SPECS = {
    "empty": RunSpec(0, state="running"),
    "one": RunSpec(1),
    # the big one: interrupted, with every status, three distillers including the ce arm
    "many": RunSpec(
        150,
        state="interrupted",
        distillers=("ce", "offline", "assistant"),
        running=3,
        fail_every=17,
        prune_every=7,
        reject=(5,),
    ),
    # three objectives, still running, no ce arm
    "three": RunSpec(
        40, state="running", objectives=("val_accuracy", "params", "latency_ms"), distillers=("offline",), running=2
    ),
    # robust accuracy as the second objective (the size axis falls back to params)
    "robust": RunSpec(20, objectives=("val_accuracy", "robust_accuracy"), distillers=("adversarial",)),
    # a ce-only study without a teacher
    "no_teacher": RunSpec(8, distillers=("ce",), teachers=False),
}


FIGURES = ["pareto", "capacity", "distillers", "hypervolume", "space", "importances", "curves", "fidelity", "final"]  # report order


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    dirs = {}
    for name, spec in SPECS.items():
        write_synthetic_run(root / name, spec, flush_seconds=3600)  # the files a run leaves, not every rewrite
        dirs[name] = root / name
    # a search that has only just started: run.json and nothing else
    bare = root / "bare"
    bare.mkdir()
    write_json(
        bare / "run.json",
        {
            "study_name": "bare-1",
            "objectives": ["val_accuracy", "params"],
            "state": "running",
            "data_notes": ["the data has no test split: test accuracy is not reported"],
        },
    )
    dirs["bare"] = bare
    return dirs


@pytest.fixture(scope="session")
def reports(run_dirs: dict[str, Path]) -> dict[str, Path]:
    """report.html of every run directory (built once: the browser test and the checks share them)."""
    return {name: write_report(path) for name, path in run_dirs.items()}
