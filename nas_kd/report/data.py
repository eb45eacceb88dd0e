"""Data preparation for the report: pure functions over the trials table (pandas in, pandas out).

Nothing here reads files or draws: ``run.py`` loads a run directory, ``figures.py`` turns what these
functions return into Plotly figures. Accuracies arrive here already in percent (see ``percent_factor``).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from nas_kd.results import TRIAL_COLUMNS
from nas_kd.search.pareto import pareto_mask

NUMERIC_COLUMNS = [
    "number", "epochs", "max_epochs", "val_accuracy", "test_accuracy", "robust_accuracy", "worst_class_accuracy",
    "params", "flops", "model_bytes", "latency_ms", "seconds",
]  # fmt: skip
ACCURACY_COLUMNS = ("val_accuracy", "test_accuracy", "robust_accuracy")
# Objectives besides val_accuracy that are accuracies (maximised, drawn on a linear percent axis), not sizes.
SCORE_LABELS = {"robust_accuracy": "robust accuracy (%, PGD on validation)"}
SIZE_LABELS = {
    "params": "parameters (count)",
    "flops": "FLOPs per image",
    "model_bytes": "model size (bytes)",
    "latency_ms": "latency (ms, batch of 1)",
}
KNOWLEDGE_KEYS = ("response", "feature", "relation")  # distiller settings that name the knowledge type
SIZE_NAMES = {"params": "params", "flops": "FLOPs", "model_bytes": "model size", "latency_ms": "latency"}
SIZE_SHORT = {"params": "params", "flops": "FLOPs", "model_bytes": "bytes", "latency_ms": "ms"}

# Trial categories, in drawing order (later ones on top) and as the legend lists them.
PARETO, DOMINATED, PRUNED, RUNNING, FAILED, REJECTED = (
    "Pareto front",
    "dominated",
    "pruned (stopped early)",
    "running / unfinished",
    "failed",
    "rejected",
)
CATEGORIES = (DOMINATED, PRUNED, RUNNING, FAILED, REJECTED, PARETO)
_STATUS_CATEGORY = {"PRUNED": PRUNED, "RUNNING": RUNNING, "FAILED": FAILED, "REJECTED": REJECTED}


# ---------------------------------------------------------------- table hygiene


def normalise_trials(raw: pd.DataFrame) -> pd.DataFrame:
    """The trials table with every contract column present and typed, sorted by trial number.

    A still-running search may have written only some columns, or none (empty file): the figures can
    then rely on the columns existing and on numbers being floats (NaN where missing).
    """
    df = raw.copy()
    for column in TRIAL_COLUMNS:
        if column not in df:
            df[column] = np.nan
    for column in NUMERIC_COLUMNS:
        df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    df["trial_id"] = [_text(v) or f"#{i}" for i, v in enumerate(df["trial_id"])]
    df["status"] = [(_text(v) or "RUNNING").upper() for v in df["status"]]
    for column in ("distiller", "family", "arch", "arch_summary", "error", "student_path"):
        df[column] = [_text(v) for v in df[column]]
    df["distiller"] = df["distiller"].replace("", "?")
    df["pareto"] = [_text(v).lower() in ("true", "1", "1.0", "yes") for v in df["pareto"]]
    if df["number"].isna().all():
        df["number"] = np.arange(len(df), dtype=float)
    return df.sort_values("number", kind="stable").reset_index(drop=True)


def _text(value: Any) -> str:
    """A CSV cell as text; NaN (empty cell) -> ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def percent_factor(*columns: Iterable[float]) -> float:
    """100 when every accuracy is a fraction (<= 1), else 1: the report always shows percent."""
    values = [float(v) for column in columns for v in column if v is not None and np.isfinite(v)]
    if not values:
        return 100.0
    return 100.0 if max(values) <= 1.0 else 1.0


def human(value: float, digits: int = 3) -> str:
    """Compact count: 1234 -> '1.23k', 4.5e6 -> '4.5M'; NaN -> '–'."""
    if value is None or not np.isfinite(value):
        return "–"
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"


# ---------------------------------------------------------------- Pareto front


def classify(trials: pd.DataFrame, objectives: Sequence[str], directions: Sequence[str]) -> pd.Series:
    """Each trial's category. The front is recomputed from the table's COMPLETE rows with every objective
    (so a snapshot of a running study agrees with itself); the rest follows the status."""
    category = pd.Series([_STATUS_CATEGORY.get(s, DOMINATED) for s in trials["status"]], index=trials.index)
    values = trials[list(objectives)].to_numpy(dtype=float)
    candidates = (trials["status"] == "COMPLETE").to_numpy() & np.isfinite(values).all(axis=1)
    if candidates.any():
        front = pareto_mask(values[candidates], list(directions))
        category[candidates] = np.where(front, PARETO, DOMINATED)
    return category


def step_line(x: Sequence[float], y: Sequence[float], x_end: float | None = None) -> tuple[list[float], list[float]]:
    """The staircase through front points (x minimised, y maximised): from each point right to the next
    point's x, then up to its y; optionally on to ``x_end``. Explicit vertices, so no line_shape magic."""
    x_array, y_array = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    order = np.argsort(x_array, kind="stable")
    xs_sorted, ys_sorted = x_array[order].tolist(), y_array[order].tolist()
    xs: list[float] = []
    ys: list[float] = []
    for i, (px, py) in enumerate(zip(xs_sorted, ys_sorted, strict=True)):
        if i:
            xs.append(px)
            ys.append(ys_sorted[i - 1])
        xs.append(px)
        ys.append(py)
    if xs and x_end is not None and x_end > xs[-1]:
        xs.append(float(x_end))
        ys.append(ys[-1])
    return xs, ys


def early_stopped(trials: pd.DataFrame) -> pd.Series:
    """Trials a scheduler stopped before ``max_epochs``: PRUNED ones, and COMPLETE ones told with partial values."""
    stopped = trials["status"].isin(["COMPLETE", "PRUNED"]) & (trials["epochs"] < trials["max_epochs"])
    return stopped | (trials["status"] == "PRUNED")


# ---------------------------------------------------------------- hover text


def row_settings(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """Each row's distiller settings, from its own ``<distiller>.<setting>`` columns (other distillers'
    columns are empty in that row, and ignored even when not)."""
    by_prefix: dict[str, list[str]] = {}
    for column in trials.columns:
        prefix, dot, _ = str(column).partition(".")
        if dot:
            by_prefix.setdefault(prefix, []).append(column)
    return [
        {c.split(".", 1)[1]: row[c] for c in by_prefix.get(row["distiller"], []) if _text(row[c]) != ""}
        for row in trials.to_dict("records")  # records, not iterrows: 10,000 rows in well under a second
    ]


def distiller_settings(trials: pd.DataFrame) -> pd.Series:
    """'temperature=4, alpha=0.9' per row."""
    texts = [", ".join(f"{k}={_setting(v)}" for k, v in s.items()) for s in row_settings(trials)]
    return pd.Series(texts, index=trials.index, dtype=object)


def _setting(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def distiller_text(trials: pd.DataFrame) -> pd.Series:
    """'offline (temperature=4, alpha=0.9)' or just 'ce'."""
    settings = distiller_settings(trials)
    return pd.Series(
        [f"{d} ({s})" if s else d for d, s in zip(trials["distiller"], settings, strict=True)],
        index=trials.index,
        dtype=object,
    )


def hover_text(trials: pd.DataFrame) -> pd.Series:
    """One HTML hover label per trial: id, status, architecture, distiller and settings, metrics, error."""
    distillers = distiller_text(trials)
    out = []
    for row, distiller in zip(trials.to_dict("records"), distillers, strict=True):
        epochs = f"{_count(row['epochs'])}/{_count(row['max_epochs'])} epochs"
        lines = [
            f"<b>trial {row['trial_id']}</b> · {row['status']} · {epochs}",
            f"arch: {row['arch_summary'] or '?'}",
            f"distiller: {distiller}",
            f"val acc: {percent_text(row['val_accuracy'])} · test acc: {percent_text(row['test_accuracy'])}"
            + (f" · robust acc: {percent_text(row['robust_accuracy'])}" if np.isfinite(row["robust_accuracy"]) else ""),
            *(
                [f"weakest class: {row['worst_class']} ({percent_text(row['worst_class_accuracy'])} val)"]
                if _text(row["worst_class"])
                else []
            ),
            f"params: {human(row['params'])} · FLOPs: {human(row['flops'])} · "
            f"latency: {_num(row['latency_ms'], ' ms')} · size: {human(row['model_bytes'])}B",
        ]
        if row["error"]:
            lines.append(f"error: {row['error'][:120]}")
        out.append("<br>".join(lines))
    return pd.Series(out, index=trials.index, dtype=object)


def _count(value: float) -> str:
    return "?" if not np.isfinite(value) else f"{int(value)}"


def percent_text(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:.2f} %"


def _num(value: float, unit: str = "") -> str:
    return "–" if not np.isfinite(value) else f"{value:.3g}{unit}"


# ---------------------------------------------------------------- teachers and the capacity gap


def primary_teacher(teachers: pd.DataFrame) -> pd.Series | None:
    """The teacher the students are measured against: the first with role 'teacher', else the first."""
    if teachers.empty:
        return None
    main = teachers[teachers["role"] == "teacher"]
    return (main if len(main) else teachers).iloc[0]


def complete_trials(trials: pd.DataFrame, column: str = "val_accuracy") -> pd.DataFrame:
    """COMPLETE trials with a finite ``column`` and params: what comparisons between students use."""
    keep = (trials["status"] == "COMPLETE") & np.isfinite(trials[column]) & np.isfinite(trials["params"])
    return trials[keep]


def capacity_gap(trials: pd.DataFrame, teacher_params: float, teacher_accuracy: float) -> pd.DataFrame:
    """Per COMPLETE student: capacity ratio (student params / teacher params) and accuracy gap to the
    teacher in percentage points (positive: the student is worse)."""
    done = complete_trials(trials)
    return pd.DataFrame(
        {
            "trial_id": done["trial_id"],
            "distiller": done["distiller"],
            "params": done["params"],
            "capacity_ratio": done["params"] / teacher_params,
            "gap": teacher_accuracy - done["val_accuracy"],
        }
    ).reset_index(drop=True)


def distillation_gain(
    trials: pd.DataFrame, teacher_params: float | None = None, tolerance: float = 0.25, baseline: str = "ce"
) -> pd.DataFrame:
    """Distilled accuracy minus ``ce`` accuracy for the same architecture, or else for size-matched ones.

    Same architecture (identical genome JSON): the mean of those ``ce`` runs. Otherwise every ``ce`` run
    whose params are within a factor ``1 + tolerance`` counts (mean). A student with neither is left out.
    Columns: trial_id, distiller, params, capacity_ratio (NaN without a teacher), gain (pp),
    baseline_trials, match.
    """
    done = complete_trials(trials)
    ce = done[done["distiller"] == baseline]
    rows = []
    if len(ce):
        # by genome, and sorted by log-params with prefix sums: a window's mean in O(log n), not a scan per trial
        by_arch: dict[str, list[int]] = {}
        for i, key in enumerate(ce["arch"].map(_arch_key)):
            by_arch.setdefault(key, []).append(i)
        ce_ids, ce_accuracy = ce["trial_id"].to_numpy(), ce["val_accuracy"].to_numpy(dtype=float)
        order = np.argsort(np.log(ce["params"].to_numpy(dtype=float)), kind="stable")
        sorted_log = np.log(ce["params"].to_numpy(dtype=float))[order]
        prefix = np.concatenate([[0.0], np.cumsum(ce_accuracy[order])])
        radius = math.log1p(tolerance)
        distilled = done[done["distiller"] != baseline]
        for trial_id, distiller, params, accuracy, arch in zip(
            distilled["trial_id"], distilled["distiller"], distilled["params"], distilled["val_accuracy"],
            distilled["arch"], strict=True,
        ):  # fmt: skip
            same = by_arch.get(_arch_key(arch))
            if same:
                match, members, mean = "same architecture", same, float(ce_accuracy[same].mean())
            else:
                lo = np.searchsorted(sorted_log, math.log(params) - radius, side="left")
                hi = np.searchsorted(sorted_log, math.log(params) + radius, side="right")
                if hi <= lo:
                    continue
                match, members = f"size-matched (±{tolerance:.0%} params)", list(order[lo:hi])
                mean = float((prefix[hi] - prefix[lo]) / (hi - lo))
            rows.append(
                {
                    "trial_id": trial_id,
                    "distiller": distiller,
                    "params": params,
                    "capacity_ratio": params / teacher_params if teacher_params else math.nan,
                    "gain": accuracy - mean,
                    "baseline_trials": _id_list(ce_ids[sorted(members)]),
                    "match": match,
                }
            )
    columns = ["trial_id", "distiller", "params", "capacity_ratio", "gain", "baseline_trials", "match"]
    return pd.DataFrame(rows, columns=columns)


def _id_list(ids: Iterable[Any], shown: int = 5) -> str:
    """'t0, t1' or, past ``shown`` ids, 't0, t1, t2, t3, t4 and 12 more' (hover text stays short)."""
    ids = [str(i) for i in ids]
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


def _arch_key(arch: str) -> str:
    """Canonical genome text, so that key order or spacing in the CSV does not hide equal architectures."""
    try:
        return json.dumps(json.loads(arch), sort_keys=True)
    except (TypeError, ValueError):
        return arch


# ---------------------------------------------------------------- distillers within size buckets


def size_buckets(sizes: pd.Series, max_buckets: int = 4, unit: str = "params") -> pd.Series:
    """Ordered categorical of size ranges: edges at quantiles of log-size, so each bucket holds about as
    many trials; fewer buckets when sizes repeat. NaN sizes stay NaN."""
    values = sizes.astype(float)
    finite = values[np.isfinite(values) & (values > 0)]
    if finite.empty:
        return pd.Series(pd.Categorical([None] * len(values)), index=values.index)
    logs = np.log(finite.to_numpy())
    edges = np.unique(np.quantile(logs, np.linspace(0, 1, max_buckets + 1)))
    if len(edges) < 2:
        edges = np.array([logs[0], logs[0]])
    labels = [_bucket_label(math.exp(lo), math.exp(hi), unit) for lo, hi in itertools.pairwise(edges)]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_values = np.log(values.to_numpy())
    # compared in log space, the space the edges came from: bucket i holds (e_i, e_i+1], the first also e_0
    codes = np.searchsorted(edges[1:-1], log_values, side="left")
    cats = [labels[c] if np.isfinite(v) else None for c, v in zip(codes, log_values, strict=True)]
    return pd.Series(pd.Categorical(cats, categories=labels, ordered=True), index=values.index)


def _bucket_label(lo: float, hi: float, unit: str) -> str:
    return f"{human(lo)} {unit}" if human(lo) == human(hi) else f"{human(lo)}–{human(hi)} {unit}"


def scheme_labels(trials: pd.DataFrame, defaults: Mapping[str, Mapping[str, Any]] | None = None) -> pd.Series:
    """'offline · dkd+at': the distiller (its scheme) and the knowledge it transfers (response, feature,
    relation; 'none' left out). A knowledge setting the row does not record takes the distiller's default
    from ``defaults`` ({distiller: {setting: default}}); a distiller without knowledge settings is its name."""
    defaults = defaults or {}
    labels = []
    for name, settings in zip(trials["distiller"], row_settings(trials), strict=True):
        known = {**defaults.get(name, {}), **settings}
        kinds = [str(known[k]) for k in KNOWLEDGE_KEYS if _text(known.get(k)) not in ("", "none")]
        labels.append(f"{name} · {'+'.join(kinds)}" if kinds else name)
    return pd.Series(labels, index=trials.index, dtype=object)


def distiller_comparison(
    trials: pd.DataFrame, size: str, defaults: Mapping[str, Mapping[str, Any]] | None = None
) -> pd.DataFrame:
    """COMPLETE trials with their size bucket (on the ``size`` objective), distiller and scheme label."""
    done = trials[(trials["status"] == "COMPLETE") & np.isfinite(trials["val_accuracy"])]
    buckets = size_buckets(done[size], unit=SIZE_SHORT.get(size, size))
    out = pd.DataFrame(
        {
            "trial_id": done["trial_id"],
            "distiller": done["distiller"],
            "label": scheme_labels(done, defaults),
            "bucket": buckets,
            "val_accuracy": done["val_accuracy"],
        }
    )
    return out.dropna(subset=["bucket"]).reset_index(drop=True)


# ---------------------------------------------------------------- hypervolume and compute


def reference_text(reference: Any) -> str:
    """pareto.json's ``reference_point`` in words. The search writes normalised bounds
    (``{"normalised", "bounds", "scale"}``); a flat ``{objective: value}`` is read too."""
    if not isinstance(reference, Mapping) or not reference:
        return ""
    bounds = reference.get("bounds")
    if isinstance(bounds, Mapping):
        scales = reference.get("scale") if isinstance(reference.get("scale"), Mapping) else {}
        parts = [_bound_text(name, pair, scales.get(name)) for name, pair in bounds.items()]
        return "Each objective scaled to [0, 1] (" + "; ".join(parts) + "); reference point 1 on every axis."
    parts = [f"{k} {human(float(v))}" for k, v in reference.items() if isinstance(v, (int, float))]
    return "Reference point: " + ", ".join(parts) if parts else ""


def _bound_text(name: str, pair: Any, scale: Any) -> str:
    try:
        lo, hi = (float(v) for v in pair)
    except (TypeError, ValueError):
        return name
    how = {"error": "as error 1 − value", "log10": "log scale"}.get(str(scale), "linear")
    return f"{name} {human(lo)}–{human(hi)}, {how}"


def time_unit(seconds: float) -> tuple[float, str]:
    """(divisor, unit) that keeps wall-time axes in readable numbers."""
    if not np.isfinite(seconds) or seconds < 600:
        return 1.0, "s"
    if seconds < 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


# ---------------------------------------------------------------- search space


def arch_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Architecture genomes flattened: family, stem, stages, s0.channels, s0.depth, ... (NaN where a
    trial has no such stage; booleans as 0/1)."""
    rows = []
    for arch in trials["arch"]:
        try:
            genome = json.loads(arch) if arch else {}
        except ValueError:
            genome = {}
        row: dict[str, Any] = {}
        if isinstance(genome, dict):
            row["family"] = genome.get("family", genome.get("torchvision"))
            row["stem"] = genome.get("stem")
            stages = genome.get("stages") if isinstance(genome.get("stages"), list) else []
            row["stages"] = len(stages) if stages else None
            for i, stage in enumerate(stages):
                for key, value in (stage if isinstance(stage, dict) else {}).items():
                    row[f"s{i}.{key}"] = int(value) if isinstance(value, bool) else value
        rows.append(row)
    table = pd.DataFrame(rows, index=trials.index)
    ordered = [c for c in ("family", "stem", "stages") if c in table] + sorted(
        (c for c in table if c.startswith("s") and "." in c), key=lambda c: (int(c[1:].split(".")[0]), c)
    )
    return table[ordered]


def parallel_dimensions(trials: pd.DataFrame, size: str) -> list[dict[str, Any]]:
    """Parcoords dimensions for COMPLETE trials: architecture parameters (constant ones dropped; a stage
    a trial does not have is 0), the distiller when several, log10 of the size objective, and validation
    accuracy last. Labels stay short: an axis is about 90 px wide at 1280 px."""
    done = complete_trials(trials)
    if done.empty:
        return []
    table = arch_table(done)
    table["distiller"] = done["distiller"]
    dims = []
    for column in table:
        values = table[column]
        if values.nunique(dropna=False) < 2:
            continue  # a constant axis says nothing and costs width
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().sum() == values.notna().sum():
            dims.append({"label": column, "values": numeric.fillna(0).tolist()})
        else:
            names = sorted(values.fillna("none").astype(str).unique())
            codes = values.fillna("none").astype(str).map({n: i for i, n in enumerate(names)})
            dims.append(
                {"label": column, "values": codes.tolist(), "tickvals": list(range(len(names))), "ticktext": names}
            )
    sizes = done[size].where(done[size] > 0)
    if sizes.notna().all():
        dims.append({"label": f"log10 {SIZE_SHORT.get(size, size)}", "values": np.log10(sizes).round(3).tolist()})
    dims.append({"label": "val acc (%)", "values": done["val_accuracy"].round(3).tolist()})
    return dims


def importance_frame(importances: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """{objective: {param: importance}} -> long frame (param, objective, importance), params ordered by
    their importance for the first objective (most important first)."""
    rows = [
        {"param": param, "objective": objective, "importance": float(value)}
        for objective, values in importances.items()
        for param, value in values.items()
    ]
    frame = pd.DataFrame(rows, columns=["param", "objective", "importance"])
    if frame.empty:
        return frame
    first = frame[frame["objective"] == next(iter(importances))].set_index("param")["importance"]
    order = {p: -first.get(p, 0.0) for p in frame["param"].unique()}
    return frame.sort_values(["param"], key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- learning curves


def learning_curves(curves: pd.DataFrame, trials: pd.DataFrame, category: pd.Series) -> pd.DataFrame:
    """curves.csv joined with each trial's category and whether it stopped early; sorted for line drawing."""
    columns = ["trial_id", "epoch", "val_accuracy", "category", "early_stopped", "status"]
    if curves.empty or trials.empty:
        return pd.DataFrame(columns=columns)
    info = pd.DataFrame(
        {
            "trial_id": trials["trial_id"],
            "category": category,
            "early_stopped": early_stopped(trials),
            "status": trials["status"],
        }
    )
    # curves.csv is append-only: an epoch trained again after a resume appears twice, and the last line counts
    curves = curves.assign(trial_id=curves["trial_id"].astype(str)).drop_duplicates(["trial_id", "epoch"], keep="last")
    joined = curves.merge(info, on="trial_id", how="inner")
    joined["epoch"] = pd.to_numeric(joined["epoch"], errors="coerce")
    joined["val_accuracy"] = pd.to_numeric(joined["val_accuracy"], errors="coerce")
    joined = joined.dropna(subset=["epoch", "val_accuracy"])
    return joined.sort_values(["trial_id", "epoch"])[columns].reset_index(drop=True)


CURVE_TRIALS = 400  # learning curves drawn at most; past this the page gets heavy and the lines unreadable


def sample_curves(curves: pd.DataFrame, limit: int = CURVE_TRIALS) -> tuple[pd.DataFrame, str]:
    """At most ``limit`` trials' curves: every Pareto member and running trial, then an even spread of the
    others (by trial order). Returns the kept rows and a note saying what was left out ('' if nothing)."""
    ids = list(dict.fromkeys(curves["trial_id"]))
    if len(ids) <= limit:
        return curves, ""
    first = curves.groupby("trial_id", sort=False)["category"].first()
    keep = [t for t in ids if first[t] in (PARETO, RUNNING)][:limit]
    others = [t for t in ids if first[t] not in (PARETO, RUNNING)]
    room = limit - len(keep)
    if room > 0 and others:
        keep += [others[i] for i in np.linspace(0, len(others) - 1, room).round().astype(int)]
    kept = curves[curves["trial_id"].isin(set(keep))]
    shown = kept["trial_id"].nunique()
    note = f"{shown} of {len(ids)} trials drawn: every Pareto member and running trial, and an even spread of the rest."
    return kept, note


def gapped(frame: pd.DataFrame, x: str, y: str, by: str = "trial_id") -> tuple[list[Any], list[Any], list[Any]]:
    """Many lines as one trace: (xs, ys, group keys), groups separated by None (Plotly breaks the line
    there). One trace for hundreds of trials keeps the page light."""
    xs: list[Any] = []
    ys: list[Any] = []
    keys: list[Any] = []
    for key, group in frame.groupby(by, sort=False):
        xs += [*group[x].tolist(), None]
        ys += [*group[y].tolist(), None]
        keys += [key] * len(group) + [None]
    return xs, ys, keys


# ---------------------------------------------------------------- bit widths


def bit_labels(trials: pd.DataFrame) -> pd.Series | None:
    """Each trial's bit widths as a short label ("fp32", "w4a4", "w4a8", per-stage "w4/2a4/2"), or None
    when no trial of the run is quantized (the report then draws no bit-width markers).

    Read from trials.csv's ``weight_bits``/``act_bits`` columns (32 = full precision); a row without them
    (an older run, a failed trial) is "?".
    """
    if "weight_bits" not in trials or "act_bits" not in trials:
        return None
    weights, acts = trials["weight_bits"].map(_bits_text), trials["act_bits"].map(_bits_text)
    if not ((weights != "32") & (weights != "?")).any():
        return None
    labels = ["fp32" if w == "32" else "?" if w == "?" else f"w{w}a{a}" for w, a in zip(weights, acts, strict=True)]
    return pd.Series(labels, index=trials.index)


def _bits_text(value: Any) -> str:
    text = _text(value)
    if not text:
        return "?"
    try:  # a CSV reads 4 as 4.0
        return str(int(float(text)))
    except ValueError:
        return text  # per-stage widths, "4/2"


def bit_order(labels: Iterable[str]) -> list[str]:
    """Labels from the widest to the narrowest (fp32 first, unknown last), for a stable legend."""

    def key(label: str) -> tuple[float, float, str]:
        if label == "fp32":
            return (-math.inf, -math.inf, label)
        widths = label[1:].split("a")[0].split("/")
        if not all(x.isdigit() for x in widths):
            return (math.inf, math.inf, label)
        return (-min(int(x) for x in widths), -max(int(x) for x in widths), label)  # narrowest stage decides

    return sorted(set(labels), key=key)


# ---------------------------------------------------------------- Pareto table


def pareto_table(trials: pd.DataFrame, category: pd.Series, size: str, paths: Mapping[str, str]) -> pd.DataFrame:
    """Front members sorted by size, with their metrics and where their saved student is.

    ``paths`` maps trial_id to the student folder (from pareto.json, resolved by the loader); a member
    without one (a running study that has not exported yet) gets ''.
    """
    members = trials[category == PARETO].sort_values(size, kind="stable")
    settings = distiller_text(members)
    bits = bit_labels(trials)  # "" in every row of a run without quantized students
    return pd.DataFrame(
        {
            "trial_id": members["trial_id"],
            "arch_summary": members["arch_summary"],
            "bits": bits[members.index] if bits is not None else "",
            "distiller": settings,
            "val_accuracy": members["val_accuracy"],
            "test_accuracy": members["test_accuracy"],
            "params": members["params"],
            "flops": members["flops"],
            "model_bytes": members["model_bytes"],
            "latency_ms": members["latency_ms"],
            "epochs": members["epochs"],
            "student_path": [paths.get(t) or "" for t in members["trial_id"]],
        }
    ).reset_index(drop=True)


# ---------------------------------------------------------------- final training and proxy fidelity
# These work on any accuracy scale (fractions in final.json, percent in the report).

MIN_RANKED = 3  # a rank correlation over fewer items says nothing


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between two rankings (ties handled); NaN for fewer than ``MIN_RANKED`` finite pairs or a
    constant side."""
    pairs = np.array([(a, b) for a, b in zip(x, y, strict=True) if np.isfinite(a) and np.isfinite(b)], dtype=float)
    if len(pairs) < MIN_RANKED or np.ptp(pairs[:, 0]) == 0 or np.ptp(pairs[:, 1]) == 0:
        return float("nan")
    return float(kendalltau(pairs[:, 0], pairs[:, 1]).statistic)


FINAL_ARM_COLUMNS = [
    "member", "arm", "distiller", "settings", "arch_summary", "params", "flops", "search_distiller",
    "search_val_accuracy", "search_test_accuracy", "seeds", "val_mean", "val_sd", "test_mean", "test_sd", "best",
    "front",
]  # fmt: skip


def final_arms(final: pd.DataFrame) -> pd.DataFrame:
    """final.csv rows -> one row per (member, recipe) over its COMPLETE seeds: mean and sample sd of validation
    and test accuracy; ``best`` marks each member's best recipe by validation mean, ``front`` the best recipes
    that no other member's best beats on both validation mean and params."""
    done = final[final["status"] == "COMPLETE"].copy()
    if done.empty:
        return pd.DataFrame(columns=FINAL_ARM_COLUMNS)
    for column in ("val_accuracy", "test_accuracy", "params", "flops", "search_val_accuracy", "search_test_accuracy"):
        done[column] = pd.to_numeric(done[column], errors="coerce")
    keys = ["member", "arm"]
    first = done.groupby(keys, sort=False).first()
    grouped = done.groupby(keys, sort=False)
    arms = pd.DataFrame(
        {
            **{c: first[c] for c in FINAL_ARM_COLUMNS[2:10] if c != "seeds"},
            "seeds": grouped.size(),
            "val_mean": grouped["val_accuracy"].mean(),
            "val_sd": grouped["val_accuracy"].std(ddof=1),
            "test_mean": grouped["test_accuracy"].mean(),
            "test_sd": grouped["test_accuracy"].std(ddof=1),
        }
    ).reset_index()
    arms["best"] = False
    arms.loc[arms.groupby("member", sort=False)["val_mean"].idxmax(), "best"] = True
    arms["front"] = False
    best = arms[arms["best"]]
    on_front = pareto_mask(best[["val_mean", "params"]].to_numpy(float), ["maximize", "minimize"])
    arms.loc[best.index[on_front], "front"] = True
    return arms[FINAL_ARM_COLUMNS].sort_values(["params", "member", "arm"], kind="stable").reset_index(drop=True)


def fidelity(arms: pd.DataFrame, recipe: str = "searched") -> dict[str, Any]:
    """Does the search budget rank students as the final training does? Kendall tau between each member's
    search validation accuracy and its final validation mean with the same recipe."""
    same = arms[arms["arm"] == recipe]
    return {
        "kendall_tau": kendall_tau(same["search_val_accuracy"].astype(float), same["val_mean"].astype(float)),
        "members": len(same),
    }


def epoch_fidelity(curves: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Over the search's full-budget (COMPLETE) trials: Kendall tau between validation accuracy after each
    epoch and at the last epoch, i.e. how early the ranking a scheduler acts on is already the final one."""
    done = trials.loc[trials["status"] == "COMPLETE", ["trial_id", "max_epochs"]]
    columns = ["epoch", "kendall_tau", "trials"]
    if done.empty or curves.empty:
        return pd.DataFrame(columns=columns)
    mine = curves[curves["trial_id"].astype(str).isin(done["trial_id"].astype(str))]
    # an epoch trained again after a resume appears again: the last line counts
    table = mine.drop_duplicates(["trial_id", "epoch"], keep="last").pivot(
        index="trial_id", columns="epoch", values="val_accuracy"
    )
    if table.empty:
        return pd.DataFrame(columns=columns)
    last = int(pd.to_numeric(done["max_epochs"], errors="coerce").max())
    if last not in table:
        return pd.DataFrame(columns=columns)
    rows = []
    for epoch in sorted(e for e in table.columns if e < last):
        both = table[[epoch, last]].dropna()
        rows.append({"epoch": int(epoch), "kendall_tau": kendall_tau(both[epoch], both[last]), "trials": len(both)})
    return pd.DataFrame(rows, columns=columns)
