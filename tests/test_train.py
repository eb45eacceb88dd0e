"""The training loop: deterministic, resumable mid-way, loud on divergence."""

from __future__ import annotations

import io

import pytest
import torch

import nas_kd.train
from nas_kd.arch import build_model
from nas_kd.config import TrainConfig
from nas_kd.data import load_dataset
from nas_kd.distill import DistillContext, make_distiller
from nas_kd.distill.losses import kd_loss
from nas_kd.train import Trainer, TrainingDiverged, evaluate

ARCH = {"family": "resnet", "stem": 8, "stages": [{"channels": 8, "depth": 1}, {"channels": 16, "depth": 1}]}


def make_trainer(digits, cfg: TrainConfig, seed: int = 0, augment: bool = False) -> Trainer:
    torch.manual_seed(seed)
    student = build_model(ARCH, digits.input_shape, digits.num_classes)
    context = DistillContext(digits, seed=seed, augmented=augment, label_smoothing=cfg.label_smoothing)
    distiller = make_distiller("ce", {}, student, context)
    return Trainer(distiller, digits, cfg, seed, augment)


def weights(trainer: Trainer) -> list[torch.Tensor]:
    return [t.clone() for t in trainer.distiller.state_dict().values() if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("augment", [False, True])
def test_same_seed_same_weights(digits, augment: bool) -> None:
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    a, b = make_trainer(digits, cfg, augment=augment), make_trainer(digits, cfg, augment=augment)
    a.fit(), b.fit()
    assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b), strict=True))


def test_data_over_the_device_budget_streams_from_host_memory_and_trains_the_same() -> None:
    messages: list[str] = []
    resident = load_dataset("digits")
    streamed = load_dataset("digits", max_device_bytes=10_000, log=messages.append)
    assert streamed.train.streamed and not resident.train.streamed
    assert "kept in host memory, each batch copied to cpu" in messages[0]
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    a, b = make_trainer(resident, cfg, augment=True), make_trainer(streamed, cfg, augment=True)
    a.fit(), b.fit()
    assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b), strict=True))
    assert evaluate(b.distiller.student, streamed.test) == evaluate(a.distiller.student, resident.test)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_mid_way_is_identical(digits, schedule: str, optimizer: str) -> None:
    lr = 0.05 if optimizer == "sgd" else 3e-3
    cfg = TrainConfig(epochs=3, batch_size=64, lr=lr, schedule=schedule, optimizer=optimizer, label_smoothing=0.1)
    straight = make_trainer(digits, cfg)
    straight.fit()

    interrupted = make_trainer(digits, cfg)
    interrupted.run_epoch()
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)
    buffer.seek(0)
    resumed = make_trainer(digits, cfg, seed=123)  # a fresh process: other init, other RNG
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    history = resumed.fit()
    assert [r.epoch for r in history] == [2, 3]
    assert all(torch.equal(x, y) for x, y in zip(weights(straight), weights(resumed), strict=True))


def test_training_learns_digits(digits) -> None:
    trainer = make_trainer(digits, TrainConfig(epochs=4, batch_size=64, lr=0.1))
    history = trainer.fit()
    assert history[-1].train_loss < history[0].train_loss
    assert evaluate(trainer.distiller.student, digits.val) > 0.9


def test_divergence_raises(digits) -> None:
    trainer = make_trainer(digits, TrainConfig(epochs=2, batch_size=64))
    with torch.no_grad():
        trainer.distiller.student.head.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="nan"):
        trainer.fit()


def test_kd_loss_matches_hand_computation() -> None:
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    t = 2.0
    ps = torch.softmax(student / t, 1)
    pt = torch.softmax(teacher / t, 1)
    # KL(pt || ps) averaged over the batch, times T^2, written out term by term.
    by_hand = sum(float(pt[i, j] * (pt[i, j].log() - ps[i, j].log())) for i in range(2) for j in range(2)) / 2 * t**2
    assert kd_loss(student, teacher, t).item() == pytest.approx(by_hand, rel=1e-6)
    assert kd_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-7)


def test_samples_per_epoch_trains_a_fresh_subset_each_epoch(digits) -> None:
    trainer = make_trainer(digits, TrainConfig(epochs=2, batch_size=64, samples_per_epoch=200))
    seen: list[list[int]] = [[], []]
    forward_train = trainer.distiller.forward_train

    def recording(x, y, index):
        seen[trainer.epoch] += index.tolist()
        return forward_train(x, y, index)

    trainer.distiller.forward_train = recording
    history = trainer.fit()
    assert [len(s) for s in seen] == [200, 200]
    assert all(len(set(s)) == 200 for s in seen)  # no image twice within an epoch
    assert set(seen[0]) != set(seen[1])  # drawn afresh each epoch
    assert trainer.steps_per_epoch == 4  # 64 + 64 + 64 + 8
    assert len(history) == 2


def test_samples_per_epoch_beyond_the_split_is_the_whole_split(digits) -> None:
    trainer = make_trainer(digits, TrainConfig(epochs=1, samples_per_epoch=10**9))
    assert trainer.samples_per_epoch == len(digits.train)


def test_unset_options_leave_cache_identities_unchanged() -> None:
    """Models cached before ``samples_per_epoch`` existed keep their keys; setting it makes a new one."""
    # compile is a speed setting, never part of the identity; precision auto keeps the keys it had before
    unset = {"samples_per_epoch", "quant_warmup_epochs", "compile", "precision"}
    assert TrainConfig().identity() == TrainConfig().model_dump(exclude=unset)
    assert TrainConfig(samples_per_epoch=5000).identity()["samples_per_epoch"] == 5000
    assert TrainConfig(quant_warmup_epochs=2).identity()["quant_warmup_epochs"] == 2  # another recipe, another key
    assert TrainConfig(precision="fp32").identity()["precision"] == "fp32"
    assert TrainConfig(precision="bf16").identity() != TrainConfig(precision="fp32").identity()


@pytest.mark.parametrize(
    ("precision", "native", "expected"),
    [
        ("fp32", True, torch.float32),
        ("bf16", False, torch.bfloat16),
        ("auto", True, torch.bfloat16),
        ("auto", False, torch.float32),
    ],
)
def test_precision_sets_the_training_arithmetic_and_evaluation_stays_fp32(
    digits, monkeypatch: pytest.MonkeyPatch, precision: str, native: bool, expected: torch.dtype
) -> None:
    """auto follows the hardware (native bf16 or not); explicit values do not look at it."""
    monkeypatch.setattr(nas_kd.train, "auto_bf16", lambda device_type: native)
    trainer = make_trainer(digits, TrainConfig(epochs=1, batch_size=256, precision=precision))
    dtypes: list[torch.dtype] = []
    trainer.distiller.student.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    trainer.run_epoch()  # training steps, then the fp32 validation pass
    steps = trainer.steps_per_epoch
    assert set(dtypes[:steps]) == {expected}
    assert set(dtypes[steps:]) == {torch.float32} and len(dtypes) > steps
