"""Knowledge terms as plain functions of tensors (each checked against hand-computed values).

Every function returns an unweighted scalar (mean over the batch); the distillers weight them.
Inputs are cast to float32 first, so the terms are computed in full precision under autocast.

- response: ``kd_loss`` (Hinton et al. 2015), ``dkd_loss`` (Zhao et al. 2022, decoupled KD)
- feature: ``fitnet_loss`` (Romero et al. 2015), ``at_loss`` (Zagoruyko & Komodakis 2017)
- relation: ``rkd_distance_loss`` / ``rkd_angle_loss`` (Park et al. 2019), ``sp_loss`` (Tung & Mori 2019)
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


def dkd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KD, unweighted: (TCKD, NCKD), each a KL times T^2 averaged over the batch.

    TCKD compares the binary split (target class, all others); NCKD compares the distributions over
    the non-target classes alone. Classic KD is TCKD + (1 - p_target_teacher) * NCKD; DKD weights them
    independently (alpha, beta), as in mdistiller.
    """
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    gt = F.one_hot(target, s.shape[1]).bool()
    p_s, p_t = F.softmax(s, dim=1), F.softmax(t, dim=1)

    def binary(p: torch.Tensor) -> torch.Tensor:
        target_p = p.masked_fill(~gt, 0).sum(1, keepdim=True)
        return torch.cat([target_p, 1 - target_p], dim=1)

    tckd = F.kl_div(binary(p_s).clamp_min(1e-12).log(), binary(p_t), reduction="batchmean")
    # The target logit is pushed to -1000 so it vanishes from both softmaxes (exp underflows to 0).
    log_q_s = F.log_softmax(s.masked_fill(gt, -1000.0), dim=1)
    q_t = F.softmax(t.masked_fill(gt, -1000.0), dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="batchmean")
    return tckd * temperature**2, nckd * temperature**2


def fitnet_loss(adapted_student: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """FitNets hint: mean squared error between the (adapted) student feature and the teacher's."""
    return F.mse_loss(adapted_student.float(), teacher_feature.float())


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Spatial attention (p = 2): channel mean of squared activations, flattened, L2-normalised per sample."""
    return F.normalize(feature.float().pow(2).mean(1).flatten(1), dim=1)


def at_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Attention transfer: mean squared difference of the attention maps (same spatial size)."""
    return (attention_map(student_feature) - attention_map(teacher_feature)).pow(2).mean()


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    squared = e.pow(2).sum(1)
    d = (squared[:, None] + squared[None, :] - 2 * e @ e.t()).clamp_min(1e-12).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))  # exact zeros on the diagonal


def rkd_distance_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    """RKD distance: smooth-L1 between pairwise distances, each normalised by its mean off-diagonal distance."""
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
    """RKD angle: smooth-L1 between the cosines of all triplet angles of the batch."""
    s, t = student_embedding.float().flatten(1), teacher_embedding.float().flatten(1)
    with torch.no_grad():
        a_t = _angles(t)
    return F.smooth_l1_loss(_angles(s), a_t)


def sp_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD: squared Frobenius distance of row-normalised batch Gram matrices / b^2."""
    s, t = student_feature.float().flatten(1), teacher_feature.float().flatten(1)
    g_s, g_t = F.normalize(s @ s.t(), dim=1), F.normalize(t @ t.t(), dim=1)
    return (g_s - g_t).pow(2).sum() / len(s) ** 2
