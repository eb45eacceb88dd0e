"""What ``trials.csv`` says about a failed trial: the exception line, with pydantic's field details."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from nas_kd.search.bookkeeping import _error_line

RAY_TRACEBACK = """Failure # 1 (occurred at 2026-11-27_23-19-20)
ray::ImplicitFunc.train() (pid=20360, ip=192.0.2.2, actor_id=2bd2, repr=train_trial)
  File "/venv/ray/tune/trainable/function_trainable.py", line 261, in _trainable_func
    output = fn()
"""


def failed_trial(tmp_path: Path, tail: str) -> SimpleNamespace:
    error_file = tmp_path / "error.txt"
    error_file.write_text(RAY_TRACEBACK + tail)
    return SimpleNamespace(error_file=str(error_file))


def test_plain_exception_is_its_last_line(tmp_path: Path) -> None:
    trial = failed_trial(tmp_path, "nas_kd.train.TrainingDiverged: training loss is nan at epoch 3\n")
    assert _error_line(trial) == "TrainingDiverged: training loss is nan at epoch 3"


def test_validation_error_names_the_fields_not_the_help_link(tmp_path: Path) -> None:
    tail = """pydantic_core._pydantic_core.ValidationError: 2 validation errors for Study
search.space.str
  Input should be a valid string [type=string_type, input_value=[...], input_type=list]
    For further information visit https://errors.pydantic.dev/2.14/v/string_type
"""
    line = _error_line(failed_trial(tmp_path, tail))
    assert line == (
        "ValidationError: 2 validation errors for Study | search.space.str | "
        "Input should be a valid string [type=string_type, input_value=[...], input_type=list]"
    )


def test_without_an_exception_line_the_last_line_is_kept(tmp_path: Path) -> None:
    assert _error_line(failed_trial(tmp_path, "worker died unexpectedly\n")) == "worker died unexpectedly"
