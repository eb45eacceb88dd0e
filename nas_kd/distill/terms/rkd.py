"""Relational KD (Park et al. CVPR 2019): distance-wise and angle-wise relations of the pooled embeddings.

Distance: smooth-L1 between pairwise distances, each normalised by its mean off-diagonal distance.
Angle: smooth-L1 between the cosines of all triplet angles of the batch. Published weights 25 and 50
(mdistiller's RKD), the teacher's relations taken without gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from nas_kd.distill.base import Outputs
from nas_kd.distill.terms.base import Term, register_term


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    squared = e.pow(2).sum(1)
    d = (squared[:, None] + squared[None, :] - 2 * e @ e.t()).clamp_min(1e-12).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))  # exact zeros on the diagonal


def rkd_distance_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    s, t = student_embedding.float().flatten(1), teacher_embedding.float().flatten(1)
    with torch.no_grad():
        d_t = _pairwise_distances(t)
        d_t = d_t / d_t[d_t > 0].mean()
    d_s = _pairwise_distances(s)
    d_s = d_s / d_s[d_s > 0].mean()
    return F.smooth_l1_loss(d_s, d_t)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at vertex j between points i and k, for all (i, j, k)."""
    directions = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # [j, i] = unit(e_i - e_j)
    return torch.bmm(directions, directions.transpose(1, 2)).flatten()


def rkd_angle_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    s, t = student_embedding.float().flatten(1), teacher_embedding.float().flatten(1)
    with torch.no_grad():
        a_t = _angles(t)
    return F.smooth_l1_loss(_angles(s), a_t)


class RKDSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    distance_weight: float = Field(25.0, ge=0, description="weight of the distance-wise part")
    angle_weight: float = Field(50.0, ge=0, description="weight of the angle-wise part")


@register_term
class RKD(Term):
    name = "rkd"
    role = "relation"
    summary = "relational KD: distances (25) and angles (50) between the batch's pooled embeddings"
    reference = "Park et al. CVPR 2019, Relational knowledge distillation (mdistiller/distillers/RKD.py)"
    needs = frozenset({"embedding"})
    Settings = RKDSettings

    def forward(
        self, student: Outputs, teacher: Outputs, target: torch.Tensor, index: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        s = self.settings
        return {
            "rkd_distance": s.distance_weight * rkd_distance_loss(student.embedding, teacher.embedding),
            "rkd_angle": s.angle_weight * rkd_angle_loss(student.embedding, teacher.embedding),
        }
