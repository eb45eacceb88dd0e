"""Datasets as whole, normalised tensors on the training device; batches are slices of them.

``load_dataset`` returns train / validation / test splits. The validation split is carved from the
training set (seeded, stratified): search objectives and model selection use it, the test split is
for final reporting only. Augmentation (random crop with padding, horizontal flip) is batched on
the device, so the hot loop has no per-sample Python.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DATA_DIR = Path.home() / ".cache" / "nas-kd" / "data"


class DatasetNotFound(RuntimeError):
    """A dataset is not on disk and cannot be downloaded; the message says where to get it."""


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
    x: torch.Tensor  # (N, C, H, W) float32, normalised
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    spec: DatasetSpec
    train: Split
    val: Split
    test: Split
    # Per-channel (mean, std) the pixels in [0, 1] were normalised with: attacks and image synthesis
    # work in pixel units and keep to the valid pixel range through them.
    pixel_mean: tuple[float, ...] = ()
    pixel_std: tuple[float, ...] = ()

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    def to(self, device: torch.device | str) -> Dataset:
        splits = (self.train.to(device), self.val.to(device), self.test.to(device))
        return Dataset(self.spec, *splits, self.pixel_mean, self.pixel_std)


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


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Dataset:
    """Load ``name`` whole onto ``device``: train (minus validation), validation, test."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    spec = DATASETS[name]
    train_x, train_y, test_x, test_y = _LOADERS[name](spec, Path(data_dir) if data_dir else None)
    kept, held = stratified_split(train_y, val_fraction, seed)
    # Normalise with statistics of the training part only (no peeking at validation or test).
    mean = train_x[kept].mean(axis=(0, 2, 3), keepdims=True)
    std = train_x[kept].std(axis=(0, 2, 3), keepdims=True) + 1e-6

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy((x - mean) / std).float(), torch.from_numpy(y).long())

    dataset = Dataset(
        spec,
        split(train_x[kept], train_y[kept]),
        split(train_x[held], train_y[held]),
        split(test_x, test_y),
        tuple(float(m) for m in mean.ravel()),
        tuple(float(s) for s in std.ravel()),
    )
    return dataset.to(device)


def _digits(spec: DatasetSpec, data_dir: Path | None) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None] / 16.0
    y = bunch.target.astype(np.int64)
    # digits has no official test split: a fixed 25% (seed 0, stratified), the same for every study.
    train, test = stratified_split(y, 0.25, seed=0)
    return x[train], y[train], x[test], y[test]


def _torchvision(spec: DatasetSpec, data_dir: Path | None) -> tuple[np.ndarray, ...]:
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
            ds = _open_or_download(cls, root, train)
        except (RuntimeError, OSError) as error:
            looked = f"{root}" + (f" and {DEBIAN_FASHION_MNIST}" if spec.name == "fashion_mnist" else "")
            raise DatasetNotFound(
                f"dataset {spec.name} not found in {looked} and could not be downloaded "
                f"({type(error).__name__}); to get it: {spec.how_to_get}"
            ) from None
        x = np.asarray(ds.data, dtype=np.float32) / 255.0
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        parts += [np.ascontiguousarray(x), np.asarray(ds.targets, dtype=np.int64)]
    return tuple(parts)


def _open_or_download(cls: type, root: Path, train: bool):
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError:
        return cls(str(root), train=train, download=True)


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


_LOADERS = {
    "digits": _digits,
    "fashion_mnist": _torchvision,
    "mnist": _torchvision,
    "cifar10": _torchvision,
    "cifar100": _torchvision,
}


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
