"""Pareto dominance, NSGA-II ranking and the study's normalised hypervolume, against hand-computed values."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from nas_kd.search.pareto import (
    REFERENCE,
    StudyHypervolume,
    crowding_distance,
    directions,
    hypervolume,
    hypervolume_of,
    modes,
    non_dominated_ranks,
    normalise,
    nsga2_order,
    pareto_mask,
    study_bounds,
)

OBJECTIVES = ["val_accuracy", "params"]
BOUNDS = {"val_accuracy": (0.0, 1.0), "params": (1e2, 1e6)}


def test_directions_and_modes() -> None:
    assert directions(["val_accuracy", "params", "flops"]) == ["maximize", "minimize", "minimize"]
    assert modes(["val_accuracy", "latency_ms"]) == ["max", "min"]


def test_pareto_mask_known_front() -> None:
    # (accuracy, params): the third is dominated by the second; duplicates are both kept.
    values = np.array([[0.9, 100.0], [0.8, 10.0], [0.7, 50.0], [0.8, 10.0], [0.5, 1.0]])
    assert pareto_mask(values, ["maximize", "minimize"]).tolist() == [True, True, False, True, True]


def test_non_dominated_ranks_peel_fronts() -> None:
    points = np.array([[1.0, 4.0], [2.0, 2.0], [4.0, 1.0], [3.0, 3.0], [5.0, 5.0], [2.0, 2.0]])
    assert non_dominated_ranks(points).tolist() == [0, 0, 0, 1, 2, 0]
    assert non_dominated_ranks(np.empty((0, 2))).tolist() == []
    # An unfinished (NaN) row ranks last and does not disturb the others.
    assert non_dominated_ranks(np.array([[1.0, 4.0], [np.nan, 1.0], [2.0, 2.0]])).tolist() == [0, 1, 0]
    assert pareto_mask(np.array([[0.9, 100.0], [np.nan, 10.0]]), ["maximize", "minimize"]).tolist() == [True, False]


def test_crowding_distance_by_hand() -> None:
    # Objective 0 spans 4, objective 1 spans 5. Point 1: (3-0)/4 + (5-1)/5 = 1.55; point 2: (4-1)/4 + (2-0)/5 = 1.15.
    points = np.array([[0.0, 5.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0]])
    assert crowding_distance(points) == pytest.approx([np.inf, 1.55, 1.15, np.inf])
    assert crowding_distance(points[:2]).tolist() == [np.inf, np.inf]


def test_nsga2_order_front_then_crowding() -> None:
    points = np.array([[1.0, 2.0], [0.0, 5.0], [3.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    # Front 0: rows 1, 0, 3, 4 (extremes 1 and 4 first, then 0 (crowding 1.55) before 3 (1.15)); row 2 last.
    assert nsga2_order(points).tolist() == [1, 4, 0, 3, 2]


def test_hypervolume_2d_by_hand() -> None:
    # As minimisation (error-like, size): (0.2, 0.5) and (0.5, 0.2) under (1, 1): 0.4 + 0.4 - 0.25.
    points = np.array([[0.8, 0.5], [0.5, 0.2]])
    assert hypervolume(points, ["maximize", "minimize"], [0.0, 1.0]) == pytest.approx(0.55)
    # A point beyond the reference, or a NaN one, adds nothing; no points, no volume.
    more = np.vstack([points, [[0.9, 1.5]], [[np.nan, 0.1]]])
    assert hypervolume(more, ["maximize", "minimize"], [0.0, 1.0]) == pytest.approx(0.55)
    assert hypervolume(np.empty((0, 2)), ["maximize", "minimize"], [0.0, 1.0]) == 0.0


def test_hypervolume_3d_box() -> None:
    assert hypervolume(np.array([[0.5, 0.5, 0.5]]), ["minimize"] * 3, [1.0] * 3) == pytest.approx(0.125)


def test_normalise_error_and_log_size_clipped() -> None:
    values = np.array([[0.9, 1e4], [0.25, 1e7], [1.0, 10.0]])
    assert normalise(values, OBJECTIVES, BOUNDS) == pytest.approx(np.array([[0.1, 0.5], [0.75, 1.0], [0.0, 0.0]]))


def test_study_bounds_from_teacher_else_constants() -> None:
    teacher = {"params": 1e6, "flops": 2e8, "latency_ms": 3.7}
    bounds = study_bounds(["val_accuracy", "params", "flops", "model_bytes", "latency_ms"], teacher)
    assert bounds["val_accuracy"] == (0.0, 1.0)
    assert bounds["params"] == pytest.approx((1e2, 1e6))
    assert bounds["flops"] == pytest.approx((2e4, 2e8))
    assert bounds["model_bytes"] == pytest.approx((4e2, 4e6))  # fp32 bytes of the teacher's parameters
    assert bounds["latency_ms"] == pytest.approx((1e-2, 1e2))  # measured: never from the teacher
    assert study_bounds(OBJECTIVES, None)["params"] == pytest.approx((1e4, 1e8))


def test_hypervolume_of_rows_by_hand() -> None:
    rows = [
        {"val_accuracy": 0.9, "params": 1e4},  # -> (0.1, 0.5)
        {"val_accuracy": 0.5, "params": 1e3},  # -> (0.5, 0.25)
        {"val_accuracy": 0.4, "params": 2e4},  # dominated
        {"val_accuracy": float("nan"), "params": 10.0},  # not finished: left out
        {"params": 10.0},
    ]
    # 0.9 * 0.5 + 0.5 * 0.75 - 0.5 * 0.5
    assert hypervolume_of(rows, OBJECTIVES, BOUNDS) == pytest.approx(0.575)
    assert hypervolume_of([], OBJECTIVES, BOUNDS) == 0.0


def test_study_hypervolume_is_fixed_and_picklable() -> None:
    indicator = pickle.loads(pickle.dumps(StudyHypervolume(OBJECTIVES, {"params": 1e6})))
    assert indicator([{"val_accuracy": 0.9, "params": 1e4}]) == pytest.approx(0.9 * 0.5)
    reference = indicator.reference_point()
    assert reference["normalised"] == [REFERENCE, REFERENCE]
    assert reference["bounds"]["params"] == pytest.approx([1e2, 1e6])
    assert reference["scale"] == {"val_accuracy": "error", "params": "log10"}
