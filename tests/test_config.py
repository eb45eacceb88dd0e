"""Malformed study files: one line naming file and field, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nas_kd.cli import main
from nas_kd.config import StudyError, load_study, study_from_dict
from nas_kd.testing.digits_folder import write_digits_folder

ROOT = Path(__file__).resolve().parents[1]
GOOD = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
GOOD["search"]["space"] = str(ROOT / "search_spaces" / "resnet.yaml")


def write(tmp_path: Path, patch: dict | None = None, text: str | None = None) -> Path:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["runs_dir"] = str(tmp_path / "runs")
    for dotted, value in (patch or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[leaf]
        else:
            node[leaf] = value
    path = tmp_path / "study.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data))
    return path


CASES = [
    ({"train.epochs": 0}, "train.epochs", "greater than or equal to 1"),
    ({"train.epochs": "ten"}, "train.epochs", "valid integer"),
    ({"train.optimiser": "sgd"}, "train.optimiser", "unknown field"),
    ({"data.dataset": "imagenet"}, "data.dataset", "unknown dataset"),
    ({"name": KeyError}, "name", "required"),
    ({"search.objectives": ["params"]}, "search.objectives", "first objective"),
    ({"search.objectives": ["val_accuracy", "speed"]}, "search.objectives", "one or two"),
    ({"search.sampler": "grid"}, "search.sampler", "tpe"),
    ({"search.space": "nowhere.yaml"}, "search.space", "file not found"),
    ({"distiller": "magic"}, "distiller.name", "unknown distiller"),
    ({"distiller": {"name": "offline", "temperature": -1}}, "distiller.temperature", "greater than 0"),
    ({"distiller": {"name": "offline", "temprature": 2}}, "distiller.temprature", "unknown setting"),
    ({"distiller": {"name": "offline", "alpha": {"low": 0.5, "high": 2.0}}}, "distiller.alpha", "less than or equal"),
    ({"teacher.arch_file": "missing.json"}, "teacher", "exactly one"),
    ({"resources.gpu": -1}, "resources.gpu", "greater than or equal to 0"),
    ({"data.augment": True, "teacher.cache_features": True}, "teacher.cache_features", "augmented batches"),
]


@pytest.mark.parametrize(("patch", "field", "message"), CASES)
def test_invalid_study_names_file_and_field(tmp_path: Path, patch: dict, field: str, message: str) -> None:
    path = write(tmp_path, patch)
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert info.value.field == field
    assert message in info.value.message
    assert str(path) in str(info.value)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, text="name: [unclosed\n")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study(path)


@pytest.mark.parametrize("command", ["validate", "train", "search"])
def test_cli_prints_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = write(tmp_path, {"train.lr": 0})
    assert main([command, str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"nas-kd: error: {path}: train.lr: Input should be greater than 0"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # a fresh interpreter: seconds
def test_the_real_process_prints_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, {"train.lr": 0})
    result = subprocess.run(
        [sys.executable, "-m", "nas_kd.cli", "search", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"nas-kd: error: {path}: train.lr: Input should be greater than 0"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # decodes Fashion-MNIST and a folder of PNGs
def test_shipped_studies_validate_where_their_data_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """validate loads the data: the shipped studies pass where their data is (own_data: the digits folder
    `make digits-folder` writes); cifar100's data is not shipped, and validate says where to get it."""
    folder = write_digits_folder(tmp_path / "digits_folder", size=16, limit=200)
    given = {"own_data": ["--set", f"data.path={folder}", "--set", f"runs_dir={tmp_path / 'runs'}"]}
    for study in sorted((ROOT / "studies").glob("*.yaml")):
        if study.stem == "cifar100":
            assert main(["validate", str(study), "--set", f"data.data_dir={tmp_path / 'none'}"]) == 2
            assert "dataset cifar100 not found" in capsys.readouterr().err
            continue
        assert main(["validate", str(study), *given.get(study.stem, [])]) == 0, capsys.readouterr().err
    assert "ok" in capsys.readouterr().out


def test_overrides_and_resolved_study_inlines_files(tmp_path: Path) -> None:
    arch_file = tmp_path / "teacher.json"
    arch_file.write_text('{"family": "cnn", "stem": 8, "stages": [{"channels": 8, "depth": 1}]}')
    path = write(tmp_path, {"teacher": {"arch_file": "teacher.json"}})
    study = load_study(path, {"train.epochs": 3})
    assert study.train.epochs == 3
    resolved = study.resolved()
    assert resolved["teacher"]["arch"]["family"] == "cnn"
    assert resolved["search"]["space"]["family"] == "resnet"


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_resolved_shipped_study_loads_back(path: Path, tmp_path: Path) -> None:
    """Trials and resumed runs rebuild the study from its resolved form (files inlined); a study naming
    several space files (fashion_mnist) failed every trial before a list of inlined spaces was valid."""
    (tmp_path / "train").mkdir()  # own_data's folder must exist; its contents are read later
    study = load_study(path, {"data.path": str(tmp_path)} if path.stem == "own_data" else {})
    again = study_from_dict(study.resolved())
    assert again.resolved() == study.resolved()
    assert isinstance(again.search.space, dict if isinstance(study.search.space, str) else list)


def test_a_list_may_mix_space_files_and_inline_spaces(tmp_path: Path) -> None:
    inline = yaml.safe_load((ROOT / "search_spaces" / "cnn.yaml").read_text())
    study = load_study(write(tmp_path, {"search": {"space": [str(ROOT / "search_spaces" / "resnet.yaml"), inline]}}))
    assert [space["family"] for space in study.resolved()["search"]["space"]] == ["resnet", "cnn"]
