from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas_kd.attacks import Attack, PixelSpace, pgd, robust_accuracy, robust_metrics
from nas_kd.config import RobustConfig
from nas_kd.data import Dataset, Split


@pytest.fixture(scope="module")
def trained(digits: Dataset) -> nn.Module:
    """A linear classifier on digits, trained to ~95% in a second."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(model(everything(digits.train)), digits.train.y).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


def everything(split: Split) -> torch.Tensor:
    return split.batch(torch.arange(len(split)))


def test_the_pixel_space_is_the_data_normalisation(digits: Dataset) -> None:
    space = PixelSpace.of(digits)
    pixels = space.to_pixels(everything(digits.train))
    # digits pixels are k / 16: both ends of [0, 1] occur, and the std is far from 1 (so scaling matters)
    assert pixels.min().item() == pytest.approx(0, abs=1e-5) and pixels.max().item() == pytest.approx(1, abs=1e-5)
    assert space.scale.item() == pytest.approx(1 / digits.pixel_std[0])
    assert not 0.8 < digits.pixel_std[0] < 1.25


def test_pgd_raises_the_loss_and_keeps_to_the_epsilon_ball_in_pixels(digits: Dataset, trained: nn.Module) -> None:
    space, attack = PixelSpace.of(digits), Attack(epsilon=0.1, steps=5)
    x, y = everything(digits.val), digits.val.y
    adversarial = pgd(trained, x, y, attack, space, generator=torch.Generator().manual_seed(0))
    assert F.cross_entropy(trained(adversarial), y) > 3 * F.cross_entropy(trained(x), y)
    change = (space.to_pixels(adversarial) - space.to_pixels(x)).abs()
    assert change.max().item() <= 0.1 + 1e-5
    assert change.max().item() >= 0.099  # the whole budget is used, in pixels (not in normalised units)
    pixels = space.to_pixels(adversarial)
    assert pixels.min().item() >= -1e-5 and pixels.max().item() <= 1 + 1e-5
    assert trained.training is False and all(p.grad is None for p in trained.parameters())


def test_robust_accuracy_is_below_clean_accuracy_and_zero_budget_changes_nothing(
    digits: Dataset, trained: nn.Module
) -> None:
    space = PixelSpace.of(digits)
    clean = (trained(everything(digits.val)).argmax(1) == digits.val.y).float().mean().item()
    assert clean > 0.9
    assert robust_accuracy(trained, digits.val, Attack(0.1, 10), space) < clean - 0.3
    assert robust_accuracy(trained, digits.val, Attack(0.0, 1), space) == pytest.approx(clean)
    assert robust_metrics(trained, digits, None) == {}
    measured = robust_metrics(trained, digits, RobustConfig(epsilon=0.1, steps=10))["robust_accuracy"]
    assert measured == robust_accuracy(trained, digits.val, Attack(0.1, 10), space)


@pytest.mark.parametrize(("epsilon", "steps", "message"), [(-0.1, 3, "epsilon"), (0.1, 0, "steps")])
def test_attacks_outside_sensible_ranges_are_refused(epsilon: float, steps: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Attack(epsilon, steps)
