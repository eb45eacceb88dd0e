"""``nas-kd bench trainer [STUDY]``: the trainer's overhead, measured against a minimal loop in one run.

Same student, same data on the same device, same optimizer and schedule. Arms (``--arms``, default all but
``compiled``), rotated each repeat so that machine noise hits all of them alike:

- ``minimal``: a minimal hand-written fp32 PyTorch loop with cross-entropy, torch's defaults (the baseline);
- ``tuned``: ``Trainer`` with the ``ce`` distiller, as it trains every student (channels_last, foreach optimizer,
  the study's ``train.precision``: auto is fp32 on CPU);
- ``bf16``: the same with ``train.precision: bf16`` (bf16 autocast: faster on CPUs with AVX512-BF16 or AMX);
- ``compiled``: ``tuned`` with ``train.compile: true`` (its compile time, warm-up epoch minus median, is printed);
- ``cached``: ``Trainer`` with ``offline`` KD reading the teacher's cached logits;
- ``live``: ``Trainer`` with ``offline`` KD and a live teacher forward on every batch.

Each arm's throughput is printed as ``N.NNx the minimal loop`` (higher is faster); the KD arms also as their
cost against ``tuned``. Times are per training epoch (the validation pass, which the minimal loop lacks, is
excluded).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from nas_kd.arch import arch_summary, build_model
from nas_kd.bench import BenchError
from nas_kd.config import Study, load_study, parse_override
from nas_kd.data import Dataset, batches
from nas_kd.distill import Teacher
from nas_kd.pipeline import build_trainer, ready_teachers, resolve_device, study_data
from nas_kd.train import epoch_size, make_optimizer, make_schedule, uses_bf16

DEFAULT_STUDY = "studies/fashion_mnist.yaml"
ARMS = {
    "minimal": "minimal fp32 loop (ce)",
    "tuned": "trainer ce (tuned)",
    "bf16": "trainer ce (tuned), precision bf16",
    "compiled": "trainer ce, compiled",
    "cached": "trainer offline, cached logits",
    "live": "trainer offline, live teacher",
}
DEFAULT_ARMS = ("minimal", "tuned", "bf16", "cached", "live")
VALIDATION_IMAGES = 1024


def minimal_loop(study, data: Dataset, arch: dict, seed: int) -> Callable[[], float]:
    """The baseline: what one would write by hand around the same model and data."""
    torch.manual_seed(seed)
    model = build_model(arch, data.input_shape, data.num_classes).to(data.train.device)
    cfg = study.train
    images = epoch_size(study.train, len(data.train))
    steps = -(-images // cfg.batch_size)
    optimizer = make_optimizer(list(model.parameters()), cfg, foreach=None)  # torch's default
    schedule = make_schedule(optimizer, cfg, steps * 1000)
    generator = torch.Generator(data.train.device).manual_seed(seed)
    # Batches in torch's default NCHW layout, as a DataLoader's collate gives them. The stored images are a
    # permuted NHWC decode, which convolutions read as channels_last: it would hand the baseline the tuned
    # layout by accident (for one channel the two layouts differ only in strides, and oneDNN reads those).
    train = replace(data.train, x=data.train.x.clone(memory_format=torch.contiguous_format))

    def epoch() -> float:
        model.train()
        start = time.perf_counter()
        for index in batches(len(train), cfg.batch_size, generator, train.device, limit=images):
            loss = F.cross_entropy(model(train.batch(index)), train.y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        float(loss.detach())  # one sync, as the trainer does
        return time.perf_counter() - start

    return epoch


def trainer_arm(
    study: Study, data: Dataset, teachers: list[Teacher], arch: dict, distiller: str, **recipe: Any
) -> Callable[[], float]:
    """``recipe``: train settings changed for this arm (compile, precision)."""
    train = study.train.model_copy(update={"compile": False, **recipe})
    trainer = build_trainer(study.model_copy(update={"train": train}), data, teachers, arch, distiller, {}, study.seed)
    return lambda: trainer.run_epoch().seconds


def chosen_arms(text: str | None) -> list[str]:
    names = text.split(",") if text else list(DEFAULT_ARMS)
    unknown = sorted(set(names) - set(ARMS))
    if unknown:
        raise BenchError(f"--arms: unknown {unknown}; known: {', '.join(ARMS)}")
    return ["minimal", *[name for name in ARMS if name in names and name != "minimal"]]  # the baseline always


def run(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(o) for o in args.set or [])
    study = load_study(args.study or DEFAULT_STUDY, overrides)
    device = resolve_device()
    data = study_data(study, device)
    images = epoch_size(study.train, len(data.train))
    names = chosen_arms(args.arms)
    needs_teacher = bool({"cached", "live"} & set(names))  # the student-only arms run without one
    cached = ready_teachers(study, data) if needs_teacher else []
    if (needs_teacher and not cached) or study.student is None:
        print(f"{study.path}: the trainer benchmark needs a student block (and a teacher for the KD arms)")
        return 2
    arch = study.student.genome()
    # Each trainer epoch ends with a validation pass, which is not timed: a slice of the split is enough.
    data = replace(data, val=data.val.subset(slice(0, VALIDATION_IMAGES)))
    builders: dict[str, Callable[[], Callable[[], float]]] = {
        "minimal": lambda: minimal_loop(study, data, arch, study.seed),
        "tuned": lambda: trainer_arm(study, data, [], arch, "ce"),
        "bf16": lambda: trainer_arm(study, data, [], arch, "ce", precision="bf16"),
        "compiled": lambda: trainer_arm(study, data, [], arch, "ce", compile=True),
        "cached": lambda: trainer_arm(study, data, [cached[0].as_teacher(device)], arch, "offline"),
        "live": lambda: trainer_arm(study, data, [cached[0].as_teacher(device, cached=False)], arch, "offline"),
    }
    arms = {name: builders[name]() for name in names}
    epochs = args.epochs or 1
    times: dict[str, list[float]] = {name: [] for name in arms}
    warm_up = {name: arms[name]() for name in names}  # first-touch allocations, kernel selection, compiling
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            times[name] += [arms[name]() for _ in range(epochs)]

    median = {name: statistics.median(t) for name, t in times.items()}
    precision = study.train.precision
    resolved = "bf16" if uses_bf16(precision, device) else "fp32"
    teacher = f", teacher {cached[0].info['params']:,} params" if cached else ""
    print(
        f"\n{study.name}: student {arch_summary(arch)}{teacher}, "
        f"{images} training images per epoch, batch {study.train.batch_size}, {device}, "
        f"{torch.get_num_threads()} threads; median of {len(times[names[0]])} epochs per arm; "
        f"train.precision {precision} is {resolved} here\n"
    )
    print("| arm | s/epoch (median) | images/s | throughput | cost vs trainer ce |")
    print("|---|---|---|---|---|")
    for name in names:
        cost = f"{median[name] / median['tuned']:.2f}x" if name in ("cached", "live") and "tuned" in median else ""
        print(
            f"| {ARMS[name]} | {median[name]:.3f} | {images / median[name]:,.0f} | "
            f"{median['minimal'] / median[name]:.2f}x the minimal loop | {cost} |"
        )
    if "compiled" in median:
        print(f"\ncompiling cost about {warm_up['compiled'] - median['compiled']:.1f} s (warm-up epoch minus median)")
    return 0
