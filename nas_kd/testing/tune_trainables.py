"""A toy student for search tests: a define-by-run space and a Tune trainable that trains nothing.

They live in the package because trainables defined in a test module cannot be unpickled on Ray workers,
and the space must be module-level for the searcher's checkpoint.
"""

from __future__ import annotations

from typing import Any

import optuna
from ray import tune

TOY_EPOCHS = 4
TOY_MAX_PARAMS = 50_000


def toy_space(trial: optuna.Trial) -> None:
    """``size`` (thousands of parameters), ``quality`` (final accuracy) and ``fail`` (raise at epoch 2)."""
    trial.suggest_int("size", 1, 64, log=True)
    trial.suggest_float("quality", 0.0, 1.0)
    trial.suggest_categorical("fail", [False, True])


def toy_student(config: dict[str, Any]) -> None:
    """Reports ``epoch``, ``val_accuracy`` (``quality`` reached linearly) and ``params`` for TOY_EPOCHS epochs.

    Like the real trainable, a student over TOY_MAX_PARAMS is rejected with one result at epoch 0.
    """
    params = 1000 * config["size"]
    if params > TOY_MAX_PARAMS:
        tune.report(
            {"epoch": 0, "val_accuracy": 0.0, "params": params, "rejected": f"params {params} > {TOY_MAX_PARAMS}"}
        )
        return
    for epoch in range(1, TOY_EPOCHS + 1):
        if config["fail"] and epoch == 2:
            raise RuntimeError("planned failure")
        tune.report({"epoch": epoch, "val_accuracy": config["quality"] * epoch / TOY_EPOCHS, "params": params})
