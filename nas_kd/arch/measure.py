"""What an architecture costs, without training it."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Cost:
    params: int
    flops: int  # per image, forward; multiply-adds count as 2
    model_bytes: int  # parameters and buffers as stored
    latency_ms: float | None = None  # batch 1, median, on the device it was measured on

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _is_quantized(model: nn.Module) -> bool:
    return any(hasattr(m, "weight_quant") for m in model.modules())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # brevitas layers fail under no_grad inside FlopCounterMode's module tracker (a weight view without grad_fn)
    grad = torch.enable_grad() if _is_quantized(model) else torch.no_grad()
    with grad, FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def model_bytes(model: nn.Module) -> int:
    """Parameters and buffers as stored; quantized weights packed at their bit width plus their scales."""
    packed: dict[int, int] = {}
    if _is_quantized(model):  # a brevitas network: import brevitas only then
        from nas_kd.arch.quant import packed_weight_bytes

        packed = packed_weight_bytes(model)
    tensors = [*model.parameters(), *model.buffers()]
    return sum(packed.get(id(t), t.numel() * t.element_size()) for t in tensors)


def measure_latency_ms(
    model: nn.Module, input_shape: tuple[int, int, int], repeats: int = 30, warmup: int = 5
) -> float:
    """Median wall time of a batch-1 forward on the model's device, after warm-up."""
    device = next(model.parameters()).device
    x = torch.zeros(1, *input_shape, device=device)
    was_training = model.training
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    model.train(was_training)
    return statistics.median(times)


def measure(model: nn.Module, input_shape: tuple[int, int, int], latency: bool = False) -> Cost:
    return Cost(
        params=count_params(model),
        flops=count_flops(model, input_shape),
        model_bytes=model_bytes(model),
        latency_ms=measure_latency_ms(model, input_shape) if latency else None,
    )
