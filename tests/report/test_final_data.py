"""The final-training summary and the proxy-fidelity measures (pure functions of final.csv and curves.csv)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy.stats import kendalltau

from nas_kd.report import data as d
from nas_kd.results import FINAL_COLUMNS


def final_rows(*jobs: tuple[str, str, int, float, float, float, str]) -> pd.DataFrame:
    """(member, arm, params, search val, final val, final test, status) -> final.csv rows."""
    rows = [
        {"job": f"{m}-{a}-{i}", "member": m, "arm": a, "distiller": "ce", "settings": "{}", "seed": i,
         "params": p, "search_val_accuracy": sv, "val_accuracy": v, "test_accuracy": t, "status": s,
         "arch_summary": f"net {m}"}
        for i, (m, a, p, sv, v, t, s) in enumerate(jobs)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=FINAL_COLUMNS)


def test_kendall_tau_matches_scipy_and_refuses_too_few() -> None:
    x, y = [0.1, 0.4, 0.2, 0.9, 0.5], [0.3, 0.5, 0.1, 0.8, 0.9]
    assert d.kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic)
    assert d.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert d.kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert math.isnan(d.kendall_tau([1, 2], [1, 2]))  # two pairs say nothing
    assert math.isnan(d.kendall_tau([1, 2, 3], [5, 5, 5]))  # a constant side has no ranking
    assert d.kendall_tau([1, 2, 3, float("nan")], [1, 2, 3, 0]) == pytest.approx(1.0)  # NaN pairs dropped


def test_final_arms_mean_sd_best_and_front() -> None:
    final = final_rows(
        ("a", "searched", 1000, 0.80, 0.82, 0.81, "COMPLETE"),
        ("a", "searched", 1000, 0.80, 0.84, 0.83, "COMPLETE"),
        ("a", "ce", 1000, 0.80, 0.90, 0.88, "COMPLETE"),
        ("a", "ce", 1000, 0.80, 0.10, 0.10, "FAILED"),  # a failed seed is left out, not averaged as zero
        ("b", "searched", 5000, 0.85, 0.86, 0.85, "COMPLETE"),  # bigger and worse than a's best: off the front
        ("c", "searched", 9000, 0.95, 0.95, 0.94, "COMPLETE"),
    )
    arms = d.final_arms(final).set_index(["member", "arm"])
    assert arms.loc[("a", "searched"), "seeds"] == 2
    assert arms.loc[("a", "searched"), "val_mean"] == pytest.approx(0.83)
    assert arms.loc[("a", "searched"), "val_sd"] == pytest.approx(0.0141421, rel=1e-4)  # sample sd (ddof 1)
    assert arms.loc[("a", "ce"), "seeds"] == 1 and math.isnan(arms.loc[("a", "ce"), "val_sd"])
    assert arms.loc[("a", "ce"), "best"] and not arms.loc[("a", "searched"), "best"]
    assert arms["front"].to_dict() == {
        ("a", "searched"): False, ("a", "ce"): True, ("b", "searched"): False, ("c", "searched"): True,
    }  # fmt: skip
    assert list(d.final_arms(final)["params"]) == sorted(arms["params"])  # smallest first


def test_final_arms_of_nothing_complete_is_empty() -> None:
    final = final_rows(("a", "searched", 1000, 0.8, float("nan"), float("nan"), "INTERRUPTED"))
    assert d.final_arms(final).empty and list(d.final_arms(final)) == d.FINAL_ARM_COLUMNS


def test_fidelity_ranks_search_against_final_for_the_searched_recipe() -> None:
    final = final_rows(
        ("a", "searched", 1000, 0.70, 0.90, 0.9, "COMPLETE"),  # search order a < b < c, final order c < b < a
        ("b", "searched", 2000, 0.80, 0.85, 0.9, "COMPLETE"),
        ("c", "searched", 3000, 0.90, 0.80, 0.9, "COMPLETE"),
        ("a", "ce", 1000, 0.70, 0.10, 0.9, "COMPLETE"),  # another recipe does not enter the correlation
    )
    assert d.fidelity(d.final_arms(final)) == {"kendall_tau": pytest.approx(-1.0), "members": 3}


def test_epoch_fidelity_over_complete_trials_last_line_counts() -> None:
    trials = pd.DataFrame(
        {"trial_id": ["t0", "t1", "t2", "t3"], "status": ["COMPLETE"] * 3 + ["PRUNED"], "max_epochs": [3] * 4}
    )
    curve = {  # epoch 1 ranks t0 < t1 < t2, epoch 2 the reverse, epoch 3 like epoch 1
        "t0": [0.1, 0.9, 0.2],
        "t1": [0.2, 0.8, 0.3],
        "t2": [0.3, 0.7, 0.4],
        "t3": [0.9, 0.1],  # pruned: not a full-budget trial
    }
    rows = [{"trial_id": t, "epoch": e + 1, "val_accuracy": v} for t, vs in curve.items() for e, v in enumerate(vs)]
    rows.append({"trial_id": "t2", "epoch": 1, "val_accuracy": 0.0})  # epoch 1 trained again after a resume
    fidelity = d.epoch_fidelity(pd.DataFrame(rows), trials)
    assert fidelity.to_dict("records") == [
        {"epoch": 1, "kendall_tau": pytest.approx(-1 / 3), "trials": 3},  # with the first line it would be 1
        {"epoch": 2, "kendall_tau": pytest.approx(-1.0), "trials": 3},
    ]
    assert d.epoch_fidelity(pd.DataFrame(columns=["trial_id", "epoch", "val_accuracy"]), trials).empty
