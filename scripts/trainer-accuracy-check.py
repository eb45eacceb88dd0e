"""Same accuracy with the tuned trainer? The study's student trained by ``Trainer`` as it is (channels_last,
foreach optimizer, fp32), with those two switched off (``untuned``), and with ``train.precision: bf16``, for
several seeds; prints the validation accuracy and throughput of each.

    python scripts/trainer-accuracy-check.py studies/fashion_mnist.yaml --seeds 3 --ways tuned,bf16 \
        --set train.epochs=4 --set train.samples_per_epoch=16000
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

WAYS = ("untuned", "tuned", "bf16")


def untuned_optimizer(params, cfg, foreach=None):  # torch's defaults: the per-parameter loop on CPU
    return make_optimizer(params, cfg, foreach=None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, from {', '.join(WAYS)}")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    ways = args.ways.split(",")
    if unknown := set(ways) - set(WAYS):
        parser.error(f"--ways: unknown {sorted(unknown)}")
    overrides = dict(parse_override(o) for o in args.set)
    studies = {way: load_study(args.study, {**overrides, "train.precision": "bf16" if way == "bf16" else "fp32"})
               for way in ways}  # fmt: skip
    data = study_data(studies[ways[0]], resolve_device())
    accuracy: dict[str, list[float]] = {way: [] for way in ways}
    speed: dict[str, list[float]] = {way: [] for way in ways}
    for seed in range(args.seeds):
        for way, study in studies.items():
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
            speed[way].append(statistics.median(epoch.images_per_second for epoch in history))
            print(f"seed {seed} {way}: val {100 * history[-1].val_accuracy:.2f}% "
                  f"({speed[way][-1]:,.0f} images/s, median epoch)", flush=True)  # fmt: skip
    for way in ways:
        values = accuracy[way]
        spread = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
        print(f"{way}: val accuracy {100 * statistics.mean(values):.2f}{spread}% over seeds "
              f"{list(range(args.seeds))}: {[round(100 * v, 2) for v in values]}; "
              f"median {statistics.median(speed[way]):,.0f} images/s")  # fmt: skip


if __name__ == "__main__":
    main()
