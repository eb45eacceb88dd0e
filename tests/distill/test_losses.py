"""Each knowledge term against a value computed by hand on small, fixed tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nas_kd.distill import losses
from nas_kd.distill.terms import rkd
from nas_kd.distill.terms.at import at_loss
from nas_kd.distill.terms.dkd import dkd_loss
from nas_kd.distill.terms.fitnet import fitnet_loss
from nas_kd.distill.terms.rkd import directions_angles, rkd_angle_loss, rkd_distance_loss
from nas_kd.distill.terms.sp import sp_loss

ln = math.log


def smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_kd_is_the_kl_of_softened_outputs_times_t_squared() -> None:
    # At T = 2 the teacher [2 ln 3, 0] softens to [3/4, 1/4]; the student [0, 0] to [1/2, 1/2].
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[2 * ln(3), 0.0]])
    expected = 4 * (0.75 * ln(0.75 / 0.5) + 0.25 * ln(0.25 / 0.5))
    assert losses.kd_loss(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_is_zero_when_the_student_matches_the_teacher() -> None:
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert losses.kd_loss(logits, logits, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_dkd_splits_target_and_non_target_parts() -> None:
    # Teacher p = [2/6, 3/6, 1/6], student p = [1/4, 2/4, 1/4], target class 0, T = 1.
    student, teacher = torch.tensor([[0.0, ln(2), 0.0]]), torch.tensor([[ln(2), ln(3), 0.0]])
    tckd, nckd = dkd_loss(student, teacher, torch.tensor([0]), 1.0)
    # binary (target, rest): teacher [1/3, 2/3], student [1/4, 3/4]
    assert tckd.item() == pytest.approx(1 / 3 * ln(4 / 3) + 2 / 3 * ln(8 / 9), rel=1e-5)
    # non-target classes renormalised: teacher [3/4, 1/4], student [2/3, 1/3]
    assert nckd.item() == pytest.approx(3 / 4 * ln(9 / 8) + 1 / 4 * ln(3 / 4), rel=1e-5)


def test_dkd_recombines_into_classic_kd() -> None:
    # KD = TCKD + (1 - teacher's target probability) * NCKD, per sample (Zhao et al., eq. 5).
    g = torch.Generator().manual_seed(1)
    student, teacher, target = torch.randn(1, 6, generator=g), torch.randn(1, 6, generator=g), torch.tensor([2])
    tckd, nckd = dkd_loss(student, teacher, target, 1.0)
    rest = 1 - F.softmax(teacher, dim=1)[0, 2]
    assert (tckd + rest * nckd).item() == pytest.approx(losses.kd_loss(student, teacher, 1.0).item(), rel=1e-5)


def test_dkd_scales_with_t_squared() -> None:
    g = torch.Generator().manual_seed(2)
    student, teacher, target = (
        torch.randn(4, 5, generator=g),
        torch.randn(4, 5, generator=g),
        torch.tensor([0, 1, 2, 3]),
    )
    at_one = dkd_loss(student, teacher, target, 1.0)
    at_three = dkd_loss(3 * student, 3 * teacher, target, 3.0)
    for a, b in zip(at_one, at_three, strict=True):
        assert b.item() == pytest.approx(9 * a.item(), rel=1e-5)


def test_fitnet_is_the_mean_squared_error() -> None:
    assert fitnet_loss(torch.tensor([1.0, 2.0]), torch.zeros(2)).item() == pytest.approx(2.5)


def test_fitnet_gradient_keeps_the_channels_last_layout() -> None:
    # The adapter's batch norm runs channels_last; an NCHW gradient sends its CPU backward down a slow path.
    # (A leaf's .grad is laid out like the leaf whatever the backward gives, so the map here is not a leaf.)
    leaf = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    adapted = 2 * leaf
    (gradient,) = torch.autograd.grad(fitnet_loss(adapted, torch.randn(2, 3, 4, 4)), adapted)
    assert gradient.is_contiguous(memory_format=torch.channels_last)


def test_attention_transfer_compares_normalised_channel_energy() -> None:
    # Student channels [1, 0] and [1, 2] over two positions: energy [(1+1)/2, (0+4)/2] = [1, 2] -> [1, 2]/sqrt 5.
    student = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])
    teacher = torch.ones(1, 3, 1, 2)  # uniform energy -> [1, 1]/sqrt 2
    a, b = 1 / math.sqrt(5) - 1 / math.sqrt(2), 2 / math.sqrt(5) - 1 / math.sqrt(2)
    assert at_loss(student, teacher).item() == pytest.approx((a * a + b * b) / 2, rel=1e-6)


def test_rkd_distance_compares_mean_normalised_distances() -> None:
    student = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # distances 3, 4, 5; mean 4
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # distances 1, 1, sqrt 2
    mean_t = (2 + math.sqrt(2)) / 3
    diffs = [3 / 4 - 1 / mean_t, 4 / 4 - 1 / mean_t, 5 / 4 - math.sqrt(2) / mean_t]
    expected = 2 * sum(smooth_l1(d) for d in diffs) / 9  # each pair twice, zero diagonal, 9 entries
    assert rkd_distance_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_rkd_angle_compares_the_cosines_of_all_triplet_angles() -> None:
    right = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # angles 90, 45, 45 degrees
    equilateral = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])  # 60 everywhere
    # Per vertex: a 2x2 block over the other two points, cos 1 on its diagonal (same in both) and the
    # vertex angle's cosine off it; entries that involve the vertex itself are 0 in both. 27 entries.
    diffs = [0 - 0.5] * 2 + [math.sqrt(2) / 2 - 0.5] * 4
    expected = sum(smooth_l1(d) for d in diffs) / 27
    assert rkd_angle_loss(right, equilateral).item() == pytest.approx(expected, rel=1e-5)


def reference_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The reference code's form (unit difference vectors multiplied per vertex), in float64."""
    return F.smooth_l1_loss(directions_angles(student.double()), directions_angles(teacher.double()))


@pytest.mark.parametrize("rows_per_block", [5, 24])  # blocks of 5 vertices end in a short one; 24: one block
def test_rkd_angle_gradient_matches_the_reference_form(monkeypatch: pytest.MonkeyPatch, rows_per_block: int) -> None:
    # The law-of-cosines form computes its own gradient; compare it with autograd through the reference.
    monkeypatch.setattr(rkd, "CPU_BLOCK", rows_per_block * 24 * 24)
    g = torch.Generator().manual_seed(5)
    student = (3 * torch.randn(24, 16, generator=g)).requires_grad_()
    teacher = torch.randn(24, 48, generator=g).relu()  # post-ReLU pooling, as the embeddings come
    rkd_angle_loss(student, teacher).backward()
    reference = student.detach().double().requires_grad_()
    reference_angle_loss(reference, teacher).backward()
    assert student.grad.abs().max() > 0
    assert torch.allclose(student.grad.double(), reference.grad, rtol=1e-4, atol=1e-9)


def test_rkd_angle_keeps_its_precision_for_a_near_duplicate_pair() -> None:
    # Rows 0 and 1 differ by one float32 step at a zero: far below what the law of cosines resolves even in
    # float64 (the cosines at that pair would be noise), so the batch must take the reference form.
    g = torch.Generator().manual_seed(6)
    teacher = torch.randn(8, 12, generator=g).relu()
    teacher[0, 3] = 0.0
    teacher[1] = teacher[0]
    teacher[1, 3] = torch.nextafter(torch.tensor(0.0), torch.tensor(1.0))
    student = torch.randn(8, 6, generator=g)
    expected = reference_angle_loss(student, teacher).item()
    assert rkd_angle_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_rkd_handles_identical_rows_as_the_reference_does() -> None:
    # A duplicated image gives identical embeddings: its difference vector has no direction (cosine 0).
    g = torch.Generator().manual_seed(7)
    teacher, student = torch.randn(8, 12, generator=g), torch.randn(8, 6, generator=g)
    teacher[1], student[2] = teacher[0], student[3]
    student.requires_grad_()
    loss = rkd_angle_loss(student, teacher)
    assert loss.item() == pytest.approx(reference_angle_loss(student.detach(), teacher).item(), rel=1e-5)
    (loss + rkd_distance_loss(student, teacher)).backward()
    assert torch.isfinite(student.grad).all()


def test_relation_terms_ignore_scale_and_width() -> None:
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(6, 32, generator=g)
    student = 5 * teacher[:, :16] @ torch.linalg.qr(torch.randn(16, 16, generator=g))[0]  # rotated, scaled
    same_shape = torch.cat([teacher[:, :16], torch.zeros(6, 16)], 1)
    assert rkd_distance_loss(student, same_shape).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_angle_loss(student, same_shape).item() == pytest.approx(0.0, abs=1e-6)


def test_similarity_preserving_compares_row_normalised_gram_matrices() -> None:
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # Gram I
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # Gram all ones -> rows [1, 1]/sqrt 2
    expected = (2 * (1 - 1 / math.sqrt(2)) ** 2 + 2 * 0.5) / 4
    assert sp_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_similarity_preserving_takes_maps_of_any_shape() -> None:
    g = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(4, 8, 4, 4, generator=g), torch.randn(4, 64, 2, 2, generator=g)
    # Only the batch's Gram matrix matters: a map is its flattened vector; the same map costs nothing.
    assert sp_loss(student, teacher).item() == pytest.approx(sp_loss(student.flatten(1), teacher.flatten(1)).item())
    assert sp_loss(student, teacher).item() > 1e-3
    assert sp_loss(teacher, teacher.clone()).item() == pytest.approx(0.0, abs=1e-7)
