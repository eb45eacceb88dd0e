"""Searchable values: the one grammar shared by search spaces and distiller settings.

A value in a space or a ``distiller:`` block is either fixed (``4``) or searchable:

- ``{choices: [8, 16, 32]}``             categorical
- ``{low: 1, high: 4}``                  integer range when both ends are ints (``step`` optional)
- ``{low: 1.0, high: 8.0, log: true}``   float range (``log`` optional)

Each searchable value knows how to ask Optuna for itself (define-by-run), how to draw itself from
a NumPy generator (random search) and whether a concrete value lies inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna


@dataclass(frozen=True)
class Fixed:
    value: Any

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return self.value

    def sample(self, rng: np.random.Generator) -> Any:
        return self.value

    def contains(self, value: Any) -> bool:
        return value == self.value

    @property
    def searchable(self) -> bool:
        return False


@dataclass(frozen=True)
class Choice:
    choices: tuple[Any, ...]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def sample(self, rng: np.random.Generator) -> Any:
        return self.choices[int(rng.integers(len(self.choices)))]

    def contains(self, value: Any) -> bool:
        return value in self.choices

    @property
    def searchable(self) -> bool:
        return len(self.choices) > 1


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def sample(self, rng: np.random.Generator) -> int:
        if self.log:
            return round(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))
        return int(self.low + self.step * rng.integers((self.high - self.low) // self.step + 1))

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (self.log or (value - self.low) % self.step == 0)
        )

    @property
    def searchable(self) -> bool:
        return self.high > self.low


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def sample(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    @property
    def searchable(self) -> bool:
        return self.high > self.low


Param = Fixed | Choice | IntRange | FloatRange


class ParamError(ValueError):
    """A searchable value is malformed; the message says what is allowed."""


def parse_param(raw: Any) -> Param:
    """Turn a YAML value into a ``Param``; raises ParamError with a one-line reason."""
    if not isinstance(raw, dict):
        return Fixed(raw)
    keys = set(raw)
    if "choices" in keys:
        if keys != {"choices"}:
            raise ParamError(f"'choices' takes no other keys, got {sorted(keys - {'choices'})}")
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise ParamError("'choices' must be a non-empty list")
        return Choice(tuple(choices))
    if {"low", "high"} <= keys:
        extra = keys - {"low", "high", "step", "log"}
        if extra:
            raise ParamError(f"a range takes low, high, step, log; unknown {sorted(extra)}")
        low, high, log = raw["low"], raw["high"], bool(raw.get("log", False))
        for end in (low, high):
            if isinstance(end, bool) or not isinstance(end, (int, float)):
                raise ParamError(f"range ends must be numbers, got {end!r}")
        if low > high:
            raise ParamError(f"low ({low}) is greater than high ({high})")
        if log and low <= 0:
            raise ParamError("a log range needs low > 0")
        if isinstance(low, int) and isinstance(high, int):
            step = raw.get("step", 1)
            if not isinstance(step, int) or step < 1:
                raise ParamError("step must be a positive integer")
            if log and step != 1:
                raise ParamError("a log range cannot have a step")
            return IntRange(low, high, step, log)
        if "step" in keys:
            raise ParamError("step is for integer ranges only")
        return FloatRange(float(low), float(high), log)
    raise ParamError(
        "a searchable value is {choices: [...]} or {low: .., high: .., step?: .., log?: ..}, "
        f"got keys {sorted(keys)}"
    )
