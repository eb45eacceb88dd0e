"""Datasets as whole uint8 tensors on the training device, normalised per batch; batches are index slices.

``load_dataset`` returns train / validation / test splits. Images are stored as uint8 (N, C, H, W) (4x less
memory than float32) with the per-channel mean and std of the training part; ``Split.batch(index)`` returns
the normalised float batch. The validation split is carved from the training set (seeded, stratified) unless
the data brings its own: search objectives and model selection use it, the test split is for final reporting
only (a dataset may have none: then ``Dataset.has_test`` is false and test accuracy is not reported).
Augmentation (random crop with padding, horizontal flip) is batched on the device on the normalised batch.

Besides the built-in datasets, three sources bring the user's own data (see docs/your-data.md):
``folder`` (torchvision's ImageFolder layout, decoded once and cached as uint8 arrays keyed by the folder's
file names, sizes and mtimes), ``arrays`` (an .npz file) and ``python`` (a ``package.module:function``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas_kd.console import progress_bar
from nas_kd.views import channels as convert_channels
from nas_kd.views import resize

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DATA_DIR = Path.home() / ".cache" / "nas-kd" / "data"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
USER_SOURCES = ("folder", "arrays", "python")
# Without data.max_device_bytes, a CUDA device holds the data only if it takes at most this share of its memory.
DEFAULT_DEVICE_SHARE = 0.5


class DatasetNotFound(RuntimeError):
    """A dataset is not on disk and cannot be downloaded; the message says where to get it."""


class DataError(ValueError):
    """User data that cannot be used; ``field`` is the study field under ``data`` it concerns."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(message)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    crop_padding: int  # 0 = no crop augmentation
    flip: bool
    how_to_get: str


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", 10, (1, 8, 8), 1, False, "bundled with scikit-learn"),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist",
        10,
        (1, 28, 28),
        2,
        True,
        "apt-get install dataset-fashion-mnist, or set data_dir to a folder with torchvision's FashionMNIST/raw",
    ),
    "mnist": DatasetSpec("mnist", 10, (1, 28, 28), 2, False, "set data_dir to a folder with torchvision's MNIST/raw"),
    "cifar10": DatasetSpec("cifar10", 10, (3, 32, 32), 4, True, "set data_dir to a folder with cifar-10-batches-py"),
    "cifar100": DatasetSpec("cifar100", 100, (3, 32, 32), 4, True, "set data_dir to a folder with cifar-100-python"),
}


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) uint8, as stored; read batches through ``batch``
    y: torch.Tensor  # (N,) int64, on the training device
    mean: torch.Tensor  # (C,) float32, pixel units / 255, of the dataset's training part
    std: torch.Tensor  # (C,) float32
    # Set when the images stay in host memory (data over ``max_device_bytes``): each batch is gathered on the
    # host and copied here. Labels, mean and std are always on the training device.
    stream_to: torch.device | None = None

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """The normalised float32 images at ``index`` (what every network sees), on the training device."""
        if self.stream_to is None:
            images = self.x[index]
        else:  # uint8 over the bus (4x less than float), normalised on the device
            images = self.x[index.to(self.x.device)].to(self.stream_to, non_blocking=True)
        scale = (1 / (255 * self.std))[None, :, None, None]
        return (images.float() * scale).sub_((self.mean / self.std)[None, :, None, None])

    def subset(self, index: torch.Tensor | slice) -> Split:
        rows = index.to(self.x.device) if isinstance(index, torch.Tensor) else index
        return Split(self.x[rows], self.y[index], self.mean, self.std, self.stream_to)

    def to(self, device: torch.device | str, stream: bool = False) -> Split:
        """On ``device``: the images too, or (``stream``) kept in host memory and copied a batch at a time."""
        device = torch.device(device)
        x = self.x.cpu() if stream else self.x.to(device)
        return Split(x, self.y.to(device), self.mean.to(device), self.std.to(device), device if stream else None)

    @property
    def device(self) -> torch.device:
        """Where batches are computed (the training device)."""
        return self.y.device

    @property
    def streamed(self) -> bool:
        return self.stream_to is not None


@dataclass
class Dataset:
    spec: DatasetSpec
    train: Split
    val: Split
    test: Split
    class_names: list[str] = field(default_factory=list)
    fingerprint: str = ""  # user data: a hash of its content (names teacher caches); built-ins: ""
    notes: list[str] = field(default_factory=list)  # facts worth saying in a run's outputs (e.g. no test split)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    @property
    def pixel_mean(self) -> tuple[float, ...]:
        """Per-channel mean the pixels in [0, 1] are normalised with (attacks and synthesis work in pixels)."""
        return tuple(float(m) for m in self.train.mean)

    @property
    def pixel_std(self) -> tuple[float, ...]:
        return tuple(float(s) for s in self.train.std)

    @property
    def has_test(self) -> bool:
        return len(self.test) > 0

    def preprocessing(self) -> dict[str, Any]:
        """What a user needs to feed a trained model raw images: ``(pixel / 255 - mean) / std`` per channel,
        at ``input_shape`` (C, H, W); output ``i`` is ``class_names[i]``."""
        return {
            "mean": [round(float(v), 6) for v in self.train.mean],
            "std": [round(float(v), 6) for v in self.train.std],
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
        }

    def to(self, device: torch.device | str, stream: bool = False) -> Dataset:
        splits = (self.train.to(device, stream), self.val.to(device, stream), self.test.to(device, stream))
        return Dataset(self.spec, *splits, self.class_names, self.fingerprint, self.notes)

    def nbytes(self) -> int:
        return sum(s.x.numel() + 8 * s.y.numel() for s in (self.train, self.val, self.test))


@dataclass
class RawData:
    """Splits as uint8 (N, C, H, W) arrays and int64 labels, before normalisation; val/test may be absent."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    fingerprint: str = ""


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): ``fraction`` of every class held out, chosen with ``seed``."""
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        take = max(1, round(len(members) * fraction))
        held.append(rng.choice(members, size=take, replace=False))
    held_out = np.sort(np.concatenate(held))
    kept = np.setdiff1d(np.arange(len(y)), held_out)
    return kept, held_out


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 (N, C, H, W) images in pixel/255 units, in chunks (no float copy)."""
    total = np.zeros(x.shape[1])
    squares = np.zeros(x.shape[1])
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].astype(np.float64) / 255.0
        total += part.sum(axis=(0, 2, 3))
        squares += (part**2).sum(axis=(0, 2, 3))
    count = max(1, len(x) * x.shape[2] * x.shape[3])
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0)) + 1e-6
    return mean.astype(np.float32), std.astype(np.float32)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    *,
    path: str | Path | None = None,
    factory: str | None = None,
    image_size: tuple[int, int] | list[int] | None = None,
    channels: int | None = None,
    cache_dir: str | Path | None = None,
    max_device_bytes: int | None = None,
    log: Callable[[str], None] = print,
) -> Dataset:
    """Load ``name`` (a built-in dataset, or ``folder`` / ``arrays`` with ``path``, or ``python`` with
    ``factory``) whole onto ``device``: train (minus validation unless the data has its own), validation, test.
    User data raises ``DataError`` naming the study field at fault."""
    size = tuple(image_size) if image_size else None
    if name in DATASETS:
        spec = DATASETS[name]
        raw = _BUILTIN_LOADERS[name](spec, Path(data_dir) if data_dir else None)
        if size or channels:
            raw = _conform(raw, size, channels)
    elif name == "folder":
        root = Path(path or "")
        raw = load_folder(root, size, channels, Path(cache_dir) if cache_dir else DEFAULT_DATA_DIR / "cache", log)
    elif name == "arrays":
        raw = _conform(_from_mapping(_read_npz(Path(path or "")), str(path), "path"), size, channels)
    elif name == "python":
        raw = _conform(_from_mapping(_call_factory(factory or ""), str(factory), "factory"), size, channels)
    else:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)} or {', '.join(USER_SOURCES)}")
    notes = []
    if raw.x_val is None:
        kept, held = stratified_split(raw.y_train, val_fraction, seed)
        raw.x_val, raw.y_val = raw.x_train[held], raw.y_train[held]
        raw.x_train, raw.y_train = raw.x_train[kept], raw.y_train[kept]
    if raw.x_test is None:
        notes.append("the data has no test split: test accuracy is not reported")
        raw.x_test = np.zeros((0, *raw.x_train.shape[1:]), np.uint8)
        raw.y_test = np.zeros(0, np.int64)
    if name not in DATASETS:
        c, h, w = raw.x_train.shape[1:]
        num_classes = len(raw.class_names)
        spec = DatasetSpec(name, num_classes, (c, h, w), max(1, round(min(h, w) / 8)), False, "")
    elif raw.x_train.shape[1:] != spec.input_shape:  # a built-in dataset at another size or channel count
        spec = DatasetSpec(spec.name, spec.num_classes, raw.x_train.shape[1:], spec.crop_padding, spec.flip, "")
    # Normalise with statistics of the training part only (no peeking at validation or test).
    mean, std = (torch.from_numpy(s) for s in channel_stats(raw.x_train))

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y).long(), mean, std)

    names = raw.class_names or [str(i) for i in range(spec.num_classes)]
    dataset = Dataset(
        spec,
        split(raw.x_train, raw.y_train),
        split(raw.x_val, raw.y_val),
        split(raw.x_test, raw.y_test),
        names,
        raw.fingerprint,
        notes,
    )
    device = torch.device(device)
    limit = device_budget(device, max_device_bytes)
    if limit is not None and dataset.nbytes() > limit:
        log(
            f"data: {dataset.nbytes() / 2**20:,.0f} MiB as uint8, over the {limit / 2**20:,.0f} MiB allowed on "
            f"{device} (data.max_device_bytes): kept in host memory, each batch copied to {device}"
        )
        return dataset.to(device, stream=True)
    return dataset.to(device)


def device_budget(device: torch.device, max_device_bytes: int | None) -> int | None:
    """Bytes of data the device may hold: ``max_device_bytes``, else a share of a GPU's memory, else no limit."""
    if max_device_bytes is None and device.type == "cuda":
        return int(DEFAULT_DEVICE_SHARE * torch.cuda.get_device_properties(device).total_memory)
    return max_device_bytes


def _digits(spec: DatasetSpec, data_dir: Path | None) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images[:, None] * (255 / 16)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    y = bunch.target.astype(np.int64)
    # digits has no official test split: a fixed 25% (seed 0, stratified), the same for every study.
    train, test = stratified_split(y, 0.25, seed=0)
    return RawData(x[train], y[train], x_test=x[test], y_test=y[test], class_names=[str(i) for i in range(10)])


def _torchvision(spec: DatasetSpec, data_dir: Path | None) -> RawData:
    import torchvision

    root = data_dir or DEFAULT_DATA_DIR
    if spec.name == "fashion_mnist" and data_dir is None:
        root = _stage_debian_fashion_mnist(root)
    cls = {
        "fashion_mnist": torchvision.datasets.FashionMNIST,
        "mnist": torchvision.datasets.MNIST,
        "cifar10": torchvision.datasets.CIFAR10,
        "cifar100": torchvision.datasets.CIFAR100,
    }[spec.name]
    parts = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)  # never at run time: data is the user's to bring
        except (RuntimeError, OSError):
            looked = f"{root}" + (f" and {DEBIAN_FASHION_MNIST}" if spec.name == "fashion_mnist" else "")
            raise DatasetNotFound(
                f"dataset {spec.name} not found in {looked} (nas-kd downloads nothing); to get it: {spec.how_to_get}"
            ) from None
        x = np.asarray(ds.data, dtype=np.uint8)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        parts += [np.ascontiguousarray(x), np.asarray(ds.targets, dtype=np.int64)]
    x_train, y_train, x_test, y_test = parts
    return RawData(x_train, y_train, x_test=x_test, y_test=y_test, class_names=list(ds.classes))


def _stage_debian_fashion_mnist(root: Path) -> Path:
    """Debian's dataset-fashion-mnist ships the four .gz files; torchvision wants them gunzipped in
    ``<root>/FashionMNIST/raw`` (its checksums differ from Debian's, so we never let it download)."""
    raw = root / "FashionMNIST" / "raw"
    sources = sorted(DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"))
    if len(sources) < 4:
        return root
    raw.mkdir(parents=True, exist_ok=True)
    for source in sources:
        target = raw / source.name[: -len(".gz")]
        if not target.exists():
            partial = target.with_suffix(".partial")
            with gzip.open(source) as fin, open(partial, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            partial.rename(target)  # atomic: a concurrent reader never sees half a file
    return root


_BUILTIN_LOADERS: dict[str, Callable[[DatasetSpec, Path | None], RawData]] = {
    "digits": _digits,
    "fashion_mnist": _torchvision,
    "mnist": _torchvision,
    "cifar10": _torchvision,
    "cifar100": _torchvision,
}


# ---- user data: an image folder, an .npz file, a Python factory ---------------------------------------------

GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def load_folder(
    root: Path,
    image_size: tuple[int, ...] | None,
    channels: int | None,
    cache_dir: Path,
    log: Callable[[str], None] = print,
) -> RawData:
    """ImageFolder layout ``root/{train,val,test}/<class>/<image>``: decoded once, then read from a uint8 cache
    keyed by the files' names, sizes and modification times (and the size and channels asked for)."""
    from filelock import FileLock

    listing, skipped = _list_folder(root)
    files = [(str(p.relative_to(root)), *_stat(p)) for entries in listing.values() for p, _ in entries]
    identity = {"files": files, "image_size": image_size, "channels": channels}
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]
    cache = cache_dir / f"folder-{key}.npz"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock"):
        if not cache.exists():
            arrays = _decode_folder(root, listing, image_size, channels, log)
            fd, tmp = tempfile.mkstemp(prefix=".folder-", suffix=".npz", dir=cache_dir)
            os.close(fd)
            np.savez(tmp, **arrays)
            os.replace(tmp, cache)  # atomic: a concurrent reader never sees half a file
        else:
            log(f"{root}: images read from the cache {cache}")
    if skipped:
        log(f"{root}: skipped {len(skipped)} files that are not images ({_some(skipped)})")
    with np.load(cache, allow_pickle=False) as stored:
        arrays = dict(stored)
    names = [str(n) for n in arrays.pop("class_names")]
    unreadable = [str(n) for n in arrays.pop("unreadable")]
    if unreadable:
        log(f"{root}: skipped {len(unreadable)} image files that could not be decoded ({_some(unreadable)})")
    if not len(arrays["y_train"]):
        raise DataError("path", f"{root / 'train'}: none of its images could be read")
    return RawData(**arrays, class_names=names, fingerprint=key)


def _some(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _list_folder(root: Path) -> tuple[dict[str, list[tuple[Path, int]]], list[str]]:
    """{split: [(file, class index)]} for the splits present, and the non-image files skipped."""
    if not root.is_dir():
        raise DataError("path", f"folder not found: {root}")
    train = root / "train"
    if not train.is_dir():
        raise DataError("path", f"{root} has no train/ folder (expected train/<class>/<images>, optional val/, test/)")
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    if not classes:
        raise DataError("path", f"{train} has no class folders (expected train/<class>/<images>)")
    listing: dict[str, list[tuple[Path, int]]] = {}
    skipped: list[str] = []
    for split in ("train", "val", "test"):
        folder = root / split
        if not folder.is_dir():
            continue
        present = sorted(d.name for d in folder.iterdir() if d.is_dir())
        unknown = [c for c in present if c not in classes]
        if unknown:
            raise DataError("path", f"{folder}: class {unknown[0]!r} is not in {train} (classes come from train/)")
        files = []
        for label, name in enumerate(classes):
            for file in sorted((folder / name).rglob("*")) if (folder / name).is_dir() else []:
                if file.is_file():
                    if file.suffix.lower() in IMAGE_SUFFIXES:
                        files.append((file, label))
                    else:
                        skipped.append(str(file.relative_to(root)))
        if split == "train" and not files:
            raise DataError("path", f"{train} has no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        listing[split] = files
    return listing, skipped


def _decode_folder(
    root: Path,
    listing: dict[str, list[tuple[Path, int]]],
    image_size: tuple[int, ...] | None,
    channels: int | None,
    log: Callable[[str], None],
) -> dict[str, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    everything = [p for files in listing.values() for p, _ in files]
    if channels is None or image_size is None:  # headers only: what the files are
        modes, first_size = set(), None
        for file in everything:
            try:
                with Image.open(file) as image:
                    modes.add(image.mode)
                    first_size = first_size or image.size
            except (UnidentifiedImageError, OSError):
                continue
        channels = channels or (1 if modes <= GRAYSCALE_MODES else 3)
        if image_size is None and first_size is not None:
            image_size = (first_size[1], first_size[0])
    assert image_size is not None
    h, w = image_size
    log(f"{root}: decoding {len(everything)} images to {channels}x{h}x{w} uint8 (once; then cached)")
    arrays: dict[str, np.ndarray] = {}
    unreadable: list[str] = []
    progress = progress_bar(len(everything), "  decoding (images)") if len(everything) >= 500 else None
    for split, files in listing.items():
        images, labels = [], []
        for file, label in files:
            if progress is not None:
                progress.advance()
            try:
                with Image.open(file) as image:
                    image = image.convert("L" if channels == 1 else "RGB")
                    if image.size != (w, h):
                        image = image.resize((w, h), Image.Resampling.BILINEAR)
                    pixels = np.asarray(image, dtype=np.uint8)
            except (UnidentifiedImageError, OSError):
                unreadable.append(str(file.relative_to(root)))
                continue
            images.append(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))
            labels.append(label)
        arrays[f"x_{split}"] = np.stack(images) if images else np.zeros((0, channels, h, w), np.uint8)
        arrays[f"y_{split}"] = np.asarray(labels, dtype=np.int64)
    if progress is not None:
        progress.close()
    arrays["class_names"] = np.asarray(sorted(d.name for d in (root / "train").iterdir() if d.is_dir()))
    arrays["unreadable"] = np.asarray(unreadable, dtype=str)
    return arrays


def _read_npz(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError("path", f"file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            return dict(stored)
    except (ValueError, OSError) as error:
        raise DataError("path", f"{path}: not a readable .npz file of arrays ({error})") from None


def _call_factory(target: str) -> Any:
    module_name, _, function_name = target.partition(":")
    if not module_name or not function_name:
        raise DataError("factory", f"write it as package.module:function, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any failure while importing the user's module is a bad study
        raise DataError("factory", f"cannot import {module_name!r} ({type(error).__name__}: {error})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise DataError("factory", f"{module_name} has no function {function_name!r}")
    try:
        return function()
    except Exception as error:
        raise DataError("factory", f"{target}() failed ({type(error).__name__}: {error})") from None


def _from_mapping(raw: Any, where: str, field_name: str) -> RawData:
    """Splits from ``x_train, y_train[, x_val, y_val, x_test, y_test, class_names]`` (arrays or tensors), or
    from ``train[, val, test]`` each an ``(x, y)`` pair or a torch Dataset of (image, label)."""
    if not isinstance(raw, dict):
        raise DataError(field_name, f"{where}: expected a mapping of splits, got {type(raw).__name__}")
    arrays = dict(raw)
    for split in ("train", "val", "test"):
        if split in arrays:
            arrays[f"x_{split}"], arrays[f"y_{split}"] = _pair(arrays.pop(split), f"{where}: {split}", field_name)
    if "x_train" not in arrays or "y_train" not in arrays:
        raise DataError(field_name, f"{where}: missing x_train and y_train (has: {', '.join(sorted(raw)) or 'none'})")
    out: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if (x is None) != (y is None):
            raise DataError(field_name, f"{where}: give both x_{split} and y_{split}, or neither")
        if x is not None:
            out[f"x_{split}"] = _images(np.asarray(x), f"{where}: x_{split}", field_name)
            out[f"y_{split}"] = _labels(np.asarray(y), len(out[f"x_{split}"]), f"{where}: y_{split}", field_name)
    shapes = {out[k].shape[1:] for k in out if k.startswith("x_")}
    if len(shapes) > 1:
        raise DataError(field_name, f"{where}: the splits' images differ in shape ({sorted(shapes)})")
    top = max(int(out[k].max(initial=0)) for k in out if k.startswith("y_"))
    names = [str(n) for n in arrays.get("class_names", [])] or [str(i) for i in range(top + 1)]
    if top >= len(names):
        raise DataError(field_name, f"{where}: label {top} but only {len(names)} class_names")
    digest = hashlib.sha256()
    for key in sorted(out):
        digest.update(key.encode() + np.ascontiguousarray(out[key]).data)
    return RawData(**out, class_names=names, fingerprint=digest.hexdigest()[:20])


def _pair(value: Any, where: str, field_name: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return tuple(_numpy(v) for v in value)  # type: ignore[return-value]
    if isinstance(value, torch.utils.data.Dataset):
        items = [value[i] for i in range(len(value))]  # type: ignore[arg-type]
        try:
            images = np.stack([_numpy(image) for image, _ in items])
        except ValueError as error:
            raise DataError(field_name, f"{where}: images differ in shape; resize them ({error})") from None
        return images, np.asarray([int(label) for _, label in items])
    raise DataError(field_name, f"{where}: expected an (x, y) pair or a torch Dataset, got {type(value).__name__}")


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _images(x: np.ndarray, where: str, field_name: str) -> np.ndarray:
    """Any of (N, H, W), (N, H, W, C), (N, C, H, W) with C 1 or 3; uint8, or float in [0, 1] or [0, 255]."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) == 0:
        raise DataError(
            field_name, f"{where}: shape {x.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3"
        )
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype == bool:
        return np.ascontiguousarray(x.astype(np.uint8) * 255)
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(field_name, f"{where}: dtype {x.dtype} is not a number")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 255:
        raise DataError(field_name, f"{where}: values in [{low:g}, {high:g}]; give uint8, or floats in [0, 1]")
    scale = 255.0 if np.issubdtype(x.dtype, np.floating) and high <= 1.0 else 1.0
    return np.ascontiguousarray(np.round(x.astype(np.float32) * scale).astype(np.uint8))


def _labels(y: np.ndarray, count: int, where: str, field_name: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != count:
        raise DataError(field_name, f"{where}: shape {y.shape}; expected ({count},), one label per image")
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise DataError(field_name, f"{where}: labels must be integers 0..classes-1")
    return y.astype(np.int64)


def _conform(raw: RawData, image_size: tuple[int, ...] | None, channels: int | None, chunk: int = 1024) -> RawData:
    """Resize to ``image_size`` and convert to ``channels`` (the same batched steps teacher views use)."""
    for split in ("train", "val", "test"):
        x = getattr(raw, f"x_{split}")
        if x is None or ((not image_size or x.shape[2:] == tuple(image_size)) and channels in (None, x.shape[1])):
            continue
        parts = []
        for start in range(0, len(x), chunk):
            batch = torch.from_numpy(x[start : start + chunk]).float()
            if image_size:
                batch = resize(batch, list(image_size))
            if channels:
                batch = convert_channels(batch, channels)
            parts.append(batch.round().clamp(0, 255).to(torch.uint8).numpy())
        setattr(raw, f"x_{split}", np.concatenate(parts))
    return raw


def augment(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for the whole batch at once."""
    n, _, h, w = x.shape
    if padding:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        shifts = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=x.device)
        rows = (torch.arange(h, device=x.device)[None, :] + shifts[0][:, None])[:, None, :, None]
        cols = (torch.arange(w, device=x.device)[None, :] + shifts[1][:, None])[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, channel, rows, cols]
    if flip:
        flipped = torch.rand(n, generator=generator, device=x.device) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(3), x)
    return x


def batches(
    n: int,
    batch_size: int,
    generator: torch.Generator | None,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
    limit: int | None = None,
) -> Iterator[torch.Tensor]:
    """Index tensors for one pass over ``n`` samples: shuffled with ``generator``, in order without.
    ``limit`` ends the pass after that many samples (a fresh random subset each pass when shuffled)."""
    order = (
        torch.randperm(n, generator=generator, device=device)
        if generator is not None
        else torch.arange(n, device=device)
    )
    if limit:
        n = min(n, limit)
        order = order[:n]
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
