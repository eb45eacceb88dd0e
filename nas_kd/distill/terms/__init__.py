"""Knowledge terms: one file per published loss, one registry. ``TERMS`` maps names to classes.

A new term is one file here (a ``Term`` subclass behind ``@register_term``) and its import below."""

# Importing registers them, in the order `nas-kd list terms` would show.
# isort: off
from nas_kd.distill.terms import kd, dkd, dist, ls, fitnet, at, rkd, sp, crd  # noqa: F401

# isort: on
from nas_kd.distill.terms.base import TERMS, Term, TermSetup, register_term, term_settings, terms_of

__all__ = ["TERMS", "Term", "TermSetup", "register_term", "term_settings", "terms_of"]
