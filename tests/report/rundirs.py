"""Synthetic run directories that follow the ``nas_kd.results`` contract, for the report tests.

Numbers are made up but plausible (accuracy grows with log-params, distillation helps a little), so
the figures in a screenshot look like a real study. Every file is written the way the search writes
it: ``nas_kd.results.write_table`` / ``write_json`` and a real Optuna SQLite study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from nas_kd.results import CURVE_COLUMNS, HYPERVOLUME_COLUMNS, TRIAL_COLUMNS, write_json, write_table
from nas_kd.search.pareto import StudyHypervolume

CHANNELS = [8, 16, 24, 32, 48, 64]
TEACHER = {"family": "resnet", "stem": 32, "stages": [{"channels": c, "depth": 2} for c in (32, 64, 128)]}
ASSISTANT = {"family": "resnet", "stem": 16, "stages": [{"channels": c, "depth": 2} for c in (16, 32, 64)]}
FIGURES = ["pareto", "capacity", "distillers", "hypervolume", "space", "importances", "curves"]  # report order
SETTING_SPACE = {
    "temperature": FloatDistribution(1.0, 8.0),
    "alpha": FloatDistribution(0.1, 0.95),
    "response": CategoricalDistribution(["kd", "dkd"]),
    "feature": CategoricalDistribution(["none", "at"]),
}
OBJECTIVE_UNITS = {"params": 1.0, "flops": 60.0, "model_bytes": 4.0, "latency_ms": 2e-5}


@dataclass
class RunSpec:
    """What to synthesise; the defaults are a finished two-objective study with a ``ce`` arm."""

    trials: int
    state: str = "finished"
    objectives: tuple[str, ...] = ("val_accuracy", "params")
    distillers: tuple[str, ...] = ("ce", "offline")
    max_epochs: int = 12
    running: int = 0  # trials still RUNNING at the end of the table
    fail_every: int = 0  # every n-th trial FAILED (0: none)
    prune_every: int = 0  # every n-th trial PRUNED by the scheduler
    teachers: bool = True
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def arch_params(arch: dict[str, Any]) -> int:
    """A ResNet-like parameter count: 3x3 convs, two per block, plus a 10-way head."""
    total, width = 27 * arch["stem"], arch["stem"]
    for stage in arch["stages"]:
        for block in range(stage["depth"]):
            c_in = width if block == 0 else stage["channels"]
            total += 9 * c_in * stage["channels"] + 9 * stage["channels"] ** 2
        width = stage["channels"]
    return total + 10 * width + 10


def summary(arch: dict[str, Any]) -> str:
    return f"resnet {arch['stem']}|" + " ".join(f"{s['channels']}x{s['depth']}" for s in arch["stages"])


def _accuracy(params: float, distiller: str, rng: np.random.Generator) -> float:
    base = 0.80 + 0.17 / (1 + math.exp(-(math.log10(params) - 4.2) * 2.2))
    bonus = {"ce": 0.0, "offline": 0.012}.get(distiller, 0.006)
    return float(min(0.985, base + bonus + rng.normal(0, 0.008)))


def _arch(rng: np.random.Generator) -> dict[str, Any]:
    stages = int(rng.integers(2, 4))
    return {
        "family": "resnet",
        "stem": int(rng.choice([8, 16, 32])),
        "stages": [{"channels": int(rng.choice(CHANNELS)), "depth": int(rng.integers(1, 4))} for _ in range(stages)],
    }


def _optuna_params(arch: dict[str, Any], distiller: str, settings: dict[str, Any], distillers: tuple[str, ...]):
    params: dict[str, Any] = {"stem": arch["stem"], "stages": len(arch["stages"])}
    dists: dict[str, Any] = {
        "stem": CategoricalDistribution([8, 16, 32]),
        "stages": IntDistribution(2, 3),
    }
    for i, stage in enumerate(arch["stages"]):
        params[f"s{i}.channels"], dists[f"s{i}.channels"] = stage["channels"], CategoricalDistribution(CHANNELS)
        params[f"s{i}.depth"], dists[f"s{i}.depth"] = stage["depth"], IntDistribution(1, 3)
    if len(distillers) > 1:
        params["distiller"], dists["distiller"] = distiller, CategoricalDistribution(list(distillers))
    for key, value in settings.items():
        params[key], dists[key] = value, SETTING_SPACE[key.split(".", 1)[1]]
    return params, dists


def make_run_dir(root: Path, spec: RunSpec) -> Path:
    """Write a run directory for ``spec`` under ``root`` and return it."""
    rng = np.random.default_rng(spec.seed)
    run = root
    run.mkdir(parents=True, exist_ok=True)
    name = run.name
    objectives = list(spec.objectives)
    directions = ["maximize"] + ["minimize"] * (len(objectives) - 1)
    storage = f"sqlite:///{(run / 'optuna.db').resolve()}"
    study_name = f"{name}-20250101T000000"
    (run / "study.yaml").write_text(yaml.safe_dump({"name": name, "search": {"objectives": objectives}}))

    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    ot_trials: list[optuna.trial.FrozenTrial] = []
    archs: list[dict[str, Any]] = []
    for number in range(spec.trials):
        # repeat some architectures so that same-architecture ce pairing has something to find
        arch = archs[int(rng.integers(len(archs)))] if archs and rng.random() < 0.25 else _arch(rng)
        archs.append(arch)
        distiller = spec.distillers[number % len(spec.distillers)]
        settings: dict[str, Any] = {}
        if distiller != "ce":
            settings = {
                f"{distiller}.temperature": round(float(rng.uniform(1, 8)), 2),
                f"{distiller}.alpha": round(float(rng.uniform(0.1, 0.95)), 2),
            }
        if distiller == "offline":  # knowledge types searched too: the comparison splits them
            settings["offline.response"] = str(rng.choice(["kd", "dkd"]))
            settings["offline.feature"] = str(rng.choice(["none", "at"]))
        params = arch_params(arch)
        status = "COMPLETE"
        if number >= spec.trials - spec.running:
            status = "RUNNING"
        elif spec.fail_every and number % spec.fail_every == spec.fail_every - 1:
            status = "FAILED"
        elif spec.prune_every and number % spec.prune_every == spec.prune_every - 1:
            status = "PRUNED"
        if number == 5 and spec.trials > 100:
            status = "REJECTED"
        epochs = {"COMPLETE": spec.max_epochs, "PRUNED": 3, "RUNNING": 5, "FAILED": 2, "REJECTED": 0}[status]
        if status == "PRUNED" and number % 2:
            epochs = 6  # a later rung of the scheduler
        final = _accuracy(params, distiller, rng)
        curve = [final - (0.5 - 0.02 * e) * math.exp(-e / 2.5) for e in range(1, epochs + 1)]
        accuracy = curve[-1] if curve and status != "FAILED" else math.nan
        metrics = {
            k: params * unit * float(rng.uniform(0.9, 1.1)) if k == "latency_ms" else round(params * unit)
            for k, unit in OBJECTIVE_UNITS.items()
        }
        if status == "REJECTED":
            metrics = {k: v * 40 for k, v in metrics.items()}
        row = {
            "trial_id": f"t{number:04d}",
            "number": number,
            "status": status,
            "epochs": epochs,
            "max_epochs": spec.max_epochs,
            "val_accuracy": accuracy,
            "test_accuracy": math.nan,
            **metrics,
            "distiller": distiller,
            "family": "resnet",
            "arch": arch,
            "arch_summary": summary(arch),
            "pareto": False,
            "error": {
                "FAILED": "RuntimeError: loss is NaN at epoch 2",
                "REJECTED": "rejected by constraint: max_params",
            }.get(status, ""),
            "seconds": round(epochs * float(rng.uniform(2.0, 4.0)), 2),
            "student_path": "",
            **settings,
        }
        rows.append(row)
        seconds = 0.0
        for epoch, value in enumerate(curve[: epochs if status != "FAILED" else 1], start=1):
            seconds += float(rng.uniform(2, 4))
            curves.append(
                {
                    "trial_id": row["trial_id"],
                    "epoch": epoch,
                    "val_accuracy": value,
                    "train_loss": 2.3 * math.exp(-epoch / 4),
                    "seconds": round(seconds, 2),
                    "images_per_second": 3000.0,
                }
            )
        ot_params, dists = _optuna_params(arch, distiller, settings, spec.distillers)
        state = {
            "COMPLETE": TrialState.COMPLETE,
            "PRUNED": TrialState.PRUNED,
            "FAILED": TrialState.FAIL,
            "RUNNING": TrialState.RUNNING,
            "REJECTED": TrialState.FAIL,
        }[status]
        values = [accuracy] + [metrics[o] for o in objectives[1:]] if state == TrialState.COMPLETE else None
        ot_trials.append(create_trial(state=state, params=ot_params, distributions=dists, values=values))

    _mark_pareto(rows, objectives, rng)
    write_table(run / "trials.csv", rows, TRIAL_COLUMNS)
    write_table(run / "curves.csv", curves, CURVE_COLUMNS)
    teachers = _teachers()
    indicator = StudyHypervolume(objectives, teachers[0] if spec.teachers else None)
    write_table(run / "hypervolume.csv", _hypervolume(rows, indicator), HYPERVOLUME_COLUMNS)
    members = [
        {
            "trial_id": r["trial_id"],
            "arch": r["arch"],
            "arch_summary": r["arch_summary"],
            "distiller": r["distiller"],
            "settings": {k.split(".", 1)[1]: v for k, v in r.items() if k.startswith(f"{r['distiller']}.")},
            "metrics": {k: r[k] for k in ("val_accuracy", "test_accuracy", *OBJECTIVE_UNITS)},
            "student_path": r["student_path"],
        }
        for r in rows
        if r["pareto"]
    ]
    for member in members:  # stand-ins for the saved students (the report only links to them)
        (run / member["student_path"]).mkdir(parents=True)
        (run / member["student_path"] / "model.json").write_text("{}")
    if spec.state != "running" or members:
        write_json(
            run / "pareto.json",
            {"objectives": objectives, "reference_point": indicator.reference_point(), "members": members},
        )
    if spec.teachers:
        write_json(run / "teachers.json", teachers)
    write_json(
        run / "run.json",
        {
            "study_name": study_name,
            "storage": storage,
            "objectives": objectives,
            "directions": directions,
            "state": spec.state,
            "started": "2025-01-01T00:00:00",
            "updated": "2025-01-01T01:23:45",
            "trials_requested": max(spec.trials, 12),
            "scheduler": "asha" if spec.prune_every else "fifo",
            **spec.extra,
        },
    )
    study = optuna.create_study(storage=storage, study_name=study_name, directions=directions)
    study.add_trials(ot_trials)
    study._storage.remove_session()  # close SQLite so a tmp dir can be deleted on any platform
    return run


def _mark_pareto(rows: list[dict[str, Any]], objectives: list[str], rng: np.random.Generator) -> None:
    """Fill ``pareto``, ``test_accuracy`` and ``student_path`` as the search does (test for members only)."""
    complete = [r for r in rows if r["status"] == "COMPLETE"]
    for r in complete:
        dominated = any(
            o is not r
            and o["val_accuracy"] >= r["val_accuracy"]
            and all(o[k] <= r[k] for k in objectives[1:])
            and (o["val_accuracy"] > r["val_accuracy"] or any(o[k] < r[k] for k in objectives[1:]))
            for o in complete
        )
        r["pareto"] = not dominated
        if r["pareto"]:
            r["test_accuracy"] = r["val_accuracy"] + float(rng.normal(-0.004, 0.006))
            r["student_path"] = f"students/{r['trial_id']}"


def _hypervolume(rows: list[dict[str, Any]], indicator: StudyHypervolume) -> list[dict[str, Any]]:
    """hypervolume.csv as the search writes it: after each finished trial, over the COMPLETE ones so far."""
    out, done, epochs, seconds = [], [], 0, 0.0
    for count, r in enumerate((r for r in rows if r["status"] != "RUNNING"), start=1):
        epochs += r["epochs"]
        seconds += r["seconds"]
        done += [r] if r["status"] == "COMPLETE" else []
        out.append(
            {
                "finished": count,
                "trial_id": r["trial_id"],
                "hypervolume": indicator(done),
                "student_epochs": epochs,
                "wall_seconds": round(seconds / 2, 1),  # two trials at a time
            }
        )
    return out


def _teachers() -> list[dict[str, Any]]:
    out = []
    for name, role, arch, val, test in (
        ("teacher", "teacher", TEACHER, 0.989, 0.983),
        ("assistant", "assistant", ASSISTANT, 0.978, 0.972),
    ):
        params = arch_params(arch)
        out.append(
            {
                "name": name,
                "role": role,
                "key": f"{name}-key",
                "arch": arch,
                "arch_summary": summary(arch),
                "params": params,
                "flops": params * 60,
                "val_accuracy": val,
                "test_accuracy": test,
                "path": f"/cache/teachers/{name}",
            }
        )
    return out
