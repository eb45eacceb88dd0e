"""ONNX export of a saved student, checked against the accuracy recorded when it was trained."""

from __future__ import annotations

from pathlib import Path

from nas_kd.arch.quant import export_onnx, onnx_accuracy
from nas_kd.checkpoint import load_student, read_model_info
from nas_kd.config import load_study
from nas_kd.data import load_dataset

TOLERANCE = 0.005  # onnxruntime and brevitas agree to ~1e-6 in logits; a rare tie may flip an argmax


class ExportMismatch(RuntimeError):
    """The exported model does not reproduce the recorded test accuracy."""


def check_onnx_export(model_dir: str | Path, study_path: str | Path) -> str:
    """Write ``model_dir/model.onnx`` (int8 QCDQ for a quantized student) and evaluate it on the study's test
    split with onnxruntime; raise ``ExportMismatch`` if it misses the recorded ``test_accuracy``."""
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    path = export_onnx(load_student(model_dir), tuple(info["input_shape"]), model_dir / "model.onnx")
    d = load_study(study_path).data
    test = load_dataset(d.dataset, d.data_dir, d.val_fraction, d.split_seed).test
    accuracy = onnx_accuracy(path, test.x, test.y)
    recorded = info.get("test_accuracy")
    line = f"{path}: onnxruntime test_accuracy {accuracy:.4f}"
    if recorded is None:
        return line + " (no recorded test accuracy to compare)"
    if abs(accuracy - recorded) > TOLERANCE:
        raise ExportMismatch(f"{line}, but {recorded:.4f} was recorded: the export does not reproduce the student")
    return line + f" (recorded {recorded:.4f})"
