"""Relational KD (Park et al. CVPR 2019): distance-wise and angle-wise relations of the pooled embeddings.

Distance: smooth-L1 between pairwise distances, each normalised by its mean off-diagonal distance.
Angle: smooth-L1 between the cosines of all triplet angles of the batch. Published weights 25 and 50
(mdistiller's RKD), the teacher's relations taken without gradient.

The reference code forms every difference vector (B^2 x D) and multiplies them per vertex (B^3 D): 60% of
the RKD loss's time at batch 128 with a 256-wide teacher embedding (docs/benchmarks.md). Here the cosines come from the pairwise distances by
the law of cosines (B^3, independent of D), in float64 so that its cancellation stays below float32 precision,
computed in cache-sized blocks of vertices with the loss's gradient formed in the same pass. A batch holding a
pair closer than ``NEAR_PAIR`` of its largest distance (where even float64 cancels) uses the reference form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from nas_kd.distill.base import Outputs
from nas_kd.distill.terms.base import Term, register_term

NEAR_PAIR = 1e-6  # law-of-cosines error is about D * 1e-16 * (largest / smallest distance): 3e-8 here at D = 256
# Cosines per block of vertices: 2 MB of float64 on a CPU (stays in cache), 128 MB on a GPU (few launches).
CPU_BLOCK, GPU_BLOCK = 2**18, 2**24


def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """Float64 distances from the differences themselves (not |a|^2 + |b|^2 - 2ab, which cancels for near
    pairs), exactly 0 on the diagonal and between identical rows."""
    e = e.double()
    return torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")


def distance_loss(d_s: torch.Tensor, d_t: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(d_s / d_s[d_s > 0].mean(), d_t / d_t[d_t > 0].mean()).float()


def directions_angles(e: torch.Tensor) -> torch.Tensor:
    """The reference form: cos of the angle at vertex j between points i and k as [j, i, k], from unit
    difference vectors (0 where i or k coincides with j)."""
    directions = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # [j, i] = unit(e_i - e_j)
    return torch.bmm(directions, directions.transpose(1, 2))


def _law_of_cosines(half_squared: torch.Tensor, inverse: torch.Tensor, rows: slice) -> torch.Tensor:
    """[j, i, k] for the vertices j in rows: (d_ji^2 + d_jk^2 - d_ik^2) / (2 d_ji d_jk)."""
    cosines = half_squared[rows, :, None] + half_squared[rows, None, :]
    return cosines.sub_(half_squared).mul_(inverse[rows, :, None]).mul_(inverse[rows, None, :])


def _inverse(d: torch.Tensor) -> torch.Tensor:
    zero = d == 0
    return d.masked_fill(zero, 1).reciprocal_().masked_fill_(zero, 0)


class _AngleLoss(torch.autograd.Function):
    """Mean smooth-L1 between the triplet cosines of two distance matrices, differentiable in the first.

    With G = dL/dA, H = G r_ji r_jk and A = (h_ji + h_jk - h_ik) r_ji r_jk (h = d^2 / 2, r = 1 / d):
    dL/dd_ji = d_ji (2 sum_k H[j, i, k] - sum_m H[m, j, i]) - 2 r_ji sum_k G[j, i, k] A[j, i, k]."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, d_s: torch.Tensor, d_t: torch.Tensor) -> torch.Tensor:
        n = len(d_s)
        h_s, h_t, r_s, r_t = d_s.square() / 2, d_t.square() / 2, _inverse(d_s), _inverse(d_t)
        rows_per_block = max(1, (GPU_BLOCK if d_s.is_cuda else CPU_BLOCK) // (n * n))
        differentiate = ctx.needs_input_grad[0]
        total = d_s.new_zeros(())
        if differentiate:
            by_vertex, by_far_pair = torch.zeros_like(d_s), torch.zeros_like(d_s)
        for start in range(0, n, rows_per_block):
            rows = slice(start, start + rows_per_block)
            a_s, a_t = _law_of_cosines(h_s, r_s, rows), _law_of_cosines(h_t, r_t, rows)
            total += F.smooth_l1_loss(a_s, a_t, reduction="sum")
            if differentiate:
                g = a_t.neg_().add_(a_s).clamp_(-1, 1)  # smooth-L1's derivative, in a_t's storage
                g_a = (g * a_s).sum(2)
                h = g.mul_(r_s[rows, :, None]).mul_(r_s[rows, None, :])
                by_far_pair += h.sum(0)
                by_vertex[rows] = 2 * (d_s[rows] * h.sum(2) - r_s[rows] * g_a)
        if differentiate:
            ctx.save_for_backward((by_vertex - d_s * by_far_pair) / n**3)
        return total / n**3

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (d_loss,) = ctx.saved_tensors
        return grad * d_loss, None


def _near_pair(d: torch.Tensor) -> torch.Tensor:
    return ((d > 0) & (d < NEAR_PAIR * d.max())).any()


def angle_loss(s: torch.Tensor, t: torch.Tensor, d_s: torch.Tensor, d_t: torch.Tensor) -> torch.Tensor:
    """Angle-wise RKD of embeddings s and t given their ``pairwise_distances`` (t's without gradient)."""
    if bool(_near_pair(d_s) | _near_pair(d_t)):  # one host sync per step
        with torch.no_grad():
            a_t = directions_angles(t)
        return F.smooth_l1_loss(directions_angles(s), a_t)
    return _AngleLoss.apply(d_s, d_t).float()


def _embeddings_and_distances(
    student_embedding: torch.Tensor, teacher_embedding: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    s, t = student_embedding.float().flatten(1), teacher_embedding.float().flatten(1).detach()
    with torch.no_grad():
        d_t = pairwise_distances(t)
    return s, t, pairwise_distances(s), d_t


def rkd_distance_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    _, _, d_s, d_t = _embeddings_and_distances(student_embedding, teacher_embedding)
    return distance_loss(d_s, d_t)


def rkd_angle_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    return angle_loss(*_embeddings_and_distances(student_embedding, teacher_embedding))


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
        # the distances serve both parts
        s, t, d_s, d_t = _embeddings_and_distances(student.embedding, teacher.embedding)
        return {
            "rkd_distance": self.settings.distance_weight * distance_loss(d_s, d_t),
            "rkd_angle": self.settings.angle_weight * angle_loss(s, t, d_s, d_t),
        }
