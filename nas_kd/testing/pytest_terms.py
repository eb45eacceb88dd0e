"""Conformance tests for a knowledge term, in the manner of ``optuna.testing.pytest_samplers``.

A term's own test module subclasses ``TermConformance`` and says which term it checks, its published
weights and an independent reference written from the paper's equations (plain tensor maths in float64,
not the term's code)::

    from nas_kd.testing.pytest_terms import TermConformance

    class TestMyTerm(TermConformance):
        term = MyTerm                      # the Term class (registered or not)
        weight = 1.0                       # published (also ce_weight, temperature for response terms)
        settings = ({}, {"beta": 2.0})     # term settings to check, each against the reference

        def reference(self, case: Case, settings: BaseModel) -> dict[str, torch.Tensor]:
            ...                            # the term's parts, from the equations

Each check runs on fixed tensors (a batch of 8, 10 classes, two stages per network of different widths)
whose logits, features and embeddings have a standard deviation of 1, 10 and 100: the term matches the
reference to 1e-5 (relative, 1e-6 absolute); it and its gradients are finite; no gradient reaches the
student; the term's published weights are the paper's. (That the teacher gets no gradient is checked
where teachers live: ``DistillerConformance``.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from pydantic import BaseModel

from nas_kd.distill.base import Outputs
from nas_kd.distill.terms import Term, TermSetup
from nas_kd.distill.terms.pairing import pair_stages

SCALES = (1.0, 10.0, 100.0)
BATCH, CLASSES, DATASET = 8, 10, 64
STUDENT_CHANNELS, TEACHER_CHANNELS = [4, 8], [6, 12]


@dataclass
class Case:
    """One batch of fixed network outputs; the student's require grad."""

    student: Outputs
    teacher: Outputs
    target: torch.Tensor
    index: torch.Tensor
    setup: TermSetup


def outputs(channels: list[int], scale: float, generator: torch.Generator, grad: bool) -> Outputs:
    def draw(*shape: int) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=generator)).requires_grad_(grad)

    features = [draw(BATCH, c, 8 // 2**i, 8 // 2**i) for i, c in enumerate(channels)]
    return Outputs(draw(BATCH, CLASSES), features, draw(BATCH, 2 * channels[-1]))


def make_case(scale: float, temperature: float, seed: int = 0) -> Case:
    g = torch.Generator().manual_seed(seed)
    student, teacher = outputs(STUDENT_CHANNELS, scale, g, True), outputs(TEACHER_CHANNELS, scale, g, False)
    labels = torch.arange(DATASET) % CLASSES
    index = torch.randperm(DATASET, generator=g)[:BATCH]
    setup = TermSetup(
        student_channels=STUDENT_CHANNELS,
        teacher_channels=TEACHER_CHANNELS,
        pairs=pair_stages(len(STUDENT_CHANNELS), len(TEACHER_CHANNELS)),
        num_classes=CLASSES,
        student_embedding=student.embedding.shape[1],
        teacher_embedding=teacher.embedding.shape[1],
        temperature=temperature,
        train_labels=labels,
        seed=seed,
    )
    return Case(student, teacher, labels[index], index, setup)


def build(term: type[Term], settings: dict[str, Any], case: Case) -> Term:
    torch.manual_seed(0)  # adapters, heads and memory banks start the same every time
    return term(term.Settings(**settings), case.setup)


def run_term(module: Term, case: Case) -> dict[str, torch.Tensor]:
    return module(case.student, case.teacher, case.target, case.index)


def assert_matches_reference(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys(), f"parts {sorted(got)} != reference {sorted(expected)}"
    for name, value in got.items():
        reference = expected[name].double()
        assert value.dtype == torch.float32 and value.ndim == 0, name
        assert torch.allclose(value.detach().double(), reference, rtol=1e-5, atol=1e-6), (
            f"{name}: {value.item()!r} != reference {reference.item()!r}"
        )


def assert_finite_with_gradients(module: Term, case: Case) -> None:
    parts = run_term(module, case)
    total = sum(parts.values())
    assert torch.isfinite(total), {k: v.item() for k, v in parts.items()}
    total.backward()
    grads = [t.grad for t in (case.student.logits, *case.student.features, case.student.embedding)]
    grads += [p.grad for p in module.parameters()]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reaches the student"


def assert_published(term: type[Term], published: dict[str, float | None]) -> None:
    for key, value in published.items():
        if value is not None:
            assert getattr(term, key) == pytest.approx(value), f"{term.__name__}.{key} is not the published {value}"


class TermConformance:
    term: ClassVar[type[Term]]
    weight: ClassVar[float | None] = None  # the published values the term must declare (None: not checked)
    ce_weight: ClassVar[float | None] = None
    temperature: ClassVar[float | None] = None
    settings: ClassVar[tuple[dict[str, Any], ...]] = ({},)
    temperatures: ClassVar[tuple[float, ...]] = (1.0, 4.0)

    def reference(self, case: Case, settings: BaseModel) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reference_for(self, module: Term, case: Case) -> dict[str, torch.Tensor]:
        """The reference on a copy of the built term (a stateful term's reference reads its modules and
        memory as they were before the step; the copy keeps the term's own state untouched)."""
        self.module = copy.deepcopy(module)
        return self.reference(case, module.settings)

    @pytest.mark.parametrize("scale", SCALES)
    def test_matches_the_reference(self, scale: float) -> None:
        for settings in self.settings:
            for temperature in self.temperatures:
                case = make_case(scale, temperature)
                module = build(self.term, settings, case)
                expected = self.reference_for(module, case)
                assert_matches_reference(run_term(module, case), expected)

    @pytest.mark.parametrize("scale", SCALES)
    def test_finite_values_and_gradients(self, scale: float) -> None:
        case = make_case(scale, 1.0)
        assert_finite_with_gradients(build(self.term, self.settings[0], case), case)

    def test_published_weights(self) -> None:
        assert self.weight is not None, "give the published weight"
        assert_published(self.term, {k: getattr(self, k) for k in ("weight", "ce_weight", "temperature")})
