"""``nas-kd bench distillers [STUDY] --seeds 3 --epochs 10``: every distillation scheme on one fixed student.

Arms (one student, the study's training recipe, the same cached teachers for every arm and seed):

- ``ce``: labels only (the control arm);
- ``offline-response``: Hinton KD (T = 4, alpha = 0.9);
- ``offline-feature``: CE + FitNets hints on every paired stage (no response term);
- ``offline-relation``: CE + RKD distance and angle (no response term);
- ``offline-dkd``: decoupled KD at its published weights and 20-epoch warm-up; ``offline-dkd-no-warmup``
  the same without the warm-up;
- ``offline-ls-kd``: KD on standardised logits; ``offline-dist``: DIST's inter- and intra-class relations;
- ``offline-crd``: CE + contrastive representation distillation (memory bank, no response term);
- ``online``: deep mutual learning with one peer of the student's architecture;
- ``self``: Be Your Own Teacher (auxiliary heads, stripped at export);
- ``assistant``: TAKD with one assistant at the geometric mean of teacher and student sizes;
- ``multi_teacher``: the mean of the study's teachers' soft targets. A study with one teacher gets a
  second one, so the arm has something to combine: the teacher at half its width with the next seed.

The student is the study's ``student``, narrowed (same family and depths) to 1/20 of the teacher's
parameters if it is larger. Seeds change the student's initialisation and batch order only. Runs go seed
by seed through all arms, so a slow spell on a shared machine hits every arm alike. "train s" is the
training loop alone; one-time work (training an assistant or the extra teacher, cached) is not in it.

A long run can go in pieces: ``--arms ce,online --out a.csv``, ``--arms self --out b.csv``, then
``--from-runs a.csv b.csv`` prints the one table (training on CPU is deterministic for a seed and a
thread count, so pieces run on as many threads give the numbers the single command would).

Default study: studies/fashion_mnist.yaml.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import pandas as pd

from nas_kd.arch import arch_summary, build_model, count_params
from nas_kd.bench import BenchError, student_bench_setup, study_overrides
from nas_kd.bench.tables import append_run, mean_std, new_runs_csv, publish, read_runs
from nas_kd.config import Study, load_study
from nas_kd.distill.helpers import resize_to_params, scale_width
from nas_kd.distill.presets import PRESET_NAMES, PRESETS, Preset, select_presets
from nas_kd.pipeline import train_student

DEFAULT_STUDY = "studies/fashion_mnist.yaml"
MAX_SHARE = 1 / 20  # the student has at most this share of the teacher's parameters
SETUP_COLUMNS = ("study", "student", "params", "epochs")
RUN_COLUMNS = ("arm", "seed", "val_accuracy", "test_accuracy", "train_seconds", *SETUP_COLUMNS)


def run(args: argparse.Namespace) -> int:
    runs = (
        read_runs(args.from_runs, RUN_COLUMNS, SETUP_COLUMNS, list(PRESET_NAMES)) if args.from_runs else measure(args)
    )
    accuracies = {column: runs[column].map(_four_places) for column in ("val_accuracy", "test_accuracy")}
    listed = runs.assign(**accuracies).drop(columns=list(SETUP_COLUMNS))
    publish(describe(runs), summarise(runs), runs, listed, args.out, merge=bool(args.from_runs))
    return 0


def measure(args: argparse.Namespace) -> pd.DataFrame:
    """Train every selected arm for every seed; one row per run, added to ``--out X.csv`` as each finishes."""
    study_path = args.study or DEFAULT_STUDY
    overrides = study_overrides(args)
    arms = select_arms(args.arms)
    csv_out = new_runs_csv(args.out)
    study = load_study(study_path, overrides)
    if any(arm.distiller == "multi_teacher" for arm in arms):
        study = with_two_teachers(study)
    genome, device, data, teachers = student_bench_setup(study, "every arm's student is sized against the teacher")
    arch = bench_student(genome, teachers[0].params, data.input_shape, data.num_classes)
    params = count_params(build_model(arch, data.input_shape, data.num_classes))
    seeds = [study.seed + i for i in range(args.seeds)]
    print(f"nas-kd bench distillers: {study_path}, {study.train.epochs} epochs, seeds {seeds}, device {device}")
    for t in teachers:
        print(f"  {t.name}: {t.params:,} params, val_accuracy {t.val_accuracy:.4f}")
    print(f"  student: {arch_summary(arch)}, {params:,} params (1/{teachers[0].params / params:.0f} of the teacher)")

    setup = {"study": study.name, "student": arch_summary(arch), "params": params, "epochs": study.train.epochs}
    rows = []
    for seed in seeds:
        for arm in arms:
            start = time.perf_counter()
            result = train_student(study, data, teachers, arch, arm.distiller, arm.settings, seed)
            train_seconds = sum(epoch.seconds for epoch in result.history)
            row = {
                "arm": arm.name,
                "seed": seed,
                "val_accuracy": result.val_accuracy,
                "test_accuracy": result.test_accuracy,
                "train_seconds": train_seconds,
                "setup_seconds": time.perf_counter() - start - train_seconds,
                **setup,
            }
            rows.append(row)
            print(
                f"  {arm.name:<17} seed {seed}: val {result.val_accuracy:.4f} test {_four_places(result.test_accuracy)} "
                f"({train_seconds:.1f}s)"
            )
            if csv_out:
                append_run(csv_out, row)
    return pd.DataFrame(rows)


def describe(runs: pd.DataFrame) -> str:
    first = runs.iloc[0]
    seeds = runs["seed"].nunique()
    return (
        f"{first['study']}: {first['student']} ({first['params']:,} params), {first['epochs']} epochs, "
        f"{seeds} seeds, mean ± std"
    )


def select_arms(names: str | None) -> list[Preset]:
    """``--arms ce,offline-response``: a subset, in the canonical order (all arms by default)."""
    try:
        return select_presets(names, "--arms")
    except ValueError as error:
        raise BenchError(str(error)) from None


def with_two_teachers(study: Study) -> Study:
    """The study, plus a second teacher when it has a single one.

    The second is the teacher at half its width (about a quarter of its parameters and of its training
    compute) with the next seed, so the ensemble mixes sizes and initialisations. A torchvision teacher
    cannot be narrowed; its second is a copy with the next seed.
    """
    if len(study.all_teachers()) != 1:
        return study
    teacher = study.all_teachers()[0]
    genome = teacher.genome()
    update: dict[str, Any] = {"seed": study.teacher_seed(teacher) + 1}
    if "torchvision" not in genome:
        update |= {"arch": scale_width(genome, 0.5), "arch_file": None}
    second = teacher.model_copy(update=update)
    return study.model_copy(update={"teachers": [*study.teachers, second]})


def bench_student(arch: dict, teacher_params: int, input_shape: tuple[int, int, int], classes: int) -> dict:
    """The study's student, narrowed to below ``MAX_SHARE`` of the teacher's parameters if it is larger."""
    if count_params(build_model(arch, input_shape, classes)) > MAX_SHARE * teacher_params:
        arch = resize_to_params(arch, MAX_SHARE * teacher_params * 0.9, input_shape, classes)
    return arch


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: accuracies in percent (mean ± std over seeds), the gain over ce, seconds."""
    ce_test = runs[runs["arm"] == "ce"]["test_accuracy"].mean()
    rows = []
    for arm in PRESETS:
        group = runs[runs["arm"] == arm.name]
        if group.empty:
            continue
        rows.append(
            {
                "arm": arm.name,
                "settings": ", ".join(f"{k}={v}" for k, v in arm.settings.items()) or "defaults",
                "val accuracy %": mean_std(100 * group["val_accuracy"], 2),
                "test accuracy %": mean_std(100 * group["test_accuracy"], 2),
                "test vs ce (pp)": f"{100 * (group['test_accuracy'].mean() - ce_test):+.2f}",
                "train s/run": mean_std(group["train_seconds"], 1),
            }
        )
    return pd.DataFrame(rows)


def _four_places(value: float | None) -> str:
    """An accuracy to 4 places; n/a for data without a test split."""
    return "n/a" if value is None or value != value else f"{value:.4f}"
