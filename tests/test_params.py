from __future__ import annotations

import numpy as np
import optuna
import pytest

from nas_kd.params import Choice, Fixed, FloatRange, IntRange, ParamError, parse_param


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (4, Fixed(4)),
        ({"choices": [8, 16]}, Choice((8, 16))),
        ({"low": 1, "high": 4}, IntRange(1, 4)),
        ({"low": 2, "high": 10, "step": 2}, IntRange(2, 10, 2)),
        ({"low": 0.5, "high": 8, "log": True}, FloatRange(0.5, 8.0, True)),
    ],
)
def test_parse(raw: object, expected: object) -> None:
    assert parse_param(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"choices": []}, "non-empty"),
        ({"low": 5, "high": 1}, "greater than"),
        ({"low": 0, "high": 1.0, "log": True}, "low > 0"),
        ({"low": 1, "hi": 2}, "searchable value"),
        ({"low": "a", "high": 2}, "numbers"),
    ],
)
def test_parse_errors(raw: object, message: str) -> None:
    with pytest.raises(ParamError, match=message):
        parse_param(raw)


@pytest.mark.parametrize("param", [Choice((1, 2, 3)), IntRange(1, 9, 2), FloatRange(0.1, 1.0, log=True)])
def test_sample_and_suggest_stay_inside(param: object) -> None:
    rng = np.random.default_rng(0)
    assert all(param.contains(param.sample(rng)) for _ in range(50))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        assert param.contains(param.suggest(trial, "x"))
        study.tell(trial, 0.0)
