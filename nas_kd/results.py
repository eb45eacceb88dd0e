"""Run-directory I/O. The run directory is the contract between the search, the report and export.

``<runs_dir>/<study name>/`` holds:

- ``study.yaml``     the resolved study (search space and architecture files inlined).
- ``run.json``       {"study_name": optuna study name, "storage": "sqlite:///<abs path>/optuna.db",
                      "objectives": ["val_accuracy", "params", ...], "directions": ["maximize", "minimize", ...],
                      "state": "running" | "finished" | "interrupted", "started": iso time, "updated": iso time,
                      "trials_requested": int, "scheduler": name}
- ``trials.csv``     one row per trial: trial_id, number, status (COMPLETE | PRUNED | FAILED | RUNNING | REJECTED |
                      INTERRUPTED: started, but the experiment ended without it),
                      epochs, max_epochs, val_accuracy, test_accuracy, params, flops, model_bytes, latency_ms,
                      distiller, family, arch (JSON), arch_summary, pareto (true/false), error, seconds,
                      student_path, and one ``<distiller>.<setting>`` column per sampled distiller setting.
- ``trials.jsonl``   the search's append-only event log, the record a resumed search rebuilds from: one JSON
                      object per line, {"trial_id", "status": "RUNNING"} or a whole trials.csv row; later lines
                      update earlier ones. trials.csv is its summary, rewritten every few seconds and at the end.
- ``curves.csv``     one row per (trial_id, epoch): val_accuracy, train_loss, seconds, images_per_second
                      (append-only; an epoch trained again after a resume appears again: the last line counts).
- ``hypervolume.csv`` one row per finished trial: finished (count), trial_id, hypervolume, student_epochs,
                      wall_seconds.
- ``pareto.json``    {"objectives": [...], "reference_point": {...}, "members": [{trial_id, arch, arch_summary,
                      distiller, settings, metrics: {val_accuracy, test_accuracy, params, flops, ...},
                      student_path}]}
- ``teachers.json``  [{"name", "role" ("teacher" | "assistant"), "key", "arch", "arch_summary", "params",
                      "flops", "val_accuracy", "test_accuracy", "path"}]
- ``students/<trial_id>/``  model.safetensors + model.json of each Pareto member (``nas_kd.load_student``).
- ``optuna.db``      the Optuna study (SQLite; optuna-dashboard sqlite:///.../optuna.db).
- ``report.html``    the Plotly report; ``tune/`` Ray Tune's experiment files.
- ``final/``         what ``nas-kd finalize`` writes (absent until it runs):
  - ``plan.json``    {"rule", "epochs", "seeds": [int], "arms": [{"name", "distiller", "settings"}], "members": [...],
                      "jobs": [...]}: the jobs a resumed finalize continues (recipe "searched" = the trial's own).
  - ``final.csv``    one row per job (member x recipe x seed): job, member, arm, distiller, settings (JSON), seed,
                      status (COMPLETE | FAILED | INTERRUPTED), epochs, max_epochs, val_accuracy, test_accuracy, params,
                      flops, model_bytes, seconds, error, student_path, arch_summary, search_distiller,
                      search_epochs, search_val_accuracy, search_test_accuracy.
  - ``final.json``   {"epochs", "seeds", "recipes", "members": one entry per (member, recipe): seeds, val_mean,
                      val_sd, test_mean, test_sd, best (the member's best recipe by val_mean), front (on the final
                      front of best recipes: val_mean up, params down), "fidelity": {"kendall_tau", "members"}}.
  - ``students/<job>/`` each COMPLETE job's student (``nas_kd.load_student``); ``tune/`` its Tune experiment.

The ``.json`` files are strict JSON: a value that is not a finite number (a one-seed sd, a tau over too few
members) is null.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

TRIAL_COLUMNS = [
    "trial_id", "number", "status", "epochs", "max_epochs", "val_accuracy", "test_accuracy", "robust_accuracy",
    "worst_class", "worst_class_accuracy", "params", "flops",
    "model_bytes", "latency_ms", "weight_bits", "act_bits", "distiller", "family", "arch", "arch_summary", "pareto",
    "error", "seconds",
    "student_path",
]  # fmt: skip
CURVE_COLUMNS = ["trial_id", "epoch", "val_accuracy", "train_loss", "seconds", "images_per_second"]
EVENT_LOG = "trials.jsonl"
FINAL_DIR = "final"
FINAL_COLUMNS = [
    "job", "member", "arm", "distiller", "settings", "seed", "status", "epochs", "max_epochs", "val_accuracy",
    "test_accuracy", "params", "flops", "model_bytes", "seconds", "error", "student_path", "arch_summary",
    "search_distiller", "search_epochs", "search_val_accuracy", "search_test_accuracy",
]  # fmt: skip
HYPERVOLUME_COLUMNS = ["finished", "trial_id", "hypervolume", "student_epochs", "wall_seconds"]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """Strict JSON (what jq and browsers parse): a NaN or infinite float is written as null."""
    write_atomic(path, json.dumps(_finite(data), indent=2, default=json_default, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item"):  # numpy and torch scalars
        return _finite(value.item())
    return value


def json_default(value: Any) -> Any:
    """``json.dumps``' ``default`` for numpy and torch scalars."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def write_table(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """CSV with ``columns`` first, then any extra keys the rows carry (sorted)."""
    extra = sorted({k for row in rows for k in row} - set(columns))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns + extra, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    os.replace(tmp, path)


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    """A run-dir CSV as a DataFrame; missing or empty file -> empty frame with ``columns``."""
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=columns)
    return pd.read_csv(path)


def read_trials(run_dir: str | Path) -> pd.DataFrame:
    return read_table(Path(run_dir) / "trials.csv", TRIAL_COLUMNS)
