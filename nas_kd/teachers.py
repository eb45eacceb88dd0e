"""Teachers (and other trained helpers such as assistants): train once, cache by content hash.

A cached model lives in ``<runs_dir>/_cache/models/<key>/`` where ``key`` hashes everything that
determines it (dataset and split, architecture, how it is trained, seed). Concurrent requests for
the same key train it once: a file lock serialises them and the folder appears by atomic rename.
Its fp16 logits on the un-augmented training split are stored beside it; with ``teacher.cache_features``
also its stage features and embedding, in ``<key>.features/`` (memory-mapped .npy files).

A teacher the user brings with weights (torchvision, timm, their own module) or as a saved folder
(``model_dir``) is never trained: it is evaluated once and cached the same way, keyed by the weights'
content hash. ``check_teachers`` finds what is wrong with such a teacher before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from nas_kd.arch import build_model, count_flops, count_params
from nas_kd.arch.external import ModelSourceError, WeightsError, load_weights
from nas_kd.arch.inference import frozen_for_inference
from nas_kd.checkpoint import load_student, read_model_info, save_model_dir
from nas_kd.config import Study, StudyError, TeacherConfig, TrainConfig
from nas_kd.console import progress_bar
from nas_kd.data import Dataset
from nas_kd.distill import Outputs, Teacher
from nas_kd.train import evaluate, make_trainer


def content_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class TrainFeatures:
    """A teacher's fp16 logits, stage features and embedding of every training row (``FeatureRows``), read
    memory-mapped: the OS page cache holds them once for all the trials of a machine, and a batch reads only
    its own rows."""

    logits: np.ndarray
    stages: list[np.ndarray]
    embedding: np.ndarray

    @staticmethod
    def folder(model_dir: Path) -> Path:
        """Where the features of the cached model in ``model_dir`` live: ``<key>.features`` beside it."""
        return model_dir.with_name(f"{model_dir.name}.features")

    @staticmethod
    def written(folder: Path) -> bool:
        return (folder / "features.json").exists()  # the last file written, so the folder is whole

    @classmethod
    def open(cls, folder: Path) -> TrainFeatures:
        stages = json.loads((folder / "features.json").read_text())["stages"]

        def load(name: str) -> np.ndarray:
            return np.load(folder / f"{name}.npy", mmap_mode="r")

        return cls(load("logits"), [load(f"stage{i}") for i in range(stages)], load("embedding"))

    def rows(self, index: torch.Tensor, device: torch.device, stage_features: bool = True) -> Outputs:
        rows = index.cpu().numpy()

        def take(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(array[rows])).to(device).float()  # fancy indexing copies

        stages = [take(stage) for stage in self.stages] if stage_features else None
        return Outputs(take(self.logits), stages, take(self.embedding))


def feature_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes per image that ``teacher.cache_features`` stores for ``model`` (fp16), from a forward of ``x``."""
    with torch.no_grad():
        logits, stages, embedding = model.eval().forward_features(x)
    return 2 * sum(value[0].numel() for value in (logits, *stages, embedding))


@torch.no_grad()
def write_train_features(model: nn.Module, data: Dataset, folder: Path, batch_size: int = 512) -> None:
    """Store ``TrainFeatures`` of ``model`` on the un-augmented training split in ``folder`` (made whole by an
    atomic rename). Raises ValueError if a value does not fit in float16."""
    runner, train = frozen_for_inference(model), data.train  # as live forwards run it
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    arrays: dict[str, np.ndarray] = {}
    for start in range(0, len(train), batch_size):
        index = torch.arange(start, min(start + batch_size, len(train)), device=train.device)
        logits, stages, embedding = runner.forward_features(train.batch(index))
        outputs = {"logits": logits, **{f"stage{i}": stage for i, stage in enumerate(stages)}, "embedding": embedding}
        for name, value in outputs.items():
            half = value.float().to(torch.float16)
            if not torch.isfinite(half).all():
                raise ValueError(f"the teacher's {name} exceed float16's range (largest {value.abs().max():.3g})")
            if name not in arrays:
                shape = (len(train), *half.shape[1:])
                arrays[name] = np.lib.format.open_memmap(partial / f"{name}.npy", "w+", np.float16, shape)
            arrays[name][start : start + len(index)] = half.cpu().numpy()
    for array in arrays.values():
        array.flush()
    (partial / "features.json").write_text(json.dumps({"stages": len(arrays) - 2, "rows": len(train)}))
    partial.rename(folder)


@dataclass
class CachedModel:
    path: Path
    info: dict[str, Any]
    features: Path | None = None  # its TrainFeatures folder, when the study caches them

    @property
    def key(self) -> str:
        return self.path.name

    def load(self, device: torch.device | str) -> nn.Module:
        return load_student(self.path, device)

    def train_logits(self, device: torch.device | str) -> torch.Tensor:
        return torch.from_numpy(np.load(self.path / "train_logits.npy")).to(device)

    def as_teacher(self, device: torch.device | str, cached: bool = True) -> Teacher:
        """The frozen teacher; ``cached``: reading its cached logits (and features, if made), else live only."""
        return Teacher(
            self.load(device),
            self.train_logits(device) if cached else None,
            name=self.info.get("name", self.key),
            params=int(self.info["params"]),
            val_accuracy=self.info.get("val_accuracy"),
            train_features=TrainFeatures.open(self.features) if self.features and cached else None,
        )

    def with_train_features(self, data: Dataset, log: Callable[[str], None] = print) -> CachedModel:
        """This model with its ``TrainFeatures``, written once (``<key>.features`` beside it)."""
        folder = TrainFeatures.folder(self.path)
        with FileLock(str(self.path.with_name(f"{self.key}.lock"))):
            if not TrainFeatures.written(folder):
                model = self.load(data.train.device)
                x = data.train.batch(torch.arange(1, device=data.train.device))
                size = feature_bytes(model, x) * len(data.train)
                log(f"caching the features of {self.info.get('name', self.key)} ({self.key}) on "
                    f"{len(data.train):,} training images: {size / 1e9:.2f} GB ...")  # fmt: skip
                start = time.perf_counter()
                write_train_features(model, data, folder)
                log(f"features cached in {time.perf_counter() - start:.0f} s")
        return replace(self, features=folder)


def cache_root(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / "_cache" / "models"


def data_identity(study: Study, data: Dataset | None = None) -> dict[str, Any]:
    """What fixes the rows of data.train: the cached logits depend on it. User data adds its content hash
    (pass ``data``), so a changed folder or file is different data."""
    identity = study.data.identity()
    if data is not None and data.fingerprint:
        identity["content"] = data.fingerprint
    return identity


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:20]


def cached_model(
    root: Path,
    payload: dict[str, Any],
    train_fn: Callable[[], tuple[nn.Module, dict[str, Any]]],
    data: Dataset,
    name: str,
    log: Callable[[str], None] = print,
    action: str = "training",
) -> CachedModel:
    """Return the model ``payload`` describes, made by ``train_fn`` (training it, or for a teacher given with
    weights, loading and evaluating it) only if it is not cached."""
    key = content_key(payload)
    path = root / key
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        if not (path / "model.json").exists():
            log(f"{action} {name} ({key}) ...")
            model, meta = train_fn()
            model.eval()
            logits = _logits(model, data)
            info = {
                "name": name,
                "key": key,
                "payload": payload,
                "params": count_params(model),
                "flops": count_flops(model, data.input_shape),
                **data.preprocessing(),
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
    """fp16 logits on the un-augmented training split, in its row order (on the teacher's own view)."""
    train = data.train
    out = [
        model(train.batch(torch.arange(i, min(i + batch_size, len(train)), device=train.device))).float()
        for i in range(0, len(train), batch_size)
    ]
    return torch.cat(out).to(torch.float16).cpu().numpy()


def accuracies(model: nn.Module, data: Dataset) -> dict[str, float | None]:
    """Validation and test accuracy; test is None when the data has no test split."""

    return {
        "val_accuracy": evaluate(model, data.val),
        "test_accuracy": evaluate(model, data.test) if data.has_test else None,
    }


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

    trainer = make_trainer(arch, data, cfg, seed, augment_data, distiller, settings, teachers)
    state_file = resume_dir / "trainer.pt" if resume_dir is not None else None
    if state_file is not None and state_file.is_file():
        trainer.load_state_dict(torch.load(state_file, weights_only=True, map_location=trainer.device))
        log(f"  resuming from epoch {trainer.epoch}/{cfg.epochs}")

    bar = progress_bar(cfg.epochs, "  training (epochs)", initial=trainer.epoch)

    def on_epoch(result: Any, trainer: Any) -> None:
        # Shown as each epoch ends: a teacher or assistant can train for tens of minutes.
        if bar is None:
            log(f"  epoch {result.epoch}/{cfg.epochs} val_accuracy {result.val_accuracy:.4f} ({result.seconds:.1f}s)")
        else:
            bar.advance(f"val_accuracy {result.val_accuracy:.4f}")
        if state_file is not None:
            state_file.parent.mkdir(parents=True, exist_ok=True)
            partial = state_file.with_suffix(".partial")
            torch.save(trainer.state_dict(), partial)
            partial.replace(state_file)  # atomic: a kill never leaves half a state

    trainer.fit(on_epoch)
    if bar is not None:
        bar.close()
    student = trainer.distiller.export_student()
    return student, {**accuracies(student, data), "epochs": cfg.epochs}


def teacher_genome(teacher: TeacherConfig, data: Dataset) -> dict[str, Any]:
    """The genome that rebuilds ``teacher`` (``build_model``): nas-kd's own, or a wrapped network
    (``arch/external.py``) when it comes from a library or the user's code, or sees its own view of the data."""
    genome = teacher.genome()
    inner: dict[str, Any] = genome["wrap"] if "wrap" in genome and teacher.model_dir is None else {"genome": genome}
    view = teacher.input.model_dump() if teacher.input else {}
    if "torchvision" in inner and data.input_shape[0] == 1 and not view.get("channels"):
        view["channels"] = 3  # torchvision's networks take RGB: grey images are repeated to 3 channels
    if view.get("mean") is not None:
        view.update(data_mean=data.preprocessing()["mean"], data_std=data.preprocessing()["std"])
    if "genome" in inner and not view and teacher.feature_nodes is None:
        return inner["genome"]
    return {"wrap": inner, "feature_nodes": teacher.feature_nodes, "view": view or None}


def teacher_payload(study: Study, teacher: TeacherConfig, data: Dataset) -> dict[str, Any]:
    """What determines a teacher (its cache key): for one given with weights, the weights' content."""
    payload: dict[str, Any] = {
        "role": "teacher",
        "data": data_identity(study, data),
        "arch": teacher_genome(teacher, data),
    }
    if teacher.pretrained:
        weights = teacher.weights or str(Path(teacher.model_dir or "") / "model.safetensors")
        return {**payload, "weights": file_digest(weights)}
    return {
        **payload,
        "augment": study.data.augment,
        "train": study.teacher_train(teacher).identity(),
        "seed": study.teacher_seed(teacher),
    }


def build_teacher(teacher: TeacherConfig, data: Dataset) -> nn.Module:
    """The teacher's network, with its weights when it brings them (else as initialised); raises
    ModelSourceError or WeightsError."""
    genome = teacher_genome(teacher, data)
    model = build_model(genome, data.input_shape, data.num_classes)
    saved_as_is = teacher.model_dir is not None and genome == read_model_info(teacher.model_dir)["arch"]
    inner = model.model if "wrap" in genome and not saved_as_is else model  # the weights of the network itself
    weights = teacher.weights or (Path(teacher.model_dir) / "model.safetensors" if teacher.model_dir else None)
    if weights is not None:
        load_weights(inner, weights, data.num_classes)
    return model.to(data.train.device).eval()


def check_teachers(study: Study, data: Dataset) -> list[nn.Module]:
    """Build every teacher of the study and load its weights; a teacher that cannot be built, weights that do
    not fit, feature nodes that do not exist or outputs that do not match the data's classes raise one
    ``StudyError`` naming the field. Returns the built teachers (``nas-kd validate`` calls this)."""
    built = []
    for field, teacher in study.named_teachers():
        source = next(k for k in teacher.SOURCES if getattr(teacher, k) is not None)
        try:
            model = build_teacher(teacher, data)
            with torch.no_grad():
                logits = model(data.val.batch(torch.arange(min(2, len(data.val)), device=data.train.device)))
        except WeightsError as error:
            raise StudyError(study.path or "<study>", f"{field}.weights", str(error)) from None
        except ModelSourceError as error:
            where = "feature_nodes" if "feature node" in str(error) else source
            raise StudyError(study.path or "<study>", f"{field}.{where}", str(error)) from None
        except RuntimeError as error:  # the network cannot take the data's images
            first = str(error).strip().splitlines()[0]
            raise StudyError(
                study.path or "<study>",
                f"{field}.{source}",
                f"the model does not run on {list(data.input_shape)} images ({first}); set {field}.input",
            ) from None
        if logits.ndim != 2 or logits.shape[1] != data.num_classes:
            raise StudyError(
                study.path or "<study>",
                f"{field}.{source}",
                f"the teacher outputs {list(logits.shape[1:])} classes per image, the data has {data.num_classes}",
            )
        if teacher.cache_features:
            _check_feature_room(study, teacher, field, model, data)
        built.append(model)
    return built


def _check_feature_room(study: Study, teacher: TeacherConfig, field: str, model: nn.Module, data: Dataset) -> None:
    """``cache_features`` must fit on the disk of ``runs_dir`` (unless that teacher's features are there)."""
    root = cache_root(study.runs_dir)
    if TrainFeatures.written(TrainFeatures.folder(root / content_key(teacher_payload(study, teacher, data)))):
        return
    needed = feature_bytes(model, data.val.batch(torch.arange(1, device=data.train.device))) * len(data.train)
    existing = next(folder for folder in (root, *root.parents) if folder.exists())
    free = shutil.disk_usage(existing).free
    if needed > 0.9 * free:  # leave room for checkpoints and the reports
        raise StudyError(
            study.path or "<study>",
            f"{field}.cache_features",
            f"the features of {len(data.train):,} training images need {needed / 1e9:.1f} GB; {existing} has "
            f"{free / 1e9:.1f} GB free",
        )


def prepare_teachers(study: Study, data: Dataset, log: Callable[[str], None] = print) -> list[CachedModel]:
    """Make every teacher of the study ready: trained once (or, given with weights, evaluated once), then
    loaded from the cache."""
    check_teachers(study, data)
    ready = []
    for i, (field, teacher) in enumerate(study.named_teachers()):
        payload = teacher_payload(study, teacher, data)
        name = f"teacher{i}" if len(study.all_teachers()) > 1 else "teacher"

        root = cache_root(study.runs_dir)
        partial = root / f"{content_key(payload)}.partial"

        def train_fn(
            teacher: TeacherConfig = teacher, arch: dict[str, Any] = payload["arch"], resume_dir: Path = partial
        ) -> tuple[nn.Module, dict[str, Any]]:
            return train_plain(
                arch,
                data,
                study.teacher_train(teacher),
                study.teacher_seed(teacher),
                study.data.augment,
                log=log,
                resume_dir=resume_dir,
            )

        def evaluate_fn(teacher: TeacherConfig = teacher) -> tuple[nn.Module, dict[str, Any]]:
            model = build_teacher(teacher, data)
            weights = teacher.weights or teacher.model_dir
            return model, {**accuracies(model, data), "epochs": 0, "pretrained": True, "weights": weights}

        make, action = (evaluate_fn, "evaluating (not training)") if teacher.pretrained else (train_fn, "training")
        cached = cached_model(root, payload, make, data, name, log, action)
        if teacher.cache_features:
            try:
                cached = cached.with_train_features(data, log)
            except ValueError as error:
                raise StudyError(study.path or "<study>", f"{field}.cache_features", str(error)) from None
        ready.append(cached)
    return ready


def teacher_bundle(cached: CachedModel) -> dict[str, Any]:
    """A teacher as plain NumPy data for Ray's object store (read zero-copy by every trial on a node)."""
    model = cached.load("cpu")
    return {
        "info": cached.info,
        "weights": {k: v.numpy() for k, v in model.state_dict().items()},
        "train_logits": np.load(cached.path / "train_logits.npy"),
        "features": str(cached.features) if cached.features else None,  # a path: the arrays are too big to ship
    }


def teacher_from_bundle(bundle: dict[str, Any], device: torch.device | str) -> Teacher:
    info = bundle["info"]
    features = Path(bundle["features"]) if bundle.get("features") else None
    model = build_model(info["arch"], tuple(info["input_shape"]), info["num_classes"])
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in bundle["weights"].items()})
    return Teacher(
        model.to(device),
        torch.from_numpy(np.array(bundle["train_logits"])).to(device),
        name=info.get("name", "teacher"),
        params=int(info["params"]),
        val_accuracy=info.get("val_accuracy"),
        # On a node without the run directory (a cluster without a shared file system) the teacher runs live.
        train_features=TrainFeatures.open(features) if features and TrainFeatures.written(features) else None,
    )
