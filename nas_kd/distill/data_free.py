"""Data-free distillation by DeepInversion (Yin et al. 2020): the student never sees a training image.

Synthetic images are optimised, from noise, so that the teacher classifies them as chosen labels while the
batch statistics they produce at every batch-norm layer match the running statistics the teacher stored
(the BN regulariser), with a total-variation prior and a one-pixel jitter. The student then learns the
teacher's soft labels on those images (Hinton KD). The images depend only on the teacher and the synthesis
settings, so they are made once per study, cached by content hash under the context's cache folder (a
file lock lets one trial make them while the others wait) and shared by every trial.

What the training loop hands in (``x``, ``y``) is never read: ``index`` only picks synthetic rows, so an
epoch draws as many synthetic images as it would have real ones. Validation and test stay real data, for
measurement. The synthesis knows the data's shape, class count and pixel normalisation (mean, std), as
DeepInversion does. Cost: ``images * iterations`` teacher forwards and backwards, once per study.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from nas_kd.attacks import PixelSpace
from nas_kd.distill.base import DistillContext, Distiller
from nas_kd.distill.helpers import weights_key
from nas_kd.distill.losses import kd_loss
from nas_kd.distill.registry import register


class DataFreeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: int = Field(512, ge=1, description="synthetic images, cycled through by every epoch")
    iterations: int = Field(100, ge=1, description="optimisation steps per synthesis batch")
    synthesis_batch: int = Field(256, ge=2, description="images optimised together (batch statistics need several)")
    synthesis_lr: float = Field(0.1, gt=0, description="Adam, on the pixels")
    bn_weight: float = Field(1.0, ge=0, description="the batch-norm statistics regulariser")
    tv_weight: float = Field(1e-3, ge=0, description="total-variation prior (smooth images)")
    synthesis_seed: int = Field(0, description="not the trial's seed: every trial shares one synthetic set")
    temperature: float = Field(4.0, gt=0, description="softening temperature T of the KD term")


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[:, :, 1:] - x[:, :, :-1]).abs().mean() + (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()


def synthesise(
    teacher: nn.Module, labels: torch.Tensor, shape: tuple[int, ...], space: PixelSpace, s: DataFreeSettings
) -> torch.Tensor:
    """DeepInversion images (normalised units) the eval-mode ``teacher`` takes for ``labels``."""
    device = labels.device
    generator = torch.Generator(device).manual_seed(s.synthesis_seed)
    statistics: list[torch.Tensor] = []

    def match(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0].float()
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        statistics.append(
            torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2)  # type: ignore[operator]
        )

    hooks = [m.register_forward_hook(match) for m in batch_norms(teacher)]
    chunks = []
    try:
        for chunk in labels.split(s.synthesis_batch):
            x = torch.randn((len(chunk), *shape), generator=generator, device=device).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=s.synthesis_lr, betas=(0.5, 0.9))
            for _ in range(s.iterations):
                dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=generator, device=device))
                statistics.clear()
                logits = teacher(torch.roll(x, shifts=(dy, dx), dims=(2, 3)))
                loss = F.cross_entropy(logits.float(), chunk) + s.bn_weight * torch.stack(statistics).sum()
                loss = loss + s.tv_weight * total_variation(x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    x.copy_(space.clamp(x))
            chunks.append(x.detach())
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(chunks)


def synthetic_images(context: DistillContext, teacher: nn.Module, s: DataFreeSettings) -> torch.Tensor:
    """The synthetic set for ``teacher`` and ``s``: from the cache, else made (once, under a file lock)."""
    data, device = context.data, context.device
    labels = torch.arange(s.images, device=device) % data.num_classes
    space = PixelSpace.of(data)
    make = lambda: synthesise(teacher, labels, data.input_shape, space, s)  # noqa: E731
    if context.cache_dir is None:
        return make()
    payload = {
        "teacher": weights_key(teacher),
        "settings": s.model_dump(exclude={"temperature"}),
        "shape": list(data.input_shape),
        "classes": data.num_classes,
        "pixels": [data.pixel_mean, data.pixel_std],
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(context.cache_dir) / "data_free"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{key}.safetensors"
    with FileLock(str(root / f"{key}.lock")):
        if not path.exists():
            partial = root / f".{key}.{os.getpid()}.safetensors"
            save_file({"images": make().cpu().contiguous()}, str(partial))
            os.replace(partial, path)  # atomic: a reader sees the whole file or none
    return load_file(str(path))["images"].to(device)


@register
class DataFree(Distiller):
    name = "data_free"
    summary = (
        "data-free (DeepInversion): the student learns the teacher's soft labels on images synthesised from "
        "its batch-norm statistics, never a training image; the images are cached and shared by all trials"
    )
    Settings = DataFreeSettings
    requires_teacher = True

    def __init__(self, student: nn.Module, settings: BaseModel, context: DistillContext):
        super().__init__(student, settings, context)
        assert isinstance(settings, DataFreeSettings)
        self.teacher = context.teachers[0]
        # Not buffers: a pure function of the teacher and the settings, not of training, so not checkpointed.
        self.images = synthetic_images(context, self.teacher.model, settings)
        with torch.no_grad():
            self.teacher_logits = torch.cat([self.teacher.model(b).float() for b in self.images.split(1024)])

    @classmethod
    def check_teachers(cls, teachers: list[nn.Module]) -> None:
        super().check_teachers(teachers)
        if not batch_norms(teachers[0]):
            raise ValueError(
                f"distiller {cls.name!r} inverts the teacher's batch-norm statistics, and the teacher has no "
                "batch-norm layers"
            )

    @property
    def learns_from_teacher(self) -> bool:
        return False  # not live: the teacher's knowledge is in the synthetic set and its logits, made at construction

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        # x and y (training images and labels) are deliberately unused.
        rows = (index if index is not None else torch.arange(len(y), device=self.images.device)) % len(self.images)
        logits = self.student(self.images[rows])
        return logits, {"kd": kd_loss(logits, self.teacher_logits[rows], self.settings.temperature)}
