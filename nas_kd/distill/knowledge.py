"""Response, feature and relation knowledge between a student and one teacher of any two families.

The study picks at most one registered term per slot (``response``, ``feature``, ``relation``; see
``nas_kd/distill/terms/``) and weights each by a scale of its published weight, so 1 means "as published"
whichever term is chosen and one searched range suits every term. A term's own settings are flat
settings named ``<term>_<setting>`` (``dkd_beta``, ``crd_nce_k``); the settings model of a distiller that
uses knowledge is built from its base model plus every registered term's settings, so a new term's
settings are searchable with no edit here.

Response weights: unset ``alpha`` takes the term's published pair (kd: CE 0.1, KD 0.9; dkd: CE 1,
DKD 1; ...); a given ``alpha`` weights the response term by alpha and cross-entropy by 1 - alpha. Unset
``temperature`` takes the term's published temperature (4 for kd and dkd, 2 for the logit-standardised
variants). Published feature/relation weights were set for 32x32 inputs; on 8x8 digits AT and FitNets
at their published weights swamp the cross-entropy: search ``feature_weight`` with a log range.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from torch import nn

from nas_kd.distill.base import FORWARD_FEATURES, Need, Outputs
from nas_kd.distill.terms import TERMS, Term, TermSetup, term_settings, terms_of
from nas_kd.distill.terms.pairing import pair_stages

SLOTS = ("response", "feature", "relation")


def detach(value: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    return [v.detach() for v in value] if isinstance(value, list) else value.detach()


def _slot_validator(slot: str) -> Any:
    def check(cls: type, value: str) -> str:
        allowed = ["none", *terms_of(slot)]  # type: ignore[arg-type]
        if value not in allowed:
            raise ValueError(f"unknown {slot} term {value!r}; one of {', '.join(allowed)}")
        return value

    return field_validator(slot)(classmethod(check))


class KnowledgeSettings(BaseModel):
    """Which knowledge a student takes from a teacher, and how much. Defaults are plain Hinton KD."""

    model_config = ConfigDict(extra="forbid")
    response: str = Field("kd", description="response term (kd, dkd, dist, ls_kd, ls_dkd, ...) or none")
    temperature: float | None = Field(None, gt=0, description="softening temperature T; unset: the term's published")
    alpha: float | None = Field(
        None,
        ge=0,
        le=1,
        description="response weight, cross-entropy gets 1 - alpha; unset: the term's published weights",
    )
    feature: str = Field("none", description="feature term on paired stages (fitnet, at, ...) or none")
    feature_weight: float = Field(1.0, ge=0, description="scale of the feature term; 1 = its published weight")
    feature_stages: int = Field(0, ge=0, description="how many paired stages, deepest first, carry it (0 = all)")
    relation: str = Field("none", description="relation term (rkd, sp, crd, ...) or none")
    relation_weight: float = Field(1.0, ge=0, description="scale of the relation term; 1 = its published weight")

    _response = _slot_validator("response")
    _feature = _slot_validator("feature")
    _relation = _slot_validator("relation")


@cache
def _with_terms(base: type[BaseModel], names: tuple[str, ...]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name in names:
        for key, info in TERMS[name].Settings.model_fields.items():
            flat = f"{name}_{key}"
            if flat in fields or flat in base.model_fields:
                raise ValueError(f"knowledge setting {flat!r} is defined twice")
            fields[flat] = (info.annotation, info)
    return create_model(base.__name__, __base__=base, **fields)


def with_term_settings(base: type[BaseModel]) -> type[BaseModel]:
    """``base`` plus every registered term's settings, flat (``<term>_<setting>``)."""
    return _with_terms(base, tuple(TERMS))


class TermSettings:
    """Class attribute for distillers that hold ``Knowledge``: ``Settings`` is the base model extended by
    every term registered so far (resolved when read, so terms registered later are included)."""

    def __init__(self, base: type[BaseModel]):
        self.base = base

    def __get__(self, instance: Any, owner: type) -> type[BaseModel]:
        return with_term_settings(self.base)


def embedding_width(model: nn.Module) -> int:
    """Width of the pooled embedding ``forward_features`` returns: the classifier's input, or for a wrapped
    network (arch/external.py), which pools its last stage, that stage's channels."""
    head = getattr(model, "head", None)
    return head.in_features if isinstance(head, nn.Linear) else model.stage_channels[-1]


class Knowledge(nn.Module):
    """Computes the weighted terms of the knowledge settings (cross-entropy included) for one teacher.

    Owns the terms (and so their adapters, heads and memory banks): a distiller that holds it trains them
    with the student and saves them in its state."""

    def __init__(
        self,
        settings: BaseModel,
        student_channels: list[int],
        teacher_channels: list[int],
        num_classes: int = 0,
        embeddings: tuple[int, int] = (0, 0),
        train_labels: torch.Tensor | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.settings = settings
        flat = settings.model_dump()
        self.terms = nn.ModuleDict()
        for slot in SLOTS:
            name = flat[slot]
            if name == "none":
                continue
            cls = TERMS[name]
            temperature = settings.temperature if settings.temperature is not None else cls.temperature
            setup = TermSetup(
                student_channels=list(student_channels),
                teacher_channels=list(teacher_channels),
                pairs=pair_stages(len(student_channels), len(teacher_channels), settings.feature_stages)
                if student_channels and teacher_channels
                else [],
                num_classes=num_classes,
                student_embedding=embeddings[0],
                teacher_embedding=embeddings[1],
                temperature=temperature,
                train_labels=train_labels,
                seed=seed,
            )
            self.terms[slot] = cls(term_settings(name, flat), setup)
        # what the terms read from the two networks' forwards, asked every step
        self.needs: frozenset[Need] = frozenset().union(*(term.needs for term in self.terms.values()))

    @classmethod
    def between(
        cls, settings: BaseModel, student: nn.Module, teacher: nn.Module, train_labels: torch.Tensor, seed: int
    ) -> Knowledge:
        """Knowledge from ``teacher`` to ``student`` (built models: stage widths and classifier input)."""
        return cls(
            settings,
            student.stage_channels,
            teacher.stage_channels,
            student.head.out_features,
            (embedding_width(student), embedding_width(teacher)),
            train_labels,
            seed,
        )

    @property
    def needs_features(self) -> bool:
        """Whether both networks must run ``forward_features`` (else logits suffice)."""
        return bool(self.needs & FORWARD_FEATURES)

    def scale(self, slot: str, term: Term) -> float:
        s = self.settings
        if slot == "response":
            return term.weight if s.alpha is None else s.alpha
        return term.weight * (s.feature_weight if slot == "feature" else s.relation_weight)

    def forward(
        self,
        student: Outputs,
        teacher: Outputs,
        target: torch.Tensor,
        cross_entropy: nn.Module,
        index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        response = self.terms["response"] if "response" in self.terms else None  # noqa: SIM401 (a ModuleDict)
        if response is None:
            ce_weight = 1.0
        else:
            ce_weight = response.ce_weight if self.settings.alpha is None else 1 - self.settings.alpha
        terms = {"ce": ce_weight * cross_entropy(student.logits, target)}
        teacher = Outputs(*(None if t is None else detach(t) for t in teacher))  # a teacher is a constant
        for slot, term in self.terms.items():
            weight = self.scale(slot, term)
            for name, value in term(student, teacher, target, index).items():
                terms[name] = weight * value
        return terms
