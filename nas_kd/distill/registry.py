"""Distiller registry and the study's ``distiller:`` block (fixed or searched).

The block is one of::

    distiller: offline                                 # a name, default settings
    distiller: {name: offline, temperature: 4}         # a name and settings (values may be searchable)
    distiller:                                         # the scheme itself searched
      choices:
        - ce
        - {name: offline, temperature: {low: 1, high: 8}, alpha: {choices: [0.5, 0.9]}}

Optuna parameters are ``distiller`` (when there are several choices) and ``<name>.<setting>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from pydantic import BaseModel, ValidationError
from torch import nn

from nas_kd.params import Fixed, Param, ParamError, parse_param

DISTILLERS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a Distiller subclass available by its ``name``."""
    if cls.name in DISTILLERS:
        raise ValueError(f"distiller {cls.name!r} registered twice")
    DISTILLERS[cls.name] = cls
    return cls


class DistillerConfigError(ValueError):
    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(message)


def make_settings(name: str, values: dict[str, Any]) -> BaseModel:
    return DISTILLERS[name].Settings(**values)


def make_distiller(name: str, settings: dict[str, Any], student: nn.Module, context: Any) -> nn.Module:
    """Build a registered distiller around ``student``."""
    if name not in DISTILLERS:
        raise ValueError(f"unknown distiller {name!r}; known: {', '.join(sorted(DISTILLERS))}")
    cls = DISTILLERS[name]
    return cls(student, make_settings(name, settings), context)


@dataclass
class DistillerChoice:
    name: str
    settings: dict[str, Param]


@dataclass
class DistillerSpace:
    choices: list[DistillerChoice]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.choices]

    def _build(self, pick: Any, draw: Any) -> tuple[str, dict[str, Any]]:
        choice = self.choices[pick()]
        return choice.name, {k: draw(f"{choice.name}.{k}", p) for k, p in choice.settings.items()}

    def suggest(self, trial: optuna.Trial) -> tuple[str, dict[str, Any]]:
        names = self.names

        def pick() -> int:
            return names.index(trial.suggest_categorical("distiller", names)) if len(names) > 1 else 0

        return self._build(pick, lambda name, param: param.suggest(trial, name))

    def sample(self, rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
        return self._build(lambda: int(rng.integers(len(self.choices))), lambda name, param: param.sample(rng))

    @property
    def needs_teacher(self) -> bool:
        return any(DISTILLERS[c.name].requires_teacher for c in self.choices)


def _parse_choice(raw: Any, where: str) -> DistillerChoice:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise DistillerConfigError(where, "give a distiller name, or a mapping with name and settings")
    name = raw["name"]
    if name not in DISTILLERS:
        raise DistillerConfigError(
            f"{where}.name", f"unknown distiller {name!r}; known: {', '.join(sorted(DISTILLERS))}"
        )
    fields = DISTILLERS[name].Settings.model_fields
    settings: dict[str, Param] = {}
    for key, value in raw.items():
        if key == "name":
            continue
        if key not in fields:
            allowed = ", ".join(fields) or "none"
            raise DistillerConfigError(f"{where}.{key}", f"unknown setting for {name}; allowed: {allowed}")
        try:
            settings[key] = parse_param(value)
        except ParamError as error:
            raise DistillerConfigError(f"{where}.{key}", str(error)) from None
        for candidate in _candidates(settings[key]):
            try:
                DISTILLERS[name].Settings(**{key: candidate})
            except ValidationError as error:
                message = error.errors()[0]["msg"].removeprefix("Value error, ")
                raise DistillerConfigError(f"{where}.{key}", f"{message} (got {candidate!r})") from None
    return DistillerChoice(name, settings)


def _candidates(param: Param) -> list[Any]:
    if isinstance(param, Fixed):
        return [param.value]
    if hasattr(param, "choices"):
        return list(param.choices)
    return [param.low, param.high]


def parse_distiller_space(raw: Any) -> DistillerSpace:
    """Validate a study's ``distiller:`` block; raises DistillerConfigError naming the sub-field."""
    if isinstance(raw, dict) and "choices" in raw:
        if set(raw) != {"choices"} or not isinstance(raw["choices"], list) or not raw["choices"]:
            raise DistillerConfigError(".choices", "choices is a non-empty list of distillers and nothing else")
        choices = [_parse_choice(c, f".choices.{i}") for i, c in enumerate(raw["choices"])]
        if len({c.name for c in choices}) != len(choices):
            raise DistillerConfigError(".choices", "each distiller may appear once")
        return DistillerSpace(choices)
    return DistillerSpace([_parse_choice(raw, "")])
