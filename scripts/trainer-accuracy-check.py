"""Same accuracy with the tuned trainer? The study's student trained by ``Trainer`` as it is (channels_last,
foreach optimizer) and with those two switched off, for several seeds; prints validation accuracy of each.

    python scripts/trainer-accuracy-check.py studies/fashion_mnist.yaml --seeds 3 --set train.epochs=2 \
        --set train.samples_per_epoch=6400
"""

from __future__ import annotations

import argparse
import statistics
from unittest import mock

import torch

import nas_kd.train
from nas_kd.config import load_study, parse_override
from nas_kd.pipeline import build_trainer, resolve_device, study_data
from nas_kd.train import make_optimizer


def untuned_optimizer(params, cfg, foreach=None):  # torch's defaults: the per-parameter loop on CPU
    return make_optimizer(params, cfg, foreach=None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    study = load_study(args.study, dict(parse_override(o) for o in args.set))
    data = study_data(study, resolve_device())
    accuracy: dict[str, list[float]] = {"tuned": [], "untuned": []}
    for seed in range(args.seeds):
        for way in accuracy:
            patches = (
                [mock.patch.object(nas_kd.train, "MEMORY_FORMAT", torch.contiguous_format),
                 mock.patch.object(nas_kd.train, "make_optimizer", untuned_optimizer)]
                if way == "untuned" else []
            )  # fmt: skip
            for patch in patches:
                patch.start()
            trainer = build_trainer(study, data, [], study.student.genome(), "ce", {}, seed)
            history = trainer.fit()
            for patch in patches:
                patch.stop()
            accuracy[way].append(history[-1].val_accuracy)
            print(f"seed {seed} {way}: val {100 * history[-1].val_accuracy:.2f}% "
                  f"({history[-1].images_per_second:,.0f} images/s last epoch)", flush=True)  # fmt: skip
    for way, values in accuracy.items():
        print(f"{way}: val accuracy {100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}% "
              f"over seeds {list(range(args.seeds))}: {[round(100 * v, 2) for v in values]}")  # fmt: skip


if __name__ == "__main__":
    main()
