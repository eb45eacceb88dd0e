"""Hinton KD (Hinton et al. 2015): KL(teacher || student) of temperature-softened outputs, times T^2.

Published weights as mdistiller's KD: CE 0.1, KD 0.9, T = 4."""

from __future__ import annotations

import torch

from nas_kd.distill.base import Outputs
from nas_kd.distill.losses import kd_loss
from nas_kd.distill.terms.base import Term, register_term


@register_term
class KD(Term):
    name = "kd"
    role = "response"
    summary = "Hinton KD: KL of temperature-softened outputs times T^2"
    reference = "Hinton, Vinyals & Dean 2015, Distilling the knowledge in a neural network"
    weight, ce_weight, temperature = 0.9, 0.1, 4.0

    def forward(
        self, student: Outputs, teacher: Outputs, target: torch.Tensor, index: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        return {self.name: kd_loss(self.logits(student), self.logits(teacher), self.setup_info.temperature)}
