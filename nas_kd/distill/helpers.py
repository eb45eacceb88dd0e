"""Networks that distillers build or train for themselves: fresh peers, resized architectures, and
helper teachers (assistants, born-again copies) trained once and cached by content hash."""

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
    """Train ``arch`` once (Hinton KD from ``teacher``, or plain CE without one) and return it as a teacher.

    The recipe is the study's first teacher's (else the study's own), so a helper is as trained as the
    teacher it stands beside; the cache key covers data, recipe, arch, seed and the teacher's weights,
    and the teachers' file lock makes concurrent trials train it once."""
    from nas_kd.teachers import cache_root, cached_model, data_identity, train_plain

    study = context.extra.get("study")
    if study is None:
        raise ValueError(f"the {role} helper is trained by the study's recipe: pass the study in context.extra")
    teachers = study.all_teachers()
    cfg = study.teacher_train(teachers[0]) if teachers else study.train
    seed = study.teacher_seed(teachers[0]) if teachers else study.seed
    distiller = "offline" if teacher is not None else "ce"
    payload = {
        "role": role,
        "data": data_identity(study),
        "augment": study.data.augment,
        "arch": arch,
        "train": cfg.identity(),
        "seed": seed,
        "distiller": distiller,
        "teacher": weights_key(teacher.model) if teacher is not None else None,
    }

    def train_fn() -> tuple[nn.Module, dict[str, Any]]:
        teachers_used = [teacher] if teacher is not None else []
        return train_plain(arch, context.data, cfg, seed, study.data.augment, distiller, {}, teachers_used)

    root = context.cache_dir or cache_root(study.runs_dir)
    devices = [context.device] if context.device.type == "cuda" else []
    # Training a helper (or not, when it is cached) must leave the caller's RNG as it was: the
    # distiller's own modules are initialised after this, identically whether it was cached or not.
    with torch.random.fork_rng(devices=devices):
        cached = cached_model(root, payload, train_fn, context.data, role)
    return cached.as_teacher(context.device)
