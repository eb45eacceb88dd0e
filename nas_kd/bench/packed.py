"""Packed students on one device, with torch alone: what Ray's fractional GPUs do, measured without Ray.

N processes each train their own small CNN student (about 100k parameters on 28x28 images by default) on the
same device at the same time; the table gives aggregate images/s and trials/hour for each N and each way of
running the step:

- ``fp32``: fp32, default memory format, eager;
- ``bf16-cl``: bf16 autocast and channels_last (what nas-kd's trainer does on GPU), eager;
- ``bf16-cl-graph``: the same step captured once as a CUDA graph and replayed (CUDA only): small students are
  bound by kernel launches, which a graph replay removes.

Data are uint8 images on the device, normalised per batch (as a search keeps them); they are synthetic, since
throughput does not depend on what the pixels show. A trial is ``--trial-epochs`` passes over
``--train-images`` images (Fashion-MNIST's 54,000 by default); evaluation is left out of trials/hour.

This file imports only torch and the standard library, so a bare CUDA image with torch can run it as a script
(``scripts/gpu-check.sh`` does: ``python nas_kd/bench/packed.py ...``); ``nas-kd bench gpu --arms packed``
runs it through the CLI.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("fp32", "bf16-cl", "bf16-cl-graph")


@dataclass(frozen=True)
class Setup:
    device: str = "cuda"
    width: int = 32  # stem and first stage; later stages double it (32 -> ~105k parameters)
    image: int = 28
    channels: int = 1
    classes: int = 10
    batch: int = 256
    pool: int = 16_384  # images resident on the device per student
    warmup_steps: int = 30
    seconds: float = 8.0  # timed window per run, after the warm-up
    train_images: int = 54_000
    trial_epochs: int = 10


def student(setup: Setup) -> nn.Module:
    """Plain conv-bn-relu CNN: stem, three stages (width, 2x, 4x; max-pool between), pool, linear."""
    widths = [setup.width, setup.width, 2 * setup.width, 4 * setup.width]
    layers: list[nn.Module] = []
    previous = setup.channels
    for i, width in enumerate(widths):
        if i >= 2:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        previous = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, setup.classes)]
    return nn.Sequential(*layers)


def train_step_fn(setup: Setup, mode: str, seed: int):
    """A closure that runs one training step and returns the number of images it trained on."""
    device = torch.device(setup.device)
    generator = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)
    shape = (setup.pool, setup.channels, setup.image, setup.image)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=generator)
    labels = torch.randint(0, setup.classes, (setup.pool,), device=device, generator=generator)
    fast = mode != "fp32"
    memory_format = torch.channels_last if fast else torch.contiguous_format
    model = student(setup).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False) if fast else nullcontext()
    batch_x = torch.empty((setup.batch, *shape[1:]), dtype=torch.uint8, device=device)
    batch_y = torch.empty(setup.batch, dtype=torch.long, device=device)

    def step() -> None:
        x = (batch_x.float() - 128.0) / 64.0  # per-batch normalisation of uint8 data
        with autocast:
            loss = F.cross_entropy(model(x.contiguous(memory_format=memory_format)), batch_y)
        optimizer.zero_grad(set_to_none=False)  # kept allocated: a CUDA graph replays into the same buffers
        loss.backward()
        optimizer.step()

    def load_batch() -> None:
        index = torch.randint(0, setup.pool, (setup.batch,), device=device, generator=generator)
        torch.index_select(images, 0, index, out=batch_x)
        torch.index_select(labels, 0, index, out=batch_y)

    if mode != "bf16-cl-graph":

        def eager() -> int:
            load_batch()
            step()
            return setup.batch

        return eager
    if device.type != "cuda":
        raise ValueError("bf16-cl-graph needs CUDA")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream before capture, as CUDA graphs require
        for _ in range(3):
            load_batch()
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    def replay() -> int:
        load_batch()
        graph.replay()
        return setup.batch

    return replay


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(setup: Setup, mode: str, rank: int, start: mp.Barrier, results: mp.Queue) -> None:
    """One student: warm up, wait for the others, train for ``setup.seconds``, report images and seconds."""
    torch.set_num_threads(1)
    try:
        step = train_step_fn(setup, mode, seed=rank)
        for _ in range(setup.warmup_steps):
            step()
        synchronize(setup.device)
        start.wait()
        began, images = time.perf_counter(), 0
        while time.perf_counter() - began < setup.seconds:
            for _ in range(10):
                images += step()
            synchronize(setup.device)
        results.put((rank, images, time.perf_counter() - began, ""))
    except Exception as error:  # reported to the parent, which names the failing run
        start.abort()
        results.put((rank, 0, 0.0, f"{type(error).__name__}: {error}"))


def packed_run(setup: Setup, mode: str, students: int) -> dict[str, float | int | str]:
    """``students`` processes training at once; aggregate images/s over the shared timed window."""
    context = mp.get_context("spawn")
    start, results = context.Barrier(students), context.Queue()
    processes = [context.Process(target=worker, args=(setup, mode, r, start, results)) for r in range(students)]
    for process in processes:
        process.start()
    reports = [results.get() for _ in processes]
    for process in processes:
        process.join()
    errors = [message for *_, message in reports if message]
    if errors:
        raise RuntimeError(f"{mode} with {students} students: {errors[0]}")
    images_per_second = sum(images / seconds for _, images, seconds, _ in reports)
    return {
        "mode": mode,
        "students": students,
        "images_per_s": images_per_second,
        "per_student": images_per_second / students,
        "trials_per_hour": images_per_second * 3600 / (setup.train_images * setup.trial_epochs),
    }


def table(setup: Setup, modes: list[str], counts: list[int], log=print) -> list[dict[str, float | int | str]]:
    rows = []
    for mode in modes:
        for count in counts:
            rows.append(packed_run(setup, mode, count))
            log(f"  {mode}, {count} students: {rows[-1]['images_per_s']:,.0f} images/s")
    base = {row["mode"]: row["images_per_s"] for row in rows if row["students"] == counts[0]}
    first = rows[0]["images_per_s"]
    for row in rows:
        row["vs_first_count"] = row["images_per_s"] / base[row["mode"]]
        row["vs_fp32_first"] = row["images_per_s"] / first
    return rows


def markdown(rows: list[dict[str, float | int | str]], setup: Setup, params: int) -> str:
    head = (
        f"Packed students on {setup.device} ({device_name(setup.device)}, torch {torch.__version__}): "
        f"{params:,}-parameter CNN, {setup.channels}x{setup.image}x{setup.image} uint8 images, batch {setup.batch}, "
        f"{setup.seconds:g} s timed per run after {setup.warmup_steps} warm-up steps; a trial = "
        f"{setup.trial_epochs} epochs x {setup.train_images:,} images.\n\n"
    )
    lines = [
        "| mode | students | images/s (all) | images/s per student | trials/hour | vs fewest students | vs first row |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['mode']} | {r['students']} | {r['images_per_s']:,.0f} | {r['per_student']:,.0f} | "
        f"{r['trials_per_hour']:,.1f} | {r['vs_first_count']:.2f}x | {r['vs_fp32_first']:.2f}x |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Setup()
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--students", default="1,2,4,8", help="comma-separated process counts")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    for name in (
        "width",
        "image",
        "channels",
        "classes",
        "batch",
        "pool",
        "warmup_steps",
        "train_images",
        "trial_epochs",
    ):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--out", help="write the Markdown table here too")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        print(f"packed: error: --modes: unknown {unknown}; known: {', '.join(MODES)}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("packed: error: --device: no CUDA device here (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if not args.device.startswith("cuda") and "bf16-cl-graph" in modes:
        modes.remove("bf16-cl-graph")  # CUDA graphs exist on CUDA only
    fields = {name: getattr(args, name) for name in Setup.__dataclass_fields__}
    setup = Setup(**fields)
    params = sum(p.numel() for p in student(setup).parameters())
    print(f"packed students on {args.device}: modes {', '.join(modes)}; students {args.students}", flush=True)
    rows = table(setup, modes, [int(n) for n in args.students.split(",")])
    text = markdown(rows, setup, params)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
