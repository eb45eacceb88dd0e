"""Unit tests of the report's data preparation (pure functions over the trials table)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from nas_kd.report import data as d

ARCH_A = json.dumps({"family": "resnet", "stem": 8, "stages": [{"channels": 16, "depth": 1}]})
ARCH_A_REORDERED = '{"stages": [{"depth": 1, "channels": 16}], "stem": 8, "family": "resnet"}'
ARCH_B = json.dumps(
    {"family": "resnet", "stem": 16, "stages": [{"channels": 32, "depth": 2}, {"channels": 64, "depth": 1}]}
)


def table(*rows: dict) -> pd.DataFrame:
    """A normalised trials table; unspecified cells are empty, as in a CSV the search wrote."""
    defaults = {"status": "COMPLETE", "epochs": 10, "max_epochs": 10, "distiller": "ce", "arch": ARCH_A}
    return d.normalise_trials(
        pd.DataFrame([{"trial_id": f"t{i}", "number": i, **defaults, **r} for i, r in enumerate(rows)])
    )


# ---------------------------------------------------------------- table hygiene


def test_normalise_adds_missing_columns_and_types() -> None:
    raw = pd.DataFrame({"trial_id": ["a", "b"], "status": ["complete", None], "pareto": ["True", "false"]})
    df = d.normalise_trials(raw)
    assert list(df["status"]) == ["COMPLETE", "RUNNING"]  # a row without status has not finished
    assert list(df["pareto"]) == [True, False]
    assert df["params"].isna().all() and df["params"].dtype == float
    assert list(df["number"]) == [0.0, 1.0]
    assert list(df["distiller"]) == ["?", "?"]


def test_normalise_empty_frame() -> None:
    df = d.normalise_trials(pd.DataFrame())
    assert df.empty and {"trial_id", "val_accuracy", "pareto"} <= set(df.columns)


def test_percent_factor() -> None:
    assert d.percent_factor([0.5, 0.97], [math.nan]) == 100.0
    assert d.percent_factor([55.0, 97.1]) == 1.0
    assert d.percent_factor([], [math.nan]) == 100.0


@pytest.mark.parametrize(
    ("value", "text"), [(950, "950"), (1234, "1.23k"), (4.5e6, "4.5M"), (2e9, "2G"), (math.nan, "–")]
)
def test_human(value: float, text: str) -> None:
    assert d.human(value) == text


# ---------------------------------------------------------------- Pareto front


def front(rows: list[tuple[float, ...]], objectives: tuple[str, ...] = ("val_accuracy", "params")) -> list[bool]:
    trials = table(*({"status": "COMPLETE", **dict(zip(objectives, r, strict=True))} for r in rows))
    directions = ["maximize"] + ["minimize"] * (len(objectives) - 1)
    return list(d.classify(trials, objectives, directions) == d.PARETO)


def test_front_two_objectives() -> None:
    # (accuracy up, params down): (90, 100) and (95, 300) are the front; (85, 200) is dominated by (90, 100)
    assert front([(90, 100), (85, 200), (95, 300), (95, 400)]) == [True, False, True, False]


def test_front_keeps_duplicates_and_skips_missing_values() -> None:
    assert front([(90, 100), (90, 100), (math.nan, 10), (80, 500)]) == [True, True, False, False]


def test_front_three_objectives() -> None:
    # the third point is less accurate but smaller than the second: not dominated
    rows = [(90, 100, 5.0), (91, 100, 5.0), (89, 50, 9.0), (88, 200, 9.0)]
    assert front(rows, ("val_accuracy", "params", "latency_ms")) == [False, True, True, False]


def test_classify_front_comes_from_complete_rows_only() -> None:
    trials = table(
        {"val_accuracy": 90, "params": 100},
        {"val_accuracy": 99, "params": 10, "status": "PRUNED"},  # would dominate, but is not COMPLETE
        {"val_accuracy": 80, "params": 200},
        {"status": "FAILED", "params": 50},
        {"status": "RUNNING", "val_accuracy": 70},
        {"status": "REJECTED"},
    )
    category = d.classify(trials, ["val_accuracy", "params"], ["maximize", "minimize"])
    assert list(category) == [d.PARETO, d.PRUNED, d.DOMINATED, d.FAILED, d.RUNNING, d.REJECTED]


def test_step_line_staircase() -> None:
    xs, ys = d.step_line([300, 100, 200], [95, 85, 90], x_end=1000)
    assert xs == [100, 200, 200, 300, 300, 1000]
    assert ys == [85, 85, 90, 90, 95, 95]


def test_step_line_single_point_and_empty() -> None:
    assert d.step_line([5], [1]) == ([5.0], [1.0])
    assert d.step_line([], [], x_end=10) == ([], [])


def test_early_stopped() -> None:
    trials = table(
        {"epochs": 10},
        {"epochs": 4},  # COMPLETE with partial values: a scheduler stop
        {"status": "PRUNED", "epochs": 3},
        {"status": "RUNNING", "epochs": 2},
    )
    assert list(d.early_stopped(trials)) == [False, True, True, False]


# ---------------------------------------------------------------- hover


def test_distiller_settings_reads_only_the_rows_own_columns() -> None:
    trials = table(
        {"distiller": "offline", "offline.temperature": 4.0, "offline.alpha": 0.9},
        {"distiller": "ce"},
        {"distiller": "dkd", "dkd.beta": 8.0, "offline.temperature": 2.0},
    )
    assert list(d.distiller_settings(trials)) == ["temperature=4, alpha=0.9", "", "beta=8"]
    assert list(d.distiller_text(trials)) == ["offline (temperature=4, alpha=0.9)", "ce", "dkd (beta=8)"]


def test_hover_text_has_the_details() -> None:
    trials = table(
        {
            "trial_id": "abc",
            "status": "FAILED",
            "arch_summary": "resnet 8|16x1",
            "distiller": "offline",
            "offline.temperature": 4.0,
            "params": 12345,
            "flops": 2.5e6,
            "latency_ms": 0.42,
            "error": "RuntimeError: loss is NaN",
        }
    )
    text = d.hover_text(trials)[0]
    for part in ("trial abc", "FAILED", "resnet 8|16x1", "offline (temperature=4)", "12.3k", "2.5M", "0.42 ms", "NaN"):
        assert part in text


# ---------------------------------------------------------------- capacity gap


def test_capacity_gap() -> None:
    trials = table(
        {"val_accuracy": 90.0, "params": 1000},
        {"val_accuracy": 95.0, "params": 5000, "distiller": "offline"},
        {"status": "PRUNED", "val_accuracy": 50.0, "params": 100},
    )
    gap = d.capacity_gap(trials, teacher_params=10000, teacher_accuracy=98.0)
    assert list(gap["trial_id"]) == ["t0", "t1"]
    assert list(gap["capacity_ratio"]) == pytest.approx([0.1, 0.5])
    assert list(gap["gap"]) == pytest.approx([8.0, 3.0])


def test_distillation_gain_prefers_same_architecture() -> None:
    trials = table(
        {"distiller": "ce", "arch": ARCH_A, "val_accuracy": 90.0, "params": 1000},
        {"distiller": "ce", "arch": ARCH_A, "val_accuracy": 92.0, "params": 1000},  # two seeds: averaged
        {"distiller": "ce", "arch": ARCH_B, "val_accuracy": 80.0, "params": 1050},  # size-matched, but not used
        {"distiller": "offline", "arch": ARCH_A_REORDERED, "val_accuracy": 93.5, "params": 1000},
    )
    gain = d.distillation_gain(trials, teacher_params=10000)
    assert len(gain) == 1
    row = gain.iloc[0]
    assert row["match"] == "same architecture"
    assert row["gain"] == pytest.approx(2.5)
    assert row["baseline_trials"] == "t0, t1"
    assert row["capacity_ratio"] == pytest.approx(0.1)


def test_distillation_gain_size_matched_within_tolerance() -> None:
    trials = table(
        {"distiller": "ce", "arch": ARCH_B, "val_accuracy": 90.0, "params": 1100},  # +10 %: matched
        {"distiller": "ce", "arch": ARCH_B, "val_accuracy": 94.0, "params": 900},  # -10 %: matched
        {"distiller": "ce", "arch": ARCH_B, "val_accuracy": 50.0, "params": 2000},  # 2x: not matched
        {"distiller": "offline", "arch": ARCH_A, "val_accuracy": 95.0, "params": 1000},
        {"distiller": "offline", "arch": ARCH_A, "val_accuracy": 95.0, "params": 100},  # nothing near: left out
    )
    gain = d.distillation_gain(trials, teacher_params=None, tolerance=0.25)
    assert list(gain["trial_id"]) == ["t3"]
    assert gain.iloc[0]["gain"] == pytest.approx(3.0)
    assert gain.iloc[0]["match"].startswith("size-matched")
    assert math.isnan(gain.iloc[0]["capacity_ratio"])


def test_distillation_gain_without_ce_arm_is_empty_with_columns() -> None:
    gain = d.distillation_gain(table({"distiller": "offline", "val_accuracy": 90.0, "params": 10}))
    assert gain.empty and {"gain", "capacity_ratio", "match"} <= set(gain.columns)


def test_primary_teacher() -> None:
    teachers = pd.DataFrame([{"name": "ta", "role": "assistant"}, {"name": "big", "role": "teacher"}])
    assert d.primary_teacher(teachers)["name"] == "big"
    assert d.primary_teacher(teachers.iloc[:1])["name"] == "ta"
    assert d.primary_teacher(teachers.iloc[:0]) is None


# ---------------------------------------------------------------- size buckets


def test_size_buckets_split_log_quantiles_evenly() -> None:
    sizes = pd.Series([10.0 ** (1 + i / 10) for i in range(40)])
    buckets = d.size_buckets(sizes, max_buckets=4)
    assert buckets.cat.ordered and len(buckets.cat.categories) == 4
    assert buckets.value_counts().sort_index().tolist() == [10, 10, 10, 10]
    codes = buckets.cat.codes.tolist()
    assert codes == sorted(codes)  # bigger models never land in a smaller bucket
    assert buckets.cat.categories[0].startswith("10–") and buckets.cat.categories[0].endswith("params")


def test_size_buckets_edge_values_and_nan() -> None:
    sizes = pd.Series([100.0, 100.0, 100.0, math.nan, 0.0])
    buckets = d.size_buckets(sizes)
    assert list(buckets.cat.categories) == ["100 params"]
    assert buckets.isna().tolist() == [False, False, False, True, True]
    assert d.size_buckets(pd.Series([math.nan])).isna().all()


def test_scheme_labels_name_the_knowledge() -> None:
    trials = table(
        {"distiller": "offline", "offline.response": "dkd", "offline.feature": "at"},
        {"distiller": "offline"},  # knowledge fixed at the distiller's defaults
        {"distiller": "offline", "offline.response": "none", "offline.relation": "rkd"},
        {"distiller": "ce"},
        {"distiller": "online", "offline.response": "dkd"},  # another distiller's column: ignored
    )
    defaults = {"offline": {"response": "kd", "feature": "none", "relation": "none"}, "ce": {}}
    labels = list(d.scheme_labels(trials, defaults))
    assert labels == ["offline · dkd+at", "offline · kd", "offline · rkd", "ce", "online"]


def test_distiller_comparison_labels_and_buckets() -> None:
    trials = table(
        {"distiller": "offline", "val_accuracy": 91.0, "params": 1000},
        {"distiller": "ce", "val_accuracy": 90.0, "params": 100000},
        {"status": "RUNNING", "val_accuracy": 40.0, "params": 100},
    )
    out = d.distiller_comparison(trials, "params", {"offline": {"response": "kd"}})
    assert list(out["label"]) == ["offline · kd", "ce"]
    assert list(out["distiller"]) == ["offline", "ce"]
    assert out["bucket"].cat.codes.tolist() == [0, len(out["bucket"].cat.categories) - 1]


@pytest.mark.parametrize(("seconds", "unit"), [(30, "s"), (1200, "min"), (36000, "h"), (math.nan, "s")])
def test_time_unit(seconds: float, unit: str) -> None:
    assert d.time_unit(seconds)[1] == unit


# ---------------------------------------------------------------- search space


def test_arch_table_flattens_stages() -> None:
    trials = table({"arch": ARCH_A}, {"arch": ARCH_B}, {"arch": "not json"})
    arch = d.arch_table(trials)
    assert list(arch.columns) == ["family", "stem", "stages", "s0.channels", "s0.depth", "s1.channels", "s1.depth"]
    assert arch.loc[1, "s1.channels"] == 64
    assert pd.isna(arch.loc[0, "s1.channels"])
    assert arch.loc[2].isna().all()


def test_parallel_dimensions() -> None:
    trials = table(
        {"arch": ARCH_A, "val_accuracy": 90.0, "params": 1000, "distiller": "ce"},
        {"arch": ARCH_B, "val_accuracy": 95.0, "params": 10000, "distiller": "offline"},
        {"arch": ARCH_B, "status": "FAILED", "params": 10000},
    )
    dims = {dim["label"]: dim for dim in d.parallel_dimensions(trials, "params")}
    assert "family" not in dims  # constant: dropped
    assert dims["s1.channels"]["values"] == [0, 64]
    assert dims["distiller"]["ticktext"] == ["ce", "offline"] and dims["distiller"]["values"] == [0, 1]
    assert dims["log10 params"]["values"] == [3.0, 4.0]
    assert list(dims)[-1] == "val acc (%)"
    assert d.parallel_dimensions(table({"status": "RUNNING"}), "params") == []


def test_importance_frame_orders_by_first_objective() -> None:
    frame = d.importance_frame({"val_accuracy": {"a": 0.2, "b": 0.8}, "params": {"a": 0.9, "b": 0.1}})
    assert list(frame["param"].unique()) == ["b", "a"]
    assert len(frame) == 4
    assert d.importance_frame({}).empty


# ---------------------------------------------------------------- learning curves and table


def test_learning_curves_join_and_gaps() -> None:
    trials = table(
        {"trial_id": "a", "val_accuracy": 90.0, "params": 10}, {"trial_id": "b", "status": "PRUNED", "epochs": 1}
    )
    curves = pd.DataFrame({"trial_id": ["b", "a", "a", "zzz"], "epoch": [1, 2, 1, 1], "val_accuracy": [50, 80, 70, 1]})
    category = d.classify(trials, ["val_accuracy", "params"], ["maximize", "minimize"])
    joined = d.learning_curves(curves, trials, category)
    assert list(joined["trial_id"]) == ["a", "a", "b"]  # the unknown trial is dropped, epochs sorted
    assert list(joined["epoch"]) == [1, 2, 1]
    assert list(joined["early_stopped"]) == [False, False, True]
    xs, ys, ids = d.gapped(joined, "epoch", "val_accuracy")
    assert xs == [1, 2, None, 1, None] and ys == [70, 80, None, 50, None] and ids == ["a", "a", None, "b", None]
    assert d.learning_curves(curves.iloc[:0], trials, category).empty


def test_pareto_table_sorted_with_paths() -> None:
    trials = table(
        {"trial_id": "big", "val_accuracy": 95.0, "params": 5000},
        {"trial_id": "small", "val_accuracy": 90.0, "params": 100},
        {"trial_id": "bad", "val_accuracy": 80.0, "params": 6000},
    )
    category = d.classify(trials, ["val_accuracy", "params"], ["maximize", "minimize"])
    out = d.pareto_table(trials, category, "params", {"small": "/runs/x/students/small"})
    assert list(out["trial_id"]) == ["small", "big"]
    assert list(out["student_path"]) == ["/runs/x/students/small", ""]


def test_bit_labels_name_each_students_widths_and_the_table_lists_them() -> None:
    trials = table(
        {"trial_id": "fp", "val_accuracy": 95.0, "params": 5000, "weight_bits": 32, "act_bits": 32},
        {"trial_id": "w2", "val_accuracy": 90.0, "params": 100, "weight_bits": 2, "act_bits": 2},
        {"trial_id": "w4", "val_accuracy": 93.0, "params": 500, "weight_bits": "4.0", "act_bits": 8},
        {"trial_id": "mix", "val_accuracy": 80.0, "params": 6000, "weight_bits": "4/2", "act_bits": "4/2"},
        {"trial_id": "old", "val_accuracy": 70.0, "params": 7000},
    )
    labels = d.bit_labels(trials)
    assert labels is not None and list(labels) == ["fp32", "w2a2", "w4a8", "w4/2a4/2", "?"]
    assert d.bit_order(labels) == ["fp32", "w4a8", "w4/2a4/2", "w2a2", "?"]  # widest first, unknown last
    category = d.classify(trials, ["val_accuracy", "params"], ["maximize", "minimize"])
    assert list(d.pareto_table(trials, category, "params", {})["bits"]) == ["w2a2", "w4a8", "fp32"]
    plain = table({"val_accuracy": 95.0, "params": 5000, "weight_bits": 32, "act_bits": 32}, {"val_accuracy": 90.0})
    assert d.bit_labels(plain) is None  # no quantized student: no bit markers, an empty bits column
    assert list(
        d.pareto_table(plain, d.classify(plain, ["val_accuracy", "params"], ["maximize", "minimize"]), "params", {})[
            "bits"
        ]
    ) == [""]


def test_learning_curves_keep_the_last_line_of_an_epoch_trained_again() -> None:
    trials = table({"trial_id": "a", "val_accuracy": 90.0, "params": 10})
    curves = pd.DataFrame({"trial_id": ["a", "a", "a"], "epoch": [1, 2, 2], "val_accuracy": [50, 60, 65]})
    category = d.classify(trials, ["val_accuracy", "params"], ["maximize", "minimize"])
    assert list(d.learning_curves(curves, trials, category)["val_accuracy"]) == [50, 65]  # after a resume


def test_sample_curves_keeps_the_front_and_spreads_the_rest() -> None:
    ids = [f"t{i}" for i in range(1000)]
    category = [d.PARETO if i % 100 == 0 else d.RUNNING if i == 999 else d.DOMINATED for i in range(1000)]
    curves = pd.DataFrame({"trial_id": ids * 2, "epoch": [1] * 1000 + [2] * 1000, "category": category * 2})
    kept, note = d.sample_curves(curves, limit=50)
    shown = set(kept["trial_id"])
    assert len(shown) == 50 and {f"t{i}" for i in range(0, 1000, 100)} | {"t999"} <= shown
    assert "t1" in shown and "t998" in shown  # the spread reaches both ends
    assert len(kept) == 100 and note.startswith("50 of 1000 trials drawn")
    small, note = d.sample_curves(curves.iloc[:10], limit=50)
    assert len(small) == 10 and note == ""
