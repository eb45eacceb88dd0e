"""``nas-kd bench gap [STUDY] --seeds 3``: the capacity-gap curve, measured.

A ladder of students of one family (the study's ``student``, widened or narrowed with its depths kept) at
about 3.2k, 10k, 32k, 100k and 316k params (those below the teacher's size), each trained with every arm
(default: ``ce``, ``offline-response`` i.e. Hinton KD, and ``assistant`` i.e. TAKD) against the same
cached teacher, for every seed. The table and figure give, per size, the capacity ratio (student / teacher
params), the ``ce`` test accuracy and each arm's gain over ``ce`` in pp: the mean and sample sd over seeds
of the paired difference (same size, same seed, so initialisation and batch order are shared).

The figure (``--out X.md`` or ``X.csv`` also writes ``X.html``) is the gain against the capacity ratio with
one-sd error bars: where the gain falls as the ratio shrinks, the teacher is too large for the student.
Pieces: ``--arms ce --out a.csv``, ``--arms offline-response,assistant --out b.csv``, ``--from-runs a.csv b.csv``;
``--sizes 100k,316k`` trains only those rungs (or any other sizes: targets in params, ``k`` and ``M`` allowed),
so the largest, slowest students can run as pieces of their own.

Default study: studies/fashion_mnist.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from nas_kd.arch import arch_summary
from nas_kd.bench import BenchError, student_bench_setup, study_overrides
from nas_kd.bench.tables import append_run, mean_std, new_runs_csv, publish, read_runs
from nas_kd.config import load_study
from nas_kd.distill.helpers import params_of, resize_to_params
from nas_kd.distill.presets import PRESET_NAMES, Preset, select_presets
from nas_kd.pipeline import train_student
from nas_kd.report.figures import gain_curve_figure

DEFAULT_STUDY = "studies/fashion_mnist.yaml"
DEFAULT_ARMS = "ce,offline-response,assistant"
BASELINE = "ce"  # every other arm's gain is over this one
LADDER = tuple(10 ** (3.5 + k / 2) for k in range(5))  # 3.2k ... 316k params, half a decade apart
SETUP_COLUMNS = ("study", "family", "teacher_params", "epochs")
RUN_COLUMNS = ("arm", "seed", "student", "params", "val_accuracy", "test_accuracy", "train_seconds", *SETUP_COLUMNS)


def run(args: argparse.Namespace) -> int:
    if args.from_runs:
        runs = read_runs(args.from_runs, RUN_COLUMNS, SETUP_COLUMNS, list(PRESET_NAMES), keys=("arm", "seed", "params"))
    else:
        runs = measure(args)
        if BASELINE not in set(runs["arm"]):  # a piece of other arms: its runs are in --out, its gains need ce's
            print(f"\n{len(runs)} runs; the gains are over {BASELINE}: nas-kd bench gap --from-runs THIS.csv CE.csv")
            return 0
    curve = gain_curve(runs)
    first = runs.iloc[0]
    title = (
        f"{first['study']}: {first['family']} students vs a {int(first['teacher_params']):,}-param teacher, "
        f"{first['epochs']} epochs, {runs['seed'].nunique()} seeds, mean ± sd"
    )
    publish(title, summarise(runs, curve), runs, runs, args.out, merge=bool(args.from_runs))
    if args.out:
        figure_path = Path(args.out).with_suffix(".html")
        gain_curve_figure(curve, title).write_html(figure_path, include_plotlyjs=True)
        print(f"figure written to {figure_path}")
    return 0


def measure(args: argparse.Namespace) -> pd.DataFrame:
    """Train every arm on every ladder student for every seed; rows added to ``--out X.csv`` as they finish."""
    study_path = args.study or DEFAULT_STUDY
    overrides = study_overrides(args)
    try:
        arms: list[Preset] = select_presets(args.arms or DEFAULT_ARMS, "--arms")
    except ValueError as error:
        raise BenchError(str(error)) from None
    targets = parse_sizes(args.sizes) if args.sizes else None
    csv_out = new_runs_csv(args.out)
    study = load_study(study_path, overrides)
    student, device, data, teachers = student_bench_setup(study, "the capacity gap is measured against a teacher")
    shape, classes, teacher_params = data.input_shape, data.num_classes, teachers[0].params
    students = ladder_students(student, teacher_params, shape, classes, targets)
    seeds = [study.seed + i for i in range(args.seeds)]
    print(f"nas-kd bench gap: {study_path}, {study.train.epochs} epochs, seeds {seeds}, device {device}")
    print(f"  teacher: {teacher_params:,} params, val_accuracy {teachers[0].val_accuracy:.4f}")
    setup = {"study": study.name, "family": students[0]["family"], "teacher_params": teacher_params,
             "epochs": study.train.epochs}  # fmt: skip
    sized = [(arch, params_of(arch, shape, classes)) for arch in students]
    rows = []
    for seed in seeds:  # seed by seed, so a slow spell on a shared machine hits every size and arm alike
        for arch, params in sized:
            for arm in arms:
                result = train_student(study, data, teachers, arch, arm.distiller, arm.settings, seed)
                row = {
                    "arm": arm.name, "seed": seed, "student": arch_summary(arch), "params": params,
                    "val_accuracy": result.val_accuracy, "test_accuracy": result.test_accuracy,
                    "train_seconds": sum(epoch.seconds for epoch in result.history), **setup,
                }  # fmt: skip
                rows.append(row)
                print(f"  {params:>8,} params {arm.name:<17} seed {seed}: test {result.test_accuracy:.4f}")
                if csv_out:
                    append_run(csv_out, row)
    return pd.DataFrame(rows)


def parse_sizes(text: str) -> tuple[float, ...]:
    """``--sizes 3.2k,10k,1M`` -> (3200.0, 10000.0, 1000000.0)."""
    sizes = []
    for word in text.split(","):
        number = word.strip().lower()
        scale = {"k": 1e3, "m": 1e6}.get(number[-1:], 1.0)
        try:
            size = float(number[:-1] if scale != 1.0 else number) * scale
        except ValueError:
            raise BenchError(f"--sizes: {word.strip()!r} is not a parameter count (e.g. 3.2k, 10000, 1M)") from None
        if not size >= 1:
            raise BenchError(f"--sizes: {word.strip()!r} must be a positive parameter count")
        sizes.append(size)
    return tuple(sizes)


def ladder_students(
    student: dict,
    teacher_params: int,
    input_shape: tuple[int, int, int],
    classes: int,
    targets: tuple[float, ...] | None = None,
) -> list[dict]:
    """The study's student resized to each ladder size below the teacher's (distinct architectures only), or
    to each of ``targets``, which must all be below the teacher."""
    if targets is not None:
        above = [f"{t:,.0f}" for t in targets if t >= teacher_params]
        if above:
            raise BenchError(f"--sizes: {', '.join(above)} not below the teacher's {teacher_params:,} params")
    students: list[dict] = []
    for target in targets or LADDER:
        if target >= teacher_params:
            break
        arch = resize_to_params(student, target, input_shape, classes)
        if arch not in students:
            students.append(arch)
    if not students:
        raise BenchError(
            f"teacher: {teacher_params:,} params leaves no ladder size below it (smallest {LADDER[0]:,.0f})"
        )
    return students


def gain_curve(runs: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """One row per (size, arm other than ``baseline``): params, capacity ratio, the mean and sample sd of the
    per-seed test-accuracy gain over ``baseline`` in pp, and how many seeds pair up."""
    if baseline not in set(runs["arm"]):
        raise BenchError(f"arm: the gains are over {baseline}; include it in --arms (or a --from-runs piece)")
    ce = runs[runs["arm"] == baseline].set_index(["params", "seed"])["test_accuracy"]
    rows = []
    for (params, arm), group in runs[runs["arm"] != baseline].groupby(["params", "arm"], sort=True):
        paired = group.set_index(["params", "seed"])["test_accuracy"].sub(ce).dropna() * 100
        if paired.empty:
            continue
        rows.append(
            {
                "params": int(params),
                "capacity_ratio": params / group["teacher_params"].iloc[0],
                "arm": arm,
                "gain": paired.mean(),
                "gain_sd": paired.std(ddof=1) if len(paired) > 1 else float("nan"),
                "seeds": len(paired),
            }
        )
    return pd.DataFrame(rows, columns=["params", "capacity_ratio", "arm", "gain", "gain_sd", "seeds"])


def summarise(runs: pd.DataFrame, curve: pd.DataFrame) -> pd.DataFrame:
    """One row per ladder size: the baseline's test accuracy and every other arm's paired gain (mean ± sd pp)."""
    rows = []
    for params, group in runs.groupby("params", sort=True):
        baseline = group[group["arm"] == BASELINE]
        row = {
            "params": f"{int(params):,}",
            "capacity ratio": f"{params / group['teacher_params'].iloc[0]:.3g}",
            f"{BASELINE} test %": mean_std(100 * baseline["test_accuracy"], 2),
        }
        for gain in curve[curve["params"] == params].itertuples():
            row[f"{gain.arm} gain (pp)"] = f"{gain.gain:+.2f} ± {gain.gain_sd:.2f}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("–")
