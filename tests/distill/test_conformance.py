"""Every registered distiller, with every student family, passes the shared conformance suite."""

from nas_kd.testing.pytest_distillers import DistillerConformance


class TestDistillers(DistillerConformance):
    pass
