"""Logit standardisation (Sun et al. CVPR 2024): z-score each network's logits before the softmax.

``standardise(z) = (z - mean(z)) / (std(z) + 1e-7)`` per sample (unbiased std, as the authors' code), so
the student need only match the teacher's logit *relations*, not their scale. Applied to Hinton KD
(``ls_kd``) and DKD (``ls_dkd``). Published as the authors' scripts (sunshangquan/logit-standardization-KD):
base temperature 2 and KD weight 9 (KD: CE 0.1; DKD: CE 1, alpha and beta times 9)."""

from __future__ import annotations

import torch

from nas_kd.distill.base import Outputs
from nas_kd.distill.terms.base import register_term
from nas_kd.distill.terms.dkd import DKD
from nas_kd.distill.terms.kd import KD


def standardise(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return (logits - logits.mean(1, keepdim=True)) / (logits.std(1, keepdim=True) + 1e-7)


class Standardised:
    """Mixin for a response term: its logits are z-scored first."""

    def logits(self, outputs: Outputs) -> torch.Tensor:
        return standardise(outputs.logits)


@register_term
class StandardisedKD(Standardised, KD):
    name = "ls_kd"
    summary = "Hinton KD on z-scored logits (logit standardisation)"
    reference = "Sun et al. CVPR 2024, Logit standardization in knowledge distillation"
    weight, ce_weight, temperature = 9.0, 0.1, 2.0


@register_term
class StandardisedDKD(Standardised, DKD):
    name = "ls_dkd"
    summary = "DKD on z-scored logits (logit standardisation)"
    reference = "Sun et al. CVPR 2024, Logit standardization in knowledge distillation"
    weight, ce_weight, temperature = 9.0, 1.0, 2.0
