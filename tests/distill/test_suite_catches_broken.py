"""The conformance suites fail on deliberately broken terms and distillers: each check can fail.

Broken toys (never registered): a reversed KL, a KD without T^2, a KD whose published weight is 0, a
distiller that zeroes its KD term, deep mutual learning and BYOT without their ``.detach()``, and DML
exporting a peer instead of the student."""

from __future__ import annotations

import pytest
import torch

from nas_kd.distill.base import Outputs
from nas_kd.distill.losses import kd_loss
from nas_kd.distill.offline import Offline
from nas_kd.distill.online import Online
from nas_kd.distill.self_distillation import SelfDistillation
from nas_kd.distill.terms.kd import KD
from nas_kd.testing.pytest_distillers import (
    Environment,
    check_export_is_the_trained_student,
    check_gradient_barriers,
    check_teachers_get_no_gradient,
    check_teachers_reach_the_student,
)
from tests.distill import test_terms


class ReversedKL(KD):
    def forward(self, student: Outputs, teacher: Outputs, target: torch.Tensor, index: torch.Tensor | None) -> dict:
        return {"kd": kd_loss(teacher.logits, student.logits, self.setup_info.temperature)}  # KL(student || teacher)


class MissingTemperatureSquared(KD):
    def forward(self, student: Outputs, teacher: Outputs, target: torch.Tensor, index: torch.Tensor | None) -> dict:
        t = self.setup_info.temperature
        return {"kd": kd_loss(student.logits, teacher.logits, t) / t**2}


class ZeroWeightKD(KD):
    weight = 0.0


@pytest.mark.parametrize("broken", [ReversedKL, MissingTemperatureSquared])
def test_the_term_suite_catches_wrong_kd_maths(broken: type[KD]) -> None:
    suite = type("Broken", (test_terms.TestKD,), {"term": broken})()
    with pytest.raises(AssertionError, match="reference"):
        suite.test_matches_the_reference(1.0)


def test_the_term_suite_catches_a_wrong_published_weight() -> None:
    suite = type("Broken", (test_terms.TestKD,), {"term": ZeroWeightKD})()
    with pytest.raises(AssertionError, match="published"):
        suite.test_published_weights()


def test_the_term_suite_passes_the_real_kd() -> None:  # the same calls, on the real term
    suite = test_terms.TestKD()
    suite.test_matches_the_reference(1.0)
    suite.test_published_weights()


class ZeroKD(Offline):
    def forward_train(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None) -> tuple:
        logits, terms = super().forward_train(x, y, index)
        return logits, {**terms, "kd": 0 * terms["kd"]}


class TeacherWithGradient(Offline):
    def forward_train(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None) -> tuple:
        logits = self.student(x)
        teacher = self.teacher.model(x)  # no torch.no_grad, no cache: the teacher would learn
        return logits, {"ce": self.cross_entropy(logits, y), "kd": kd_loss(logits, teacher, 4.0)}


class UndetachedMutualLearning(Online):
    def forward_train(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None) -> tuple:
        logits = [net(x) for net in (self.student, *self.peers)]
        kl = [kd_loss(logits[i], logits[1 - i], 1.0) for i in range(2)]  # targets not detached
        ce = [self.cross_entropy(out, y) for out in logits]
        return logits[0], {"ce": ce[0], "kl": kl[0], "peers_ce": ce[1], "peers_kl": kl[1]}


class PeerExport(Online):
    def export_student(self) -> torch.nn.Module:
        return self.peers[0]


class UndetachedSelfDistillation(SelfDistillation):
    def forward_train(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None) -> tuple:
        logits, features, _ = self.student.forward_features(x)
        terms = {"ce": self.cross_entropy(logits, y)}
        kl = hint = torch.zeros(())
        for head, feature in zip(self.heads, features, strict=False):
            head_feature, head_logits = head(feature, features[-1].shape[2:])
            kl = kl + kd_loss(head_logits, logits, 3.0)  # the deepest classifier would learn from the heads
            hint = hint + (head_feature - features[-1].detach()).pow(2).mean()
        return logits, {**terms, "heads_kl": kl, "heads_hint": hint}


def test_the_distiller_suite_catches_a_kd_weight_of_zero(env: Environment) -> None:
    distiller = env.trainer(ZeroKD, {}, "cnn").distiller
    with pytest.raises(AssertionError, match="does not depend on the teacher"):
        check_teachers_reach_the_student(distiller, env.batch())


def test_the_distiller_suite_catches_a_teacher_that_gets_gradient(env: Environment) -> None:
    distiller = env.trainer(TeacherWithGradient, {}, "cnn").distiller
    with pytest.raises(AssertionError, match="into a teacher"):
        check_teachers_get_no_gradient(distiller, env.batch())


@pytest.mark.parametrize(
    ("broken", "family"), [(UndetachedMutualLearning, "cnn"), (UndetachedSelfDistillation, "resnet")]
)
def test_the_distiller_suite_catches_a_missing_detach(env: Environment, broken: type, family: str) -> None:
    distiller = env.trainer(broken, {}, family).distiller
    with pytest.raises(AssertionError, match="must not"):
        check_gradient_barriers(distiller, env.batch())


def test_the_distiller_suite_catches_exporting_a_peer(env: Environment) -> None:
    distiller = env.trainer(PeerExport, {}, "cnn").distiller
    with pytest.raises(AssertionError, match="own weights"):
        check_export_is_the_trained_student(distiller, distiller.built_student[0])


@pytest.mark.parametrize(("real", "family"), [(Offline, "cnn"), (Online, "cnn"), (SelfDistillation, "resnet")])
def test_the_real_distillers_pass_the_same_checks(env: Environment, real: type, family: str) -> None:
    distiller = env.trainer(real, {}, family).distiller
    check_teachers_get_no_gradient(distiller, env.batch())
    check_gradient_barriers(distiller, env.batch())
    check_export_is_the_trained_student(distiller, distiller.built_student[0])
    if real is Offline:
        check_teachers_reach_the_student(distiller, env.batch())
