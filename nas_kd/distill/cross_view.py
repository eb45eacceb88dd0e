"""Cross-view distillation: the teacher sees one view of each batch, the student another (e.g. the teacher
the full image, the student a 4x4 thumbnail of it), and the student learns the teacher's soft labels.

Views are ``nas_kd.views`` steps written in one line (``"resize:4x4"``, ``"center_crop:0.5,resize:8x8"``).
The student's view is part of the student: it is attached to it as a forward pre-hook, so training,
validation, test and cost measurement all feed it raw data and it sees its own view, as a deployed
student would. The teacher's logits come from the cache only when its view is the identity (the cache
holds logits of the raw training images); otherwise the teacher runs live on its view.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from nas_kd.distill.base import DistillContext, Distiller
from nas_kd.distill.losses import kd_loss
from nas_kd.distill.registry import register
from nas_kd.views import View, parse_view_text


class CrossViewSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher_view: str = Field("", description="one-line view; empty: the raw data, as the teacher was trained")
    student_view: str = Field("", description="the student's one-line view, e.g. resize:4x4; empty: the raw data")
    temperature: float = Field(4.0, gt=0, description="softening temperature T of the KD term")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the teacher's soft labels; 0: cross-entropy only")

    @field_validator("teacher_view", "student_view")
    @classmethod
    def _view(cls, value: str) -> str:
        parse_view_text(value)  # unknown steps and unreadable arguments fail at validate time
        return value


def attach_view(model: nn.Module, view: View) -> None:
    """Make ``model`` apply ``view`` to whatever it is given (a no-op for the identity)."""
    if view.steps:
        model.register_forward_pre_hook(lambda module, args: (view(args[0]), *args[1:]))


@register
class CrossView(Distiller):
    name = "cross_view"
    summary = "the teacher sees one view of the data (teacher_view), the student another (student_view)"
    Settings = CrossViewSettings
    requires_teacher = True

    def __init__(self, student: nn.Module, settings: BaseModel, context: DistillContext):
        super().__init__(student, settings, context)
        assert isinstance(settings, CrossViewSettings)
        self.teacher = context.teachers[0]
        self.teacher_view = parse_view_text(settings.teacher_view)
        attach_view(self.student, parse_view_text(settings.student_view))

    def teacher_logits(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        if not self.teacher_view.steps:
            return self.teacher.logits(x, index, self.context.augmented)
        with torch.no_grad():
            return self.teacher.model(self.teacher_view(x)).float()

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        s = self.settings
        logits = self.student(x)  # the attached view makes the student's input
        losses = {"ce": (1 - s.alpha) * self.cross_entropy(logits, y)}
        if s.alpha > 0:
            losses["kd"] = s.alpha * kd_loss(logits, self.teacher_logits(x, index), s.temperature)
        return logits, losses
