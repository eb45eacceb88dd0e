"""Projected gradient descent (PGD, Madry et al. 2018) in pixel units, and robust accuracy under it.

Epsilon and step size are given in pixel units (images in [0, 1]); the data are stored normalised per
channel, so a pixel-unit budget is ``epsilon / std`` in each channel, and the valid range [0, 1] becomes
``[-mean / std, (1 - mean) / std]``. The attack keeps to both: an L-infinity ball around the clean
image and the valid pixel range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from nas_kd.data import Dataset, Split

# loss(logits, target) -> per-batch scalar the attack increases
AttackLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PixelSpace:
    """The valid pixel range [0, 1] in the data's normalised units, per channel, shaped (1, C, 1, 1)."""

    low: torch.Tensor
    high: torch.Tensor

    @property
    def scale(self) -> torch.Tensor:
        """Normalised units per pixel unit (1 / std)."""
        return self.high - self.low

    @classmethod
    def of(cls, data: Dataset) -> PixelSpace:
        if not data.pixel_std:
            raise ValueError("the dataset does not record its pixel normalisation (pixel_mean, pixel_std)")
        device = data.val.device
        mean = torch.tensor(data.pixel_mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(data.pixel_std, device=device).view(1, -1, 1, 1)
        return cls(-mean / std, (1 - mean) / std)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.low) / self.scale

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x, self.high), self.low)


class AttackSettings(Protocol):
    """What a study's ``search.robust`` block gives (``nas_kd.config.RobustConfig``)."""

    epsilon: float
    steps: int
    step_size: float | None


@dataclass(frozen=True)
class Attack:
    """PGD-``steps`` with an L-infinity budget ``epsilon`` and step ``step_size``, both in pixel units."""

    epsilon: float
    steps: int
    step_size: float | None = None  # default 2.5 * epsilon / steps (Madry et al.)
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    @property
    def step(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.epsilon / self.steps


def cross_entropy_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    attack: Attack,
    space: PixelSpace,
    loss: AttackLoss = cross_entropy_loss,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial versions of the normalised batch ``x``: ``attack.steps`` signed-gradient ascent steps
    on ``loss(model(x_adv), target)``, each projected back onto the epsilon ball and the valid pixel range.

    The model is used as it is (put it in eval mode first to leave batch-norm statistics alone); its
    parameter gradients are left untouched."""
    radius = attack.epsilon * space.scale
    step = attack.step * space.scale
    x = x.detach()
    if attack.random_start and attack.epsilon > 0:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        adversarial = space.clamp(x + noise * radius)
    else:
        adversarial = x.clone()
    with torch.enable_grad():  # also under the caller's no_grad (evaluation)
        for _ in range(attack.steps):
            adversarial.requires_grad_(True)
            (gradient,) = torch.autograd.grad(loss(model(adversarial), target), adversarial)
            adversarial = adversarial.detach() + step * gradient.sign()
            adversarial = space.clamp(torch.maximum(torch.minimum(adversarial, x + radius), x - radius))
    return adversarial.detach()


def robust_accuracy(
    model: nn.Module, split: Split, attack: Attack, space: PixelSpace, batch_size: int = 512, seed: int = 0
) -> float:
    """Top-1 accuracy of ``model`` on PGD examples of ``split`` (cross-entropy attack, eval mode, then the
    model's mode restored). Seeded random starts, so the figure is reproducible."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(split.device).manual_seed(seed)
    correct = 0
    for start in range(0, len(split), batch_size):
        index = torch.arange(start, min(start + batch_size, len(split)), device=split.device)
        x, y = split.batch(index), split.y[index]
        adversarial = pgd(model, x, y, attack, space, generator=generator)
        with torch.no_grad():
            correct += (model(adversarial).argmax(1) == y).sum().item()
    model.train(was_training)
    return correct / max(1, len(split))


def robust_metrics(model: nn.Module, data: Dataset, robust: AttackSettings | None) -> dict[str, float]:
    """``{"robust_accuracy": ...}`` on the validation split under the study's ``search.robust`` attack;
    empty when the study sets none. What a trial reports each epoch beside val_accuracy."""
    if robust is None:
        return {}
    attack = Attack(robust.epsilon, robust.steps, robust.step_size)
    return {"robust_accuracy": robust_accuracy(model, data.val, attack, PixelSpace.of(data))}
