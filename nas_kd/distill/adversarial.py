"""Adversarial distillation (RSLAD, Zi et al. 2021; ARD, Goldblum et al. 2020): the student is trained on
PGD examples of each batch to match the teacher's soft labels on the clean batch.

The target of both the attack and the loss is ``q = w * softmax(teacher(x_clean)) + (1 - w) * onehot(y)``
with ``w = teacher_weight``. With ``w = 1`` this is RSLAD (the attack maximises, and the student minimises,
KL(teacher(x) || student(x_adv)) plus a clean term); with ``w = 0`` it is plain adversarial training
(Madry et al. 2018: PGD on the cross-entropy, trained on the adversarial batch) with the same attack and
budget, the control arm. Cost: each step runs ``steps + 2`` student forwards and ``steps + 1`` backwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from nas_kd.attacks import Attack, PixelSpace, pgd
from nas_kd.distill.base import DistillContext, Distiller
from nas_kd.distill.losses import soft_kl
from nas_kd.distill.registry import register


class AdversarialSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epsilon: float = Field(0.1, ge=0, le=1, description="L-infinity budget in pixel units (images in [0, 1])")
    steps: int = Field(3, ge=1, description="PGD steps while training")
    step_size: float | None = Field(None, gt=0, le=1, description="pixel units; default 2.5 * epsilon / steps")
    teacher_weight: float = Field(
        1.0, ge=0, le=1, description="1: RSLAD soft labels; 0: adversarial training on labels"
    )
    adversarial_weight: float = Field(5 / 6, ge=0, le=1, description="RSLAD's 5/6 adversarial, 1/6 clean")

    @model_validator(mode="after")
    def _attack(self) -> AdversarialSettings:
        self.attack()  # the same checks the attack makes, at validate time
        return self

    def attack(self) -> Attack:
        return Attack(self.epsilon, self.steps, self.step_size)


def divergence(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)): cross-entropy on labels when the target is one-hot."""
    return soft_kl(logits, target, 1.0)


@register
class Adversarial(Distiller):
    name = "adversarial"
    summary = (
        "adversarial distillation (RSLAD/ARD): PGD examples, in pixel units, trained to match the teacher's "
        "soft labels on clean inputs; teacher_weight 0 is plain adversarial training"
    )
    Settings = AdversarialSettings
    requires_teacher = True

    def __init__(self, student: nn.Module, settings: BaseModel, context: DistillContext):
        super().__init__(student, settings, context)
        assert isinstance(settings, AdversarialSettings)
        self.teacher = context.teachers[0]
        self.space = PixelSpace.of(context.data)
        # Counts training steps: seeds each step's random start, and is saved and restored with the
        # distiller, so a resumed run draws the same starts as an uninterrupted one.
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long))

    def target(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        s = self.settings
        onehot = F.one_hot(y, self.context.data.num_classes).float()
        if s.teacher_weight == 0:
            return onehot
        teacher = self.teacher.logits(x, index, self.context.augmented)
        soft = F.softmax(teacher, dim=1)  # RSLAD: temperature 1
        return s.teacher_weight * soft + (1 - s.teacher_weight) * onehot

    @property
    def learns_from_teacher(self) -> bool:
        return self.settings.teacher_weight > 0  # 0 is adversarial training on the labels alone

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        target = self.target(x, y, index)
        generator = torch.Generator(x.device).manual_seed(self.context.seed * 1_000_003 + int(self.step_count))
        self.step_count += 1
        was_training = self.student.training
        self.student.eval()  # crafting the attack must not move batch-norm statistics (as in RSLAD)
        adversarial = pgd(self.student, x, target, s.attack(), self.space, divergence, generator)
        self.student.train(was_training)
        logits = self.student(x)
        losses = {"adversarial": s.adversarial_weight * divergence(self.student(adversarial), target)}
        if s.adversarial_weight < 1:
            losses["clean"] = (1 - s.adversarial_weight) * divergence(logits, target)
        return logits, losses
