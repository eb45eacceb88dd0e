"""Does the prescreen's bet hold on a study? Students drawn from the study's space are scored untrained (NASWOT,
as ``search.prescreen`` scores them), then trained with ``ce`` at the study's budget; prints Kendall's tau of
score and of params against validation accuracy, and, over every pair where one student dominates the other in
(higher score, fewer params), how often the dominating one is also the more accurate: the rule the prescreen
relies on when it drops a candidate. Since the score grows with size, it also prints tau between the score's and
the accuracy's residuals over log(params) (least squares): whether the score knows anything size does not.

    python scripts/prescreen-fidelity.py studies/quickstart.yaml --students 40
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from nas_kd.config import PrescreenConfig, load_study, parse_override
from nas_kd.pipeline import study_data, train_student
from nas_kd.search.prescreen import Prescreen
from nas_kd.space import load_space


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Tau-a over all pairs (ties count 0)."""
    pairs = list(itertools.combinations(range(len(a)), 2))
    return sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in pairs) / len(pairs)


def residual_over_size(values: list[float], params: list[int]) -> list[float]:
    """What a least-squares line in log(params) leaves of ``values``."""
    design = np.c_[np.ones(len(params)), np.log(params)]
    fit, *_ = np.linalg.lstsq(design, np.asarray(values), rcond=None)
    return list(np.asarray(values) - design @ fit)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study")
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    study = load_study(args.study, dict(parse_override(item) for item in args.set))
    data = study_data(study, torch.device("cpu"))
    prescreen = Prescreen(study.search.prescreen or PrescreenConfig(), data.train, data.num_classes, study.seed)
    space, rng = load_space(study.resolved()["search"]["space"]), np.random.default_rng(study.seed)
    rows = []
    for i in range(args.students):
        arch = space.sample(rng)
        score, params = prescreen.score({"arch": arch, "seed": study.seed})
        accuracy = train_student(study, data, [], arch, "ce", {}, study.seed).val_accuracy
        rows.append((score, params, accuracy))
        print(f"{i + 1:>3}/{args.students}  score {score:9.2f}  {params:>9,} params  val {accuracy:.4f}", flush=True)
    scores, params, accuracies = (list(column) for column in zip(*rows, strict=True))
    dominated = [
        (i, j)
        for i, j in itertools.permutations(range(len(rows)), 2)
        if scores[i] >= scores[j] and params[i] <= params[j] and (scores[i], params[i]) != (scores[j], params[j])
    ]
    held = sum(accuracies[i] > accuracies[j] for i, j in dominated)
    ties = sum(accuracies[i] == accuracies[j] for i, j in dominated)
    print(f"\n{args.students} students of {study.name}, {study.train.epochs} epochs of ce, seed {study.seed}")
    print(f"Kendall tau(score, val accuracy)  {kendall_tau(scores, accuracies):+.3f}")
    print(f"Kendall tau(params, val accuracy) {kendall_tau(params, accuracies):+.3f}")
    print(f"Kendall tau(score, params)        {kendall_tau(scores, params):+.3f}")
    residuals = residual_over_size(scores, params), residual_over_size(accuracies, params)
    print(f"Kendall tau of the two residuals over log(params) {kendall_tau(*residuals):+.3f}")
    print(
        f"dominated pairs: {len(dominated)}; the dominating student more accurate in {held} "
        f"({held / max(1, len(dominated)):.0%}), as accurate in {ties}, less accurate in {len(dominated) - held - ties}"
    )


if __name__ == "__main__":
    main()
