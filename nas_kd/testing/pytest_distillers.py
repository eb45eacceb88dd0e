"""Conformance tests that every registered distiller passes, in the manner of ``optuna.testing.pytest_samplers``.

Use it from a test module::

    from nas_kd.testing.pytest_distillers import DistillerConformance

    class TestDistillers(DistillerConformance):
        pass

Every test runs for each case (each registered distiller with its default settings, plus the settings in
``EXTRA_SETTINGS`` that switch on its other code paths) and each student family. The environment is
built once per session: the digits data, a 4-stage ResNet teacher and a 2-stage CNN teacher (tiny, trained
for a few epochs and cached in a temporary folder, like every helper the distillers train for themselves).
A new distiller is covered as soon as it is registered; give it extra settings here if it has branches.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from nas_kd.arch import build_model
from nas_kd.config import Study, study_from_dict
from nas_kd.data import Dataset, Split, load_dataset
from nas_kd.distill import DISTILLERS, DistillContext, Teacher, make_distiller
from nas_kd.teachers import CachedModel, prepare_teachers
from nas_kd.train import EpochResult, Trainer

FAMILIES = ("cnn", "resnet", "mobilenet")
TRAIN_ROWS = 512

# Settings beyond the defaults that reach the distillers' other branches, with the families to run them
# on: feature knowledge meets every family; branches that do not depend on the student's family, one.
EXTRA_SETTINGS: dict[str, list[tuple[dict[str, Any], tuple[str, ...]]]] = {
    "offline": [
        ({"response": "dkd", "feature": "fitnet", "relation": "rkd"}, FAMILIES),
        ({"feature": "at", "relation": "sp", "feature_stages": 1}, FAMILIES),
    ],
    "online": [({"peers": 2, "peer": "teacher"}, ("cnn",))],
    "self": [({"born_again": True}, ("resnet",))],
    "assistant": [({"assistants": 2}, ("mobilenet",))],
    "multi_teacher": [({"combine": "confidence"}, ("cnn",)), ({"combine": "random"}, ("resnet",))],
    "adversarial": [({"teacher_weight": 0, "adversarial_weight": 1}, ("cnn",))],
    "cross_view": [({"student_view": "resize:4x4", "teacher_view": "center_crop:0.5"}, ("resnet",))],
}

# Settings that replace the defaults in the suite, for distillers whose defaults cost minutes once per
# session (data_free synthesises its images from the teacher; a few steps exercise the same code).
SUITE_DEFAULTS: dict[str, dict[str, Any]] = {"data_free": {"images": 128, "iterations": 10}}

# Tiny students with different stage counts than the teacher (2 or 3 stages against 4).
STUDENTS = {
    "cnn": {"family": "cnn", "stem": 8, "stages": [{"channels": 8, "depth": 1}, {"channels": 16, "depth": 1}]},
    "resnet": {"family": "resnet", "stem": 8, "stages": [{"channels": 8, "depth": 1}, {"channels": 16, "depth": 1}]},
    "mobilenet": {
        "family": "mobilenet",
        "stem": 8,
        "stages": [{"channels": 8, "depth": 1, "expand": 2}] + [{"channels": 16, "depth": 1, "expand": 2}] * 2,
    },
}

STUDY = {
    "name": "conformance",
    "data": {"dataset": "digits", "val_fraction": 0.15},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.05},
    "teacher": {
        "arch": {"family": "resnet", "stem": 16, "stages": [{"channels": c, "depth": 1} for c in (16, 16, 32, 64)]},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.1},
    },
    "teachers": [
        {
            "arch": {
                "family": "cnn",
                "stem": 16,
                "stages": [{"channels": 16, "depth": 1}, {"channels": 32, "depth": 1}],
            },
            "train": {"epochs": 2, "batch_size": 64, "lr": 0.1},
            "seed": 1,
        }
    ],
    "search": {"space": {"family": "cnn", "stem": 8, "stages": 2, "stage": {"channels": 8, "depth": 1}}},
}


def cases() -> list[Any]:
    """(distiller name, settings, student family): every registered distiller with its defaults on every
    family, then its extra settings."""
    out = []
    for name in DISTILLERS:
        for settings, families in [(SUITE_DEFAULTS.get(name, {}), FAMILIES), *EXTRA_SETTINGS.get(name, [])]:
            label = ",".join(f"{k}={v}" for k, v in settings.items())
            for family in families:
                out.append(
                    pytest.param(
                        name, settings, family, id=f"{name}[{label}]-{family}" if label else f"{name}-{family}"
                    )
                )
    return out


@dataclass
class Environment:
    data: Dataset
    study: Study
    teachers: list[CachedModel]
    cache_dir: Path

    def trainer(self, name: str, settings: dict[str, Any], family: str, seed: int = 0, cached: bool = True) -> Trainer:
        """What the pipeline builds for a trial: seeded student, distiller, trainer (teachers cached or live)."""
        arch = STUDENTS[family]
        teachers = [t.as_teacher("cpu", cached_logits=cached) for t in self.teachers]
        torch.manual_seed(seed)
        student = build_model(arch, self.data.input_shape, self.data.num_classes)
        context = DistillContext(
            self.data,
            self.study.train,
            teachers,
            torch.device("cpu"),
            seed,
            augmented=False,
            cache_dir=self.cache_dir,
            extra={"study": self.study},
            student_arch=arch,
        )
        distiller = make_distiller(name, settings, student, context)
        return Trainer(distiller, self.data, self.study.train, seed, augment_data=False)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.arange(128)
        return self.data.train.x[index], self.data.train.y[index], index


def make_environment(root: Path) -> Environment:
    """The digits data (512 training rows: 8 steps an epoch) and the study's teachers, trained into ``root``."""
    study = study_from_dict({**STUDY, "runs_dir": str(root)})
    d = study.data
    data = load_dataset(d.dataset, d.data_dir, d.val_fraction, d.split_seed)
    data.train = Split(data.train.x[:TRAIN_ROWS], data.train.y[:TRAIN_ROWS])
    with one_thread():
        teachers = prepare_teachers(study, data, log=lambda message: None)
    return Environment(data, study, teachers, root / "helpers")


def batch_loss(trainer: Trainer, batch: tuple[torch.Tensor, ...]) -> float:
    """Training loss on a fixed batch (train mode, as in training), leaving the distiller's state untouched."""
    distiller = trainer.distiller
    saved = copy.deepcopy(distiller.state_dict())  # batch-norm statistics, step counters
    distiller.train()
    with torch.no_grad():
        _, losses = distiller.forward_train(*batch)
    distiller.load_state_dict(saved)
    return float(sum(losses.values()))


def roundtrip(state: dict) -> dict:
    """What a checkpoint file gives back: torch.save, then torch.load with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_run(a: EpochResult, b: EpochResult, state_a: dict, state_b: dict) -> None:
    """Same losses, same accuracy, same weights and buffers, bit for bit."""
    assert (a.losses, a.val_accuracy) == (b.losses, b.val_accuracy)
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state_b[key]), key


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny networks run fastest on one thread, and far faster than on two busy-waiting ones when the
    cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def uses_teachers(name: str) -> bool:
    return DISTILLERS[name].requires_teacher


@pytest.mark.parametrize(("name", "settings", "family"), cases())
class DistillerConformance:
    @pytest.fixture(scope="session")
    def env(self, tmp_path_factory: pytest.TempPathFactory) -> Environment:
        return make_environment(tmp_path_factory.mktemp("distillers"))

    @pytest.fixture(autouse=True)
    def _one_thread(self) -> Iterator[None]:
        with one_thread():
            yield

    @pytest.mark.parametrize("cached", [True, False], ids=["cached", "live"])
    def test_one_epoch_lowers_the_loss_and_leaves_teachers_untouched(
        self, env: Environment, name: str, settings: dict[str, Any], family: str, cached: bool
    ) -> None:
        if not cached and not uses_teachers(name):
            pytest.skip("no teacher outputs involved")
        trainer = env.trainer(name, settings, family, cached=cached)
        distiller = trainer.distiller
        teachers: list[Teacher] = [*distiller.context.teachers]
        teachers += [t for t in vars(distiller).values() if isinstance(t, Teacher)]  # assistants, born-again
        weights = [copy.deepcopy(t.model.state_dict()) for t in teachers]
        before = batch_loss(trainer, env.batch())
        trainer.run_epoch()
        assert batch_loss(trainer, env.batch()) < before
        trained = {id(p) for p in distiller.parameters()}
        for teacher, weight in zip(teachers, weights, strict=True):
            assert not teacher.model.training
            assert not any(id(p) in trained for p in teacher.model.parameters())
            for key, value in teacher.model.state_dict().items():
                assert torch.equal(value, weight[key]), key

    def test_seeded_runs_and_resumed_runs_are_identical(
        self, env: Environment, name: str, settings: dict[str, Any], family: str
    ) -> None:
        first = env.trainer(name, settings, family, seed=3)
        epoch1 = first.run_epoch()
        state = roundtrip(first.state_dict())
        epoch2 = first.run_epoch()

        again = env.trainer(name, settings, family, seed=3)  # same seed: the same run
        assert_same_run(epoch1, again.run_epoch(), state["distiller"], again.distiller.state_dict())
        resumed = env.trainer(name, settings, family, seed=3)  # fresh, then given the state after epoch 1
        resumed.load_state_dict(state)
        assert_same_run(epoch2, resumed.run_epoch(), first.distiller.state_dict(), resumed.distiller.state_dict())

    def test_exported_student_has_no_extra_modules(
        self, env: Environment, name: str, settings: dict[str, Any], family: str
    ) -> None:
        trainer = env.trainer(name, settings, family)
        exported = trainer.distiller.export_student()
        fresh = build_model(STUDENTS[family], env.data.input_shape, env.data.num_classes)
        assert type(exported) is type(fresh)
        assert exported.state_dict().keys() == fresh.state_dict().keys()
        assert exported(env.batch()[0]).shape == (128, env.data.num_classes)

    def test_cached_and_live_teacher_outputs_agree(
        self, env: Environment, name: str, settings: dict[str, Any], family: str
    ) -> None:
        if not uses_teachers(name):
            pytest.skip("no teacher outputs involved")
        cached = batch_loss(env.trainer(name, settings, family, cached=True), env.batch())
        live = batch_loss(env.trainer(name, settings, family, cached=False), env.batch())
        assert cached == pytest.approx(live, rel=1e-2)  # the cache holds fp16 logits
