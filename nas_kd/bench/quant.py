"""``nas-kd bench quant [STUDY] --seeds 3 --epochs 12``: does distillation narrow the quantization gap?

One student architecture (the study's ``student``, its ``quant`` block replaced per arm), the study's recipe
and cached teacher. Arms: fp32, 8-bit, 4-bit and 2-bit weights and activations (first and last layer at
8 bits, the default), each trained with labels only (``ce``) and with Hinton KD (``offline``, T = 4,
alpha = 0.9), quantization-aware from scratch. Runs go seed by seed through all arms. The table gives test
accuracy (mean ± std over seeds), the gap to fp32 of the same distiller, and the model size in bytes with
weights packed at their bit width.

``--arms fp32-ce,w4-kd`` picks a subset; ``--out X.csv`` / ``--from-runs`` as in the other benchmarks.
Default study: studies/quant_digits.yaml.
"""

from __future__ import annotations

import argparse

import pandas as pd

from nas_kd.arch import arch_summary, build_model, model_bytes
from nas_kd.bench import BenchError, student_bench_setup, study_overrides
from nas_kd.bench.tables import append_run, mean_std, new_runs_csv, publish, read_runs
from nas_kd.config import load_study
from nas_kd.pipeline import train_student

DEFAULT_STUDY = "studies/quant_digits.yaml"
BITS = (32, 8, 4, 2)
DISTILLERS = {"ce": ("ce", {}), "kd": ("offline", {"temperature": 4.0, "alpha": 0.9})}
ARMS = [f"{'fp32' if bits == 32 else f'w{bits}'}-{kind}" for bits in BITS for kind in DISTILLERS]
SETUP_COLUMNS = ("study", "student", "epochs")
RUN_COLUMNS = ("arm", "bits", "seed", "val_accuracy", "test_accuracy", "model_bytes", "train_seconds", *SETUP_COLUMNS)


def arm_arch(base: dict, arm: str) -> dict:
    bits = 32 if arm.startswith("fp32") else int(arm[1 : arm.index("-")])
    arch = {k: v for k, v in base.items() if k != "quant"}
    return arch if bits == 32 else {**arch, "quant": {"weight_bits": bits, "act_bits": bits}}


def run(args: argparse.Namespace) -> int:
    runs = read_runs(args.from_runs, RUN_COLUMNS, SETUP_COLUMNS, ARMS) if args.from_runs else measure(args)
    accuracies = {column: runs[column].map("{:.4f}".format) for column in ("val_accuracy", "test_accuracy")}
    listed = runs.assign(**accuracies).drop(columns=list(SETUP_COLUMNS))
    first = runs.iloc[0]
    title = (
        f"{first['study']}: {first['student']}, {first['epochs']} epochs, {runs['seed'].nunique()} seeds, "
        "test accuracy mean ± std"
    )
    publish(title, summarise(runs), runs, listed, args.out, merge=bool(args.from_runs))
    return 0


def select_arms(names: str | None) -> list[str]:
    if not names:
        return list(ARMS)
    wanted = {name.strip() for name in names.split(",")}
    if wanted - set(ARMS):
        raise BenchError(f"--arms: unknown {sorted(wanted - set(ARMS))}; choose from {', '.join(ARMS)}")
    return [arm for arm in ARMS if arm in wanted]


def measure(args: argparse.Namespace) -> pd.DataFrame:
    overrides = study_overrides(args)
    arms = select_arms(args.arms)
    csv_out = new_runs_csv(args.out)
    study = load_study(args.study or DEFAULT_STUDY, overrides)
    base, device, data, teachers = student_bench_setup(study, "the kd arms need a teacher")
    setup = {"study": study.name, "student": arch_summary(arm_arch(base, "fp32-ce")), "epochs": study.train.epochs}
    seeds = [study.seed + i for i in range(args.seeds)]
    print(f"nas-kd bench quant: {study.path}, {study.train.epochs} epochs, seeds {seeds}, device {device}")
    rows = []
    for seed in seeds:
        for arm in arms:
            arch = arm_arch(base, arm)
            distiller, settings = DISTILLERS[arm.rsplit("-", 1)[1]]
            result = train_student(study, data, teachers, arch, distiller, settings, seed)
            row = {
                "arm": arm,
                "bits": arch.get("quant", {}).get("weight_bits", 32),
                "seed": seed,
                "val_accuracy": result.val_accuracy,
                "test_accuracy": result.test_accuracy,
                "model_bytes": model_bytes(build_model(arch, data.input_shape, data.num_classes)),
                "train_seconds": sum(epoch.seconds for epoch in result.history),
                **setup,
            }
            rows.append(row)
            print(f"  {arm:<8} seed {seed}: test {row['test_accuracy']:.4f} ({row['train_seconds']:.1f}s)", flush=True)
            if csv_out:
                append_run(csv_out, row)
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per bit width: ce and kd test accuracy, each one's gap to fp32 of the same distiller, bytes."""
    rows = []
    fp32 = {kind: runs[runs["arm"] == f"fp32-{kind}"]["test_accuracy"].mean() for kind in DISTILLERS}
    for bits in BITS:
        group = runs[runs["bits"] == bits]
        if group.empty:
            continue
        row: dict[str, str | int] = {"bits (w/a)": "fp32" if bits == 32 else f"{bits}/{bits}"}
        for kind in DISTILLERS:
            accuracy = group[group["arm"].str.endswith(f"-{kind}")]["test_accuracy"]
            row[f"{kind} test %"] = mean_std(100 * accuracy, 2) if len(accuracy) else "-"
            row[f"{kind} gap (pp)"] = f"{100 * (accuracy.mean() - fp32[kind]):+.2f}" if len(accuracy) else "-"
        row["bytes"] = int(group["model_bytes"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)
