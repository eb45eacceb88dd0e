"""Deployment: `nas-kd export` (copy, TorchScript, ONNX checked by onnxruntime) and load_student's preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nas_kd import build_model, class_names, load_student
from nas_kd.checkpoint import PreprocessingUnknown, save_model_dir
from nas_kd.cli import main
from nas_kd.deploy import onnx_max_abs_diff

INPUT_SHAPE = (3, 12, 12)
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.1]
CLASSES = [f"class_{i}" for i in range(5)]
ARCHS = {
    "cnn": {"family": "cnn", "stem": 8, "stages": [{"channels": 8, "depth": 1}, {"channels": 16, "depth": 2}]},
    "resnet": {"family": "resnet", "stem": 8, "stages": [{"channels": 8, "depth": 1}, {"channels": 16, "depth": 1}]},
    "mobilenet": {
        "family": "mobilenet",
        "stem": 8,
        "stages": [
            {"channels": 8, "depth": 1, "expand": 2, "kernel": 3, "se": True},
            {"channels": 16, "depth": 2, "expand": 4, "kernel": 5, "se": False},
        ],
    },
}


def saved_student(run_dir: Path, trial_id: str, family: str, preprocessing: bool = True, seed: int = 0) -> Path:
    """A run directory's saved student, as the search writes it (with BatchNorm statistics that matter)."""
    torch.manual_seed(seed)
    model = build_model(ARCHS[family], INPUT_SHAPE, len(CLASSES))
    model.train()
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BatchNorm is exercised
        model(torch.randn(16, *INPUT_SHAPE) * 2 + 1)
    meta = {"mean": MEAN, "std": STD, "class_names": CLASSES} if preprocessing else {}
    return save_model_dir(run_dir / "students" / trial_id, model.eval(), ARCHS[family], INPUT_SHAPE, 5, meta)


@pytest.mark.slow
def test_onnx_export_of_every_family_matches_pytorch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime

    run_dir = tmp_path / "run"
    images = torch.randn(3, *INPUT_SHAPE)
    for family in ARCHS:
        saved_student(run_dir, family, family)
        out = tmp_path / f"export-{family}"
        assert main(["export", str(run_dir), family, "--out", str(out), "--onnx"]) == 0, family
        printed = capsys.readouterr().out
        assert "onnxruntime vs PyTorch max abs diff" in printed and "output 'logits'" in printed
        assert f"mean {MEAN}, std {STD}" in printed
        assert json.loads((out / "model.json").read_text())["class_names"] == CLASSES  # model.json travels along

        session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images"]
        (got,) = session.run(None, {"images": images.numpy()})  # a batch size other than the exported one
        with torch.no_grad():
            expected = load_student(out)(images).numpy()
        assert got.shape == (3, 5) and np.abs(got - expected).max() < 1e-4, family
        metadata = session.get_modelmeta().custom_metadata_map
        assert json.loads(metadata["mean"]) == MEAN and json.loads(metadata["class_names"]) == CLASSES

        # The check can fail: the same ONNX file against a student with other weights disagrees.
        other = load_student(saved_student(tmp_path / "other", family, family, seed=1))
        diff, tolerance = onnx_max_abs_diff(out / "model.onnx", other, images)
        assert diff > tolerance, family


def test_load_student_with_preprocessing_takes_raw_images(tmp_path: Path) -> None:
    path = saved_student(tmp_path, "t1", "cnn")
    student, pipeline = load_student(path), load_student(path, preprocess=True)
    assert class_names(path) == CLASSES
    pixels = torch.randint(0, 256, (4, *INPUT_SHAPE), dtype=torch.uint8)
    normalised = (pixels.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = student(normalised)
        assert torch.allclose(pipeline(pixels), expected, atol=1e-5)  # uint8 0..255
        assert torch.allclose(pipeline(pixels.float() / 255), expected, atol=1e-5)  # float 0..1
        assert not torch.allclose(student(pixels.float() / 255), expected, atol=1e-3)  # preprocessing matters
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, 12, 12\)"):
        pipeline(torch.zeros(4, 1, 12, 12))


def test_a_model_saved_without_normalisation_loads_and_says_preprocessing_is_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = saved_student(tmp_path / "run", "old", "resnet", preprocessing=False)
    assert load_student(path)(torch.zeros(1, *INPUT_SHAPE)).shape == (1, 5)
    assert class_names(path) is None
    with pytest.raises(PreprocessingUnknown, match="no mean/std recorded"):
        load_student(path, preprocess=True)
    assert main(["export", str(tmp_path / "run"), "old", "--out", str(tmp_path / "out")]) == 0
    assert "normalisation unknown" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.json", "model.safetensors"]


def test_export_errors_are_one_line_exit_2_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    saved_student(run_dir, "t1", "cnn")
    assert main(["export", str(run_dir), "nope", "--out", str(tmp_path / "a"), "--onnx"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"nas-kd: error: {run_dir}: no saved student for trial nope (only Pareto members are saved)"
    )
    taken = tmp_path / "taken"
    taken.mkdir()
    assert main(["export", str(run_dir), "t1", "--out", str(taken), "--onnx"]) == 2
    assert capsys.readouterr().err.strip() == f"nas-kd: error: {taken}: --out: already exists; choose another folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "taken"] and not list(taken.iterdir())
