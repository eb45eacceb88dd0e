"""Teachers (and other trained helpers such as assistants): train once, cache by content hash.

A cached model lives in ``<runs_dir>/_cache/models/<key>/`` where ``key`` hashes everything that
determines it (dataset and split, architecture, how it is trained, seed). Concurrent requests for
the same key train it once: a file lock serialises them and the folder appears by atomic rename.
Its fp16 logits on the un-augmented training and validation splits are stored beside it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from nas_kd.arch import build_model, count_flops, count_params
from nas_kd.checkpoint import load_student, read_model_info, save_model_dir
from nas_kd.config import Study, TeacherConfig, TrainConfig
from nas_kd.data import Dataset
from nas_kd.distill import Teacher


def content_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class CachedModel:
    path: Path
    info: dict[str, Any]

    @property
    def key(self) -> str:
        return self.path.name

    def load(self, device: torch.device | str) -> nn.Module:
        return load_student(self.path, device)

    def train_logits(self, device: torch.device | str) -> torch.Tensor:
        return torch.from_numpy(np.load(self.path / "train_logits.npy")).to(device)

    def as_teacher(self, device: torch.device | str, cached_logits: bool = True) -> Teacher:
        return Teacher(
            self.load(device),
            self.train_logits(device) if cached_logits else None,
            name=self.info.get("name", self.key),
            params=int(self.info["params"]),
            val_accuracy=self.info.get("val_accuracy"),
        )


def cache_root(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / "_cache" / "models"


def data_identity(study: Study) -> dict[str, Any]:
    """What fixes the rows of data.train: the cached logits depend on it."""
    d = study.data
    return {"dataset": d.dataset, "val_fraction": d.val_fraction, "split_seed": d.split_seed}


def cached_model(
    root: Path,
    payload: dict[str, Any],
    train_fn: Callable[[], tuple[nn.Module, dict[str, Any]]],
    data: Dataset,
    name: str,
    log: Callable[[str], None] = print,
) -> CachedModel:
    """Return the model ``payload`` describes, training it with ``train_fn`` only if it is not cached."""
    key = content_key(payload)
    path = root / key
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        if not (path / "model.json").exists():
            log(f"training {name} ({key}) ...")
            model, meta = train_fn()
            model.eval()
            logits = _logits(model, data)
            info = {
                "name": name,
                "key": key,
                "payload": payload,
                "params": count_params(model),
                "flops": count_flops(model, data.input_shape),
                **meta,
            }
            arrays = {"train_logits": logits}
            save_model_dir(path, model, payload["arch"], data.input_shape, data.num_classes, info, arrays)
            shutil.rmtree(root / f"{key}.partial", ignore_errors=True)  # the epoch checkpoints of train_fn
        else:
            log(f"{name} ({key}) loaded from cache")
    return CachedModel(path, read_model_info(path))


@torch.no_grad()
def _logits(model: nn.Module, data: Dataset, batch_size: int = 1024) -> np.ndarray:
    x = data.train.x
    out = [model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)]
    return torch.cat(out).to(torch.float16).cpu().numpy()


def train_plain(
    arch: dict[str, Any],
    data: Dataset,
    cfg: TrainConfig,
    seed: int,
    augment_data: bool,
    distiller: str = "ce",
    settings: dict[str, Any] | None = None,
    teachers: list[Teacher] | None = None,
    log: Callable[[str], None] = print,
    resume_dir: Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``arch`` from scratch with a distiller; returns the model and its accuracies.

    With ``resume_dir`` the whole trainer state is saved there after every epoch and training continues from
    it if it is there already (a driver killed while a teacher trains loses at most one epoch)."""
    from nas_kd.pipeline import make_trainer  # pipeline builds on this module
    from nas_kd.train import evaluate

    trainer = make_trainer(arch, data, cfg, seed, augment_data, distiller, settings, teachers)
    state_file = resume_dir / "trainer.pt" if resume_dir is not None else None
    if state_file is not None and state_file.is_file():
        trainer.load_state_dict(torch.load(state_file, weights_only=True, map_location=trainer.device))
        log(f"  resuming from epoch {trainer.epoch}/{cfg.epochs}")

    def on_epoch(result: Any, trainer: Any) -> None:
        # Logged as each epoch ends: a teacher or assistant can train for tens of minutes.
        log(f"  epoch {result.epoch}/{cfg.epochs} val_accuracy {result.val_accuracy:.4f} ({result.seconds:.1f}s)")
        if state_file is not None:
            state_file.parent.mkdir(parents=True, exist_ok=True)
            partial = state_file.with_suffix(".partial")
            torch.save(trainer.state_dict(), partial)
            partial.replace(state_file)  # atomic: a kill never leaves half a state

    trainer.fit(on_epoch)
    student = trainer.distiller.export_student()
    return student, {
        "val_accuracy": evaluate(student, data.val),
        "test_accuracy": evaluate(student, data.test),
        "epochs": cfg.epochs,
    }


def teacher_payload(study: Study, teacher: TeacherConfig) -> dict[str, Any]:
    return {
        "role": "teacher",
        "data": data_identity(study),
        "augment": study.data.augment,
        "arch": teacher.genome(),
        "train": study.teacher_train(teacher).identity(),
        "seed": study.teacher_seed(teacher),
    }


def prepare_teachers(study: Study, data: Dataset, log: Callable[[str], None] = print) -> list[CachedModel]:
    """Make every teacher of the study ready (trained once, then loaded from the cache)."""
    ready = []
    for i, teacher in enumerate(study.all_teachers()):
        payload = teacher_payload(study, teacher)
        name = f"teacher{i}" if len(study.all_teachers()) > 1 else "teacher"

        root = cache_root(study.runs_dir)
        partial = root / f"{content_key(payload)}.partial"

        def train_fn(teacher: TeacherConfig = teacher, resume_dir: Path = partial) -> tuple[nn.Module, dict[str, Any]]:
            return train_plain(
                teacher.genome(),
                data,
                study.teacher_train(teacher),
                study.teacher_seed(teacher),
                study.data.augment,
                log=log,
                resume_dir=resume_dir,
            )

        ready.append(cached_model(root, payload, train_fn, data, name, log))
    return ready


def teacher_bundle(cached: CachedModel) -> dict[str, Any]:
    """A teacher as plain NumPy data for Ray's object store (read zero-copy by every trial on a node)."""
    model = cached.load("cpu")
    return {
        "info": cached.info,
        "weights": {k: v.numpy() for k, v in model.state_dict().items()},
        "train_logits": np.load(cached.path / "train_logits.npy"),
    }


def teacher_from_bundle(bundle: dict[str, Any], device: torch.device | str) -> Teacher:
    info = bundle["info"]
    model = build_model(info["arch"], tuple(info["input_shape"]), info["num_classes"])
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in bundle["weights"].items()})
    return Teacher(
        model.to(device),
        torch.from_numpy(np.array(bundle["train_logits"])).to(device),
        name=info.get("name", "teacher"),
        params=int(info["params"]),
        val_accuracy=info.get("val_accuracy"),
    )
