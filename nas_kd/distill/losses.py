"""The soft-target KL that every scheme shares (Hinton et al. 2015); the other terms live in ``terms/``.

Unweighted scalars, mean over the batch, computed in float32 (also under autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(target || softmax(student / T)) per batch, times T^2; ``target_probs`` already softened."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, target_probs.float(), reduction="batchmean")
    return kl * temperature**2


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.: KL(teacher || student) of temperature-softened outputs, times T^2 (gradient scale)."""
    return soft_kl(student_logits, F.softmax(teacher_logits.float() / temperature, dim=1), temperature)
