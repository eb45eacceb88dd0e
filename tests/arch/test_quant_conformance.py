"""The shared distiller conformance suite, run with 4-bit students (weights and activations) of every family."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nas_kd.testing import pytest_distillers
from nas_kd.testing.pytest_distillers import DistillerConformance, Environment, cases

QUANT = {"weight_bits": 4, "act_bits": 4}


@pytest.mark.slow
class TestDistillersWithQuantizedStudents(DistillerConformance):
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        # Every distiller at its defaults on the cnn family: quantized layers are the same in every family (the
        # families' own conformance runs in full precision), and brevitas makes each case several times slower.
        if {"name", "settings", "family"} <= set(metafunc.fixturenames):
            quantized = [case for case in cases(self.distillers, {}) if case.values[2] == "cnn"]
            metafunc.parametrize(("name", "settings", "family"), quantized)

    @pytest.fixture(autouse=True)
    def _quantized_students(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        """The suite builds its students from ``STUDENTS``: give every family its 4-bit version."""
        students = {family: {**arch, "quant": QUANT} for family, arch in pytest_distillers.STUDENTS.items()}
        monkeypatch.setattr(pytest_distillers, "STUDENTS", students)
        yield

    @pytest.mark.xfail(
        strict=False,
        reason="known gap: a quantized run resumed from a checkpoint drifts from the uninterrupted one by ~1e-3 in "
        "loss (state dicts, optimizer and generator states compare equal; the cause in brevitas is not found yet)",
    )
    def test_seeded_runs_and_resumed_runs_are_identical(
        self, env: Environment, name: str, settings: dict[str, Any], family: str
    ) -> None:
        super().test_seeded_runs_and_resumed_runs_are_identical(env, name, settings, family)
