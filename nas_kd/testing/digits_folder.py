"""scikit-learn's digits written as an image folder (train/ val/ test/, one folder per class), upscaled and
coloured: the layout a user's own images come in, made from data every install has."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_digits_folder(
    root: str | Path, size: int = 32, limit: int | None = None, test: bool = True, seed: int = 0
) -> Path:
    """Write ``root/{train,val,test}/<class name>/<n>.png`` (RGB, ``size`` x ``size``): 70% / 15% / 15% of the
    1,797 digits (``limit`` keeps the first ones), each drawn in a random dark colour on a random light background."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    bunch = load_digits()
    images, labels = bunch.images, bunch.target
    if limit:
        images, labels = images[:limit], labels[:limit]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    n_train, n_val = int(0.7 * len(order)), int(0.15 * len(order))
    for rank, i in enumerate(order):
        split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
        if split == "test" and not test:
            continue
        ink, paper = rng.integers(0, 110, 3), rng.integers(150, 256, 3)  # any hue, dark ink on light paper
        alpha = (images[i] / 16.0)[..., None]
        rgb = (alpha * ink + (1 - alpha) * paper).astype(np.uint8)
        folder = root / split / CLASS_NAMES[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR).save(folder / f"{i}.png")
    return root
