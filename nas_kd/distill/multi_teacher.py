"""Multi-teacher distillation: every teacher of the study (``teacher`` and ``teachers:``) teaches at once.

Soft targets are combined per sample:

- ``mean``: the average of the teachers' softened distributions;
- ``confidence``: CA-MKD (Zhang, Chen & Wang ICASSP 2022): one KL per teacher, weighted per sample by
  ``w_k = (1 - softmax_k(CE_k)) / (K - 1)`` where ``CE_k`` is teacher k's cross-entropy on the label and
  the softmax runs over the teachers (the authors' code, Rorozhl/CA-MKD); the weights sum to 1 per
  sample. The authors' loss also divides by K; that constant is left out, so ``alpha`` keeps the meaning
  it has for ``mean``. With one teacher the weight is 1.
- ``random``: one teacher per step, drawn from a stream seeded by the trial's seed and the step count
  (the count is part of the distiller's state, so a resumed run draws the same teachers).

Each teacher's cached logits are used whenever the batch allows.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from nas_kd.distill.base import DistillContext, Distiller, Teacher
from nas_kd.distill.losses import soft_kl
from nas_kd.distill.registry import register


class MultiTeacherSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    combine: Literal["mean", "confidence", "random"] = Field(
        "mean", description="how teachers combine: mean, confidence (CA-MKD per-sample weights) or random (per step)"
    )
    temperature: float = Field(4.0, gt=0, description="softening temperature T")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term; cross-entropy gets 1 - alpha")


def confidence_weights(teacher_logits: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """CA-MKD's (K, N) per-sample teacher weights: (1 - softmax over teachers of CE) / (K - 1)."""
    if len(teacher_logits) == 1:
        return torch.ones(1, len(target), device=target.device)
    ce = torch.stack([F.cross_entropy(t.float(), target, reduction="none") for t in teacher_logits])
    return (1 - F.softmax(ce, dim=0)) / (len(teacher_logits) - 1)


def per_sample_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N,) KL(teacher || student) of softened outputs, times T^2."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1) * temperature**2


def mean_targets(teacher_logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """The average of the teachers' softened distributions."""
    return torch.stack([F.softmax(t.float() / temperature, dim=1) for t in teacher_logits]).mean(0)


@register
class MultiTeacher(Distiller):
    name = "multi_teacher"
    summary = "all of the study's teachers at once, soft targets combined by mean, confidence or random"
    Settings = MultiTeacherSettings
    requires_teacher = True

    def __init__(self, student: nn.Module, settings: BaseModel, context: DistillContext):
        super().__init__(student, settings, context)
        self.steps = 0  # drives the random draw

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s, context = self.settings, self.context
        teacher_logits = [t.logits(x, index, context.augmented) for t in self.step_teachers()]
        logits = self.student(x)
        if s.combine == "confidence":
            weights = confidence_weights(teacher_logits, y)
            kls = torch.stack([per_sample_kd(logits, t, s.temperature) for t in teacher_logits])
            kd = (weights * kls).sum(0).mean()
        else:
            kd = soft_kl(logits, mean_targets(teacher_logits, s.temperature), s.temperature)
        return logits, {"ce": (1 - s.alpha) * self.cross_entropy(logits, y), "kd": s.alpha * kd}

    def step_teachers(self) -> list[Teacher]:
        """The teachers of the next step: all of them, or (random) one drawn for this step."""
        teachers = self.context.teachers
        if self.settings.combine == "random":
            draw = torch.Generator().manual_seed(self.context.seed * 1_000_003 + self.steps)
            teachers = [teachers[int(torch.randint(len(teachers), (1,), generator=draw))]]
        self.steps += 1
        return teachers

    # The step count travels in the state dict (a plain int: no device sync per step).
    def get_extra_state(self) -> dict[str, int]:
        return {"steps": self.steps}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.steps = int(state["steps"])
