"""The Pareto figure marks quantized students by their bit widths (shape), built from a trials table."""

from __future__ import annotations

import pandas as pd

from nas_kd.report import data as d
from nas_kd.report import figures as f
from tests.report.test_report_data import table


def _front(trials: pd.DataFrame):
    category = d.classify(trials, ["val_accuracy", "model_bytes"], ["maximize", "minimize"])
    return f.pareto_figure(trials, category, d.hover_text(trials), ["val_accuracy", "model_bytes"], pd.DataFrame())


def test_pareto_figure_shapes_each_point_by_its_bits_and_explains_the_shapes() -> None:
    trials = table(
        {"trial_id": "fp", "val_accuracy": 95.0, "test_accuracy": 94.0, "model_bytes": 9000, "weight_bits": 32, "act_bits": 32},
        {"trial_id": "w2", "val_accuracy": 90.0, "test_accuracy": 89.0, "model_bytes": 1000, "weight_bits": 2, "act_bits": 2},
        {"trial_id": "w4", "val_accuracy": 85.0, "test_accuracy": 84.0, "model_bytes": 4000, "weight_bits": 4, "act_bits": 4},
    )  # fmt: skip
    fig = _front(trials)
    shapes = {}
    for trace in fig.data:
        if trace.name and trace.name.startswith(("Pareto front", "dominated")) and trace.x is not None:
            for x, symbol in zip(trace.x, trace.marker.symbol, strict=True):
                shapes[x] = symbol
    assert shapes == {9000: "circle", 4000: "square", 1000: "diamond"}  # fp32, w4a4, w2a2 on both panels
    legend = {t.name: t.marker.symbol for t in fig.data if t.legendgroup == "bits"}
    assert legend == {"shape: fp32": "circle", "shape: w4a4": "square", "shape: w2a2": "diamond"}


def test_pareto_figure_of_an_unquantized_run_has_no_bit_shapes() -> None:
    trials = table(
        {"trial_id": "a", "val_accuracy": 95.0, "test_accuracy": 94.0, "model_bytes": 9000, "weight_bits": 32, "act_bits": 32},
        {"trial_id": "b", "val_accuracy": 90.0, "test_accuracy": 89.0, "model_bytes": 1000},
    )  # fmt: skip
    fig = _front(trials)
    assert not [t for t in fig.data if t.legendgroup == "bits"]
    assert all(isinstance(t.marker.symbol, str) for t in fig.data if t.mode == "markers")  # one shape per category
