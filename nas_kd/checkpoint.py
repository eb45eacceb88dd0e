"""Model files without pickle: weights in safetensors, architecture and metadata in JSON.

A saved model is a folder with ``model.safetensors`` and ``model.json`` (arch, input shape, classes,
metrics, and, for models saved since nas-kd records them, the normalisation ``mean``/``std`` and the
``class_names``). Writes go to a temporary folder renamed into place, so a reader never sees half a model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from nas_kd.arch import build_model


def save_model_dir(
    path: str | Path,
    model: nn.Module,
    arch: dict[str, Any],
    input_shape: tuple[int, int, int],
    num_classes: int,
    meta: dict[str, Any] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write the folder atomically; ``arrays`` are saved beside the weights as ``<name>.npy``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        info = {"arch": arch, "input_shape": list(input_shape), "num_classes": num_classes, **(meta or {})}
        for name, array in (arrays or {}).items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "model.json").write_text(json.dumps(info, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_model_info(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "model.json").read_text())


class PreprocessingUnknown(ValueError):
    """The saved model does not record the normalisation it was trained with."""


class Preprocess(nn.Module):
    """Raw images -> the student's input.

    Takes a batch ``(N, C, H, W)`` in the model's input shape, either uint8 (0..255) or float (0..1), and
    returns ``(x - mean) / std`` per channel, with ``mean``/``std`` on the 0..1 scale (the training split's
    statistics recorded in model.json). It does not resize or convert channels: give images of the model's size.
    """

    def __init__(self, mean: list[float], std: list[float], input_shape: tuple[int, int, int]):
        super().__init__()
        if not len(mean) == len(std) == input_shape[0]:
            raise ValueError(f"mean/std need one value per channel ({input_shape[0]}), got {len(mean)}/{len(std)}")
        self.input_shape = tuple(input_shape)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.input_shape or images.dim() != 4:
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, self.input_shape))}), got "
                             f"{tuple(images.shape)}")  # fmt: skip
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        return (x - self.mean) / self.std


def preprocess_of(path: str | Path) -> Preprocess:
    """The preprocessing a saved model was trained with; PreprocessingUnknown for models saved without it."""
    info = read_model_info(path)
    if info.get("mean") is None or info.get("std") is None:
        raise PreprocessingUnknown(
            f"{Path(path) / 'model.json'}: no mean/std recorded (saved before nas-kd recorded its normalisation); "
            "normalise inputs as the study's dataset did and load with preprocess=False"
        )
    return Preprocess(info["mean"], info["std"], tuple(info["input_shape"]))


def class_names(path: str | Path) -> list[str] | None:
    """The class names a saved model predicts, in logit order; None when the data had none recorded."""
    return read_model_info(path).get("class_names")


def input_description(info: dict[str, Any]) -> str:
    """What a saved model expects as input, in words (for export messages)."""
    shape = ", ".join(map(str, info["input_shape"]))
    if info.get("mean") is None or info.get("std") is None:
        return f"float32 (N, {shape}), normalisation unknown (model saved before nas-kd recorded it)"
    return f"float32 (N, {shape}) = (pixels/255 - mean) / std, mean {info['mean']}, std {info['std']}"


def load_student(path: str | Path, device: torch.device | str = "cpu", preprocess: bool = False) -> nn.Module:
    """Load a saved student (or teacher) folder into an eval-mode module; no pickle involved.

    ``preprocess=True`` returns ``nn.Sequential(Preprocess, student)``, which takes raw images (see
    ``Preprocess``); it raises PreprocessingUnknown when the model does not record its normalisation.
    """
    info = read_model_info(path)
    model = build_model(info["arch"], tuple(info["input_shape"]), info["num_classes"])
    load_model(model, str(Path(path) / "model.safetensors"), device=str(device))
    if preprocess:
        model = nn.Sequential(preprocess_of(path), model)
    return model.to(device).eval()
