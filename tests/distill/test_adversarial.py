from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nas_kd.cli import main
from nas_kd.config import StudyError
from nas_kd.testing.pytest_distillers import Environment
from tests.test_config import write


def test_zero_budget_without_teacher_is_cross_entropy_and_a_budget_raises_the_loss(env: Environment) -> None:
    x, y, index = env.batch()
    plain = {"teacher_weight": 0, "adversarial_weight": 1}
    calm = env.trainer("adversarial", {**plain, "epsilon": 0}, "cnn").distiller.train()
    logits, losses = calm.forward_train(x, y, index)
    assert set(losses) == {"adversarial"}
    assert losses["adversarial"].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    attacked = env.trainer("adversarial", {**plain, "epsilon": 0.2}, "cnn").distiller.train()
    _, attacked_losses = attacked.forward_train(x, y, index)
    assert attacked_losses["adversarial"] > losses["adversarial"] + 0.2  # an untrained student: a modest rise


def test_the_teacher_target_is_its_clean_soft_labels(env: Environment) -> None:
    x, y, index = env.batch()
    distiller = env.trainer("adversarial", {"epsilon": 0.1}, "cnn").distiller
    teacher = F.softmax(env.teachers[0].load("cpu")(x), dim=1)
    assert torch.allclose(distiller.target(x, y, index), teacher, atol=2e-3)  # fp16 cached logits
    half = env.trainer("adversarial", {"teacher_weight": 0.5}, "cnn").distiller
    assert torch.allclose(half.target(x, y, index), 0.5 * teacher + 0.5 * F.one_hot(y, 10), atol=2e-3)


@pytest.mark.parametrize(
    ("patch", "field", "message"),
    [
        ({"distiller": {"name": "adversarial", "epsilon": -0.1}}, "distiller.epsilon", "greater than or equal to 0"),
        ({"distiller": {"name": "adversarial", "steps": 0}}, "distiller.steps", "greater than or equal to 1"),
        ({"search.objectives": ["val_accuracy", "robust_accuracy"]}, "search", "needs search.robust"),
        ({"search.robust": {"epsilon": 0}}, "search.robust.epsilon", "greater than 0"),
    ],
)
def test_bad_attack_settings_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], patch: dict, field: str, message: str
) -> None:
    path = write(tmp_path, patch)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"nas-kd: error: {path}: {field}: ") and message in err


def test_a_robust_objective_with_its_attack_is_accepted(tmp_path: Path) -> None:
    from nas_kd.config import load_study

    study = load_study(
        write(tmp_path, {"search.objectives": ["val_accuracy", "robust_accuracy"], "search.robust": {"epsilon": 0.1}})
    )
    assert study.search.robust is not None and study.search.robust.steps == 10
    with pytest.raises(StudyError, match="one or two distinct"):
        load_study(write(tmp_path, {"search.objectives": ["val_accuracy", "robust"]}))
