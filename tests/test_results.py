"""Run-directory files: what other tools read from them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from nas_kd.results import write_json


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def test_write_json_is_strict_json_with_null_for_nan_and_infinity(tmp_path: Path) -> None:
    path = tmp_path / "final.json"
    write_json(path, {"tau": math.nan, "sd": [1.5, math.inf, -math.inf], "n": np.int64(3), "acc": torch.tensor(0.5),
                      "nested": {"mean": np.float64("nan"), "kept": "text"}})  # fmt: skip
    strict = json.loads(path.read_text(), parse_constant=_refuse_constant)  # NaN/Infinity tokens would raise
    assert strict == {
        "tau": None,
        "sd": [1.5, None, None],
        "n": 3,
        "acc": 0.5,
        "nested": {"mean": None, "kept": "text"},
    }
