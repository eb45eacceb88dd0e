"""``nas-kd bench trainer [STUDY]``: the trainer's overhead, measured against a minimal loop in one run.

Same student, same data on the same device, same optimizer and schedule. Arms, rotated each repeat so
that machine noise hits all of them alike:

- a minimal hand-written PyTorch loop with cross-entropy (the baseline);
- ``Trainer`` with the ``ce`` distiller;
- ``Trainer`` with ``offline`` KD reading the teacher's cached logits;
- ``Trainer`` with ``offline`` KD and a live teacher forward on every batch (for scale).

Times are per training epoch (the validation pass, which the minimal loop lacks, is excluded).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nas_kd.arch import arch_summary, build_model
from nas_kd.config import load_study, parse_override
from nas_kd.data import Dataset, batches
from nas_kd.distill import Teacher
from nas_kd.pipeline import build_trainer, ready_teachers, resolve_device, study_data
from nas_kd.train import autocast, epoch_size, make_optimizer, make_schedule

DEFAULT_STUDY = "studies/fashion_mnist.yaml"


def minimal_loop(study, data: Dataset, arch: dict, seed: int) -> Callable[[], float]:
    """The baseline: what one would write by hand around the same model and data."""
    torch.manual_seed(seed)
    model = build_model(arch, data.input_shape, data.num_classes).to(data.train.x.device)
    cfg = study.train
    images = epoch_size(study.train, len(data.train))
    steps = -(-images // cfg.batch_size)
    optimizer = make_optimizer(list(model.parameters()), cfg)
    schedule = make_schedule(optimizer, cfg, steps * 1000)
    generator = torch.Generator(data.train.x.device).manual_seed(seed)

    def epoch() -> float:
        model.train()
        start = time.perf_counter()
        for index in batches(len(data.train), cfg.batch_size, generator, data.train.x.device, limit=images):
            with autocast(data.train.x.device):
                loss = F.cross_entropy(model(data.train.batch(index)), data.train.y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        float(loss.detach())  # one sync, as the trainer does
        return time.perf_counter() - start

    return epoch


def trainer_arm(study, data: Dataset, teachers: list[Teacher], arch: dict, distiller: str) -> Callable[[], float]:
    trainer = build_trainer(study, data, teachers, arch, distiller, {}, study.seed)
    return lambda: trainer.run_epoch().seconds


def run(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(o) for o in args.set or [])
    study = load_study(args.study or DEFAULT_STUDY, overrides)
    device = resolve_device()
    data = study_data(study, device)
    images = epoch_size(study.train, len(data.train))
    cached = ready_teachers(study, data)
    if not cached or study.student is None:
        print(f"{study.path}: the trainer benchmark needs a teacher and a student block")
        return 2
    arch = study.student.genome()
    live = Teacher(cached[0].load(device), None, params=cached[0].info["params"])
    arms: dict[str, Callable[[], float]] = {
        "minimal loop (ce)": minimal_loop(study, data, arch, study.seed),
        "trainer ce": trainer_arm(study, data, [], arch, "ce"),
        "trainer offline, cached logits": trainer_arm(study, data, [cached[0].as_teacher(device)], arch, "offline"),
        "trainer offline, live teacher": trainer_arm(study, data, [live], arch, "offline"),
    }
    epochs = args.epochs or 1
    times: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for name in names:  # warm-up: first-touch allocations and kernel selection
        arms[name]()
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            times[name] += [arms[name]() for _ in range(epochs)]

    median = {name: statistics.median(t) for name, t in times.items()}
    base, ce = median["minimal loop (ce)"], median["trainer ce"]
    print(
        f"\n{study.name}: student {arch_summary(arch)}, teacher {cached[0].info['params']:,} params, "
        f"{images} training images per epoch, batch {study.train.batch_size}, {device}, "
        f"{torch.get_num_threads()} threads; median of {len(times[names[0]])} epochs per arm\n"
    )
    print("| arm | s/epoch (median) | images/s | ratio |")
    print("|---|---|---|---|")
    for name in names:
        reference = "vs minimal loop" if name == "trainer ce" else ("vs trainer ce" if "offline" in name else "")
        ratio = median[name] / (base if name == "trainer ce" else ce) if reference else 1.0
        print(f"| {name} | {median[name]:.3f} | {images / median[name]:,.0f} | {ratio:.3f} {reference} |")
    return 0
