"""The knowledge-term contract and registry.

A term is one published loss between a student and a teacher (Hinton KD, DKD, FitNets, ...), one file
under ``nas_kd/distill/terms/`` behind ``@register_term``. It declares its role (``response``, ``feature``
or ``relation``: the slot of the knowledge settings it fills), its published weight, what it reads from
the two networks (``needs``) and a pydantic ``Settings`` model of flat scalars, which the study names
``<term>_<setting>`` (e.g. ``dkd_beta``). It is an ``nn.Module`` built once per trial with a ``TermSetup``
(both networks' widths, the paired stages, the dataset size): adapters, embedding heads and memory banks
it creates there are trained and saved with the distiller and absent from the exported student.

``forward`` returns named, *unweighted by the study* parts (the term's own published ratio between its
parts already applied, e.g. DKD's ``alpha * TCKD`` and ``beta * NCKD``); ``Knowledge`` multiplies them
by the study's scale times the published ``weight``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from nas_kd.distill.base import Need, Outputs

Role = Literal["response", "feature", "relation"]
TERMS: dict[str, type[Term]] = {}


class NoTermSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class TermSetup:
    """What a term may size itself by: both networks' widths, the stage pairs, the training set."""

    student_channels: list[int]
    teacher_channels: list[int]
    pairs: list[tuple[int, int]]  # (student stage, teacher stage), shallow to deep
    num_classes: int
    student_embedding: int = 0  # width of the pooled embedding (the classifier's input)
    teacher_embedding: int = 0
    temperature: float = 4.0  # the softening temperature (response terms): the study's, else the term's
    train_labels: torch.Tensor | None = field(default=None, repr=False)  # labels of data.train, row order
    seed: int = 0

    @property
    def dataset_size(self) -> int:
        return 0 if self.train_labels is None else len(self.train_labels)


class Term(nn.Module):
    name: ClassVar[str]
    role: ClassVar[Role]
    summary: ClassVar[str]
    reference: ClassVar[str]
    weight: ClassVar[float] = 1.0  # the published weight of the term (study scale 1 = as published)
    ce_weight: ClassVar[float] = 1.0  # response terms: the cross-entropy weight published beside them
    temperature: ClassVar[float] = 4.0  # response terms: the published softening temperature
    needs: ClassVar[frozenset[Need]] = frozenset({"logits"})
    Settings: ClassVar[type[BaseModel]] = NoTermSettings

    def __init__(self, settings: BaseModel, setup: TermSetup):
        super().__init__()
        self.settings = settings
        self.setup_info = setup

    def logits(self, outputs: Outputs) -> torch.Tensor:
        """The logits a response term compares (logit standardisation transforms them here)."""
        return outputs.logits

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called by the distiller before every epoch (0-based ``epoch`` of ``epochs``); schedules go here."""

    def forward(
        self, student: Outputs, teacher: Outputs, target: torch.Tensor, index: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def register_term(cls: type[Term]) -> type[Term]:
    """Class decorator: make a Term subclass available by its ``name``."""
    if cls.name in TERMS:
        raise ValueError(f"knowledge term {cls.name!r} registered twice")
    TERMS[cls.name] = cls
    return cls


def terms_of(role: Role) -> list[str]:
    return [name for name, cls in TERMS.items() if cls.role == role]


def term_settings(name: str, flat: dict[str, Any]) -> BaseModel:
    """The term's own settings from the flat knowledge settings (keys ``<name>_<setting>``)."""
    cls = TERMS[name]
    return cls.Settings(**{key: flat[f"{name}_{key}"] for key in cls.Settings.model_fields if f"{name}_{key}" in flat})
