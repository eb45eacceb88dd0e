"""What makes the trainer fast: channels_last, frozen batch-norm-folded teachers, train.compile."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from nas_kd.arch import build_model
from nas_kd.arch.inference import fold_batch_norms, frozen_for_inference
from nas_kd.config import TrainConfig
from nas_kd.distill import DistillContext, Teacher, make_distiller
from nas_kd.train import COMPILE_MIN_STEPS, Trainer, should_compile

TEACHER = {"family": "resnet", "stem": 8, "stages": [{"channels": 8, "depth": 1}, {"channels": 16, "depth": 2}]}
STUDENT = {"family": "cnn", "stem": 8, "stages": [{"channels": 8, "depth": 1}, {"channels": 16, "depth": 1}]}


def trained_like(model: nn.Module) -> nn.Module:
    """Batch norms with the non-trivial statistics and affine terms of a trained network, in eval mode."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor, low, high in (
                (module.running_mean, -1, 1), (module.running_var, 0.5, 2), (module.weight, 0.5, 1.5),
                (module.bias, -0.5, 0.5),
            ):  # fmt: skip
                tensor.data.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("family", ["resnet", "cnn", "mobilenet"])
def test_frozen_copy_gives_the_same_outputs(family: str) -> None:
    arch = {**TEACHER, "family": family}
    model = trained_like(build_model(arch, (3, 16, 16), 10))
    frozen = frozen_for_inference(model)
    assert batch_norms(frozen) == 0 and batch_norms(model) > 0  # all folded; the original left alone
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    conv = next(m for m in frozen.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        (logits, features, embedding), (f_logits, f_features, f_embedding) = (
            model.forward_features(x), frozen.forward_features(x),
        )  # fmt: skip
    torch.testing.assert_close(f_logits, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f_embedding, embedding, rtol=1e-4, atol=1e-5)
    for folded, plain in zip(f_features, features, strict=True):
        torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-4)


def test_folds_torchvision_models_and_skips_training_ones() -> None:
    assert fold_batch_norms(torchvision.models.resnet18(num_classes=10).eval()) == 20
    assert fold_batch_norms(torchvision.models.resnet18(num_classes=10).train()) == 0  # batch statistics: no fold


def test_trainer_runs_student_channels_last_and_teacher_frozen(digits) -> None:
    cfg = TrainConfig(epochs=1, batch_size=64)
    teacher_model = trained_like(build_model(TEACHER, digits.input_shape, digits.num_classes))
    teacher = Teacher(teacher_model, None)
    context = DistillContext(digits, [teacher])
    student = build_model(STUDENT, digits.input_shape, digits.num_classes)
    trainer = Trainer(make_distiller("offline", {}, student, context), digits, cfg, 0, False)
    convs = [m for m in trainer.distiller.student.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert teacher.runner is not teacher_model and batch_norms(teacher.runner) == 0  # live forwards: the copy
    assert teacher.model is teacher_model and batch_norms(teacher_model) > 0  # the teacher itself is unchanged
    assert math.isfinite(trainer.run_epoch().train_loss)  # trains with the frozen copy


def test_compile_auto_only_for_long_runs() -> None:
    assert not should_compile(TrainConfig(), COMPILE_MIN_STEPS - 1)
    assert should_compile(TrainConfig(), COMPILE_MIN_STEPS)
    assert should_compile(TrainConfig(compile=True), 10) and not should_compile(TrainConfig(compile=False), 10**9)


def test_compile_is_a_speed_setting_not_part_of_the_recipe(digits) -> None:
    assert TrainConfig(compile=True).identity() == TrainConfig().identity()
    cfg = TrainConfig(epochs=1, compile=True)
    student = build_model(STUDENT, digits.input_shape, digits.num_classes)
    keys = list(student.state_dict())
    trainer = Trainer(make_distiller("ce", {}, student, DistillContext(digits)), digits, cfg, 0, False)
    assert trainer.compiled and student._compiled_call_impl is not None  # compiled in place ...
    assert list(student.state_dict()) == keys  # ... so saved weights keep their names
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="sometimes")
