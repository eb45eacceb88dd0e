"""``nas-kd bench quant-latency [STUDY]``: CPU latency of the int8 ONNX export against the fp32 student.

The study's ``student`` (with its ``quant`` block) and the same architecture without it are exported to ONNX
(QCDQ int8 and float32) and timed with onnxruntime on one thread, at batch 1 and batch 256, arms rotated
each repeat; the fake-quantized PyTorch module (what trains) is timed too, for scale. Ratios are against
the fp32 ONNX model in the same run. Latency does not depend on the weights' values, so nothing is trained.

Default study: studies/quant_digits.yaml.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nas_kd.arch import arch_summary, build_model, model_bytes
from nas_kd.arch.quant import export_onnx, onnx_session
from nas_kd.bench import BenchError
from nas_kd.config import load_study, parse_override
from nas_kd.data import DATASETS

DEFAULT_STUDY = "studies/quant_digits.yaml"
BATCHES = (1, 256)


def timer(call: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``call`` after two warm-up calls."""
    call(), call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


@torch.no_grad()
def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def run(args: argparse.Namespace) -> int:
    study = load_study(args.study or DEFAULT_STUDY, dict(parse_override(text) for text in args.set or []))
    arch = study.student.genome() if study.student else {}
    if "quant" not in arch:
        raise BenchError(f"{study.path}: student.arch.quant: the benchmark needs a quantized student")
    fp_arch = {k: v for k, v in arch.items() if k != "quant"}
    spec = DATASETS[study.data.dataset]
    shape, classes = spec.input_shape, spec.num_classes
    torch.set_num_threads(1)
    torch.manual_seed(study.seed)
    models = {"fp32": build_model(fp_arch, shape, classes).eval(), "int8": build_model(arch, shape, classes).eval()}
    arms: dict[str, dict[int, Callable[[], object]]] = {}
    sizes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, model in models.items():
            path = export_onnx(model, shape, Path(folder) / f"{name}.onnx")
            session = onnx_session(path)
            inputs = {b: np.random.default_rng(0).standard_normal((b, *shape), dtype=np.float32) for b in BATCHES}
            arms[f"onnxruntime {name}"] = {
                b: (lambda s=session, x=inputs[b]: s.run(None, {"input": x})) for b in BATCHES
            }
            sizes[f"onnxruntime {name}"] = f"{path.stat().st_size:,} B file, model_bytes {model_bytes(model):,}"
        tensors = {b: torch.randn(b, *shape) for b in BATCHES}
        arms["torch fp32"] = {b: (lambda x=tensors[b]: forward(models["fp32"], x)) for b in BATCHES}
        arms["torch fake-quant (training form)"] = {
            b: (lambda x=tensors[b]: forward(models["int8"], x)) for b in BATCHES
        }
        times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in arms}
        names = list(arms)
        for repeat in range(args.repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                for b in BATCHES:
                    times[name][b].append(timer(arms[name][b], repeats=20 if b == 1 else 5))
    median = {name: {b: statistics.median(t) for b, t in per.items()} for name, per in times.items()}
    base = median["onnxruntime fp32"]
    print(
        f"\n{study.name}: student {arch_summary(arch)} vs {arch_summary(fp_arch)}; onnxruntime "
        f"CPU, 1 thread; median of {args.repeats} repeats\n"
    )
    print("| arm | batch 1 ms | ratio | batch 256 ms | ratio | size |")
    print("|---|---|---|---|---|---|")
    for name in names:
        cells = " | ".join(f"{median[name][b]:.3f} | {median[name][b] / base[b]:.2f}" for b in BATCHES)
        print(f"| {name} | {cells} | {sizes.get(name, '')} |")
    return 0
