from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas_kd.arch import build_model
from nas_kd.cli import main
from nas_kd.testing.pytest_distillers import STUDENTS, Environment
from nas_kd.views import parse_view, parse_view_text
from tests.test_config import write


def test_the_one_line_view_form_reads_like_the_list_form() -> None:
    assert parse_view_text("resize:4x4,channels:3") == parse_view([{"resize": [4, 4]}, {"channels": 3}])
    assert parse_view_text("center_crop:0.5, grayscale") == parse_view([{"center_crop": 0.5}, "grayscale"])
    assert parse_view_text("") == parse_view(None)
    with pytest.raises(ValueError, match="unknown view step 'blur'"):
        parse_view_text("blur:2")
    with pytest.raises(ValueError, match="cannot read view argument"):
        parse_view_text("resize:big")


def test_the_exported_student_sees_its_own_view_and_the_teacher_its_own(env: Environment) -> None:
    x, _, index = env.batch()
    settings = {"student_view": "resize:4x4", "teacher_view": "center_crop:0.5", "alpha": 1.0}
    distiller = env.trainer("cross_view", settings, "cnn").distiller.eval()
    student = distiller.export_student()
    bare = build_model(STUDENTS["cnn"], env.data.input_shape, env.data.num_classes).eval()
    bare.load_state_dict(student.state_dict())  # the view rides on the student itself: same class, same weights
    with torch.no_grad():
        assert torch.equal(student(x), bare(parse_view_text("resize:4x4")(x)))
        assert not torch.equal(student(x), bare(x))
        teacher = env.teachers[0].load("cpu")(parse_view_text("center_crop:0.5")(x))
    assert torch.allclose(distiller.teacher_logits(x, index), teacher.float())
    identity = env.trainer("cross_view", {"student_view": "resize:4x4"}, "cnn").distiller
    cached = env.teachers[0].as_teacher("cpu").train_logits[index].float()
    assert torch.equal(identity.teacher_logits(x, index), cached)  # raw view: the cache applies


def test_unknown_views_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"distiller": {"name": "cross_view", "student_view": "resize:4x4,blur"}})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"nas-kd: error: {path}: distiller.student_view: unknown view step 'blur'; known: "
        + ", ".join(sorted(["resize", "channels", "grayscale", "center_crop"]))
        + " (got 'resize:4x4,blur')"
    )
