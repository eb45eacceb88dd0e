"""Multi-teacher distillation: every teacher of the study (``teacher`` and ``teachers:``) teaches at once.

Soft targets are combined per sample:

- ``mean``: the average of the teachers' softened distributions;
- ``confidence``: a weighted average, the weights a softmax over the teachers of minus each teacher's
  cross-entropy on the true label (a teacher that is right and sure of it counts more on that sample);
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
        "mean", description="how teachers combine: mean, confidence (per-sample, from each CE) or random (per step)"
    )
    temperature: float = Field(4.0, gt=0, description="softening temperature T")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term; cross-entropy gets 1 - alpha")


def combine_targets(
    teacher_logits: list[torch.Tensor], target: torch.Tensor, temperature: float, confidence: bool
) -> torch.Tensor:
    """Per-sample mixture of the teachers' softened distributions (uniform, or confidence-weighted)."""
    probs = torch.stack([F.softmax(t.float() / temperature, dim=1) for t in teacher_logits])  # (K, N, C)
    if not confidence:
        return probs.mean(0)
    ce = torch.stack([F.cross_entropy(t.float(), target, reduction="none") for t in teacher_logits])  # (K, N)
    weights = F.softmax(-ce, dim=0)
    return (weights[..., None] * probs).sum(0)


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
        soft = combine_targets(teacher_logits, y, s.temperature, s.combine == "confidence")
        logits = self.student(x)
        return logits, {
            "ce": (1 - s.alpha) * self.cross_entropy(logits, y),
            "kd": s.alpha * soft_kl(logits, soft, s.temperature),
        }

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
