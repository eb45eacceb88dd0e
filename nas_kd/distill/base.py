"""The distiller contract.

A distiller wraps the student and whatever it trains alongside it (adapters, peers, auxiliary heads);
``forward_train`` returns the student's logits and named, already-weighted loss terms (the trainer sums
them and logs each); ``export_student`` returns the deployable student with auxiliary parts stripped; ``on_epoch_start`` lets
schedules see the epoch.
Teachers are never registered as submodules: they are frozen, always in eval mode, and absent from the
distiller's parameters and state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from nas_kd.arch.inference import frozen_for_inference
from nas_kd.data import Dataset


class NoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


Need = Literal["logits", "features", "embedding", "index"]  # what a knowledge term reads
FORWARD_FEATURES: frozenset[Need] = frozenset({"features", "embedding"})  # the needs that take forward_features


class Outputs(NamedTuple):
    """One network's forward as knowledge terms see it: logits, and (when feature or relation knowledge
    is on) the output of every stage and the pooled embedding."""

    logits: torch.Tensor
    features: list[torch.Tensor] | None = None
    embedding: torch.Tensor | None = None


def run(model: nn.Module, x: torch.Tensor, features: bool) -> Outputs:
    """Forward a network for knowledge: logits only, or logits, stage features and embedding."""
    return Outputs(*model.forward_features(x)) if features else Outputs(model(x))


class FeatureRows(Protocol):
    """A teacher's forward with features, stored for every un-augmented training row (``teacher.cache_features``)."""

    def rows(self, index: torch.Tensor, device: torch.device, stage_features: bool = True) -> Outputs:
        """The stored outputs of training rows ``index``, as float32 on ``device``; without the stage
        features (``features`` None) when ``stage_features`` is False."""
        ...


@dataclass
class Teacher:
    """A frozen teacher as distillers see it: a live model and, optionally, cached training-set logits and
    features."""

    model: nn.Module
    train_logits: torch.Tensor | None = None  # (N_train, classes), fp16, rows in data.train order
    name: str = "teacher"
    params: int = 0
    val_accuracy: float | None = None
    train_features: FeatureRows | None = None  # logits, stage features and embedding, rows in data.train order

    def __post_init__(self) -> None:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._runner: tuple[nn.Module, nn.Module] | None = None  # (model, its frozen inference copy)

    @property
    def runner(self) -> nn.Module:
        """What live forwards run: a batch-norm-folded, channels_last copy of ``model`` (arch/inference.py), made
        once per model. ``model`` itself stays as given (data-free synthesis reads its batch norms)."""
        if self._runner is None or self._runner[0] is not self.model:
            self._runner = (self.model, frozen_for_inference(self.model))
        return self._runner[1]

    @torch.no_grad()
    def logits(self, x: torch.Tensor, index: torch.Tensor | None, augmented: bool) -> torch.Tensor:
        """Cached logits when the batch is un-augmented training data, else a live forward."""
        if self.train_logits is not None and index is not None and not augmented:
            return self.train_logits[index].float()
        return self.runner(x).float()

    @torch.no_grad()
    def features(
        self, x: torch.Tensor, index: torch.Tensor | None, augmented: bool, stage_features: bool = True
    ) -> Outputs:
        """(logits, stage features, pooled embedding): cached when the batch is un-augmented training data
        and the features were cached, else a live forward. ``stage_features=False`` lets the cache skip
        reading the stage maps (70.9 of the 71.4 KB per Fashion-MNIST image) for the terms that
        use only the embedding; a live forward computes them anyway."""
        if self.train_features is not None and index is not None and not augmented:
            return self.train_features.rows(index, x.device, stage_features)
        logits, features, embedding = self.runner.forward_features(x)
        return Outputs(logits.float(), [f.float() for f in features], embedding.float())

    def outputs(
        self, x: torch.Tensor, index: torch.Tensor | None, augmented: bool, needs: frozenset[Need] = frozenset()
    ) -> Outputs:
        """What terms that read ``needs`` get: logits alone, or logits with the embedding and, when they
        read "features", the stage features; each cached or live."""
        if not needs & FORWARD_FEATURES:
            return Outputs(self.logits(x, index, augmented))
        return self.features(x, index, augmented, stage_features="features" in needs)


# Trains a helper network once (cached by the caller) and returns it frozen: (genome, role, teacher or None
# for plain cross-entropy) -> Teacher. The caller decides the recipe and the cache (the study's, in nas-kd).
HelperTrainer = Callable[[dict[str, Any], str, "Teacher | None"], "Teacher"]


@dataclass
class DistillContext:
    """What a distiller may use besides the student: data, teachers, how to train helpers."""

    data: Dataset
    teachers: list[Teacher] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    augmented: bool = False  # whether training batches are augmented (then cached logits do not apply)
    label_smoothing: float = 0.0  # of every cross-entropy on the labels
    student_arch: dict[str, Any] | None = None  # the student's genome (assistants and born-again copies derive from it)
    train_helper: HelperTrainer | None = None  # trains assistants and born-again copies (see HelperTrainer)
    cache_dir: Path | None = None  # where a distiller keeps what it makes once per study (e.g. synthetic images)


class Distiller(nn.Module):
    name: ClassVar[str]
    summary: ClassVar[str]
    Settings: ClassVar[type[BaseModel]] = NoSettings
    requires_teacher: ClassVar[bool] = False

    def __init__(self, student: nn.Module, settings: BaseModel, context: DistillContext):
        super().__init__()
        self.check_teachers([t.model for t in context.teachers])
        self.student = student
        self.settings = settings
        self.context = context
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=context.label_smoothing)
        self.epoch, self.epochs = 0, 1  # set by on_epoch_start

    @classmethod
    def check_teachers(cls, teachers: list[nn.Module]) -> None:
        """Raise ValueError if these teacher networks cannot serve this distiller (e.g. a property of the
        model it relies on). ``nas-kd validate`` calls it with the study's teachers before a run starts."""
        if cls.requires_teacher and not teachers:
            raise ValueError(f"distiller {cls.name!r} needs a teacher: add a teacher to the study")

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called by the trainer before every epoch (``epoch`` 0-based, of ``epochs``). Passes it on to every
        submodule that has this hook (knowledge terms with schedules, e.g. DKD's warm-up). The trainer's
        state holds the epoch, and what a hook sets is kept in the module's own state (DKD's ramp is its
        extra state), so a resumed run continues the same schedule."""
        self.epoch, self.epochs = epoch, epochs
        for module in self.modules():
            if module is not self and callable(getattr(module, "on_epoch_start", None)):
                module.on_epoch_start(epoch, epochs)

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    @property
    def learns_from_teacher(self) -> bool:
        """Whether the live teachers' outputs reach the student's loss at every step (the conformance suite
        checks that they do): a required teacher, or one the distiller holds itself (born-again, assistant)."""
        return self.requires_teacher or any(isinstance(v, Teacher) for v in vars(self).values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def export_student(self) -> nn.Module:
        return self.student

    def gradient_barriers(self) -> dict[str, list[nn.Parameter]]:
        """Loss terms (by name) that must send no gradient into the listed parameters: a network's own
        outputs used as targets are detached. The conformance suite checks every barrier declared here."""
        return {}

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        for teacher in self.context.teachers:
            teacher.model.eval()  # the teacher is always in eval mode
        return self
