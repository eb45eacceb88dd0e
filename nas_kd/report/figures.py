"""One function per figure: prepared data (see ``data.py``) in, a Plotly figure out.

Every figure has a title, axis titles with units and a legend on the right (never above the plot,
where it would collide with subplot titles); an empty input gives a figure with a readable message,
so a report of a study with no trials yet still renders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from nas_kd.report import data as d

FONT = {"family": "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif", "size": 13}
STYLE: dict[str, dict[str, object]] = {
    d.PARETO: {"color": "#d62728", "symbol": "circle", "size": 10},
    d.DOMINATED: {"color": "#8f8f8f", "symbol": "circle", "size": 6, "opacity": 0.6},
    d.PRUNED: {"color": "#4c78a8", "symbol": "diamond-open", "size": 7},
    d.RUNNING: {"color": "#f58518", "symbol": "circle-open", "size": 9},
    d.FAILED: {"color": "#222222", "symbol": "x-thin-open", "size": 9},
    d.REJECTED: {"color": "#9d755d", "symbol": "square-open", "size": 7},
}
NO_ACCURACY = (d.FAILED, d.REJECTED)  # drawn on a floor line under the accuracy axis
REFERENCE_DASH = {"teacher": "dash", "assistant": "dot"}
WEBGL_POINTS = 1000  # a trace with more points than this is drawn with WebGL (Scattergl): SVG slows to a crawl


# Marker shapes by bit width (runs with quantized students): complete trials take the shape of their bits,
# the other categories keep their own open shapes. Widest first, as bit_order lists them.
BIT_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "pentagon", "hexagon", "star-triangle-up", "cross")
BIT_SHAPED = (d.PARETO, d.DOMINATED)


def bit_symbols(labels: pd.Series) -> dict[str, str]:
    """Each bit-width label's marker shape, fp32 (the widest) a circle as in an unquantized run."""
    order = d.bit_order(labels)
    return {label: BIT_SYMBOLS[i % len(BIT_SYMBOLS)] for i, label in enumerate(order)}


def scatter(points: int, **trace: object) -> go.Scatter | go.Scattergl:
    """A scatter trace: SVG for a few points, WebGL past ``WEBGL_POINTS`` (a 10,000-trial study)."""
    return (go.Scattergl if points > WEBGL_POINTS else go.Scatter)(**trace)


def distiller_colors(names: Sequence[str]) -> dict[str, str]:
    """The same colour for a distiller in every figure."""
    palette = qualitative.D3
    return {name: palette[i % len(palette)] for i, name in enumerate(sorted(set(names)))}


def _style(fig: go.Figure, title: str, height: int, subtitle: str = "", **layout: object) -> go.Figure:
    """Shared look; a subtitle (Plotly's own, so it never collides with the title) gets a taller top margin."""
    heading: dict[str, object] = {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 17}}
    if subtitle:
        heading["subtitle"] = {"text": subtitle, "font": {"size": 12, "color": "#666"}}
    fig.update_layout(
        template="plotly_white",
        title=heading,
        height=height,
        font=FONT,
        margin={"l": 75, "r": 20, "t": 105 if subtitle else 80, "b": 65},
        legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top", "font": {"size": 12}},
        hoverlabel={"align": "left", "font": {"size": 12}},
        **layout,
    )
    return fig


def empty_figure(title: str, message: str, height: int = 240) -> go.Figure:
    """A figure that says why it is empty (still an SVG plot, so every report section renders alike)."""
    fig = go.Figure()
    fig.add_annotation(
        text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 15, "color": "#555"}
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _style(fig, title, height)


def _panel_message(fig: go.Figure, row: int, col: int, message: str) -> None:
    """A message in the middle of one subplot whose data is missing."""
    # Plotly draws no axes for a subplot without traces; an invisible one keeps the panel's frame
    fig.add_trace(go.Scatter(x=[None], y=[None], showlegend=False, hoverinfo="skip"), row=row, col=col)
    for update in (fig.update_xaxes, fig.update_yaxes):  # no ticks or grid for data that is not there
        update(showticklabels=False, showgrid=False, zeroline=False, row=row, col=col)
    subplot = fig.get_subplot(row, col)
    x, y = (axis.plotly_name.replace("axis", "") for axis in (subplot.xaxis, subplot.yaxis))
    fig.add_annotation(
        text=message, x=0.5, y=0.5, xref=f"{x} domain", yref=f"{y} domain", showarrow=False,
        font={"size": 13, "color": "#555"},
    )  # fmt: skip


def _log_range(values: Sequence[float], pad: float = 0.08) -> list[float] | None:
    finite = [v for v in values if v is not None and np.isfinite(v) and v > 0]
    if not finite:
        return None
    lo, hi = math.log10(min(finite)), math.log10(max(finite))
    pad = max(pad, (hi - lo) * 0.04)
    return [lo - pad, hi + pad]


def _log_axis(values: Sequence[float], title: str) -> dict[str, object]:
    """A log axis over ``values``: explicit range, and over less than two decades ticks at 1-2-5 only
    (Plotly would label every digit there, and the labels run into each other)."""
    axis: dict[str, object] = {"type": "log", "title_text": title}
    span = _log_range(values)
    if span is not None:
        axis["range"] = span
        if span[1] - span[0] < 2:
            axis["dtick"] = "D2"
    return axis


def _accuracy_range(values: Sequence[float]) -> tuple[list[float], float]:
    """(axis range, floor y for trials without an accuracy): the floor sits just under the data."""
    finite = [v for v in values if np.isfinite(v)] or [0.0, 100.0]
    lo, hi = min(finite), max(finite)
    pad = max(0.5, (hi - lo) * 0.05)
    return [lo - 2.4 * pad, hi + pad], lo - 1.5 * pad


# ---------------------------------------------------------------- Pareto front

ACCURACY_AXES = {
    "val_accuracy": "validation accuracy",
    "test_accuracy": "test accuracy",
    "robust_accuracy": "robust accuracy",
}


def pareto_figure(
    trials: pd.DataFrame,
    category: pd.Series,
    hover: pd.Series,
    objectives: Sequence[str],
    teachers: pd.DataFrame,
) -> go.Figure:
    """Accuracy against the size objective(s), log axes. Two objectives: validation | test panels with
    the non-dominated step line. Three: pairwise panels (accuracy against each size, size against size; with
    robust accuracy: each accuracy against the size, and robust against validation accuracy)."""
    title = "Pareto front: accuracy against size"
    sizes = [o for o in objectives[1:] if o in d.SIZE_LABELS] or ["params"]
    scores = [o for o in objectives[1:] if o in d.SCORE_LABELS]
    if trials.empty:
        return empty_figure(title, "No trials yet: the front appears once trials report.")
    accuracy = [*trials["val_accuracy"], *trials["test_accuracy"], *teachers.get("val_accuracy", [])]
    accuracy += [*teachers.get("test_accuracy", []), *(v for score in scores for v in trials[score])]
    y_range, floor = _accuracy_range(accuracy)
    if scores:  # each accuracy against the size, and robust against validation accuracy
        size, score = sizes[0], scores[0]
        panels = [(1, 1, size, "val_accuracy"), (1, 2, size, "test_accuracy"), (2, 1, size, score)]
        panels.append((2, 2, "val_accuracy", score))
    elif len(sizes) == 2:  # accuracy against each size, and size against size
        panels = [(1, 1, sizes[0], "val_accuracy"), (1, 2, sizes[1], "val_accuracy"), (2, 1, sizes[0], "test_accuracy")]
        panels.append((2, 2, sizes[0], sizes[1]))
    else:
        panels = [(1, 1, sizes[0], "val_accuracy"), (1, 2, sizes[0], "test_accuracy")]
    if len(panels) == 2:
        fig = make_subplots(
            rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
            subplot_titles=("validation accuracy (selects the front)", "test accuracy (reported only)"),
        )  # fmt: skip
        height = 540
    else:
        titles = [f"{_axis_name(y)} vs {_axis_name(x)}" for _, _, x, y in panels]
        fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.09, vertical_spacing=0.14, subplot_titles=titles)
        height = 860
    two_objectives = len(panels) == 2
    bits = d.bit_labels(trials)
    symbols = bit_symbols(bits) if bits is not None else {}
    for index, (row, col, x, y) in enumerate(panels):
        x_values = [*trials[x], *teachers.get(x, [])]
        floor_y = floor if y == "val_accuracy" else None  # no-accuracy trials once, on the validation panel
        _scatter_panel(fig, row, col, trials, category, hover, x, y, floor_y, index == 0, bits, symbols)
        if x in d.ACCURACY_COLUMNS:  # accuracy against accuracy: linear percent axes, no size references
            fig.update_xaxes(range=y_range, title_text=f"{ACCURACY_AXES[x]} (%)", row=row, col=col)
            fig.update_yaxes(range=y_range, title_text=f"{ACCURACY_AXES[y]} (%)", row=row, col=col)
            continue
        if y in d.ACCURACY_COLUMNS:
            x_range = _log_range(x_values)
            if two_objectives:
                _step(fig, row, col, trials[category == d.PARETO], x, y, x_range, first=index == 0)
            _references(fig, row, col, teachers, x, y, x_range, first=index == 0)
            fig.update_yaxes(range=y_range, row=row, col=col)
            if col == 1 or not two_objectives:
                fig.update_yaxes(title_text=f"{ACCURACY_AXES[y]} (%)", row=row, col=col)
        else:
            fig.update_yaxes(**_log_axis(trials[y], f"{d.SIZE_LABELS[y]}, log scale"), row=row, col=col)
        fig.update_xaxes(**_log_axis(x_values, f"{d.SIZE_LABELS[x]}, log scale"), row=row, col=col)
    for label, symbol in symbols.items():  # a legend of shapes only (no points): the bits of each marker
        fig.add_trace(
            go.Scatter(
                x=[None], y=[None], mode="markers", name=f"shape: {label}", legendgroup="bits",
                marker={"symbol": symbol, "size": 9, "color": "#555555"},
            )
        )  # fmt: skip
    subtitle = "Failed and rejected trials without an accuracy sit along the bottom of the validation panel. Hover a point for details."
    if symbols:
        subtitle += " Marker shape: the student's weight/activation bits."
    return _style(fig, title, height, subtitle=subtitle)


def _axis_name(column: str) -> str:
    return ACCURACY_AXES.get(column) or d.SIZE_NAMES[column]


def _scatter_panel(
    fig: go.Figure,
    row: int,
    col: int,
    trials: pd.DataFrame,
    category: pd.Series,
    hover: pd.Series,
    x: str,
    y: str,
    floor: float | None,
    legend: bool,
    bits: pd.Series | None = None,
    symbols: Mapping[str, str] | None = None,
) -> None:
    for name in d.CATEGORIES:
        subset = trials[category == name]
        ys = subset[y]
        if name in NO_ACCURACY and y in d.ACCURACY_COLUMNS:
            if floor is None:
                continue  # drawn once, on the validation panel
            ys = ys.where(np.isfinite(ys), floor)
        keep = np.isfinite(subset[x]) & np.isfinite(ys)
        if not keep.any():
            continue
        style: dict[str, object] = dict(STYLE[name])
        opacity = style.pop("opacity", 1.0)
        if bits is not None and symbols and name in BIT_SHAPED:
            style["symbol"] = [symbols[label] for label in bits[subset.index[keep]]]
        fig.add_trace(
            scatter(
                int(keep.sum()), x=subset.loc[keep, x], y=ys[keep], mode="markers", name=f"{name} ({int(keep.sum())})",
                legendgroup=name, showlegend=legend, marker=style, opacity=opacity,
                text=hover[subset.index[keep]], hovertemplate="%{text}<extra></extra>",
            ),
            row=row, col=col,
        )  # fmt: skip


def _step(
    fig: go.Figure, row: int, col: int, front: pd.DataFrame, x: str, y: str, x_range: list[float] | None, first: bool
) -> None:
    keep = front[np.isfinite(front[x]) & np.isfinite(front[y])]
    if keep.empty:
        return
    xs, ys = d.step_line(keep[x].tolist(), keep[y].tolist(), 10 ** x_range[1] if x_range else None)
    fig.add_trace(
        go.Scatter(
            x=xs, y=ys, mode="lines", name="non-dominated step line" if first else "front members on test",
            line={"color": STYLE[d.PARETO]["color"], "width": 2, "dash": "solid" if first else "dot"},
            hoverinfo="skip", legendgroup="step", showlegend=first,
        ),
        row=row, col=col,
    )  # fmt: skip


def _references(
    fig: go.Figure,
    row: int,
    col: int,
    teachers: pd.DataFrame,
    x: str,
    y: str,
    x_range: list[float] | None,
    first: bool,
) -> None:
    """Each teacher and assistant: a horizontal line at its accuracy (named in the legend, so no text
    label can overlap the points) and a star at its size when the size is known."""
    if teachers.empty or y not in teachers or x_range is None:
        return
    for i, t in teachers.reset_index(drop=True).iterrows():
        accuracy = t[y]
        if not np.isfinite(accuracy):
            continue
        role = str(t["role"])
        group = f"ref-{i}"
        who = role if t["name"] in ("", role) else f"{role} {t['name']}"
        label = f"{who}: {d.percent_text(t['val_accuracy'])} val, {d.percent_text(t['test_accuracy'])} test"
        color = "#2b2b2b" if role == "teacher" else "#6a3d9a"
        fig.add_trace(
            go.Scatter(
                x=[10 ** x_range[0], 10 ** x_range[1]], y=[accuracy, accuracy], mode="lines", name=label,
                legendgroup=group, showlegend=first, hovertemplate=f"{label}<extra></extra>",
                line={"color": color, "width": 1.5, "dash": REFERENCE_DASH.get(role, "dashdot")},
            ),
            row=row, col=col,
        )  # fmt: skip
        size = t.get(x, math.nan)
        if np.isfinite(size):
            fig.add_trace(
                go.Scatter(
                    x=[size], y=[accuracy], mode="markers", name=label, legendgroup=group, showlegend=False,
                    marker={"symbol": "star", "size": 15, "color": color, "line": {"color": "white", "width": 1}},
                    hovertemplate=f"<b>{who}</b><br>{t['arch_summary']}<br>"
                    f"params {d.human(t['params'])} · FLOPs {d.human(t['flops'])}<br>{label}<extra></extra>",
                ),
                row=row, col=col,
            )  # fmt: skip


# ---------------------------------------------------------------- capacity gap


def capacity_figure(
    gap: pd.DataFrame, gain: pd.DataFrame, gap_note: str, gain_note: str, colors: Mapping[str, str]
) -> go.Figure:
    """Left: accuracy gap to the teacher against capacity ratio. Right: distillation gain over ``ce``."""
    title = "Capacity gap: how far students trail the teacher, and what distillation adds"
    if gap.empty and gain.empty:
        return empty_figure(title, f"{gap_note}<br>{gain_note}")
    fig = make_subplots(
        rows=1, cols=2, horizontal_spacing=0.12,
        subplot_titles=("teacher − student accuracy", "distillation gain over ce (same or size-matched arch)"),
    )  # fmt: skip
    for name, group in gap.groupby("distiller", sort=True):
        fig.add_trace(
            scatter(
                len(group), x=group["capacity_ratio"], y=group["gap"], mode="markers", name=str(name), legendgroup=str(name),
                marker={"color": colors.get(str(name)), "size": 7, "opacity": 0.8}, text=group["trial_id"],
                hovertemplate="trial %{text}<br>capacity ratio %{x:.3g}<br>gap %{y:.2f} pp<extra></extra>",
            ),
            row=1, col=1,
        )  # fmt: skip
    # without a teacher there is no ratio: the gain is drawn against the student's params instead
    gain_x = "params" if gain["capacity_ratio"].isna().any() else "capacity_ratio"
    for (name, match), group in gain.groupby(["distiller", "match"], sort=True):
        fig.add_trace(
            go.Scatter(
                x=group[gain_x], y=group["gain"], mode="markers", name=f"{name} · {match}", legendgroup=str(name),
                showlegend=True, text=group["trial_id"], customdata=group["baseline_trials"],
                marker={"color": colors.get(str(name)), "size": 8,
                        "symbol": "circle" if match == "same architecture" else "triangle-up-open"},
                hovertemplate="trial %{text}<br>gain %{y:+.2f} pp over ce trial(s) %{customdata}<extra></extra>",
            ),
            row=1, col=2,
        )  # fmt: skip
    ratio_axis = "capacity ratio: student / teacher params (log)"
    fig.update_xaxes(**_log_axis(gap["capacity_ratio"], ratio_axis), row=1, col=1)
    gain_title = "student params (log)" if gain_x == "params" else ratio_axis
    fig.update_xaxes(**_log_axis(gain[gain_x], gain_title), row=1, col=2)
    fig.update_yaxes(title_text="accuracy gap to the teacher (pp)", row=1, col=1)
    fig.update_yaxes(title_text="gain over ce (pp)", zeroline=True, zerolinewidth=2, row=1, col=2)
    if gap.empty:
        _panel_message(fig, 1, 1, gap_note)
    if gain.empty:
        _panel_message(fig, 1, 2, gain_note)
    return _style(fig, title, 480)


def gain_curve_figure(curve: pd.DataFrame, title: str) -> go.Figure:
    """``nas-kd bench gap``: each arm's paired gain over ``ce`` against the capacity ratio, ±1 sd over seeds."""
    if curve.empty:
        return empty_figure(title, "No arm paired with ce on a common size and seed.")
    fig = go.Figure()
    colors = distiller_colors(list(curve["arm"]))
    for arm, group in curve.groupby("arm", sort=True):
        group = group.sort_values("capacity_ratio")
        fig.add_trace(
            go.Scatter(
                x=group["capacity_ratio"], y=group["gain"], mode="lines+markers", name=str(arm),
                error_y={"type": "data", "array": group["gain_sd"].fillna(0), "visible": True},
                marker={"color": colors[str(arm)], "size": 8}, line={"color": colors[str(arm)]},
                customdata=np.stack([group["params"], group["gain_sd"], group["seeds"]], axis=-1),
                hovertemplate="%{customdata[0]:,} params (ratio %{x:.3g})<br>gain %{y:+.2f} ± %{customdata[1]:.2f} pp"
                "<br>%{customdata[2]} seeds<extra></extra>",
            )
        )  # fmt: skip
    fig.update_xaxes(**_log_axis(curve["capacity_ratio"], "capacity ratio: student / teacher params (log)"))
    fig.update_yaxes(title_text="test-accuracy gain over ce (pp, mean ± sd)", zeroline=True, zerolinewidth=2)
    return _style(fig, title, 460)


# ---------------------------------------------------------------- distillers within size buckets


def distiller_figure(comparison: pd.DataFrame, size: str) -> go.Figure:
    """Validation accuracy per distiller (scheme and knowledge) within size buckets: grouped boxes with
    every trial as a point."""
    title = "Distillers compared within size buckets"
    if comparison.empty:
        return empty_figure(title, "No COMPLETE trials with a validation accuracy yet.")
    fig = go.Figure()
    colors = distiller_colors(list(comparison["label"]))  # knowledge variants of one scheme apart
    for label, group in comparison.groupby("label", sort=True):
        fig.add_trace(
            go.Box(
                x=group["bucket"].astype(str), y=group["val_accuracy"], name=f"{label} ({len(group)})",
                marker={"color": colors[str(label)], "size": 5}, jitter=0.4,
                boxpoints="all" if len(comparison) <= WEBGL_POINTS else "outliers",
                pointpos=0, text=group["trial_id"], hovertemplate="trial %{text}<br>%{y:.2f} %<extra></extra>",
            )
        )  # fmt: skip
    order = [str(c) for c in comparison["bucket"].cat.categories]
    fig.update_xaxes(
        title_text=f"size bucket ({d.SIZE_LABELS[size]}; quantiles, about equal trials per bucket)",
        categoryorder="array", categoryarray=order,
    )  # fmt: skip
    fig.update_yaxes(title_text="validation accuracy (%)")
    return _style(fig, title, 460, boxmode="group")


# ---------------------------------------------------------------- hypervolume


def hypervolume_figure(hypervolume: pd.DataFrame, reference: object) -> go.Figure:
    """Dominated hypervolume as the search progressed: against trials, student-epochs and wall time."""
    title = "Hypervolume: how fast the search improved the front"
    hv = hypervolume.dropna(subset=["hypervolume"]) if "hypervolume" in hypervolume else hypervolume.iloc[0:0]
    if hv.empty:
        return empty_figure(title, "No hypervolume yet: hypervolume.csv gains a row per finished trial.")
    divisor, unit = d.time_unit(float(hv["wall_seconds"].max()))
    axes = [
        ("finished", "finished trials (count)"),
        ("student_epochs", "compute (student-epochs)"),
        ("wall_seconds", f"wall time ({unit})"),
    ]
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.04)
    for col, (column, label) in enumerate(axes, start=1):
        x = hv[column] / divisor if column == "wall_seconds" else hv[column]
        fig.add_trace(
            scatter(
                len(hv), x=x, y=hv["hypervolume"], mode="lines+markers", line={"shape": "hv", "color": "#d62728"},
                marker={"size": 4}, name="hypervolume", showlegend=False, text=hv["trial_id"],
                hovertemplate=f"after trial %{{text}}<br>{label}: %{{x:.4g}}<br>hypervolume %{{y:.4g}}<extra></extra>",
            ),
            row=1, col=col,
        )  # fmt: skip
        fig.update_xaxes(title_text=label, row=1, col=col)
    normalised = isinstance(reference, Mapping) and "bounds" in reference
    label = "hypervolume (0 to 1)" if normalised else "hypervolume (raw units)"  # short: the plot is 280 px tall
    fig.update_yaxes(title_text=label, tickformat=".3~g" if normalised else ".3~s", row=1, col=1)
    return _style(fig, title, 420, subtitle=d.reference_text(reference))


# ---------------------------------------------------------------- search space


def parallel_figure(dimensions: list[dict[str, object]]) -> go.Figure:
    """Parallel coordinates of the architecture parameters, coloured by validation accuracy."""
    title = "Search space: architecture parameters of COMPLETE trials, coloured by validation accuracy"
    if not dimensions:
        return empty_figure(title, "No COMPLETE trials yet.")
    accuracy = dimensions[-1]["values"]
    many = len(dimensions) > 12  # past this, horizontal labels would run into each other at 1280 px
    fig = go.Figure(
        go.Parcoords(
            dimensions=dimensions, labelangle=-30 if many else 0, labelside="top",
            line={"color": accuracy, "colorscale": "Viridis", "showscale": True, "colorbar": {"thickness": 14}},
            labelfont={"size": 12}, tickfont={"size": 11}, rangefont={"size": 10, "color": "#888"},
        )
    )  # fmt: skip
    subtitle = "s<i>N</i>.<i>key</i>: stage <i>N</i>'s setting (0 where a trial has no such stage). Drag along an axis to filter."
    fig = _style(fig, title, 520, subtitle=subtitle)
    fig.update_layout(margin={"l": 60, "r": 40, "t": 190 if many else 150, "b": 40})
    return fig


def importance_figure(importances: pd.DataFrame, note: str) -> go.Figure:
    """fANOVA importance of each searched parameter, one bar group per objective."""
    title = "Parameter importances per objective (Optuna fANOVA)"
    if importances.empty:
        return empty_figure(title, note)
    params = list(dict.fromkeys(importances["param"]))
    fig = go.Figure()
    for objective, group in importances.groupby("objective", sort=False):
        fig.add_trace(
            go.Bar(
                x=group["importance"], y=group["param"], orientation="h", name=str(objective),
                hovertemplate="%{y}: %{x:.3f}<extra>" + str(objective) + "</extra>",
            )
        )  # fmt: skip
    objectives = importances["objective"].nunique()
    fig.update_yaxes(categoryorder="array", categoryarray=params[::-1], title_text="searched parameter")
    fig.update_xaxes(title_text="importance (fraction of variance explained, sums to 1 per objective)")
    height = 180 + len(params) * (14 + 10 * objectives)
    return _style(fig, title, max(320, height), subtitle=note, barmode="group")


# ---------------------------------------------------------------- learning curves


CURVE_STYLE = {
    d.DOMINATED: {"color": "rgba(130,130,130,0.35)", "width": 1},
    d.PRUNED: {"color": "rgba(76,120,168,0.55)", "width": 1},
    d.RUNNING: {"color": STYLE[d.RUNNING]["color"], "width": 1.5},
    d.FAILED: {"color": "#222222", "width": 1},
    d.REJECTED: {"color": "#9d755d", "width": 1},
    d.PARETO: {"color": STYLE[d.PARETO]["color"], "width": 2},
}


def curves_figure(curves: pd.DataFrame) -> go.Figure:
    """Validation accuracy by epoch, one line per trial (one trace per category), early stops marked; past
    ``d.CURVE_TRIALS`` trials, the front, running trials and an even spread of the rest."""
    title = "Learning curves: validation accuracy by epoch"
    if curves.empty:
        return empty_figure(title, "No epochs reported yet (curves.csv is empty).")
    curves, note = d.sample_curves(curves)
    fig = go.Figure()
    for name in d.CATEGORIES:
        subset = curves[curves["category"] == name]
        if subset.empty:
            continue
        xs, ys, ids = d.gapped(subset, "epoch", "val_accuracy")
        fig.add_trace(
            scatter(
                len(xs), x=xs, y=ys, text=ids, mode="lines", name=f"{name} ({subset['trial_id'].nunique()})",
                line=CURVE_STYLE[name], hovertemplate="trial %{text}<br>epoch %{x}: %{y:.2f} %<extra></extra>",
            )
        )  # fmt: skip
    ends = curves.groupby("trial_id", sort=False).tail(1)
    marks = [
        (ends[ends["early_stopped"]], "stopped early", {"symbol": "x-thin-open", "color": STYLE[d.PRUNED]["color"]}),
        (
            ends[ends["status"] == "RUNNING"],
            "latest epoch of running",
            {"symbol": "circle-open", "color": STYLE[d.RUNNING]["color"]},
        ),
        (ends[ends["status"] == "FAILED"], "last epoch before failing", {"symbol": "x-thin-open", "color": "#222222"}),
    ]
    for subset, label, marker in marks:
        if subset.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=subset["epoch"], y=subset["val_accuracy"], mode="markers", text=subset["trial_id"],
                name=f"{label} ({len(subset)})", marker={**marker, "size": 9, "line": {"width": 2}},
                hovertemplate=f"trial %{{text}}: {label}, epoch %{{x}}<br>%{{y:.2f}} %<extra></extra>",
            )
        )  # fmt: skip
    fig.update_xaxes(title_text="epoch", dtick=1 if curves["epoch"].max() <= 20 else None)
    fig.update_yaxes(title_text="validation accuracy (%)")
    return _style(fig, title, 460, subtitle=note)


# ---------------------------------------------------------------- final training and proxy fidelity


def final_figure(arms: pd.DataFrame, fidelity: Mapping[str, object]) -> go.Figure:
    """Left: final test accuracy (mean ± sd over seeds) per member and recipe against params, the final front
    as a step line. Right: search validation accuracy against final validation accuracy (searched recipe)."""
    title = "Final training: what the front's students reach at the full budget"
    if arms.empty:
        return empty_figure(title, "No COMPLETE final job yet.")
    fig = make_subplots(
        rows=1, cols=2, horizontal_spacing=0.1, column_widths=[0.58, 0.42],
        subplot_titles=("final test accuracy (mean ± sd over seeds)", "search vs final validation accuracy"),
    )  # fmt: skip
    colors = distiller_colors(list(arms["arm"]))
    for name, group in arms.groupby("arm", sort=True):
        fig.add_trace(
            go.Scatter(
                x=group["params"], y=group["test_mean"], error_y={"type": "data", "array": group["test_sd"].fillna(0)},
                mode="markers", name=str(name), legendgroup=str(name), marker={"color": colors[str(name)], "size": 8},
                text=group["member"], customdata=group[["val_mean", "seeds"]].to_numpy(),
                hovertemplate="member %{text}<br>test %{y:.2f}%<br>val %{customdata[0]:.2f}% over "
                "%{customdata[1]} seeds<extra></extra>",
            ),
            row=1, col=1,
        )  # fmt: skip
    # the front is chosen on validation (test never selects), so its test means need not rise monotonically
    front = arms[arms["front"]].sort_values("params")
    fig.add_trace(
        go.Scatter(x=front["params"], y=front["test_mean"], mode="lines+markers", name="final front (by val)",
                   line={"color": "#d62728", "width": 1.5},
                   marker={"size": 14, "symbol": "circle-open", "color": "#d62728"}, hoverinfo="skip"),
        row=1, col=1,
    )  # fmt: skip
    searched = arms[arms["arm"] == "searched"]
    fig.add_trace(
        go.Scatter(
            x=searched["search_val_accuracy"], y=searched["val_mean"], mode="markers", showlegend=False,
            error_y={"type": "data", "array": searched["val_sd"].fillna(0)}, text=searched["member"],
            marker={"color": colors.get("searched"), "size": 8},
            hovertemplate="member %{text}<br>search val %{x:.2f}%<br>final val %{y:.2f}%<extra></extra>",
        ),
        row=1, col=2,
    )  # fmt: skip
    both = pd.concat([searched["search_val_accuracy"], searched["val_mean"]]).dropna()
    if not both.empty:
        lo, hi = float(both.min()), float(both.max())
        fig.add_trace(
            go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "#999"},
                       name="final = search", hoverinfo="skip"),
            row=1, col=2,
        )  # fmt: skip
    fig.update_xaxes(**_log_axis(arms["params"], "parameters (count, log)"), row=1, col=1)
    fig.update_yaxes(title_text="test accuracy (%)", row=1, col=1)
    fig.update_xaxes(title_text="search validation accuracy (%)", row=1, col=2)
    fig.update_yaxes(title_text="final validation accuracy (%)", row=1, col=2)
    tau = fidelity.get("kendall_tau")
    subtitle = (
        f"Kendall tau {tau:.2f} over {fidelity.get('members')} members (search rank vs final rank)"
        if isinstance(tau, float) and math.isfinite(tau)
        else f"Kendall tau needs {d.MIN_RANKED} members with distinct accuracies"
    )
    return _style(fig, title, 480, subtitle=subtitle)


def epoch_fidelity_figure(fidelity: pd.DataFrame) -> go.Figure:
    """Kendall tau between each epoch's validation ranking and the last epoch's, over full-budget trials."""
    title = "Proxy fidelity: how early the search's ranking settles"
    finite = fidelity.dropna(subset=["kendall_tau"]) if not fidelity.empty else fidelity
    if finite.empty:
        return empty_figure(
            title, f"Needs {d.MIN_RANKED} or more COMPLETE trials of two or more epochs with distinct accuracies."
        )
    fig = go.Figure(
        go.Scatter(
            x=finite["epoch"], y=finite["kendall_tau"], mode="lines+markers", line={"color": "#4c78a8"},
            customdata=finite["trials"], name="Kendall tau",
            hovertemplate="epoch %{x}<br>tau %{y:.2f} over %{customdata} trials<extra></extra>",
        )
    )  # fmt: skip
    fig.update_xaxes(title_text="epoch (the ranking after it is compared with the last epoch's)", dtick=1)
    fig.update_yaxes(title_text="Kendall tau", range=[-1.05, 1.05], zeroline=True)
    return _style(fig, title, 360, subtitle="1: the epoch already ranks COMPLETE trials as the last one does")
