"""Run directories in every state the report must handle, written by the real ``RunDirectory`` from synthetic
Tune events (``nas_kd.testing.synthetic_run``), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas_kd.report import write_report
from nas_kd.results import FINAL_COLUMNS, FINAL_DIR, read_json, write_json, write_table
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


FIGURES = [
    "pareto",
    "capacity",
    "distillers",
    "hypervolume",
    "space",
    "importances",
    "curves",
    "fidelity",
    "final",
]  # report order


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
    write_synthetic_run(root / "finalized", RunSpec(12), flush_seconds=3600)
    write_final(root / "finalized")
    dirs["finalized"] = root / "finalized"
    return dirs


def write_final(run_dir: Path, seeds: int = 3) -> None:
    """final/final.csv as ``nas-kd finalize --distillers ce`` leaves it: each Pareto member x (searched, ce) x
    seeds, the ce arm one point better, one ce seed FAILED."""
    rows = []
    for member in read_json(run_dir / "pareto.json")["members"]:
        search_val = member["metrics"]["val_accuracy"]
        for arm, gain in (("searched", 0.0), ("ce", 0.01)):
            for seed in range(1, seeds + 1):
                failed = arm == "ce" and seed == seeds
                val = search_val + gain + 0.002 * seed
                rows.append(
                    {
                        "job": f"{member['trial_id']}-{arm}-s{seed}", "member": member["trial_id"], "arm": arm,
                        "distiller": member["distiller"] if arm == "searched" else "ce", "settings": {},
                        "seed": seed, "status": "FAILED" if failed else "COMPLETE", "epochs": 10, "max_epochs": 10,
                        "val_accuracy": None if failed else val, "test_accuracy": None if failed else val - 0.01,
                        "params": member["metrics"]["params"], "arch_summary": member["arch_summary"],
                        "search_distiller": member["distiller"], "search_val_accuracy": search_val,
                        "error": "TrainingDiverged: loss is nan" if failed else "",
                    }
                )  # fmt: skip
    (run_dir / FINAL_DIR).mkdir()
    write_table(run_dir / FINAL_DIR / "final.csv", rows, FINAL_COLUMNS)


@pytest.fixture(scope="session")
def reports(run_dirs: dict[str, Path]) -> dict[str, Path]:
    """report.html of every run directory (built once: the browser test and the checks share them)."""
    return {name: write_report(path) for name, path in run_dirs.items()}
