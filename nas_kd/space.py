"""Declarative search spaces (``search_spaces/*.yaml``) over student genomes.

A space file::

    family: resnet                    # cnn | resnet | mobilenet
    stem: {choices: [8, 16]}          # stem channels
    stages: {low: 2, high: 3}         # number of stages
    stage:                            # every stage draws these
      channels: {choices: [8, 16, 32]}
      depth: {low: 1, high: 2}
    per_stage:                        # optional: overrides for stage 0, 1, ...
      - channels: {choices: [8, 16]}
    quant:                            # optional: quantized students (brevitas QAT; nas_kd.arch.quant)
      weight_bits: {choices: [2, 4, 8, 32]}   # 32 = full precision (then no activation bits are drawn)
      act_bits: {choices: [4, 8]}     # optional; default: the weight bits
      first_last_bits: 8              # optional; default: max(8, bits) for the stem and the head
      per_stage: false                # true: stage 0 uses the widths above, each later stage draws its own

Values use the grammar of ``nas_kd.params``. Per-stage parameters exist only for stages that exist
(conditional, define-by-run). A study may name several space files: the family is then searched too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

from nas_kd.arch.quant_spec import FULL_PRECISION, SUPPORTED_BITS
from nas_kd.params import Fixed, IntRange, Param, ParamError, parse_param

STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "cnn": ("channels", "depth", "kernel"),
    "resnet": ("channels", "depth"),
    "mobilenet": ("channels", "depth", "expand", "kernel", "se"),
}
REQUIRED_STAGE_KEYS = ("channels", "depth")
VALUE_CHECKS: dict[str, tuple[type, Any]] = {
    "channels": (int, lambda v: 1 <= v <= 4096),
    "depth": (int, lambda v: 1 <= v <= 64),
    "kernel": (int, lambda v: v in (1, 3, 5, 7)),
    "expand": (int, lambda v: 1 <= v <= 8),
    "se": (bool, lambda v: True),
    "stem": (int, lambda v: 1 <= v <= 4096),
    "stages": (int, lambda v: 1 <= v <= 8),
    "weight_bits": (int, lambda v: v in SUPPORTED_BITS),
    "act_bits": (int, lambda v: v in SUPPORTED_BITS),
    "first_last_bits": (int, lambda v: v in SUPPORTED_BITS),
}
QUANT_SPACE_KEYS = ("weight_bits", "act_bits", "first_last_bits", "per_stage")


class SpaceError(ValueError):
    """A search space is invalid; ``where`` is the dotted field inside the space (may be empty)."""

    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(message)


def _values(param: Param) -> list[Any]:
    if isinstance(param, Fixed):
        return [param.value]
    if hasattr(param, "choices"):
        return list(param.choices)
    return [param.low, param.high]


def _check(key: str, param: Param, where: str) -> None:
    kind, ok = VALUE_CHECKS[key]
    for value in _values(param):
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise SpaceError(where, f"{key} must be an integer, got {value!r}")
        if kind is bool and not isinstance(value, bool):
            raise SpaceError(where, f"{key} must be true or false, got {value!r}")
        if not ok(value):
            if key in QUANT_SPACE_KEYS:
                raise SpaceError(where, f"unsupported bit width {value!r}; brevitas backend: 2-8 or 32")
            raise SpaceError(where, f"{key} value {value!r} is out of range")


@dataclass
class QuantSpace:
    """Bit widths drawn with the architecture; the genome's ``quant`` block (see ``nas_kd.arch.quant_spec``)."""

    weight_bits: Param
    act_bits: Param | None = None  # None: the weight bits
    first_last_bits: Param | None = None  # None: the genome's default
    per_stage: bool = False

    @classmethod
    def from_dict(cls, raw: Any) -> QuantSpace:
        if not isinstance(raw, dict):
            raise SpaceError(".quant", "must be a mapping with weight_bits (act_bits, first_last_bits, per_stage)")
        unknown = sorted(set(raw) - set(QUANT_SPACE_KEYS))
        if unknown:
            raise SpaceError(f".quant.{unknown[0]}", f"unknown field; allowed: {', '.join(QUANT_SPACE_KEYS)}")
        if "weight_bits" not in raw:
            where = ".quant.weight_bits"
            raise SpaceError(where, "required field is missing" + (": act bits need weight bits" * ("act_bits" in raw)))
        if not isinstance(raw.get("per_stage", False), bool):
            raise SpaceError(".quant.per_stage", "must be true or false")
        space = cls(
            weight_bits=_parse(raw["weight_bits"], ".quant.weight_bits", "weight_bits"),
            act_bits=_parse(raw["act_bits"], ".quant.act_bits", "act_bits") if "act_bits" in raw else None,
            first_last_bits=(
                _parse(raw["first_last_bits"], ".quant.first_last_bits", "first_last_bits")
                if "first_last_bits" in raw
                else None
            ),
            per_stage=raw.get("per_stage", False),
        )
        return space

    def draw_bits(self, draw: Any, prefix: str) -> dict[str, int]:
        """Weight bits, then activation bits unless the weights are full precision (conditional)."""
        weight_bits = draw(f"{prefix}weight_bits", self.weight_bits)
        if weight_bits == FULL_PRECISION:
            return {"weight_bits": FULL_PRECISION, "act_bits": FULL_PRECISION}
        act_bits = weight_bits if self.act_bits is None else draw(f"{prefix}act_bits", self.act_bits)
        return {"weight_bits": weight_bits, "act_bits": act_bits}

    def build(self, draw: Any, stages: int) -> dict[str, Any]:
        quant: dict[str, Any] = self.draw_bits(draw, "quant.")
        if self.first_last_bits is not None:
            quant["first_last_bits"] = draw("quant.first_last_bits", self.first_last_bits)
        if self.per_stage and stages > 1:
            quant["stages"] = [{}] + [self.draw_bits(draw, f"s{i}.") for i in range(1, stages)]
        return quant

    def contains(self, quant: Any, stages: int) -> bool:
        if not isinstance(quant, dict):
            return False
        per_stage = quant.get("stages", [])
        if len(per_stage) != (stages if self.per_stage and stages > 1 else 0) or any(per_stage[:1]):
            return False
        pairs = [quant, *per_stage[1:]]
        for pair in pairs:
            weight_bits = pair.get("weight_bits")
            if not self.weight_bits.contains(weight_bits):
                return False
            act_bits = pair.get("act_bits")
            if weight_bits == FULL_PRECISION or self.act_bits is None:
                if act_bits != weight_bits:
                    return False
            elif not self.act_bits.contains(act_bits):
                return False
        edge = quant.get("first_last_bits")
        return (self.first_last_bits is None) == (edge is None) and (
            edge is None or self.first_last_bits.contains(edge)
        )


@dataclass
class SearchSpace:
    """One architecture family's space."""

    family: str
    stem: Param
    stages: Param
    stage: dict[str, Param]
    per_stage: list[dict[str, Param]] = field(default_factory=list)
    quant: QuantSpace | None = None

    @classmethod
    def from_dict(cls, raw: Any) -> SearchSpace:
        if not isinstance(raw, dict):
            raise SpaceError("", "a search space is a mapping with family, stem, stages, stage")
        unknown = set(raw) - {"family", "stem", "stages", "stage", "per_stage", "quant", "description"}
        if unknown:
            raise SpaceError(f".{sorted(unknown)[0]}", "unknown field")
        family = raw.get("family")
        if family not in STAGE_KEYS:
            raise SpaceError(".family", f"must be one of {', '.join(STAGE_KEYS)}, got {family!r}")
        allowed = STAGE_KEYS[family]

        def params(block: Any, where: str, required: tuple[str, ...]) -> dict[str, Param]:
            if not isinstance(block, dict):
                raise SpaceError(where, "must be a mapping of stage parameters")
            out = {}
            for key, value in block.items():
                if key not in allowed:
                    raise SpaceError(f"{where}.{key}", f"unknown for {family}; allowed: {', '.join(allowed)}")
                out[key] = _parse(value, f"{where}.{key}", key)
            missing = [k for k in required if k not in out]
            if missing:
                raise SpaceError(f"{where}.{missing[0]}", "required field is missing")
            return out

        stage = params(raw.get("stage"), ".stage", REQUIRED_STAGE_KEYS)
        per_stage_raw = raw.get("per_stage", [])
        if not isinstance(per_stage_raw, list):
            raise SpaceError(".per_stage", "must be a list (one mapping per stage)")
        per_stage = [params(b, f".per_stage.{i}", ()) for i, b in enumerate(per_stage_raw)]
        return cls(
            family=family,
            stem=_parse(raw.get("stem", 16), ".stem", "stem"),
            stages=_parse(raw.get("stages", 3), ".stages", "stages"),
            stage=stage,
            per_stage=per_stage,
            quant=QuantSpace.from_dict(raw["quant"]) if "quant" in raw else None,
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))

    def stage_params(self, index: int) -> dict[str, Param]:
        overrides = self.per_stage[index] if index < len(self.per_stage) else {}
        return {**self.stage, **overrides}

    def _build(self, draw: Any) -> dict[str, Any]:
        """Shared by suggest and sample: ``draw(name, param)`` gives a concrete value."""
        arch: dict[str, Any] = {"family": self.family, "stem": draw("stem", self.stem)}
        count = draw("stages", self.stages)
        arch["stages"] = [
            {key: draw(f"s{i}.{key}", param) for key, param in self.stage_params(i).items()} for i in range(count)
        ]
        if self.quant is not None:
            arch["quant"] = self.quant.build(draw, count)
        return arch

    def suggest(self, trial: optuna.Trial, prefix: str = "") -> dict[str, Any]:
        """Define-by-run: ask ``trial`` for an architecture (per-stage names only for existing stages)."""
        return self._build(lambda name, param: param.suggest(trial, prefix + name))

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return self._build(lambda name, param: param.sample(rng))

    def contains(self, arch: dict[str, Any]) -> bool:
        if arch.get("family") != self.family or not self.stem.contains(arch.get("stem")):
            return False
        stages = arch.get("stages")
        if not isinstance(stages, list) or not self.stages.contains(len(stages)):
            return False
        for i, stage in enumerate(stages):
            params = self.stage_params(i)
            if set(stage) != set(params) or not all(p.contains(stage[k]) for k, p in params.items()):
                return False
        if self.quant is None:
            return "quant" not in arch
        return self.quant.contains(arch.get("quant"), len(stages))


def _parse(value: Any, where: str, key: str) -> Param:
    try:
        param = parse_param(value)
    except ParamError as error:
        raise SpaceError(where, str(error)) from None
    _check(key, param, where)
    if key == "stages" and not isinstance(param, (Fixed, IntRange)) and not hasattr(param, "choices"):
        raise SpaceError(where, "stages must be an integer, choices or an integer range")
    return param


@dataclass
class SpaceUnion:
    """Several families searched together: the family is a categorical parameter."""

    spaces: dict[str, SearchSpace]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        family = trial.suggest_categorical("family", list(self.spaces))
        return self.spaces[family].suggest(trial, prefix=f"{family}.")

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        family = list(self.spaces)[int(rng.integers(len(self.spaces)))]
        return self.spaces[family].sample(rng)

    def contains(self, arch: dict[str, Any]) -> bool:
        space = self.spaces.get(arch.get("family", ""))
        return space is not None and space.contains(arch)


Space = SearchSpace | SpaceUnion


def load_space_spec(spec: str | dict[str, Any] | list[str | dict[str, Any]]) -> dict[str, Any] | list[dict[str, Any]]:
    """Space file(s) -> plain data (inlined into a run directory's study.yaml)."""
    if isinstance(spec, dict):
        return spec
    if isinstance(spec, list):
        return [load_space_spec(s) for s in spec]  # type: ignore[misc]
    try:
        return yaml.safe_load(Path(spec).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SpaceError("", f"cannot read {spec}: {error}") from None


def load_space(spec: str | dict[str, Any] | list[str | dict[str, Any]]) -> Space:
    """A space from a path, an inline mapping, or a list of either (a union over families)."""
    if isinstance(spec, list):
        spaces: dict[str, SearchSpace] = {}
        for i, item in enumerate(spec):
            try:
                space = load_space(item)
            except SpaceError as error:
                raise SpaceError(f".{i}{error.where}", str(error)) from None
            if not isinstance(space, SearchSpace) or space.family in spaces:
                raise SpaceError(f".{i}", "each space in a list must be a different family")
            spaces[space.family] = space
        return next(iter(spaces.values())) if len(spaces) == 1 else SpaceUnion(spaces)
    raw = load_space_spec(spec)
    try:
        return SearchSpace.from_dict(raw)
    except SpaceError as error:
        if isinstance(spec, str):
            raise SpaceError(error.where, f"{spec}: {error}") from None
        raise
