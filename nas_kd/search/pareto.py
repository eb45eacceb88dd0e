"""Pareto dominance over trial objectives (pure NumPy)."""

from __future__ import annotations

import numpy as np


def to_minimisation(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """Flip maximised columns so that smaller is better in every column."""
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return np.asarray(values, dtype=float) * signs


def pareto_mask(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n_points x n_objectives)."""
    points = to_minimisation(values, directions)
    n = len(points)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        others = points[np.arange(n) != i]
        dominated = np.any(np.all(others <= points[i], axis=1) & np.any(others < points[i], axis=1))
        mask[i] = not dominated
    return mask
