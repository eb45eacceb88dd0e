"""No teacher: cross-entropy only. The control arm of every study."""

from __future__ import annotations

import torch

from nas_kd.distill.base import Distiller
from nas_kd.distill.registry import register


@register
class CrossEntropy(Distiller):
    name = "ce"
    summary = "no teacher, cross-entropy on the labels (control arm)"

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        return logits, {"ce": self.cross_entropy(logits, y)}
