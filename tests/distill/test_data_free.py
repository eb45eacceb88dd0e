from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from nas_kd.arch import build_model
from nas_kd.data import Split
from nas_kd.distill import DistillContext, Teacher, make_distiller
from nas_kd.testing.pytest_distillers import STUDENTS, Environment
from nas_kd.train import Trainer, evaluate

QUICK = {"images": 64, "iterations": 5}


def context(env: Environment, teachers: list[Teacher], data=None) -> DistillContext:
    return DistillContext(data or env.data, teachers, cache_dir=env.cache_dir)


def student() -> nn.Module:
    torch.manual_seed(0)
    return build_model(STUDENTS["cnn"], (1, 8, 8), 10)


@pytest.mark.slow
def test_a_student_learns_from_the_teacher_alone_without_reading_a_training_image(env: Environment) -> None:
    # Training images are NaN and labels out of range: reading either would make the loss NaN (the trainer
    # stops) or cross-entropy raise. Validation stays real, for measurement.
    data = dataclasses.replace(
        env.data,
        train=Split(  # NaN images (float: Split.batch takes them) and impossible labels: any read shows
            torch.full(env.data.train.x.shape, float("nan")),
            torch.full_like(env.data.train.y, -1),
            env.data.train.mean,
            env.data.train.std,
        ),
    )
    teacher = env.teachers[0].as_teacher("cpu", cached=False)
    distiller = make_distiller("data_free", {}, student(), context(env, [teacher], data))
    trainer = Trainer(distiller, data, env.study.train.model_copy(update={"epochs": 30}), 0, augment_data=False)
    trainer.fit()
    accuracy = evaluate(distiller.export_student(), env.data.val)
    # Chance is 0.1. This teacher is the suite's tiny one (2 epochs on 512 images, 88% val accuracy): its
    # batch-norm statistics carry less than a trained teacher's (the quickstart teacher gives 92%, see
    # docs/benchmarks.md); 0.42 was measured here.
    assert accuracy > 0.3, accuracy
    assert torch.isfinite(distiller.images).all()


def test_the_synthetic_set_is_made_once_and_shared(env: Environment) -> None:
    teacher = env.teachers[0].as_teacher("cpu")
    before = set((env.cache_dir / "data_free").glob("*.safetensors"))  # the session's other tests made theirs
    first = make_distiller("data_free", QUICK, student(), context(env, [teacher])).images
    files = set((env.cache_dir / "data_free").glob("*.safetensors")) - before
    assert len(files) == 1 and files.pop().stat().st_size >= first.numel() * 4
    again = make_distiller("data_free", {**QUICK, "temperature": 2}, student(), context(env, [teacher])).images
    assert torch.equal(first, again)  # loaded, not remade (the temperature does not change the images)
    other = make_distiller("data_free", {**QUICK, "synthesis_seed": 1}, student(), context(env, [teacher])).images
    assert not torch.equal(first, other)
    # Pixels stay in [0, 1] through the normalisation.
    mean, std = env.data.pixel_mean[0], env.data.pixel_std[0]
    pixels = first * std + mean
    assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4


def test_a_teacher_without_batch_norm_or_no_teacher_is_refused(env: Environment) -> None:
    plain = Teacher(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), name="linear")
    with pytest.raises(ValueError, match="the teacher has no batch-norm layers"):
        make_distiller("data_free", QUICK, student(), context(env, [plain]))
    with pytest.raises(ValueError, match="needs a teacher"):
        make_distiller("data_free", QUICK, student(), context(env, []))
