"""The user's own data: an image folder, an .npz file, a Python factory; and what goes wrong with each."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nas_kd.cli import main
from nas_kd.config import StudyError, load_study
from nas_kd.data import load_dataset
from nas_kd.pipeline import check_data
from nas_kd.testing.digits_folder import CLASS_NAMES, write_digits_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("images") / "digits", size=12, limit=240)


def study_file(tmp_path: Path, data: dict, **extra: object) -> Path:
    path = tmp_path / "study.yaml"
    study = {"name": "own", "runs_dir": str(tmp_path / "runs"), "data": data, "train": {"epochs": 1}, **extra}
    path.write_text(yaml.safe_dump(study))
    return path


def test_folder_is_decoded_once_then_read_from_a_cache_keyed_by_content(folder: Path, tmp_path: Path) -> None:
    logs: list[str] = []
    data = load_dataset("folder", path=folder, cache_dir=tmp_path, log=logs.append)
    counts = {split: len(list((folder / split).rglob("*.png"))) for split in ("train", "val", "test")}
    assert (len(data.train), len(data.val), len(data.test)) == (counts["train"], counts["val"], counts["test"])
    assert data.class_names == sorted(CLASS_NAMES) and data.num_classes == 10
    assert data.input_shape == (3, 12, 12) and data.train.x.dtype == torch.uint8 and data.has_test
    assert any("decoding" in line for line in logs)
    again = load_dataset("folder", path=folder, cache_dir=tmp_path, log=logs.append)
    assert "read from the cache" in logs[-1] and again.fingerprint == data.fingerprint
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.test.y, data.test.y)
    # what the labels mean: class i is the i-th folder name, and the pixels are the files' (resized) pixels
    first = sorted((folder / "train" / data.class_names[0]).glob("*.png"))[0]  # class 0: the first folder
    from PIL import Image

    pixels = np.asarray(Image.open(first).convert("RGB")).transpose(2, 0, 1)
    rows = data.train.x.numpy()
    assert any(np.array_equal(pixels, row) for row in rows[data.train.y.numpy() == 0])
    # asked for grey, smaller: another cache entry, converted
    grey = load_dataset("folder", path=folder, cache_dir=tmp_path, image_size=[8, 8], channels=1, log=logs.append)
    assert grey.input_shape == (1, 8, 8) and grey.fingerprint != data.fingerprint


def test_a_changed_file_is_new_data_and_bad_files_are_skipped_with_a_count(tmp_path: Path) -> None:
    root = write_digits_folder(tmp_path / "d", size=8, limit=60, test=False)
    logs: list[str] = []
    data = load_dataset("folder", path=root, cache_dir=tmp_path / "c", log=logs.append)
    assert not data.has_test and len(data.test) == 0 and data.notes  # said, not replaced by something else
    (root / "train" / "zero" / "notes.txt").write_text("not an image")
    (root / "train" / "one" / "broken.png").write_bytes(b"not a png")
    changed = load_dataset("folder", path=root, cache_dir=tmp_path / "c", log=logs.append)
    assert changed.fingerprint != data.fingerprint and len(changed.train) == len(data.train)
    assert any("skipped 1 files that are not images (train/zero/notes.txt)" in line for line in logs)
    assert any("skipped 1 image files that could not be decoded (train/one/broken.png)" in line for line in logs)


def test_val_is_carved_from_train_when_the_folder_has_none(tmp_path: Path) -> None:
    root = write_digits_folder(tmp_path / "d", size=8, limit=100)
    for file in (root / "val").rglob("*.png"):
        file.unlink()
    for folder in sorted((root / "val").glob("*")):
        folder.rmdir()
    (root / "val").rmdir()
    data = load_dataset("folder", path=root, cache_dir=tmp_path, val_fraction=0.2, log=lambda _: None)
    assert len(data.val) > 0 and len(data.train) + len(data.val) == 70


def test_npz_in_any_layout_and_dtype_gives_the_same_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8)
    labels = np.arange(40) % 4
    np.savez(tmp_path / "nhwc.npz", x_train=images, y_train=labels, x_test=images[:8], y_test=labels[:8])
    np.savez(
        tmp_path / "nchw.npz",
        x_train=images.transpose(0, 3, 1, 2) / 255.0,
        y_train=labels,
        x_test=images[:8].transpose(0, 3, 1, 2) / 255.0,
        y_test=labels[:8],
        class_names=np.array(["a", "b", "c", "d"]),
    )
    a = load_dataset("arrays", path=tmp_path / "nhwc.npz")
    b = load_dataset("arrays", path=tmp_path / "nchw.npz")
    assert a.input_shape == b.input_shape == (3, 6, 6) and torch.equal(a.train.x, b.train.x)
    assert b.class_names == ["a", "b", "c", "d"] and a.class_names == ["0", "1", "2", "3"]
    assert torch.equal(a.test.x, torch.from_numpy(images[:8].transpose(0, 3, 1, 2).copy()))


FACTORY = """
    import torch

    class Pairs(torch.utils.data.Dataset):
        def __init__(self, n):
            self.x = torch.rand(n, 1, 5, 5)
            self.y = torch.arange(n) % 3
        def __len__(self):
            return len(self.y)
        def __getitem__(self, i):
            return self.x[i], int(self.y[i])

    def splits():
        torch.manual_seed(0)
        return {"train": Pairs(30), "test": (torch.rand(6, 1, 5, 5), torch.arange(6) % 3),
                "class_names": ["red", "green", "blue"]}

    def broken():
        raise RuntimeError("no data today")
"""


def test_python_factory_returns_tensors_or_a_torch_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_data.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_dataset("python", factory="my_data:splits", val_fraction=0.2)
    assert data.input_shape == (1, 5, 5) and data.class_names == ["red", "green", "blue"]
    assert len(data.train) + len(data.val) == 30 and len(data.test) == 6


def expect_error(path: Path, field: str, words: str) -> None:
    with pytest.raises(StudyError) as info:
        check_data(load_study(path))
    assert info.value.field == field and words in info.value.message, str(info.value)


def test_bad_data_is_one_error_naming_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expect_error(study_file(tmp_path, {"dataset": "folder", "path": "nowhere"}), "data.path", "folder not found")
    expect_error(study_file(tmp_path, {"dataset": "folder"}), "data", "needs path")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    expect_error(study_file(tmp_path, {"dataset": "folder", "path": "empty"}), "data.path", "no class folders")
    (tmp_path / "empty" / "train" / "cat").mkdir()
    expect_error(study_file(tmp_path, {"dataset": "folder", "path": "empty"}), "data.path", "has no images")
    root = write_digits_folder(tmp_path / "d", size=8, limit=40)
    (root / "test" / "eleven").mkdir()
    expect_error(study_file(tmp_path, {"dataset": "folder", "path": "d"}), "data.path", "class 'eleven'")
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 5, 5)))
    expect_error(study_file(tmp_path, {"dataset": "arrays", "path": "a.npz"}), "data.path", "missing x_train")
    np.savez(tmp_path / "b.npz", x_train=np.zeros((4, 5)), y_train=np.zeros(4, int))
    expect_error(study_file(tmp_path, {"dataset": "arrays", "path": "b.npz"}), "data.path", "expected (N, H, W)")
    np.savez(tmp_path / "c.npz", x_train=np.zeros((4, 5, 5)), y_train=np.zeros(3, int))
    expect_error(study_file(tmp_path, {"dataset": "arrays", "path": "c.npz"}), "data.path", "one label per image")
    expect_error(
        study_file(tmp_path, {"dataset": "python", "factory": "no_such_module:f"}), "data.factory", "cannot import"
    )
    (tmp_path / "my_data.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    expect_error(
        study_file(tmp_path, {"dataset": "python", "factory": "my_data:broken"}), "data.factory", "no data today"
    )
    assert not (tmp_path / "runs").exists()  # nothing written


def test_cli_says_a_missing_folder_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study_file(tmp_path, {"dataset": "folder", "path": "nowhere"})
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"nas-kd: error: {path}: data.path: folder not found")
    assert os.listdir(tmp_path) == ["study.yaml"]
