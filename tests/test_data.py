from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nas_kd.data import DEBIAN_FASHION_MNIST, DatasetNotFound, augment, batches, load_dataset, stratified_split


def test_stratified_split_is_seeded_and_keeps_class_balance() -> None:
    y = np.repeat(np.arange(5), 40)
    kept, held = stratified_split(y, 0.25, seed=3)
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == len(y)
    assert np.bincount(y[held]).tolist() == [10] * 5
    assert np.array_equal(held, stratified_split(y, 0.25, seed=3)[1])
    assert not np.array_equal(held, stratified_split(y, 0.25, seed=4)[1])


def test_digits_splits_are_uint8_and_batches_are_normalised(digits) -> None:
    assert digits.train.x.shape[1:] == (1, 8, 8)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert digits.train.x.dtype == torch.uint8 and digits.train.y.dtype == torch.int64  # 4x less than float32
    whole = digits.train.batch(torch.arange(len(digits.train)))
    assert whole.dtype == torch.float32 and whole.shape == digits.train.x.shape
    assert abs(float(whole.mean())) < 1e-3 and abs(float(whole.std()) - 1) < 0.05
    # validation and test use the training statistics: not themselves exactly centred
    assert torch.equal(digits.val.mean, digits.train.mean) and torch.equal(digits.test.std, digits.train.std)
    rows = {tuple(r) for r in digits.val.x.flatten(1).tolist()}
    assert len(rows) > 0.9 * len(digits.val)
    pre = digits.preprocessing()
    assert pre["input_shape"] == [1, 8, 8] and pre["class_names"] == [str(i) for i in range(10)]
    raw = digits.train.x[:4].float() / 255
    expected = (raw - torch.tensor(pre["mean"])[None, :, None, None]) / torch.tensor(pre["std"])[None, :, None, None]
    assert torch.allclose(digits.train.batch(torch.arange(4)), expected, atol=1e-4)


def test_augment_is_batched_seeded_and_shape_preserving() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    a = augment(x, 1, True, torch.Generator().manual_seed(0))
    b = augment(x, 1, True, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    shifted = augment(x.repeat(64, 1, 1, 1), 1, False, torch.Generator().manual_seed(1))
    assert not torch.equal(shifted, x.repeat(64, 1, 1, 1))  # some crops moved the image


def test_batches_cover_every_index_once() -> None:
    seen = torch.cat(list(batches(103, 10, torch.Generator().manual_seed(0))))
    assert sorted(seen.tolist()) == list(range(103))
    assert torch.equal(torch.cat(list(batches(5, 2, None))), torch.arange(5))


def test_missing_dataset_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound) as info:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert "mnist" in message and str(tmp_path) in message and "data_dir" in message


def test_a_missing_dataset_is_never_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    def download(self: object) -> None:
        raise AssertionError("a dataset was downloaded at run time")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", download)
    with pytest.raises(DatasetNotFound, match="downloads nothing"):
        load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.exists(), reason="apt-get install dataset-fashion-mnist (CI does)")
def test_fashion_mnist_from_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nas_kd.data.DEFAULT_DATA_DIR", tmp_path)
    data = load_dataset("fashion_mnist", val_fraction=0.1)
    assert data.train.x.shape[1:] == (1, 28, 28)
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert torch.bincount(data.val.y).tolist() == [600] * 10
