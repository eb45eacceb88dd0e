"""Distillers: one file per scheme, one registry. ``DISTILLERS`` maps names to classes; the knowledge
terms they combine are plugins too (``nas_kd.distill.terms``, ``TERMS``)."""

# Importing registers them, in the order `nas-kd list distillers` shows.
# isort: off
from nas_kd.distill import ce, offline, online, self_distillation, assistant, multi_teacher  # noqa: F401
from nas_kd.distill import adversarial  # noqa: F401
from nas_kd.distill import data_free  # noqa: F401
from nas_kd.distill import cross_view  # noqa: F401

# isort: on
from nas_kd.distill.base import DistillContext, Distiller, HelperTrainer, NoSettings, Outputs, Teacher
from nas_kd.distill.registry import (
    DISTILLERS,
    DistillerConfigError,
    DistillerSpace,
    make_distiller,
    make_settings,
    parse_distiller_space,
    register,
)
from nas_kd.distill.terms import TERMS, Term, TermSetup, register_term

__all__ = [
    "DISTILLERS",
    "TERMS",
    "DistillContext",
    "Distiller",
    "DistillerConfigError",
    "DistillerSpace",
    "HelperTrainer",
    "NoSettings",
    "Outputs",
    "Teacher",
    "Term",
    "TermSetup",
    "make_distiller",
    "make_settings",
    "parse_distiller_space",
    "register",
    "register_term",
]
