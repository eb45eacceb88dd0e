"""Conformance tests that every registered distiller passes, in the manner of ``optuna.testing.pytest_samplers``.

Use it from a test module::

    from nas_kd.testing.pytest_distillers import DistillerConformance

    class TestDistillers(DistillerConformance):
        pass                                     # every registered distiller

    class TestMine(DistillerConformance):        # a plugin's own tests
        distillers = [MyDistiller]
        extra_settings = {"mine": [({"peers": 2}, ("cnn",))]}

Every test runs for each case (each distiller with its default settings, plus the extra settings that
switch on its other code paths) and each student family. Beyond training (one epoch lowers the student's
cross-entropy, seeded and resumed runs are identical, cached and live teacher outputs agree), it checks
the wiring that wrong code gets wrong: no loss term sends gradient into a teacher; every barrier the
distiller declares in ``gradient_barriers`` holds (targets made of a network's own outputs are
detached); the teachers' knowledge reaches the student's gradient; ``export_student`` returns the very
student that was built and trained. The maths of each knowledge term is checked by ``pytest_terms``. The environment is
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
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas_kd.arch import build_model
from nas_kd.config import Study, study_from_dict
from nas_kd.data import Dataset, load_dataset
from nas_kd.distill import DISTILLERS, DistillContext, Distiller, Teacher
from nas_kd.distill.helpers import fresh_copy
from nas_kd.helper_models import study_helper_trainer
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
        ({"response": "dist", "relation": "crd", "crd_nce_k": 64}, ("cnn", "mobilenet")),
        # Logit standardisation at its published weight 9 raises the student's CE in this one-epoch,
        # 8-step check (the KD gradient swamps it); alpha 0.5 still runs every branch.
        ({"response": "ls_dkd", "ls_dkd_warmup": 2, "alpha": 0.5}, ("resnet",)),
        ({"response": "ls_kd", "alpha": 0.5}, ("cnn",)),
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


def cases(
    distillers: list[str | type[Distiller]] | None = None,
    extra: dict[str, list[tuple[dict[str, Any], tuple[str, ...]]]] | None = None,
) -> list[Any]:
    """(distiller, settings, student family): each distiller (default: every registered one) with its
    defaults on every family, then its extra settings."""
    out = []
    extra = EXTRA_SETTINGS if extra is None else extra
    for distiller in list(DISTILLERS) if distillers is None else distillers:
        name = distiller if isinstance(distiller, str) else distiller.name
        for settings, families in [(SUITE_DEFAULTS.get(name, {}), FAMILIES), *extra.get(name, [])]:
            label = ",".join(f"{k}={v}" for k, v in settings.items())
            for family in families:
                out.append(
                    pytest.param(
                        distiller, settings, family, id=f"{name}[{label}]-{family}" if label else f"{name}-{family}"
                    )
                )
    return out


@dataclass
class Environment:
    data: Dataset
    study: Study
    teachers: list[CachedModel]
    cache_dir: Path

    def trainer(
        self, name: str | type[Distiller], settings: dict[str, Any], family: str, seed: int = 0, cached: bool = True
    ) -> Trainer:
        """What the pipeline builds for a trial: seeded student, distiller, trainer (teachers cached or live).
        ``name`` may be a Distiller class that is not registered (a plugin under test, or a broken toy)."""
        arch = STUDENTS[family]
        teachers = [t.as_teacher("cpu", cached=cached) for t in self.teachers]
        torch.manual_seed(seed)
        student = build_model(arch, self.data.input_shape, self.data.num_classes)
        context = DistillContext(
            self.data,
            teachers,
            torch.device("cpu"),
            seed,
            augmented=False,
            label_smoothing=self.study.train.label_smoothing,
            student_arch=arch,
            train_helper=study_helper_trainer(self.study, self.data, self.cache_dir),
            cache_dir=self.cache_dir,
        )
        cls = DISTILLERS[name] if isinstance(name, str) else name
        distiller = cls(student, cls.Settings(**settings), context)
        distiller.built_student = [student]  # what the suite built (a list: not a submodule)
        return Trainer(distiller, self.data, self.study.train, seed, augment_data=False)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.arange(128)
        return self.data.train.batch(index), self.data.train.y[index], index


def make_environment(root: Path) -> Environment:
    """The digits data (512 training rows: 8 steps an epoch) and the study's teachers, trained into ``root``."""
    study = study_from_dict({**STUDY, "runs_dir": str(root)})
    d = study.data
    data = load_dataset(d.dataset, d.data_dir, d.val_fraction, d.split_seed)
    data.train = data.train.subset(slice(0, TRAIN_ROWS))
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


def uses_teachers(name: str | type[Distiller]) -> bool:
    return (DISTILLERS[name] if isinstance(name, str) else name).requires_teacher


def all_teachers(distiller: Distiller) -> list[Teacher]:
    """The study's teachers and the ones the distiller made itself (assistants, born-again copies)."""
    found = [*distiller.context.teachers, *(t for t in vars(distiller).values() if isinstance(t, Teacher))]
    return list({id(t): t for t in found}.values())


def student_cross_entropy(distiller: Distiller, batch: tuple[torch.Tensor, ...]) -> float:
    """The exported student's plain cross-entropy on a batch (train mode, state untouched)."""
    saved = copy.deepcopy(distiller.state_dict())
    distiller.train()
    with torch.no_grad():
        loss = F.cross_entropy(distiller.export_student()(batch[0]), batch[1])
    distiller.load_state_dict(saved)
    return float(loss)


def term_gradients(distiller: Distiller, batch: tuple[torch.Tensor, ...]) -> dict[str, dict[int, torch.Tensor]]:
    """Per loss term, the gradient it sends into every parameter (by id) of the distiller and of every
    teacher (their parameters made trainable for the probe), state restored afterwards."""
    saved = copy.deepcopy(distiller.state_dict())
    teacher_params = [p for t in all_teachers(distiller) for p in t.model.parameters()]
    params = [*distiller.parameters(), *teacher_params]
    for p in teacher_params:
        p.requires_grad_(True)
    try:
        distiller.train()
        _, losses = distiller.forward_train(*batch)
        out = {}
        for name, value in losses.items():
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            out[name] = {id(p): g for p, g in zip(params, grads, strict=True) if g is not None}
    finally:
        for p in teacher_params:
            p.requires_grad_(False)
        distiller.load_state_dict(saved)
    return out


def check_teachers_get_no_gradient(distiller: Distiller, batch: tuple[torch.Tensor, ...]) -> None:
    teacher_ids = {id(p) for t in all_teachers(distiller) for p in t.model.parameters()}
    for name, grads in term_gradients(distiller, batch).items():
        leaked = [g for key, g in grads.items() if key in teacher_ids and g.any()]
        assert not leaked, f"loss term {name!r} sends gradient into a teacher"


def check_gradient_barriers(distiller: Distiller, batch: tuple[torch.Tensor, ...]) -> None:
    """Every term declared in ``gradient_barriers`` leaves its barred parameters without gradient."""
    grads = term_gradients(distiller, batch)
    for name, barred in distiller.gradient_barriers().items():
        assert name in grads, f"gradient barrier on {name!r}, which forward_train does not return"
        leaked = [p for p in barred if id(p) in grads[name] and grads[name][id(p)].any()]
        assert not leaked, f"loss term {name!r} reaches {len(leaked)} parameters it must not (a missing detach?)"


def check_teachers_reach_the_student(distiller: Distiller, batch: tuple[torch.Tensor, ...]) -> None:
    """With every teacher replaced by a freshly initialised network, the student's gradient changes: the
    teachers' knowledge is in the loss with a non-zero weight."""
    teachers = all_teachers(distiller)
    student = list(distiller.export_student().parameters())

    def gradient() -> torch.Tensor:
        saved = copy.deepcopy(distiller.state_dict())
        distiller.train()
        _, losses = distiller.forward_train(*batch)
        grads = torch.autograd.grad(sum(losses.values()), student, allow_unused=True)
        distiller.load_state_dict(saved)
        return torch.cat(
            [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(student, grads, strict=True)]
        )

    real = gradient()
    kept = [(t.model, t.train_logits, t.train_features) for t in teachers]
    torch.manual_seed(12345)
    for t in teachers:
        t.model = fresh_copy(t.model).eval().requires_grad_(False)
        t.train_logits = t.train_features = None
    try:
        other = gradient()
    finally:
        for t, (model, logits, features) in zip(teachers, kept, strict=True):
            t.model, t.train_logits, t.train_features = model, logits, features
    assert not torch.allclose(real, other), "the student's gradient does not depend on the teacher"


def check_export_is_the_trained_student(distiller: Distiller, student: nn.Module) -> None:
    """``export_student`` gives the very network that was built as the student (its trained weights)."""
    exported = distiller.export_student()
    assert [id(p) for p in exported.parameters()] == [id(p) for p in student.parameters()], (
        "export_student does not return the trained student's own weights"
    )


class DistillerConformance:
    """Subclass it in a test module. ``distillers`` (names or unregistered Distiller classes; default every
    registered one) and ``extra_settings`` (default ``EXTRA_SETTINGS``) choose the cases, so a plugin's
    own tests cover it with no edit here."""

    distillers: ClassVar[list[str | type[Distiller]] | None] = None
    extra_settings: ClassVar[dict[str, list[tuple[dict[str, Any], tuple[str, ...]]]] | None] = None

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if {"name", "settings", "family"} <= set(metafunc.fixturenames):
            metafunc.parametrize(("name", "settings", "family"), cases(self.distillers, self.extra_settings))

    @pytest.fixture(scope="session")
    def env(self, tmp_path_factory: pytest.TempPathFactory) -> Environment:
        return make_environment(tmp_path_factory.mktemp("distillers"))

    @pytest.fixture(autouse=True)
    def _one_thread(self) -> Iterator[None]:
        with one_thread():
            yield

    @pytest.mark.parametrize("cached", [True, False], ids=["cached", "live"])
    def test_one_epoch_teaches_the_student_and_leaves_teachers_untouched(
        self, env: Environment, name: str, settings: dict[str, Any], family: str, cached: bool
    ) -> None:
        if not cached and not uses_teachers(name):
            pytest.skip("no teacher outputs involved")
        trainer = env.trainer(name, settings, family, cached=cached)
        distiller = trainer.distiller
        teachers = all_teachers(distiller)
        weights = [copy.deepcopy(t.model.state_dict()) for t in teachers]
        # The student's own cross-entropy, not the total: terms against moving targets (peers, memory
        # banks) may rise while the student learns.
        before = student_cross_entropy(distiller, env.batch())
        trainer.run_epoch()
        assert student_cross_entropy(distiller, env.batch()) < before
        check_export_is_the_trained_student(distiller, distiller.built_student[0])
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

    def test_gradients_go_only_where_they_must(
        self, env: Environment, name: str, settings: dict[str, Any], family: str
    ) -> None:
        distiller = env.trainer(name, settings, family).distiller
        check_teachers_get_no_gradient(distiller, env.batch())
        check_gradient_barriers(distiller, env.batch())

    def test_the_teachers_reach_the_student(
        self, env: Environment, name: str, settings: dict[str, Any], family: str
    ) -> None:
        distiller = env.trainer(name, settings, family).distiller
        if not distiller.learns_from_teacher:
            pytest.skip("learns from no teacher")
        check_teachers_reach_the_student(distiller, env.batch())

    def test_cached_and_live_teacher_outputs_agree(
        self, env: Environment, name: str, settings: dict[str, Any], family: str
    ) -> None:
        if not uses_teachers(name):
            pytest.skip("no teacher outputs involved")
        cached = batch_loss(env.trainer(name, settings, family, cached=True), env.batch())
        live = batch_loss(env.trainer(name, settings, family, cached=False), env.batch())
        assert cached == pytest.approx(live, rel=1e-2)  # the cache holds fp16 logits
