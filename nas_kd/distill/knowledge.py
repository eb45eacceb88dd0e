"""Response, feature and relation knowledge between a student and one teacher of any two families.

Stage pairing (feature knowledge). A network with ``n`` stages is cut into ``k = min(n_student, n_teacher)``
equal parts by depth; pair ``m`` (1..k) joins the stage that ends part ``m`` in each network, i.e. stage
``ceil(m * n / k)`` (1-based) of each. The deepest stages are always paired; the network with more stages
contributes every ``n/k``-th stage, so a 2-stage student facing a 4-stage teacher is paired (1, 2) and (2, 4).
``feature_stages: j`` keeps only the ``j`` deepest pairs (0 keeps all).

Shapes. In each pair the larger feature map is adaptive-average-pooled to the smaller one's height and
width (pooling never invents detail, and a smaller map is cheaper). FitNets regresses the student map
through an automatic adapter, a 1x1 convolution with batch norm from the student's to the teacher's
channels, built at construction from both networks' ``stage_channels``; the adapters are trainable
modules of the distiller (optimised with the student) and are not part of the exported student.
Attention transfer compares channel-mean attention maps, so it needs no adapter.

Relation knowledge needs no pairing: RKD compares the pooled embeddings (the classifier's input),
similarity-preserving KD the deepest stage's features; both compare batch-by-batch relations, whose
size does not depend on either network's width.

Weights. ``feature_weight`` and ``relation_weight`` scale each term's reference weight (mdistiller's
CIFAR-100 values: FitNets 100, AT 1000, RKD distance 25 and angle 50, SP 3000), so 1 means "as published"
whichever term is chosen, and one searched range suits every term. Those values were set for 32x32
inputs: the AT term grows as feature maps shrink, and on 8x8 digits AT at 1000 (and FitNets at 100) swamp
the cross-entropy; search ``feature_weight`` (e.g. ``{low: 0.01, high: 1, log: true}``) on small images.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from nas_kd.distill import losses
from nas_kd.distill.base import Outputs

FEATURE_WEIGHTS = {"fitnet": 100.0, "at": 1000.0}
RELATION_WEIGHTS = {"rkd_distance": 25.0, "rkd_angle": 50.0, "sp": 3000.0}


def pair_stages(n_student: int, n_teacher: int, keep: int = 0) -> list[tuple[int, int]]:
    """(student stage, teacher stage) index pairs, 0-based, shallow to deep (see the module docstring)."""
    k = min(n_student, n_teacher)
    pairs = [(math.ceil(m * n_student / k) - 1, math.ceil(m * n_teacher / k) - 1) for m in range(1, k + 1)]
    return pairs[-keep:] if keep > 0 else pairs


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the larger of two (N, C, H, W) maps to the other's height and width."""
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    return (
        a if a.shape[2:] == size else F.adaptive_avg_pool2d(a, size),
        b if b.shape[2:] == size else F.adaptive_avg_pool2d(b, size),
    )


def adapter(in_channels: int, out_channels: int) -> nn.Module:
    """1x1 conv + batch norm: maps a student map onto a teacher map's channels."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


class KnowledgeSettings(BaseModel):
    """Which knowledge a student takes from a teacher, and how much. Defaults are plain Hinton KD."""

    model_config = ConfigDict(extra="forbid")
    response: Literal["kd", "dkd", "none"] = Field(
        "kd", description="response knowledge: kd (Hinton), dkd (decoupled KD) or none"
    )
    temperature: float = Field(4.0, gt=0, description="softening temperature T of the response term")
    alpha: float = Field(
        0.9, ge=0, le=1, description="weight of the response term; cross-entropy gets 1 - alpha (1 with response none)"
    )
    dkd_alpha: float = Field(1.0, ge=0, description="dkd: weight of the target-class part (TCKD)")
    dkd_beta: float = Field(8.0, ge=0, description="dkd: weight of the non-target part (NCKD)")
    feature: Literal["none", "fitnet", "at"] = Field(
        "none", description="feature knowledge on paired stages: fitnet (hint through a 1x1 adapter), at (attention)"
    )
    feature_weight: float = Field(
        1.0, ge=0, description="scale of the feature term; 1 = its reference weight (fitnet 100, at 1000)"
    )
    feature_stages: int = Field(0, ge=0, description="how many paired stages, deepest first, carry it (0 = all)")
    relation: Literal["none", "rkd", "sp"] = Field(
        "none", description="relation knowledge: rkd (distance + angle of embeddings), sp (similarity-preserving)"
    )
    relation_weight: float = Field(
        1.0, ge=0, description="scale of the relation term; 1 = its reference weight (rkd 25 + 50, sp 3000)"
    )


class Knowledge(nn.Module):
    """Computes the weighted terms of ``KnowledgeSettings`` (cross-entropy included) for one teacher.

    Owns the FitNets adapters, so a distiller that holds it trains them with the student."""

    def __init__(self, settings: KnowledgeSettings, student_channels: list[int], teacher_channels: list[int]):
        super().__init__()
        self.settings = settings
        self.pairs = pair_stages(len(student_channels), len(teacher_channels), settings.feature_stages)
        self.adapters = nn.ModuleList(
            adapter(student_channels[i], teacher_channels[j]) for i, j in self.pairs if settings.feature == "fitnet"
        )

    @property
    def needs_features(self) -> bool:
        """Whether both networks must run ``forward_features`` (else logits suffice)."""
        return self.settings.feature != "none" or self.settings.relation != "none"

    def forward(
        self, student: Outputs, teacher: Outputs, target: torch.Tensor, cross_entropy: nn.Module
    ) -> dict[str, torch.Tensor]:
        s = self.settings
        weight = s.alpha if s.response != "none" else 0.0
        terms = {"ce": (1 - weight) * cross_entropy(student.logits, target)}
        if s.response == "kd":
            terms["kd"] = weight * losses.kd_loss(student.logits, teacher.logits, s.temperature)
        elif s.response == "dkd":
            tckd, nckd = losses.dkd_loss(student.logits, teacher.logits, target, s.temperature)
            terms["tckd"], terms["nckd"] = weight * s.dkd_alpha * tckd, weight * s.dkd_beta * nckd
        if s.feature != "none":
            terms[s.feature] = s.feature_weight * FEATURE_WEIGHTS[s.feature] * self._feature_term(student, teacher)
        if s.relation != "none":
            for name, value in self._relation_terms(student, teacher).items():
                terms[name] = s.relation_weight * RELATION_WEIGHTS[name] * value
        return terms

    def _feature_term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        """Mean over the paired stages, so the weight does not depend on how many pairs there are."""
        total = torch.zeros((), device=student.logits.device)
        for n, (i, j) in enumerate(self.pairs):
            f_s, f_t = match_spatial(student.features[i], teacher.features[j])
            if self.settings.feature == "fitnet":
                total = total + losses.fitnet_loss(self.adapters[n](f_s), f_t)
            else:
                total = total + losses.at_loss(f_s, f_t)
        return total / len(self.pairs)

    def _relation_terms(self, student: Outputs, teacher: Outputs) -> dict[str, torch.Tensor]:
        if self.settings.relation == "rkd":
            return {
                "rkd_distance": losses.rkd_distance_loss(student.embedding, teacher.embedding),
                "rkd_angle": losses.rkd_angle_loss(student.embedding, teacher.embedding),
            }
        return {"sp": losses.sp_loss(student.features[-1], teacher.features[-1])}
