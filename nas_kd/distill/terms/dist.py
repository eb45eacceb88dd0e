"""DIST (Huang et al. NeurIPS 2022): a relation between the student's and the teacher's predictions.

With p = softmax(z / tau) for both networks, the inter-class relation is 1 - the mean over samples of the
Pearson correlation of the two prediction rows, the intra-class relation the same over classes (columns);
the term is tau^2 (beta * inter + gamma * intra). Published as the authors' code (hunto/DIST_KD): beta =
gamma = tau = 1, weight 1 beside CE weight 1. It fills the response slot (it reads logits only) and uses
its own tau, not the knowledge temperature."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from nas_kd.distill.base import Outputs
from nas_kd.distill.terms.base import Term, register_term


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise Pearson correlation of two (N, C) matrices (the authors' cosine of centred rows)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted (inter, intra), each times tau^2."""
    p_s = (student_logits.float() / tau).softmax(1)
    p_t = (teacher_logits.float() / tau).softmax(1)
    inter = 1 - pearson(p_s, p_t).mean()
    intra = 1 - pearson(p_s.t(), p_t.t()).mean()
    return inter * tau**2, intra * tau**2


class DISTSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float = Field(1.0, ge=0, description="weight of the inter-class relation")
    gamma: float = Field(1.0, ge=0, description="weight of the intra-class relation")
    tau: float = Field(1.0, gt=0, description="softening temperature of both predictions")


@register_term
class DIST(Term):
    name = "dist"
    role = "response"
    summary = "DIST: inter- and intra-class Pearson relation between the two networks' predictions"
    reference = "Huang et al. NeurIPS 2022, Knowledge distillation from a stronger teacher (hunto/DIST_KD)"
    weight, ce_weight = 1.0, 1.0
    Settings = DISTSettings

    def forward(
        self, student: Outputs, teacher: Outputs, target: torch.Tensor, index: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        s = self.settings
        inter, intra = dist_loss(self.logits(student), self.logits(teacher), s.tau)
        return {"dist_inter": s.beta * inter, "dist_intra": s.gamma * intra}
