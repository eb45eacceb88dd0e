"""Pareto dominance, NSGA-II ranking and hypervolume over trial objectives.

Objectives are named as in the study: ``val_accuracy`` (maximised), then one or two size objectives
(``params``, ``flops``, ``model_bytes``, ``latency_ms``; minimised).

Hypervolume is measured on a fixed, normalised scale so that runs of one study compare:

- accuracy becomes the error ``(hi - val_accuracy) / (hi - lo)`` with bounds ``(0, 1)``: ``1 - val_accuracy``;
- a size objective ``v`` becomes ``(log10 v - log10 lo) / (log10 hi - log10 lo)``. ``hi`` is the teacher's
  value (a student as big as its teacher compresses nothing), else ``DEFAULT_SIZE_UPPER``; ``lo`` is
  ``SIZE_DECADES`` decades below ``hi``. ``latency_ms`` always uses the constant: measured latency differs
  between machines and runs, so it would move the bounds;
- every coordinate is clipped to [0, 1], and the reference point is ``REFERENCE`` = 1.0 on every axis.
  A student at or beyond a bound on any axis (accuracy 0, or as big as the teacher) adds nothing, and a
  study's hypervolume lies in [0, 1], 1 being a perfect student of no size.

The bounds depend only on the study (objectives and teacher), never on the trials, so the hypervolume
of a run is comparable with any other run of the same study. ``pareto.json`` records them
(``StudyHypervolume.reference_point()``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import moocore
import numpy as np

ACCURACY = "val_accuracy"
ACCURACIES = frozenset({ACCURACY, "robust_accuracy"})  # maximised, in [0, 1]: the "error" scale
REFERENCE = 1.0
SIZE_DECADES = 4
# Upper bounds when the study has no teacher: above a ResNet-50 (25.6M params, 8.2 GFLOPs at 224 px, 102 MB).
DEFAULT_SIZE_UPPER = {"params": 1e8, "flops": 1e10, "model_bytes": 4e8, "latency_ms": 1e2}
MEASURED = frozenset({"latency_ms"})  # not reproducible: bounds never taken from a measurement

Bounds = dict[str, tuple[float, float]]


def directions(objectives: Sequence[str]) -> list[str]:
    """Optuna directions: accuracy is maximised, every size objective minimised."""
    return ["maximize" if name in ACCURACIES else "minimize" for name in objectives]


def modes(objectives: Sequence[str]) -> list[str]:
    """The same as Ray Tune modes (``max`` / ``min``)."""
    return ["max" if d == "maximize" else "min" for d in directions(objectives)]


def to_minimisation(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """Flip maximised columns so that smaller is better in every column."""
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return np.asarray(values, dtype=float) * signs


def non_dominated_ranks(points: np.ndarray) -> np.ndarray:
    """Pareto rank of each row of minimisation ``points``: 0 is the first front (duplicates share a rank).

    Rows with a NaN or infinite value rank after every finite row (moocore would mis-rank the others).
    """
    points = np.asarray(points, dtype=float)
    finite = np.isfinite(points).all(axis=1) if points.ndim == 2 else np.zeros(0, dtype=bool)
    ranks = np.zeros(len(points), dtype=int)
    if finite.any():
        ranks[finite] = moocore.pareto_rank(points[finite])
        ranks[~finite] = ranks[finite].max() + 1
    return ranks


def pareto_mask(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n_points x n_objectives)."""
    return non_dominated_ranks(to_minimisation(values, directions)) == 0


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each point of one front (minimisation points, n x m).

    The extremes of every objective get ``inf``; an interior point gets the sum, over objectives, of the
    gap between its two neighbours divided by that objective's range on the front.
    """
    points = np.asarray(points, dtype=float)
    n = len(points)
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for column in points.T:
        order = np.argsort(column, kind="stable")
        spread = column[order[-1]] - column[order[0]]
        distance[order[[0, -1]]] = np.inf
        if spread > 0:
            distance[order[1:-1]] += (column[order[2:]] - column[order[:-2]]) / spread
    return distance


def nsga2_order(points: np.ndarray) -> np.ndarray:
    """Indices of minimisation ``points`` best first: by front, then by crowding distance (largest first).

    Ties (e.g. two extremes, both ``inf``) keep the input order.
    """
    points = np.asarray(points, dtype=float)
    ranks = non_dominated_ranks(points)
    crowding = np.empty(len(points))
    for rank in np.unique(ranks):
        members = ranks == rank
        crowding[members] = crowding_distance(points[members])
    return np.lexsort((-crowding, ranks))  # lexsort is stable; its last key sorts first


def log_points(values: np.ndarray, objectives: Sequence[str]) -> np.ndarray:
    """Minimisation points without bounds: error for accuracy, log10 for sizes (so that crowding compares
    sizes by ratio, not by difference)."""
    points = np.asarray(values, dtype=float).reshape(-1, len(objectives)).copy()
    for j, name in enumerate(objectives):
        points[:, j] = 1.0 - points[:, j] if name in ACCURACIES else np.log10(np.maximum(points[:, j], 1e-12))
    return points


def study_bounds(objectives: Sequence[str], teacher_cost: Mapping[str, Any] | None = None) -> Bounds:
    """Fixed raw-unit bounds ``{objective: (lo, hi)}`` of a study (see the module docstring)."""
    bounds: Bounds = {}
    for name in objectives:
        if name in ACCURACIES:
            bounds[name] = (0.0, 1.0)
            continue
        upper = _teacher_value(name, teacher_cost or {}) or DEFAULT_SIZE_UPPER[name]
        bounds[name] = (upper / 10**SIZE_DECADES, upper)
    return bounds


def _teacher_value(name: str, cost: Mapping[str, Any]) -> float | None:
    if name in MEASURED:
        return None
    value = cost.get(name)
    if value is None and name == "model_bytes" and cost.get("params"):
        value = 4 * float(cost["params"])  # fp32 weights: what model_bytes measures for a plain network
    return float(value) if value and float(value) > 0 else None


def normalise(values: np.ndarray, objectives: Sequence[str], bounds: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """Raw objective values (n x m) -> minimisation points in [0, 1] (see the module docstring)."""
    values = np.asarray(values, dtype=float).reshape(-1, len(objectives))
    columns = []
    for j, name in enumerate(objectives):
        lo, hi = bounds[name]
        if name in ACCURACIES:
            columns.append((hi - values[:, j]) / (hi - lo))
        else:
            logs = np.log10(np.maximum(values[:, j], lo))
            columns.append((logs - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))
    return np.clip(np.stack(columns, axis=1), 0.0, 1.0)


def hypervolume(points: np.ndarray, directions: list[str], reference: Sequence[float]) -> float:
    """Hypervolume dominated by ``points`` (n x m, raw, in ``directions``) up to ``reference`` (same space).

    Points that do not strictly dominate the reference add nothing. Exact (moocore).
    """
    points = np.asarray(points, dtype=float).reshape(-1, len(directions))
    points = points[np.isfinite(points).all(axis=1)]
    if len(points) == 0:
        return 0.0
    maximise = [d == "maximize" for d in directions]
    return float(moocore.hypervolume(points, ref=np.asarray(reference, dtype=float), maximise=maximise))


def objective_matrix(rows: Iterable[Mapping[str, Any]], objectives: Sequence[str]) -> np.ndarray:
    """The rows' objective values (n x m); rows missing a value, or with a non-finite one, are left out."""
    matrix = []
    for row in rows:
        try:
            values = [float(row[name]) for name in objectives]
        except (KeyError, TypeError, ValueError):
            continue
        if all(math.isfinite(v) for v in values):
            matrix.append(values)
    return np.array(matrix, dtype=float).reshape(-1, len(objectives))


def hypervolume_of(
    rows: Iterable[Mapping[str, Any]], objectives: Sequence[str], bounds: Mapping[str, tuple[float, float]]
) -> float:
    """Normalised hypervolume of trial rows (dicts with the objective keys). Pass full-budget rows only."""
    points = normalise(objective_matrix(rows, objectives), objectives, bounds)
    return hypervolume(points, ["minimize"] * len(objectives), [REFERENCE] * len(objectives))


class StudyHypervolume:
    """A study's hypervolume indicator with its fixed bounds: ``StudyHypervolume(objectives, teacher)(rows)``.

    Plain data, so it pickles inside a Tune callback.
    """

    def __init__(self, objectives: Sequence[str], teacher_cost: Mapping[str, Any] | None = None):
        self.objectives = list(objectives)
        self.bounds = study_bounds(self.objectives, teacher_cost)

    def __call__(self, rows: Iterable[Mapping[str, Any]]) -> float:
        return hypervolume_of(rows, self.objectives, self.bounds)

    def reference_point(self) -> dict[str, Any]:
        """What ``pareto.json`` records under ``reference_point``, so a reader can recompute the indicator."""
        return {
            "normalised": [REFERENCE] * len(self.objectives),
            "bounds": {name: list(self.bounds[name]) for name in self.objectives},
            "scale": {name: "error" if name in ACCURACIES else "log10" for name in self.objectives},
        }
