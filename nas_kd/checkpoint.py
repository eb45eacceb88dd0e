"""Model files without pickle: weights in safetensors, architecture and metadata in JSON.

A saved model is a folder with ``model.safetensors`` and ``model.json`` (arch, input shape, classes,
metrics). Writes go to a temporary folder renamed into place, so a reader never sees half a model.
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


def load_student(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Load a saved student (or teacher) folder into an eval-mode module; no pickle involved."""
    info = read_model_info(path)
    model = build_model(info["arch"], tuple(info["input_shape"]), info["num_classes"])
    load_model(model, str(Path(path) / "model.safetensors"), device=str(device))
    return model.to(device).eval()
