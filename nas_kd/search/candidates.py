"""What the searcher checks about a sampled candidate before Tune trains it.

- ``candidate_key``: a candidate is its config (architecture, distiller, settings, seed); two equal keys train the
  same student (training is deterministic for a seed), so a repeat is answered from the first, not trained.
- ``SizeCheck``: the constraints that need no training (``max_params``, ``max_model_bytes``) are checked on
  the meta device, so a candidate over them is rejected before it takes a trial of the budget. ``max_flops``
  and ``max_latency_ms`` need a forward pass and are checked in the trial (``trainable.constraint_violations``).
"""

from __future__ import annotations

import json
from typing import Any

from nas_kd.preflight import META_COSTS, build_on_meta


def candidate_key(config: dict[str, Any]) -> str:
    """Identity of a sampled candidate: its whole config (architecture, distiller, settings, seed) but the
    Optuna trial number, which differs between repeats."""
    return json.dumps({k: v for k, v in config.items() if k != "optuna_number"}, sort_keys=True, default=str)


class SizeCheck:
    """``check(config)`` -> why the candidate breaks a size constraint, or None. Picklable (searcher checkpoints)."""

    def __init__(self, constraints: dict[str, float], input_shape: tuple[int, int, int], num_classes: int):
        self.limits = {
            k.removeprefix("max_"): v for k, v in constraints.items() if k.removeprefix("max_") in META_COSTS
        }
        self.input_shape, self.num_classes = tuple(input_shape), num_classes

    def costs(self, config: dict[str, Any]) -> dict[str, int]:
        if not self.limits:
            return {}
        model = build_on_meta(config["arch"], self.input_shape, self.num_classes, forward=False)  # type: ignore[arg-type]
        return {name: META_COSTS[name](model) for name in self.limits}

    def __call__(self, config: dict[str, Any]) -> tuple[str | None, dict[str, int]]:
        costs = self.costs(config)
        broken = [f"{n} {costs[n]:,} > max_{n} {self.limits[n]:,.6g}" for n in self.limits if costs[n] > self.limits[n]]
        return ("; ".join(broken) or None), costs
