"""Train one student of a study: data + teachers + distiller + the training loop.

``nas-kd train``, every search trial and the benchmarks go through ``train_student``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas_kd.arch import Cost, measure
from nas_kd.config import Study, StudyError
from nas_kd.data import DataError, Dataset, load_dataset
from nas_kd.distill import Teacher, parse_distiller_space
from nas_kd.helper_models import study_helper_trainer
from nas_kd.teachers import CachedModel, cache_root, prepare_teachers
from nas_kd.train import EpochResult, Trainer, evaluate, make_trainer


def resolve_device(prefer: str | None = None) -> torch.device:
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def study_data(study: Study, device: torch.device, log: Callable[[str], None] = print) -> Dataset:
    """The study's data on ``device``; user data that cannot be used raises one ``StudyError`` naming the field.
    Decoded image folders are cached under ``<runs_dir>/_cache/data``."""
    d = study.data
    try:
        return load_dataset(
            d.dataset, d.data_dir, d.val_fraction, d.split_seed, device,
            path=d.path, factory=d.factory, image_size=d.image_size, channels=d.channels,
            cache_dir=Path(study.runs_dir) / "_cache" / "data", max_device_bytes=d.max_device_bytes, log=log,
        )  # fmt: skip
    except DataError as error:
        raise StudyError(study.path or "<study>", f"data.{error.field}", error.message) from None


def check_data(study: Study) -> Dataset:
    """Load the study's data on the CPU (decoding and caching an image folder): what ``nas-kd validate`` checks
    beyond the study file itself."""
    return study_data(study, torch.device("cpu"), log=lambda _: None)


def ready_teachers(study: Study, data: Dataset, log: Callable[[str], None] = print) -> list[CachedModel]:
    """Teachers the study's distillers need (none for a ``ce``-only study)."""
    if not study.all_teachers():
        if parse_distiller_space(study.distiller).needs_teacher:
            raise ValueError(f"{study.path}: teacher: the distiller needs a teacher; add a teacher block")
        return []
    return prepare_teachers(study, data, log)


@dataclass
class StudentResult:
    student: nn.Module
    cost: Cost
    history: list[EpochResult]
    val_accuracy: float
    test_accuracy: float | None  # None when the data has no test split
    seconds_per_epoch: float
    extra: dict[str, Any] = field(default_factory=dict)


def build_trainer(
    study: Study,
    data: Dataset,
    teachers: list[Teacher],
    arch: dict[str, Any],
    distiller: str,
    settings: dict[str, Any],
    seed: int,
) -> Trainer:
    """``make_trainer`` with the study's recipe, augmentation and cache."""
    return make_trainer(
        arch, data, study.train, seed, study.data.augment, distiller, settings, teachers,
        study_helper_trainer(study, data), cache_root(study.runs_dir),
    )  # fmt: skip


def train_student(
    study: Study,
    data: Dataset,
    teachers: list[Teacher],
    arch: dict[str, Any],
    distiller: str,
    settings: dict[str, Any] | None = None,
    seed: int | None = None,
    on_epoch: Callable[[EpochResult, Trainer], None] | None = None,
    state: dict | None = None,
) -> StudentResult:
    """Train ``arch`` with ``distiller``; resume from ``state`` (a ``Trainer.state_dict()``) if given."""
    seed = study.seed if seed is None else seed
    trainer = build_trainer(study, data, teachers, arch, distiller, settings or {}, seed)
    if state is not None:
        trainer.load_state_dict(state)
    start = time.perf_counter()
    history = trainer.fit(on_epoch)
    elapsed = time.perf_counter() - start
    student = trainer.distiller.export_student()
    return StudentResult(
        student=student,
        cost=measure(student, data.input_shape),
        history=history,
        val_accuracy=evaluate(student, data.val),
        test_accuracy=evaluate(student, data.test) if data.has_test else None,
        seconds_per_epoch=elapsed / max(1, len(history)),
    )
