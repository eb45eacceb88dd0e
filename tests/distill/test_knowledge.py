"""Knowledge between any two families: stage pairing, shape matching, adapters, weights."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nas_kd.arch import build_model
from nas_kd.distill import DISTILLERS, TERMS, Outputs
from nas_kd.distill.base import run
from nas_kd.distill.knowledge import Knowledge, KnowledgeSettings
from nas_kd.distill.losses import kd_loss
from nas_kd.distill.terms.dkd import dkd_loss
from nas_kd.distill.terms.pairing import match_spatial, pair_stages

SHAPE, CLASSES = (1, 8, 8), 10
MOBILENET = {"family": "mobilenet", "stem": 8, "stages": [{"channels": 8, "depth": 1}, {"channels": 16, "depth": 1}]}


@pytest.mark.parametrize(
    ("n_student", "n_teacher", "pairs"),
    [
        (2, 4, [(0, 1), (1, 3)]),
        (3, 3, [(0, 0), (1, 1), (2, 2)]),
        (2, 3, [(0, 1), (1, 2)]),
        (4, 2, [(1, 0), (3, 1)]),
        (1, 4, [(0, 3)]),
    ],
)
def test_stages_are_paired_by_relative_depth(n_student: int, n_teacher: int, pairs: list) -> None:
    assert pair_stages(n_student, n_teacher) == pairs


def test_feature_stages_keeps_the_deepest_pairs() -> None:
    assert pair_stages(3, 4, keep=2) == pair_stages(3, 4)[-2:] == [(1, 2), (2, 3)]


def test_the_larger_map_is_pooled_to_the_smaller() -> None:
    a, b = match_spatial(torch.ones(2, 3, 8, 8), torch.ones(2, 5, 2, 2))
    assert a.shape == (2, 3, 2, 2) and b.shape == (2, 5, 2, 2)


def test_feature_and_relation_knowledge_join_any_two_families() -> None:
    # A 2-stage MobileNet student against a torchvision ResNet-18 teacher (4 stages, 64..512 channels).
    student = build_model(MOBILENET, SHAPE, CLASSES)
    teacher = build_model({"torchvision": "resnet18"}, SHAPE, CLASSES).eval()
    x, y = torch.randn(6, *SHAPE), torch.arange(6)
    for feature, relation in [("fitnet", "rkd"), ("at", "sp")]:
        settings = KnowledgeSettings(feature=feature, relation=relation)
        knowledge = Knowledge(settings, student.stage_channels, teacher.stage_channels)
        with torch.no_grad():
            teacher_out = run(teacher, x, features=True)
        terms = knowledge(run(student, x, features=True), teacher_out, y, nn.CrossEntropyLoss())
        assert set(terms) >= {"ce", "kd", feature, *(("rkd_distance", "rkd_angle") if relation == "rkd" else ("sp",))}
        assert all(torch.isfinite(v) for v in terms.values())
        sum(terms.values()).backward()
        assert student.stages[0][0].block[0][0].weight.grad is not None  # reaches the shallow stage


def test_fitnet_adapters_map_student_channels_onto_the_paired_teacher_stage() -> None:
    knowledge = Knowledge(KnowledgeSettings(feature="fitnet"), [8, 16], [64, 128, 256, 512])
    convs = [adapter[0] for adapter in knowledge.terms["feature"].adapters]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(8, 128, (1, 1)), (16, 512, (1, 1))]
    assert not list(Knowledge(KnowledgeSettings(feature="at"), [8, 16], [64, 128]).parameters())  # AT needs none


def test_default_knowledge_is_hinton_kd_weighted_by_alpha() -> None:
    student, teacher, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    ce = nn.CrossEntropyLoss()
    terms = Knowledge(KnowledgeSettings(), [8], [8])(Outputs(student), Outputs(teacher), y, ce)
    assert set(terms) == {"ce", "kd"}
    assert terms["ce"].item() == pytest.approx(0.1 * ce(student, y).item(), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(0.9 * kd_loss(student, teacher, 4.0).item(), rel=1e-5)


def test_without_response_knowledge_cross_entropy_has_full_weight() -> None:
    student, y = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    ce = nn.CrossEntropyLoss()
    terms = Knowledge(KnowledgeSettings(response="none"), [8], [8])(Outputs(student), Outputs(student), y, ce)
    assert terms == {"ce": pytest.approx(ce(student, y))}


def test_weights_scale_the_reference_weight() -> None:
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(4, 8, 4, 4, generator=g)]
    out = Outputs(torch.randn(4, 10, generator=g), features, torch.randn(4, 8, generator=g))
    other = Outputs(out.logits, [torch.randn(4, 8, 4, 4, generator=g)], torch.randn(4, 8, generator=g))

    def terms(**settings: float | str) -> dict[str, torch.Tensor]:
        knowledge = Knowledge(KnowledgeSettings(**settings), [8], [8])
        return knowledge(out, other, torch.zeros(4, dtype=torch.long), nn.CrossEntropyLoss())

    one = terms(feature="at", relation="sp")
    two = terms(feature="at", relation="sp", feature_weight=2.0, relation_weight=0.5)
    assert two["at"].item() == pytest.approx(2 * one["at"].item(), rel=1e-6)
    assert two["sp"].item() == pytest.approx(0.5 * one["sp"].item(), rel=1e-6)


def test_dkd_takes_the_published_weights_and_warms_up_linearly() -> None:
    g = torch.Generator().manual_seed(1)
    student, teacher, y = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g), torch.tensor([1, 2, 3, 4])
    ce = nn.CrossEntropyLoss()
    settings = DISTILLERS["offline"].Settings(response="dkd")
    knowledge = Knowledge(settings, [8], [8])
    tckd, nckd = dkd_loss(student, teacher, y, 4.0)
    ramps = []
    for epoch in (0, 9, 19, 30):
        knowledge.terms["response"].on_epoch_start(epoch, 40)
        terms = knowledge(Outputs(student), Outputs(teacher), y, ce)
        assert terms["ce"].item() == pytest.approx(ce(student, y).item(), rel=1e-6)  # CE weight 1
        ramps.append(terms["nckd"].item() / (8 * nckd.item()))
        assert terms["tckd"].item() == pytest.approx(ramps[-1] * tckd.item(), rel=1e-5)
    assert ramps == pytest.approx([1 / 20, 10 / 20, 1.0, 1.0], rel=1e-5)  # min(epoch / 20, 1), epochs from 1


def test_a_given_alpha_splits_the_weight_between_ce_and_the_response_term() -> None:
    student, teacher, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    settings = DISTILLERS["offline"].Settings(response="dkd", alpha=0.25, dkd_warmup=0)
    terms = Knowledge(settings, [8], [8])(Outputs(student), Outputs(teacher), y, nn.CrossEntropyLoss())
    tckd, nckd = dkd_loss(student, teacher, y, 4.0)
    assert terms["ce"].item() == pytest.approx(0.75 * nn.CrossEntropyLoss()(student, y).item(), rel=1e-6)
    assert terms["nckd"].item() == pytest.approx(0.25 * 8 * nckd.item(), rel=1e-5)
    assert terms["tckd"].item() == pytest.approx(0.25 * tckd.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"relation": "spp"}, "unknown relation term"), ({"response": "at"}, "unknown response term")],
)
def test_unknown_or_misplaced_terms_are_errors(settings: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DISTILLERS["offline"].Settings(**settings)


def test_every_term_setting_is_a_flat_knowledge_setting() -> None:
    fields = DISTILLERS["offline"].Settings.model_fields
    for name, term in TERMS.items():
        for key in term.Settings.model_fields:
            assert f"{name}_{key}" in fields
    assert {"crd_nce_k", "crd_nce_t", "crd_nce_m", "dkd_warmup", "dist_tau"} <= set(fields)
