"""Offline distillation from a frozen, pre-trained teacher (response knowledge: Hinton KD)."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from nas_kd.distill.base import Distiller
from nas_kd.distill.losses import kd_loss
from nas_kd.distill.registry import register


class OfflineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(4.0, gt=0, description="softening temperature T")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term; cross-entropy gets 1 - alpha")


@register
class Offline(Distiller):
    name = "offline"
    summary = "frozen pre-trained teacher; Hinton KD (KL at temperature T, x T^2) weighted by alpha against CE"
    Settings = OfflineSettings
    requires_teacher = True

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        logits = self.student(x)
        teacher_logits = self.context.teachers[0].logits(x, index, self.context.augmented)
        return logits, {
            "ce": (1 - s.alpha) * self.cross_entropy(logits, y),
            "kd": s.alpha * kd_loss(logits, teacher_logits, s.temperature),
        }
