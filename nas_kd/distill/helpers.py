"""Networks that distillers build or train for themselves: fresh peers, resized architectures, and
helper teachers (assistants, born-again copies), trained by the caller's ``DistillContext.train_helper``."""

from __future__ import annotations

import copy
import hashlib
import math
from typing import Any

import torch
from torch import nn

from nas_kd.arch import build_model, count_params
from nas_kd.distill.base import DistillContext, Teacher


def fresh_copy(model: nn.Module) -> nn.Module:
    """The same architecture with newly initialised, trainable weights (from the global torch RNG)."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()  # also resets batch-norm running statistics
    for p in clone.parameters():
        p.requires_grad_(True)
    return clone.train()


def weights_key(model: nn.Module) -> str:
    """Content hash of a model's weights: names a helper trained from this exact teacher."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def scale_width(arch: dict[str, Any], factor: float) -> dict[str, Any]:
    """``arch`` with the stem and every stage ``factor`` times as wide, in multiples of 8 (torchvision's
    inverted residuals round their widths to multiples of 8 themselves; the stem must agree with them)."""

    def width(channels: int) -> int:
        return max(8, 8 * round(channels * factor / 8))

    scaled = copy.deepcopy(arch)
    if "stem" in scaled:
        scaled["stem"] = width(scaled["stem"])
    for stage in scaled["stages"]:
        stage["channels"] = width(stage["channels"])
    return scaled


def params_of(arch: dict[str, Any], input_shape: tuple[int, int, int], num_classes: int) -> int:
    with torch.device("meta"):  # counts parameters without allocating them
        return count_params(build_model(arch, input_shape, num_classes))


def resize_to_params(
    arch: dict[str, Any], target: float, input_shape: tuple[int, int, int], num_classes: int
) -> dict[str, Any]:
    """Same family and depths as ``arch``, widths scaled so its parameter count is closest to ``target``.

    Parameters grow monotonically with width, so the factor is found by bisection on its logarithm."""
    low, high = -6.0, 6.0  # log width factor: 1/400x to 400x
    for _ in range(40):
        middle = (low + high) / 2
        if params_of(scale_width(arch, math.exp(middle)), input_shape, num_classes) < target:
            low = middle
        else:
            high = middle
    candidates = [scale_width(arch, math.exp(bound)) for bound in (low, high)]
    return min(candidates, key=lambda a: abs(params_of(a, input_shape, num_classes) - target))


def trained_helper(context: DistillContext, arch: dict[str, Any], role: str, teacher: Teacher | None) -> Teacher:
    """``arch`` trained once by the caller's ``context.train_helper`` (Hinton KD from ``teacher``, or plain CE
    without one), as a frozen teacher. Training it (or finding it cached) leaves the caller's RNG as it was,
    so the distiller's own modules, initialised after this, are the same whether it was cached or not."""
    if context.train_helper is None:
        raise ValueError(f"the {role} helper needs DistillContext.train_helper (how to train and cache it)")
    devices = [context.device] if context.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return context.train_helper(arch, role, teacher)
