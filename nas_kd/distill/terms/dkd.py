"""Decoupled KD (Zhao et al. CVPR 2022): target-class (TCKD) and non-target-class (NCKD) parts of KD.

Computed in log space, so both parts stay exact (and their gradients non-zero) at any logit margin in
float32: the binary log-probabilities are log p_target = log_softmax at the target and
log p_rest = logsumexp(non-target logits) - logsumexp(all logits), each taken from the side where it does
not round (log1p(-exp(.)) of the other when it is below log 1/2). Published as mdistiller's DKD: CE 1,
TCKD alpha 1, NCKD beta 8, T = 4, and a linear warm-up of both parts over the first 20 epochs
(``min(epoch / warmup, 1)``, epochs counted from 1), added there for early-training instability.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from nas_kd.distill.base import Outputs
from nas_kd.distill.terms.base import Term, TermSetup, register_term

HALF = math.log(0.5)


def binary_log_probs(z: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """(N, 2) log-probabilities of (target class, every other class) under softmax(z), exact at any margin."""
    lse = torch.logsumexp(z, 1, keepdim=True)
    log_target = (z - lse).masked_fill(~target_mask, 0).sum(1, keepdim=True)
    log_rest = torch.logsumexp(z.masked_fill(target_mask, -math.inf), 1, keepdim=True) - lse
    # log(1 - e^x) loses nothing for x < log 1/2; the clamps keep the branch not taken finite.
    log_target = torch.where(log_rest < HALF, torch.log1p(-log_rest.clamp(max=HALF).exp()), log_target)
    log_rest = torch.where(log_target < HALF, torch.log1p(-log_target.clamp(max=HALF).exp()), log_rest)
    return torch.cat([log_target, log_rest], 1)


def dkd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted (TCKD, NCKD), each a KL times T^2 averaged over the batch."""
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    mask = F.one_hot(target, s.shape[1]).bool()
    b_s, b_t = binary_log_probs(s, mask), binary_log_probs(t, mask)
    tckd = (b_t.exp() * (b_t - b_s)).sum(1).mean()
    # Non-target distributions: the target logit pushed so far down that its probability is exactly 0.
    lowest = torch.finfo(s.dtype).min / 4
    log_q_s = F.log_softmax(s.masked_fill(mask, lowest), 1)
    log_q_t = F.log_softmax(t.masked_fill(mask, lowest), 1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).masked_fill(mask, 0).sum(1).mean()
    return tckd * temperature**2, nckd * temperature**2


class DKDSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.0, ge=0, description="weight of the target-class part (TCKD)")
    beta: float = Field(8.0, ge=0, description="weight of the non-target part (NCKD)")
    warmup: int = Field(20, ge=0, description="epochs of linear warm-up of the DKD term (0 = none)")


@register_term
class DKD(Term):
    name = "dkd"
    role = "response"
    summary = "decoupled KD: alpha * TCKD + beta * NCKD, log-space exact, linear warm-up"
    reference = "Zhao et al. CVPR 2022, Decoupled knowledge distillation (mdistiller/distillers/DKD.py)"
    weight, ce_weight, temperature = 1.0, 1.0, 4.0
    Settings = DKDSettings

    def __init__(self, settings: BaseModel, setup: TermSetup):
        super().__init__(settings, setup)
        self.ramp = 1.0  # the warm-up factor of the current epoch (1 outside a trainer)

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        warmup = self.settings.warmup
        self.ramp = min((epoch + 1) / warmup, 1.0) if warmup else 1.0

    def get_extra_state(self) -> dict[str, float]:
        return {"ramp": self.ramp}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.ramp = float(state["ramp"])

    def forward(
        self, student: Outputs, teacher: Outputs, target: torch.Tensor, index: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        s = self.settings
        tckd, nckd = dkd_loss(self.logits(student), self.logits(teacher), target, self.setup_info.temperature)
        return {"tckd": self.ramp * s.alpha * tckd, "nckd": self.ramp * s.beta * nckd}
