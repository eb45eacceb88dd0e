"""`nas-kd validate` proves a study can start: what would fail after Ray started fails before, as one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nas_kd.config import StudyError, load_study
from nas_kd.pipeline import check_data
from nas_kd.preflight import check_study
from tests.test_config import ROOT, write

TEACHER = {"family": "resnet", "stem": 8, "stages": [{"channels": 8, "depth": 1}]}

CASES = [
    ({"teacher.arch": {**TEACHER, "family": "vgg"}}, "teacher.arch", "unknown family 'vgg'"),
    ({"teacher.arch": {**TEACHER, "stages": []}}, "teacher.arch", "cannot build"),
    ({"teacher.arch": {**TEACHER, "stages": [{"channels": -4, "depth": 1}]}}, "teacher.arch", "cannot build"),
    ({"student.arch": {"family": "cnn"}}, "student.arch", "missing key 'stages'"),
    ({"search.constraints": {"max_params": 50}}, "search.constraints.max_params", "none of 32 students"),
    ({"teacher": None, "teachers": []}, "teacher", "needs a teacher"),
]


@pytest.mark.parametrize(("patch", "field", "message"), CASES)
def test_a_study_that_cannot_start_fails_validation(tmp_path: Path, patch: dict, field: str, message: str) -> None:
    study = load_study(write(tmp_path, patch))  # the schema accepts it ...
    with pytest.raises(StudyError) as info:
        check_study(study, check_data(study))  # ... the preflight does not
    assert (info.value.field, str(tmp_path / "study.yaml")) == (field, info.value.file)
    assert message in info.value.message


def test_a_teacher_whose_last_stage_is_one_pixel_passes_validation(tmp_path: Path) -> None:
    """Four stride-2 stages bring digits' 8x8 images to 1x1: batches of 64 train on that, so the meta forward
    of one image must not trip training-mode batch norm."""
    stages = [{"channels": c, "depth": 1} for c in (16, 16, 32, 64)]
    study = load_study(write(tmp_path, {"teacher.arch": {**TEACHER, "stages": stages}}))
    check_study(study, check_data(study))


@pytest.mark.parametrize(
    ("patch", "field", "message"),
    [
        ({"train.epochs": 20_000}, "train.epochs", "less than or equal to 10000"),
        ({"train.epochs": 1e30}, "train.epochs", "exceeded maximum size"),
        ({"search.constraints": {"max_params": -5}}, "search.constraints.max_params", "greater than 0"),
        ({"search.trials": 10**9}, "search.trials", "less than or equal to 1000000"),
    ],
)
def test_numbers_are_bounded(tmp_path: Path, patch: dict, field: str, message: str) -> None:
    with pytest.raises(StudyError) as info:
        load_study(write(tmp_path, patch))
    assert info.value.field == field and message in info.value.message


def test_relative_paths_resolve_against_the_study_folder_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "mine.yaml").write_text((ROOT / "search_spaces" / "resnet.yaml").read_text())
    study_file = write(tmp_path, {"search.space": "spaces/mine.yaml"})
    for cwd in (tmp_path, ROOT, Path("/")):  # the same study means the same files from anywhere
        monkeypatch.chdir(cwd)
        assert load_study(study_file).search.space == str(tmp_path / "spaces" / "mine.yaml")
    # A path that exists only under the current directory is not taken, and the error says where it looked.
    monkeypatch.chdir(ROOT)
    with pytest.raises(StudyError) as info:
        load_study(write(tmp_path, {"search.space": "search_spaces/resnet.yaml"}))
    assert info.value.field == "search.space"
    assert f"{tmp_path}/search_spaces/resnet.yaml (relative paths are read from the study's folder)" in str(info.value)


@pytest.mark.slow
def test_validate_and_search_refuse_with_one_line_and_write_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, {"teacher.arch": {**TEACHER, "stages": []}})
    for command in ("validate", "search"):
        result = subprocess.run(
            [sys.executable, "-m", "nas_kd.cli", command, str(path)], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"nas-kd: error: {path}: teacher.arch: cannot build this architecture")
    assert not (tmp_path / "runs").exists()


def test_help_imports_neither_torch_nor_ray() -> None:
    code = (
        "import sys\nfrom nas_kd.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'ray', 'optuna', 'pydantic') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
