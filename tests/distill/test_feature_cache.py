"""``teacher.cache_features``: the teacher's features of every training image, stored once and read instead of
a live forward, the same knowledge up to fp16 rounding."""

from __future__ import annotations

import re
import shutil
from collections import namedtuple
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from nas_kd import teachers as teacher_cache
from nas_kd.cli import main
from nas_kd.config import StudyError
from nas_kd.data import Dataset
from nas_kd.distill.base import FORWARD_FEATURES
from nas_kd.teachers import (
    TrainFeatures,
    check_teachers,
    prepare_teachers,
    teacher_bundle,
    teacher_from_bundle,
    write_train_features,
)
from nas_kd.testing.pytest_distillers import STUDENTS, STUDY, Environment, batch_loss


@pytest.fixture(scope="module")
def featured(env: Environment) -> Environment:
    """``env`` whose first teacher has its features cached."""
    return replace(env, teachers=[env.teachers[0].with_train_features(env.data, log=lambda m: None), *env.teachers[1:]])


def test_cached_features_are_the_live_forward_in_fp16(featured: Environment) -> None:
    cached = featured.teachers[0]
    assert cached.features is not None and cached.features.name == f"{cached.key}.features"
    teacher = cached.as_teacher("cpu")
    index = torch.tensor([5, 0, 300, 17])  # any order: rows come back in the order asked
    x = featured.data.train.batch(index)
    stored = teacher.train_features.rows(index, torch.device("cpu"))
    logits, stages, embedding = teacher.runner.forward_features(x)
    assert len(stored.features) == len(stages) == 4
    for got, want in zip(
        [stored.logits, *stored.features, stored.embedding], [logits, *stages, embedding], strict=True
    ):
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3 * float(want.abs().max()))
    # the fp16 logits are the teacher's cached logits
    torch.testing.assert_close(stored.logits, teacher.train_logits[index].float())


@pytest.mark.parametrize(
    "settings", [{"feature": "at"}, {"feature": "fitnet"}, {"relation": "rkd"}, {"relation": "crd"}]
)
def test_feature_and_relation_knowledge_read_the_cache_instead_of_running_the_teacher(
    featured: Environment, settings: dict[str, Any]
) -> None:
    trainer = featured.trainer("offline", settings, "cnn")
    calls: list[int] = []
    trainer.distiller.teacher.runner.stem.register_forward_hook(lambda *args: calls.append(1))
    cached = batch_loss(trainer, featured.batch())
    assert calls == []
    live = batch_loss(featured.trainer("offline", settings, "cnn", cached=False), featured.batch())
    assert cached == pytest.approx(live, rel=1e-2)


@pytest.mark.parametrize(
    ("settings", "stage_features"),
    [
        ({"relation": "rkd"}, False),
        ({"relation": "crd"}, False),
        ({"feature": "fitnet"}, True),
        ({"feature": "at"}, True),
    ],
)
def test_the_cache_reads_stage_features_only_for_terms_that_use_them(
    featured: Environment, settings: dict[str, Any], stage_features: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[bool] = []
    rows = TrainFeatures.rows

    def spy(self: TrainFeatures, index: torch.Tensor, device: torch.device, stage_features: bool = True) -> Any:
        outputs = rows(self, index, device, stage_features)
        read.append(outputs.features is not None)
        return outputs

    monkeypatch.setattr(TrainFeatures, "rows", spy)
    batch_loss(featured.trainer("offline", settings, "cnn"), featured.batch())
    assert read == [stage_features]


def test_the_cache_without_stage_features_gives_the_same_logits_and_embedding(featured: Environment) -> None:
    teacher = featured.teachers[0].as_teacher("cpu")
    x, _, index = featured.batch()
    full = teacher.outputs(x, index, augmented=False, needs=FORWARD_FEATURES)
    lean = teacher.outputs(x, index, augmented=False, needs=frozenset({"embedding"}))
    assert lean.features is None and full.features is not None
    torch.testing.assert_close(lean.logits, full.logits, rtol=0, atol=0)
    torch.testing.assert_close(lean.embedding, full.embedding, rtol=0, atol=0)


def test_augmented_batches_and_batches_without_rows_run_the_teacher_live(featured: Environment) -> None:
    teacher = featured.teachers[0].as_teacher("cpu")
    calls: list[int] = []
    teacher.runner.stem.register_forward_hook(lambda *args: calls.append(1))
    x, _, index = featured.batch()
    teacher.outputs(x, index, augmented=False, needs=FORWARD_FEATURES)
    assert calls == []
    teacher.outputs(x, index, augmented=True, needs=FORWARD_FEATURES)
    teacher.outputs(x, None, augmented=False, needs=FORWARD_FEATURES)
    assert calls == [1, 1]


def test_ray_trials_open_the_cache_by_path_and_run_live_where_it_is_missing(
    featured: Environment, tmp_path: Path
) -> None:
    cached = featured.teachers[0]
    bundle = teacher_bundle(cached)
    assert bundle["features"] == str(cached.features)  # a path, not the arrays
    assert isinstance(teacher_from_bundle(bundle, "cpu").train_features, TrainFeatures)
    elsewhere = {**bundle, "features": str(tmp_path / "not-on-this-node")}
    assert teacher_from_bundle(elsewhere, "cpu").train_features is None
    assert teacher_from_bundle(teacher_bundle(featured.teachers[1]), "cpu").train_features is None


def test_prepare_teachers_caches_features_only_for_teachers_that_ask(featured: Environment) -> None:
    study = featured.study.model_copy(deep=True)
    study.teacher.cache_features = True
    messages: list[str] = []
    first, second = prepare_teachers(study, featured.data, messages.append)
    assert first.features == featured.teachers[0].features and second.features is None
    assert not any(m.startswith("caching") for m in messages)  # already there: not written again
    assert first.as_teacher("cpu", cached=False).train_features is None  # live means live


def test_validate_refuses_features_that_do_not_fit_on_the_disk(
    featured: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = featured.study.model_copy(deep=True)
    study.teacher.cache_features, study.runs_dir = True, str(tmp_path / "runs")  # nothing cached there yet
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(teacher_cache.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**5, 10**5))
    with pytest.raises(StudyError) as info:
        check_teachers(study, featured.data)
    assert info.value.field == "teacher.cache_features"
    assert f"{len(featured.data.train):,} training images need" in info.value.message
    monkeypatch.setattr(teacher_cache.shutil, "disk_usage", lambda path: usage(10**12, 0, 10**12))
    check_teachers(study, featured.data)
    assert not (tmp_path / "runs").exists()  # validating writes nothing


class Echo(nn.Module):
    """A stand-in teacher whose outputs are its input: logits the first 10 pixels, one stage ``scale`` times the
    image, the flat image as embedding."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        return x.flatten(1)[:, :10], [x * self.scale], x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def test_a_written_cache_holds_every_training_row_in_order(env: Environment, tmp_path: Path) -> None:
    data: Dataset = env.data
    write_train_features(Echo(), data, tmp_path / "k.features", batch_size=100)  # batches that do not divide 512
    stored = TrainFeatures.open(tmp_path / "k.features")
    assert stored.logits.shape == (len(data.train), 10) and stored.logits.dtype == np.float16
    assert [stage.shape for stage in stored.stages] == [(len(data.train), *data.input_shape)]
    every = torch.arange(len(data.train)).flip(0)
    rows = stored.rows(every, torch.device("cpu"))
    torch.testing.assert_close(rows.embedding, data.train.batch(every).flatten(1), rtol=1e-3, atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.features"]  # the partial folder was renamed


def test_features_beyond_float16_are_refused_and_leave_no_cache(env: Environment, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stage0 exceed float16's range"):
        write_train_features(Echo(scale=1e6), env.data, tmp_path / "k.features")
    assert not (tmp_path / "k.features").exists()


def test_cli_train_caches_the_features_once_and_distils_from_them(
    env: Environment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    for cached in env.teachers:  # the trained teachers, without features
        shutil.copytree(cached.path, runs / "_cache" / "models" / cached.key)
    study = {
        **STUDY, "runs_dir": str(runs), "train": {**STUDY["train"], "epochs": 1},
        "teacher": {**STUDY["teacher"], "cache_features": True}, "student": {"arch": STUDENTS["cnn"]},
        "distiller": {"name": "offline", "feature": "at", "relation": "sp"},
    }  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    # the CLI loads the whole digits set, whose training split is larger than the environment's
    assert main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("caching the features of teacher0") == 1 and "caching the features of teacher1" not in out
    assert re.search(r"epoch 1/1 ce [\d.]+ kd [\d.]+ at [\d.]+ sp [\d.]+", out), out
    assert main(["train", str(path)]) == 0
    assert "caching" not in capsys.readouterr().out  # written once
