"""The distillers beyond the classic schemes (adversarial, data-free, cross-view) each run in a real Ray search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from nas_kd.search.runner import run_study
from tests.conftest import QUICKSTART

SEARCHES: dict[str, dict[str, Any]] = {
    "adversarial": {
        "distiller": {"name": "adversarial", "epsilon": 0.1, "steps": 2},
        "search.objectives": ["val_accuracy", "robust_accuracy", "params"],
        "search.robust": {"epsilon": 0.1, "steps": 3},
    },
    "data_free": {"distiller": {"name": "data_free", "images": 128, "iterations": 20, "synthesis_batch": 64}},
    "cross_view": {"distiller": {"name": "cross_view", "student_view": "resize:4x4"}},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SEARCHES))
def test_each_kind_runs_in_a_search(tmp_path: Path, name: str) -> None:
    run_study(
        QUICKSTART, runs_dir=tmp_path, cpus=2, dashboard=False, log=lambda _: None,
        overrides={"train.epochs": 2, "teacher.train.epochs": 3, "search.trials": 2, "search.max_concurrent": 2,
                   **SEARCHES[name]},
    )  # fmt: skip
    trials = pd.read_csv(tmp_path / "quickstart" / "trials.csv")
    assert len(trials) == 2 and (trials["status"] == "COMPLETE").all(), trials.get("error")
    assert (trials["distiller"] == name).all()
    assert (trials["test_accuracy"] > 0.3).all()  # 10 classes: well above chance
    # the weakest class by name (digits are named "0".."9"), never better than the average over classes
    assert trials["worst_class"].astype(str).isin([str(i) for i in range(10)]).all()
    assert (trials["worst_class_accuracy"] <= trials["val_accuracy"]).all()
    if name == "adversarial":  # the robust objective is measured, and an attack only lowers accuracy
        assert trials["robust_accuracy"].between(0, 1).all()
        assert (trials["robust_accuracy"] <= trials["val_accuracy"] + 0.02).all()
    if name == "data_free":  # one synthesis, shared by both trials
        assert len(list((tmp_path / "_cache" / "models" / "data_free").glob("*.safetensors"))) == 1
    if name == "cross_view":
        assert (trials["cross_view.student_view"] == "resize:4x4").all()
