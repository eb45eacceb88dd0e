"""Distillers: one file per scheme, one registry. ``DISTILLERS`` maps names to classes."""

from nas_kd.distill import ce, offline  # noqa: F401  (importing registers them)
from nas_kd.distill.base import DistillContext, Distiller, NoSettings, Teacher
from nas_kd.distill.registry import (
    DISTILLERS,
    DistillerConfigError,
    DistillerSpace,
    make_distiller,
    make_settings,
    parse_distiller_space,
    register,
)

__all__ = [
    "DISTILLERS",
    "DistillContext",
    "Distiller",
    "DistillerConfigError",
    "DistillerSpace",
    "NoSettings",
    "Teacher",
    "make_distiller",
    "make_settings",
    "parse_distiller_space",
    "register",
]
