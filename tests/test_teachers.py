"""Teachers: trained once per content hash, even when two processes ask at the same time."""

from __future__ import annotations

import io
import multiprocessing
import sys
from pathlib import Path

import pytest
import torch

from nas_kd.arch import build_model
from nas_kd.checkpoint import load_student, save_model_dir
from nas_kd.config import TrainConfig
from nas_kd.data import load_dataset
from nas_kd.pipeline import study_data
from nas_kd.teachers import cache_root, prepare_teachers, teacher_bundle, teacher_from_bundle, train_plain
from nas_kd.train import Trainer
from tests.conftest import small_study


@pytest.mark.slow  # trains a teacher
def test_cached_teacher_is_not_retrained(tmp_path: Path) -> None:
    study = small_study(tmp_path)
    data = study_data(study, torch.device("cpu"))
    messages: list[str] = []
    first = prepare_teachers(study, data, messages.append)[0]
    second = prepare_teachers(study, data, messages.append)[0]
    assert first.path == second.path
    assert sum(m.startswith("training teacher") for m in messages) == 1
    assert any("loaded from cache" in m for m in messages)
    logits = first.train_logits("cpu")
    assert logits.dtype == torch.float16 and logits.shape == (len(data.train), 10)
    assert 0.5 < first.info["val_accuracy"] <= 1.0
    # a change to how the teacher is trained is a different teacher
    other = small_study(tmp_path, **{"teacher.train.epochs": 2})
    assert prepare_teachers(other, data, messages.append)[0].path != first.path


@pytest.mark.slow  # trains a teacher
def test_teacher_training_logs_each_epoch_as_it_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long teacher or assistant shows progress while it trains, not all at once when it is done."""
    events: list[str] = []
    run_epoch = Trainer.run_epoch
    monkeypatch.setattr(Trainer, "run_epoch", lambda self: events.append("train") or run_epoch(self))
    study = small_study(tmp_path)
    data = study_data(study, torch.device("cpu"))
    train_plain(study.teacher.genome(), data, study.teacher_train(study.teacher), 0, False, log=events.append)
    assert [e if e == "train" else e.split(" val")[0].strip() for e in events] == [
        "train", "epoch 1/3", "train", "epoch 2/3", "train", "epoch 3/3"
    ]  # fmt: skip


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_teacher_training_draws_a_bar_instead_of_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal, logs = Terminal(), []
    monkeypatch.setattr(sys, "stderr", terminal)
    arch = {"family": "cnn", "stem": 8, "stages": [{"channels": 8, "depth": 1}]}
    train_plain(arch, load_dataset("digits"), TrainConfig(epochs=2, batch_size=256), 0, False, log=logs.append)
    assert logs == [] and "2/2" in terminal.getvalue() and "val_accuracy" in terminal.getvalue()


def _prepare(runs_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    study = small_study(Path(runs_dir))
    data = study_data(study, torch.device("cpu"))
    logs: list[str] = []
    prepare_teachers(study, data, logs.append)
    Path(out).write_text("\n".join(logs))


@pytest.mark.slow  # two processes train a teacher
def test_two_processes_train_the_teacher_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_prepare, args=(str(tmp_path), str(tmp_path / f"log{i}"))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    logs = [(tmp_path / f"log{i}").read_text() for i in range(2)]
    assert sum("training teacher" in log for log in logs) == 1
    assert len(list(cache_root(tmp_path).glob("*/model.json"))) == 1
    assert not list(cache_root(tmp_path).glob(".*"))  # no half-written folders left behind


@pytest.mark.slow  # trains a teacher
def test_bundle_round_trip_through_plain_numpy(tmp_path: Path) -> None:
    study = small_study(tmp_path)
    data = study_data(study, torch.device("cpu"))
    cached = prepare_teachers(study, data, lambda _: None)[0]
    teacher = teacher_from_bundle(teacher_bundle(cached), "cpu")
    x = data.val.batch(torch.arange(8))
    assert torch.allclose(teacher.model(x), cached.load("cpu")(x), atol=1e-5)
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_saved_student_loads_without_pickle_in_eval_mode(tmp_path: Path) -> None:
    arch = {"family": "mobilenet", "stem": 8, "stages": [{"channels": 8, "depth": 1, "expand": 2, "se": True}]}
    model = build_model(arch, (1, 8, 8), 10).train()
    save_model_dir(tmp_path / "s", model, arch, (1, 8, 8), 10, {"val_accuracy": 0.5})
    loaded = load_student(tmp_path / "s")
    assert not loaded.training
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(loaded(x), model.eval()(x))
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["model.json", "model.safetensors"]
