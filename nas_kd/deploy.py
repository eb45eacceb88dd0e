"""Deployment export: a saved student folder -> an export folder with TorchScript and/or ONNX beside it.

The export folder is a copy of the saved student (``model.safetensors``, ``model.json`` with input shape,
normalisation and class names) plus ``model.torchscript.pt`` and ``model.onnx`` when asked. The ONNX file
comes from the dynamo exporter with a dynamic batch dimension and is checked with onnxruntime against the
PyTorch output before the folder appears; it is built in a temporary folder, so a failure writes nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas_kd.checkpoint import input_description, load_student, read_model_info

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
# Largest ONNX-vs-PyTorch logit difference accepted, relative to the logits' scale (max(1, max |logit|)).
ONNX_TOLERANCE = 1e-4
CHECK_BATCH = 8


class ExportError(ValueError):
    """A user-facing export failure (one line)."""


@dataclass
class ExportResult:
    out: Path
    input: str
    onnx_max_abs_diff: float | None = None
    onnx_tolerance: float | None = None


def _family(arch: dict[str, Any]) -> str:
    return str(arch.get("family") or f"torchvision {arch.get('torchvision')}")


def export_onnx(model: nn.Module, info: dict[str, Any], path: Path) -> None:
    """Write ``model`` as ONNX with the dynamo exporter: input ``images`` (N, C, H, W), output ``logits``.

    model.json's preprocessing fields are copied into the ONNX metadata, so an ONNX-only user can read them
    (onnxruntime: ``session.get_modelmeta().custom_metadata_map``).
    """
    if "quant" in info["arch"]:  # brevitas' QCDQ export: int8 weights with their scales (arch/quant.py)
        from nas_kd.arch.quant import export_onnx as export_quantized  # brevitas: imported only when needed

        export_quantized(model, tuple(info["input_shape"]), path)
        return
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency; checked here for a clear message)
    except ImportError:
        raise ExportError("--onnx needs onnx, onnxscript and onnxruntime: pip install 'nas-kd[onnx]'") from None
    example = torch.zeros(2, *info["input_shape"])
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's internal deprecation notes are not the user's business
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
    except Exception as error:
        first_line = next(iter(str(error).splitlines()), "")
        raise ExportError(
            f"--onnx: the dynamo exporter failed for family {_family(info['arch'])} "
            f"({type(error).__name__}: {first_line}); --torchscript still works"
        ) from None
    for key in ("input_shape", "mean", "std", "class_names", "num_classes"):
        if info.get(key) is not None:
            program.model.metadata_props[key] = json.dumps(info[key])
    program.save(str(path))


def onnx_max_abs_diff(path: Path, model: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Run ``images`` through the ONNX file (onnxruntime, CPU) and ``model``: (max abs diff, tolerance)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        expected = model(images).numpy()
    tolerance = ONNX_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    return float(np.abs(got - expected).max()), tolerance


def export_student(source: Path, out: Path, torchscript: bool = False, onnx: bool = False) -> ExportResult:
    """Copy the saved student at ``source`` to ``out`` and write the asked formats; all or nothing."""
    if out.exists():
        raise ExportError("--out: already exists; choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        folder = tmp / "model"
        shutil.copytree(source, folder)
        info = read_model_info(folder)
        model = load_student(folder)
        result = ExportResult(out, input=input_description(info))
        if torchscript:
            traced = torch.jit.trace(model, torch.zeros(1, *info["input_shape"]))
            traced.save(str(folder / TORCHSCRIPT_FILE))
        if onnx:
            export_onnx(model, info, folder / ONNX_FILE)
            images = torch.randn(CHECK_BATCH, *info["input_shape"], generator=torch.Generator().manual_seed(0))
            diff, tolerance = onnx_max_abs_diff(folder / ONNX_FILE, model, images)
            if not diff <= tolerance:  # also catches NaN
                raise ExportError(
                    f"--onnx: onnxruntime and PyTorch disagree for family {_family(info['arch'])}: "
                    f"max abs diff {diff:.3g} > tolerance {tolerance:.3g}"
                )
            result.onnx_max_abs_diff, result.onnx_tolerance = diff, tolerance
        os.replace(folder, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
