"""Every registered distiller, with every student family, passes the shared conformance suite."""

import pytest

from nas_kd.testing.pytest_distillers import DistillerConformance


@pytest.mark.slow  # ~300 training cases: the full suite runs them, `make test-fast` leaves them to it
class TestDistillers(DistillerConformance):
    """The whole suite, as a plugin author's test module would subclass it."""
