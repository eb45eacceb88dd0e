"""Attention transfer (Zagoruyko & Komodakis ICLR 2017): compare L2-normalised spatial attention maps.

The attention map (p = 2) is the channel mean of squared activations, flattened and L2-normalised per
sample; the term is the mean squared difference of the maps, summed over the paired stages as in every
reference (RepDistiller's Attention, mdistiller's AT). Published weight 1000. Needs no adapter."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nas_kd.distill.base import Outputs
from nas_kd.distill.terms.base import Term, register_term
from nas_kd.distill.terms.pairing import match_spatial


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Spatial attention (p = 2): channel mean of squared activations, flattened, L2-normalised per sample."""
    return F.normalize(feature.float().pow(2).mean(1).flatten(1), dim=1)


def at_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Attention transfer for one pair: mean squared difference of the attention maps (same spatial size)."""
    return (attention_map(student_feature) - attention_map(teacher_feature)).pow(2).mean()


@register_term
class AT(Term):
    name = "at"
    role = "feature"
    summary = "attention transfer: squared difference of normalised attention maps, summed over paired stages"
    reference = "Zagoruyko & Komodakis ICLR 2017, Paying more attention to attention (RepDistiller AT.py)"
    weight = 1000.0
    needs = frozenset({"features"})

    def forward(
        self, student: Outputs, teacher: Outputs, target: torch.Tensor, index: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        pairs = self.setup_info.pairs
        return {"at": sum(at_loss(*match_spatial(student.features[i], teacher.features[j])) for i, j in pairs)}
