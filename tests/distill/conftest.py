"""A session-wide distillation environment (digits, two tiny teachers) and one torch thread per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nas_kd.testing.pytest_distillers import Environment, make_environment, one_thread


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Environment:
    return make_environment(tmp_path_factory.mktemp("distill"))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield
