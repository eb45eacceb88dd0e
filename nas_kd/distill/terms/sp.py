"""Similarity-preserving KD (Tung & Mori ICCV 2019): batch similarity matrices of the deepest stage.

The squared Frobenius distance of the row-normalised Gram matrices (b x b) over b^2. Published weight
3000 (mdistiller's SP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nas_kd.distill.base import Outputs
from nas_kd.distill.terms.base import Term, register_term


def sp_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    s, t = student_feature.float().flatten(1), teacher_feature.float().flatten(1)
    g_s, g_t = F.normalize(s @ s.t(), dim=1), F.normalize(t @ t.t(), dim=1)
    return (g_s - g_t).pow(2).sum() / len(s) ** 2


@register_term
class SP(Term):
    name = "sp"
    role = "relation"
    summary = "similarity-preserving: row-normalised batch Gram matrices of the deepest stage"
    reference = "Tung & Mori ICCV 2019, Similarity-preserving knowledge distillation (mdistiller SP.py)"
    weight = 3000.0
    needs = frozenset({"features"})

    def forward(
        self, student: Outputs, teacher: Outputs, target: torch.Tensor, index: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        return {"sp": sp_loss(student.features[-1], teacher.features[-1])}
