"""Teachers the user brings: torchvision / Python models with weights, saved folders; feature nodes; their
own input view; evaluated once and never trained; what goes wrong with each."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from safetensors.torch import load_file, save_file

from nas_kd.arch.external import ModelSourceError, TeacherNet, WeightsError, load_weights, read_state_dict
from nas_kd.cli import main
from nas_kd.config import StudyError, load_study
from nas_kd.pipeline import check_data
from nas_kd.preflight import check_study
from nas_kd.teachers import check_teachers, prepare_teachers
from nas_kd.testing.digits_folder import write_digits_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("images") / "digits", size=12, limit=200)


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A torchvision resnet18 (10 classes) saved as safetensors and as a wrapped DataParallel .pth checkpoint."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    root = tmp_path_factory.mktemp("weights")
    save_file(model.state_dict(), root / "resnet18.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, root / "r.pth")
    return {"safetensors": root / "resnet18.safetensors", "pth": root / "r.pth"}


@pytest.mark.slow
def test_weights_load_without_pickle_from_both_formats(resnet_weights: dict[str, Path], tmp_path: Path) -> None:
    reference = load_file(resnet_weights["safetensors"])
    for path in resnet_weights.values():
        model = torchvision.models.resnet18(num_classes=10)
        load_weights(model, path, 10)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())
    with pytest.raises(WeightsError, match=r"fc.weight \[10, 512\] in the file vs \[7, 512\].*10 output classes"):
        load_weights(torchvision.models.resnet18(num_classes=7), resnet_weights["safetensors"], 7)
    with pytest.raises(WeightsError, match=r"missing \(features.0.0.weight"):
        load_weights(torchvision.models.mobilenet_v3_small(num_classes=10), resnet_weights["pth"])
    torch.save({"weights": torchvision.models.resnet18()}, tmp_path / "pickled.pth")  # a whole module: pickle
    with pytest.raises(WeightsError, match="without pickle"):
        read_state_dict(tmp_path / "pickled.pth")


@pytest.mark.parametrize(
    ("name", "nodes"),
    [
        ("resnet18", ["layer1", "layer2", "layer3", "layer4"]),
        ("mobilenet_v3_small", ["features.1", "features.3", "features.8", "features.12"]),
        ("efficientnet_b0", ["features.2", "features.3", "features.5", "features.8"]),
    ],
)
def test_default_stage_features_of_torchvision_families(name: str, nodes: list[str]) -> None:
    teacher = TeacherNet(torchvision.models.get_model(name, num_classes=5), (3, 32, 32))
    assert teacher.feature_nodes == nodes
    logits, features, embedding = teacher.forward_features(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5) and [f.shape[1] for f in features] == teacher.stage_channels
    assert [f.shape[2] for f in features] == [8, 4, 2, 1] and embedding.shape == (2, teacher.stage_channels[-1])
    teacher.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(teacher.forward_features(x)[0], teacher(x))  # one network, two ways in


def test_unknown_feature_node_lists_the_model_nodes() -> None:
    with pytest.raises(ModelSourceError, match=r"'layer9' is not in the model.*layer4\.1, avgpool"):
        TeacherNet(torchvision.models.resnet18(num_classes=10), (3, 32, 32), ["layer9"])


def test_teacher_view_undoes_the_data_normalisation_then_applies_its_own() -> None:
    view = {"image_size": [20, 20], "channels": 3, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4],
            "data_mean": [0.3], "data_std": [0.25]}  # fmt: skip
    teacher = TeacherNet(torchvision.models.resnet18(num_classes=3), (1, 10, 10), None, view)
    pixels = torch.rand(2, 1, 10, 10)
    seen = teacher.prepare((pixels - 0.3) / 0.25)
    resized = torch.nn.functional.interpolate(pixels, size=(20, 20), mode="bilinear", align_corners=False)
    expected = (resized.expand(-1, 3, -1, -1) - torch.tensor([0.4, 0.5, 0.6])[None, :, None, None]) / torch.tensor(
        [0.2, 0.3, 0.4]
    )[None, :, None, None]
    assert seen.shape == (2, 3, 20, 20) and torch.allclose(seen, expected, atol=1e-5)


def write_study(tmp_path: Path, folder: Path, teacher: dict, **extra: object) -> Path:
    study = {
        "name": "own",
        "runs_dir": str(tmp_path / "runs"),
        "data": {"dataset": "folder", "path": str(folder)},
        "train": {"epochs": 1, "batch_size": 32},
        "teacher": teacher,
        "student": {"arch": {"family": "cnn", "stem": 8, "stages": [{"channels": 8, "depth": 1}, {"channels": 16, "depth": 1}]}},
        "distiller": {"name": "offline", "feature": "at", "feature_weight": 0.1},
        "search": {"space": str(Path(__file__).parents[1] / "search_spaces" / "cnn.yaml"), "trials": 2},
        **extra,
    }  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.slow
def test_weights_teacher_is_evaluated_once_and_never_trained(
    folder: Path, resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    teacher = {"torchvision": "resnet18", "weights": str(resnet_weights["pth"]), "input": {"image_size": [16, 16]}}
    study = load_study(write_study(tmp_path, folder, teacher))
    data = check_data(study)
    logs: list[str] = []
    cached = prepare_teachers(study, data, logs.append)[0]
    assert any("evaluating (not training) teacher" in line for line in logs)
    assert not any(line.startswith("training") or "epoch" in line for line in logs)
    assert cached.info["pretrained"] is True and cached.info["epochs"] == 0
    assert cached.info["class_names"] == data.class_names and cached.info["input_shape"] == [3, 12, 12]
    stored = load_file(cached.path / "model.safetensors")
    reference = load_file(resnet_weights["safetensors"])
    assert all(torch.equal(stored[f"model.{k}"], v) for k, v in reference.items())  # the file's weights, as given
    # the cached logits are the teacher's on its own 16x16 view of the stored 12x12 images
    model = torchvision.models.resnet18(num_classes=10)
    load_weights(model, resnet_weights["safetensors"])
    view = torch.nn.functional.interpolate(data.train.batch(torch.arange(4)), size=(16, 16), mode="bilinear")
    assert torch.allclose(cached.train_logits("cpu")[:4].float(), model.eval()(view), atol=2e-2)
    again = prepare_teachers(study, data, logs.append)[0]
    assert again.path == cached.path and "loaded from cache" in logs[-1]
    # other weights (same architecture) are another teacher
    other = torchvision.models.resnet18(num_classes=10)
    save_file(other.state_dict(), tmp_path / "other.safetensors")
    teacher["weights"] = str(tmp_path / "other.safetensors")
    changed = load_study(write_study(tmp_path, folder, teacher))
    assert prepare_teachers(changed, data, logs.append)[0].path != cached.path


def expect_teacher_error(tmp_path: Path, folder: Path, teacher: dict, field: str, words: str) -> None:
    with pytest.raises(StudyError) as info:
        study = load_study(write_study(tmp_path, folder, teacher))
        check_teachers(study, check_data(study))
    assert info.value.field == field and words in info.value.message, str(info.value)


FACTORY = """
    import torch
    from torch import nn

    def tiny(num_classes):
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def three_classes(num_classes):
        return tiny(3)

    def fails(num_classes):
        raise ValueError("bad factory")
"""


@pytest.mark.slow
def test_bad_teachers_are_one_error_naming_the_field(
    folder: Path, resnet_weights: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    save_file(torchvision.models.resnet18(num_classes=7).state_dict(), tmp_path / "seven.safetensors")
    weights = str(resnet_weights["safetensors"])
    expect_teacher_error(
        tmp_path, folder, {"torchvision": "resnet18", "weights": "nope.pt"}, "teacher.weights", "file not found"
    )
    expect_teacher_error(tmp_path, folder, {"torchvision": "resnet18", "weights": str(tmp_path / "seven.safetensors")},
                         "teacher.weights", "the weights have 7 output classes, the data 10")  # fmt: skip
    expect_teacher_error(tmp_path, folder, {"torchvision": "mobilenet_v3_small", "weights": weights},
                         "teacher.weights", "does not match the model")  # fmt: skip
    expect_teacher_error(tmp_path, folder, {"torchvision": "resnet18", "weights": weights, "feature_nodes": ["layer9"]},
                         "teacher.feature_nodes", "its nodes include")  # fmt: skip
    expect_teacher_error(
        tmp_path, folder, {"torchvision": "resnet_99", "weights": weights}, "teacher.torchvision", "unknown"
    )
    expect_teacher_error(
        tmp_path, folder, {"python": "missing_module:f", "weights": weights}, "teacher.python", "cannot import"
    )
    expect_teacher_error(tmp_path, folder, {"model_dir": str(tmp_path)}, "teacher.model_dir", "no saved model")
    (tmp_path / "my_models.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    save_file(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.safetensors")
    expect_teacher_error(tmp_path, folder, {"python": "my_models:fails"}, "teacher.python", "bad factory")
    expect_teacher_error(
        tmp_path, folder, {"python": "my_models:three_classes"}, "teacher.python", "outputs [3] classes"
    )
    assert not (tmp_path / "runs" / "_cache" / "models").exists()  # no teacher written (the decoded data is cached)


def test_own_module_teacher_gets_feature_nodes_by_default(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_models.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    from my_models import tiny  # type: ignore[import-not-found]

    save_file(tiny(10).state_dict(), tmp_path / "tiny.safetensors")
    study = load_study(
        write_study(tmp_path, folder, {"python": "my_models:tiny", "weights": str(tmp_path / "tiny.safetensors")})
    )
    (model,) = check_teachers(study, check_data(study))
    assert model.feature_nodes == ["1", "3"] and model.stage_channels == [4, 8]


def test_validate_refuses_a_data_free_study_whose_teacher_has_no_batch_norm(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_models.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    from my_models import tiny  # type: ignore[import-not-found]

    save_file(tiny(10).state_dict(), tmp_path / "tiny.safetensors")
    teacher = {"python": "my_models:tiny", "weights": str(tmp_path / "tiny.safetensors")}
    study = load_study(write_study(tmp_path, folder, teacher, distiller="data_free"))
    with pytest.raises(StudyError) as info:
        check_study(study, check_data(study))
    assert info.value.field == "teacher" and "no batch-norm layers" in info.value.message


@pytest.mark.slow
def test_cli_train_distils_features_from_a_cross_resolution_torchvision_teacher(
    folder: Path, resnet_weights: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = {
        "torchvision": "resnet18",
        "weights": str(resnet_weights["safetensors"]),
        "input": {"image_size": [24, 24], "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }
    path = write_study(tmp_path, folder, teacher)
    assert main(["train", str(path), "--save", str(tmp_path / "student")]) == 0
    out = capsys.readouterr().out
    assert "evaluating (not training) teacher" in out and "training teacher" not in out
    assert re.search(r"epoch 1/1 ce [\d.]+ kd [\d.]+ at [\d.]+", out), out  # the attention-transfer term trained
    info = json.loads((tmp_path / "student" / "model.json").read_text())
    assert info["class_names"] == sorted(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    assert info["input_shape"] == [3, 12, 12] and len(info["mean"]) == len(info["std"]) == 3
    assert main(["train", str(path)]) == 0
    assert "loaded from cache" in capsys.readouterr().out


@pytest.mark.slow
def test_search_with_a_folder_dataset_and_a_weights_teacher(
    folder: Path, resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    from nas_kd.search.runner import run_study

    teacher = {"torchvision": "resnet18", "weights": str(resnet_weights["safetensors"])}
    path = write_study(tmp_path, folder, teacher, distiller={"name": "offline", "temperature": 4})
    logs: list[str] = []
    result = run_study(path, cpus=2, dashboard=False, log=logs.append, overrides={"search.max_concurrent": 2})
    assert not any(line.startswith("training teacher") for line in logs)
    (teacher_row,) = json.loads((result.run_dir / "teachers.json").read_text())
    assert teacher_row["arch_summary"] == "torchvision resnet18" and teacher_row["val_accuracy"] is not None
    assert len(result.trials) == 2 and (result.trials["val_accuracy"] > 0).all()


@pytest.mark.slow
def test_timm_teacher_with_weights(folder: Path, tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    save_file(model.state_dict(), tmp_path / "r10t.safetensors")
    teacher = {"timm": "resnet10t", "weights": str(tmp_path / "r10t.safetensors"), "input": {"image_size": [32, 32]}}
    study = load_study(write_study(tmp_path, folder, teacher))
    data = check_data(study)
    (built,) = check_teachers(study, data)
    assert built.feature_nodes == ["layer1", "layer2", "layer3", "layer4"] and len(built.stage_channels) == 4
    x = data.val.batch(torch.arange(3))
    view = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(built(x), model.eval()(view), atol=1e-4)  # the file's weights, on the teacher's view


def test_untrained_torchvision_teacher_of_another_family_is_built_as_torchvision_builds_it() -> None:
    from nas_kd.arch import build_model

    model = build_model({"torchvision": "mobilenet_v3_small"}, (1, 16, 16), 4)
    logits, features, _ = model.forward_features(torch.randn(2, 1, 16, 16))  # grey repeated to RGB
    assert logits.shape == (2, 4) and len(features) == len(model.stage_channels) == 4
    assert isinstance(model.model, torchvision.models.MobileNetV3)
