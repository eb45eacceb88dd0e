"""The Ray Tune trainable: one trial = one student trained by one distiller.

It lives in the package (Ray workers unpickle it by import). It reports once per epoch; it attaches a
checkpoint of the whole trainer state at most every ``search.checkpoint_seconds`` (and always at scheduler
rungs and at the last epoch), so an interrupted trial resumes from its last checkpoint and loses at most that
much work, while short epochs do not pay for a checkpoint each.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from nas_kd.arch import build_model, measure
from nas_kd.attacks import robust_metrics
from nas_kd.checkpoint import save_model_dir
from nas_kd.config import Study
from nas_kd.data import Dataset
from nas_kd.pipeline import build_trainer, study_data
from nas_kd.plugins import import_plugins
from nas_kd.search.metrics import TrialMetrics
from nas_kd.search.schedulers import rung_milestones
from nas_kd.teachers import teacher_from_bundle
from nas_kd.train import EpochResult, Trainer, class_accuracy, evaluate

# Reused actors (reuse_actors=True) keep these between trials: the dataset and teachers load once per worker.
_WORKER_CACHE: dict[Any, Any] = {}
TRAINER_STATE = "trainer.pt"
STUDENT_DIR = "student"


def trial_device(gpu_share: float) -> torch.device:
    """The GPU Ray assigned to this trial (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    if gpu_share > 0 and ray.get_gpu_ids() and torch.cuda.is_available():
        if gpu_share < 1:  # several students share one GPU: each keeps to its share of the memory
            torch.cuda.set_per_process_memory_fraction(gpu_share, 0)
        return torch.device("cuda:0")
    return torch.device("cpu")


def _cached(key: Any, make: Any) -> Any:
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = make()
    return _WORKER_CACHE[key]


def constraint_violations(study: Study, cost: dict[str, Any]) -> list[str]:
    broken = []
    for name, limit in study.search.constraints.items():
        value = cost.get(name.removeprefix("max_"))
        if value is not None and value > limit:
            broken.append(f"{name.removeprefix('max_')} {value:,.6g} > {name} {limit:,.6g}")
    return broken


def checkpoint_epochs(study: Study) -> set[int]:
    """Epochs that always checkpoint: the scheduler's rungs (a trial stopped there keeps its state) and the last."""
    scheduler, epochs = study.search.scheduler, study.train.epochs
    rungs = (
        [] if scheduler.name == "fifo" else rung_milestones(scheduler.grace_epochs, scheduler.reduction_factor, epochs)
    )
    return {*rungs, epochs}


def with_every_objective(metrics: dict[str, Any], study: Study) -> dict[str, Any]:
    """``metrics`` plus NaN for each objective not measured in it: Tune wants every objective in every result,
    and robust accuracy (a PGD attack on the validation split) is measured only where objectives are read."""
    return {**dict.fromkeys(study.search.objectives, float("nan")), **metrics}


def weakest_class(model: torch.nn.Module, data: Dataset) -> dict[str, Any]:
    """The class the student gets wrong most often on the validation split, by name, and its accuracy."""
    accuracy = class_accuracy(model, data.val, data.num_classes).nan_to_num(float("inf"))
    worst = int(accuracy.argmin())
    return {"worst_class": data.class_names[worst], "worst_class_accuracy": round(float(accuracy[worst]), 6)}


def train_trial(config: dict[str, Any], study: dict[str, Any], teachers: list[dict[str, Any]]) -> None:
    """Tune function trainable. ``config`` holds ``arch``, ``distiller``, ``settings``, ``seed``."""
    import_plugins(study.get("plugins", []))  # before anything is built: a plugin may provide the distiller
    study_obj = Study.model_validate(study)
    torch.set_num_threads(max(1, int(study_obj.resources.cpu)))
    device = trial_device(study_obj.resources.gpu)
    d = study_obj.data
    data: Dataset = _cached(
        ("data", json.dumps(d.identity(), sort_keys=True), d.data_dir, str(study_obj.runs_dir), str(device)),
        lambda: study_data(study_obj, device, log=lambda _: None),
    )
    teacher_objs = [
        _cached(("teacher", b["info"]["key"], str(device)), lambda b=b: teacher_from_bundle(b, device))
        for b in teachers
    ]
    arch, distiller, settings = config["arch"], config["distiller"], config.get("settings", {})
    seed = int(config.get("seed", study_obj.seed))
    max_epochs = study_obj.train.epochs

    needs_latency = "latency_ms" in study_obj.search.objectives or "max_latency_ms" in study_obj.search.constraints
    probe = build_model(arch, data.input_shape, data.num_classes).to(device)
    cost = {k: v for k, v in measure(probe, data.input_shape, latency=needs_latency).as_dict().items() if v is not None}
    broken = constraint_violations(study_obj, cost)
    if broken:  # rejected before any training: no compute spent
        rejection = {"epoch": 0, "max_epochs": max_epochs, "val_accuracy": 0.0, "rejected": "; ".join(broken), **cost}
        tune.report(with_every_objective(rejection, study_obj))
        return

    trainer = build_trainer(study_obj, data, teacher_objs, arch, distiller, settings, seed)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load_state_dict(torch.load(Path(folder) / TRAINER_STATE, weights_only=True, map_location=device))

    trial_metrics = TrialMetrics.for_current_trial(study_obj.name)
    must_checkpoint = checkpoint_epochs(study_obj)
    last_checkpoint = time.monotonic()

    def on_epoch(result: EpochResult, trainer: Trainer) -> None:
        nonlocal last_checkpoint
        trial_metrics.record_epoch(result.epoch, result.val_accuracy, result.images_per_second)
        metrics: dict[str, Any] = {
            "epoch": result.epoch,
            "max_epochs": max_epochs,
            "val_accuracy": result.val_accuracy,
            "train_loss": result.train_loss,
            "epoch_seconds": result.seconds,
            "images_per_second": result.images_per_second,
            **{f"loss/{k}": v for k, v in result.losses.items()},
            **cost,
        }
        if result.epoch in must_checkpoint:  # PGD on the validation split is costly: where objectives are read
            metrics.update(robust_metrics(trainer.distiller.export_student(), data, study_obj.search.robust))
        metrics = with_every_objective(metrics, study_obj)
        due = time.monotonic() - last_checkpoint >= study_obj.search.checkpoint_seconds
        if not due and result.epoch not in must_checkpoint:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(trainer.state_dict(), os.path.join(folder, TRAINER_STATE))
            if result.epoch == max_epochs:
                student = trainer.distiller.export_student()
                metrics.update(weakest_class(student, data))
                # Test accuracy is for reporting only; the search never reads it.
                if data.has_test:
                    metrics["test_accuracy"] = evaluate(student, data.test)
                save_model_dir(
                    Path(folder) / STUDENT_DIR, student, arch, data.input_shape, data.num_classes,
                    {"distiller": distiller, "settings": settings, "val_accuracy": result.val_accuracy,
                     "test_accuracy": metrics.get("test_accuracy"), **data.preprocessing()},
                )  # fmt: skip
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        last_checkpoint = time.monotonic()

    trainer.fit(on_epoch)
