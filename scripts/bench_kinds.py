"""Benchmark of the robust, data-free and cross-view distillers on a study's student (docs/benchmarks.md).

    python scripts/bench_kinds.py studies/quickstart.yaml --epochs 6 --seeds 0 1 2 --out kinds.md

Every arm trains the study's ``student`` with the study's recipe (epochs overridden) and its teacher, once
per seed; the table gives test accuracy (and robust test accuracy under PGD for the robustness arms) as
mean ± std over the seeds.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from nas_kd.attacks import Attack, PixelSpace, robust_accuracy
from nas_kd.config import load_study
from nas_kd.distill.data_free import DataFreeSettings, synthesise
from nas_kd.pipeline import ready_teachers, study_data, train_student


def arms(epsilon: float, steps: int) -> list[tuple[str, str, dict[str, Any], bool]]:
    """(label, distiller, settings, robust): the arms, each against its control."""
    attack = {"epsilon": epsilon, "steps": steps}
    return [
        ("CE", "ce", {}, True),
        ("adversarial training, no teacher (teacher_weight 0)", "adversarial", {**attack, "teacher_weight": 0}, True),
        ("adversarial distillation (RSLAD, teacher_weight 1)", "adversarial", attack, True),
        ("KD with the training data (offline, T 4, alpha 0.9)", "offline", {"temperature": 4, "alpha": 0.9}, False),
        ("data-free (DeepInversion, 512 images x 100 iterations)", "data_free", {"images": 512, "iterations": 100}, False),
        ("cross-view student on 4x4, no teacher (alpha 0)", "cross_view", {"student_view": "resize:4x4", "alpha": 0}, False),
        ("cross-view student on 4x4, teacher on 8x8 (alpha 0.9)", "cross_view", {"student_view": "resize:4x4"}, False),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilon", type=float, default=0.1, help="PGD budget in pixel units, training and test")
    parser.add_argument("--steps", type=int, default=3, help="PGD steps while training")
    parser.add_argument("--test-steps", type=int, default=10, help="PGD steps for robust accuracy")
    parser.add_argument("--runs-dir", default="/tmp/nas-kd-bench-kinds")
    parser.add_argument("--arms", help="comma-separated arm numbers (0-based) to run")
    parser.add_argument("--out")
    parser.add_argument("--time-synthesis", action="store_true", help="only time data_free's synthesis (uncached)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    study = load_study(args.study, {"train.epochs": args.epochs, "runs_dir": args.runs_dir})
    data = study_data(study, torch.device("cpu"))
    teachers = [c.as_teacher("cpu") for c in ready_teachers(study, data)]
    arch = study.student.genome() if study.student else None
    assert arch is not None, "the study needs a student"
    attack, space = Attack(args.epsilon, args.test_steps), PixelSpace.of(data)
    if args.time_synthesis:
        time_synthesis(teachers[0].model, data.num_classes, data.input_shape, space)
        return
    chosen = arms(args.epsilon, args.steps)
    if args.arms:
        chosen = [chosen[int(i)] for i in args.arms.split(",")]
    lines = [
        f"| arm | test accuracy | robust test accuracy (PGD-{args.test_steps}, eps {args.epsilon}) | s/epoch |",
        "|---|---|---|---|",
    ]
    for label, name, settings, robust in chosen:
        clean, attacked, seconds = [], [], []
        for seed in args.seeds:
            start = time.perf_counter()
            result = train_student(study, data, teachers, arch, name, settings, seed)
            seconds.append((time.perf_counter() - start) / args.epochs)
            clean.append(result.test_accuracy)
            if robust:
                attacked.append(robust_accuracy(result.student, data.test, attack, space, seed=seed))
            print(label, seed, clean[-1], attacked[-1] if robust else "", flush=True)
        row = f"| {label} | {mean_std(clean)} | {mean_std(attacked) if robust else '-'} | {np.mean(seconds):.1f} |"
        lines.append(row)
        print(row, flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table + "\n")


def time_synthesis(teacher: torch.nn.Module, classes: int, shape: tuple[int, int, int], space: PixelSpace) -> None:
    """The one-off cost of the benchmark's data_free arm (512 images x 100 iterations), not read from the cache."""
    settings = DataFreeSettings(images=512, iterations=100, synthesis_seed=7)
    labels = torch.arange(settings.images) % classes
    wall, cpu = time.perf_counter(), time.process_time()
    synthesise(teacher, labels, shape, space, settings)
    print(f"synthesis 512 x 100: wall {time.perf_counter() - wall:.1f} s, cpu {time.process_time() - cpu:.1f} s")


def mean_std(values: list[float]) -> str:
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


if __name__ == "__main__":
    main()
