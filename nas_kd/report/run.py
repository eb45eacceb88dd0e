"""Load a run directory (the ``nas_kd.results`` contract) into one ``RunData`` for the figures.

Tolerant of a study in any state: files that a running search has not written yet read as empty;
only a directory that is not a run directory at all, or a file that cannot be parsed, is an error.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nas_kd.report import data as d
from nas_kd.results import CURVE_COLUMNS, FINAL_COLUMNS, FINAL_DIR, HYPERVOLUME_COLUMNS, read_table
from nas_kd.search.pareto import directions as default_directions

TEACHER_COLUMNS = ["name", "role", "arch_summary", "params", "flops", "val_accuracy", "test_accuracy", "path"]
DEFAULT_OBJECTIVES = ["val_accuracy", "params"]
MIN_IMPORTANCE_TRIALS = 5  # fANOVA on fewer trials is noise, and optuna's evaluators need variation


class ReportError(ValueError):
    """The report cannot be built; ``str()`` is a one-line message for the user."""


@dataclass
class RunData:
    path: Path
    info: dict[str, Any]
    objectives: list[str]
    directions: list[str]
    trials: pd.DataFrame
    category: pd.Series
    curves: pd.DataFrame
    hypervolume: pd.DataFrame
    pareto: dict[str, Any]
    teachers: pd.DataFrame
    student_paths: dict[str, str]
    knowledge_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    final: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FINAL_COLUMNS))  # nas-kd finalize

    @property
    def name(self) -> str:
        """The study's name: its run directory is ``<runs_dir>/<study name>``."""
        return self.path.resolve().name

    @property
    def state(self) -> str:
        return str(self.info.get("state") or "unknown")

    @property
    def size(self) -> str:
        """The size on the main x axis: the first size objective, else params (always measured)."""
        return next((o for o in self.objectives if o in d.SIZE_LABELS), "params")


def load_run(run_dir: str | Path) -> RunData:
    """Read every report input from ``run_dir``; raises ReportError naming the file at fault."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ReportError(f"{path}: no such run directory")
    if not (path / "run.json").is_file() and not (path / "trials.csv").is_file():
        raise ReportError(f"{path}: not a nas-kd run directory (no run.json or trials.csv)")
    info = _json(path / "run.json", {})
    pareto = _json(path / "pareto.json", {})
    if not isinstance(info, dict) or not isinstance(pareto, dict):
        raise ReportError(f"{path}: run.json and pareto.json must each hold a JSON object")
    objectives = list(info.get("objectives") or pareto.get("objectives") or DEFAULT_OBJECTIVES)
    directions = list(info.get("directions") or default_directions(objectives))
    if len(directions) != len(objectives) or objectives[0] != "val_accuracy" or not 2 <= len(objectives) <= 3:
        raise ReportError(
            f"{path / 'run.json'}: objectives must be val_accuracy and one or two others, with directions"
        )
    known = [*d.SIZE_LABELS, *d.SCORE_LABELS]
    unknown = [o for o in objectives[1:] if o not in known]
    if unknown:
        raise ReportError(f"{path / 'run.json'}: unknown objective {unknown[0]!r}; one of {', '.join(known)}")

    trials = d.normalise_trials(_csv(path / "trials.csv", list(d.TRIAL_COLUMNS)))
    curves = _csv(path / "curves.csv", CURVE_COLUMNS)
    hypervolume = _csv(path / "hypervolume.csv", HYPERVOLUME_COLUMNS)
    for column in ("finished", "hypervolume", "student_epochs", "wall_seconds"):
        hypervolume[column] = pd.to_numeric(hypervolume[column], errors="coerce") if column in hypervolume else np.nan
    teachers = _teachers(path / "teachers.json")
    final = _csv(path / FINAL_DIR / "final.csv", FINAL_COLUMNS)
    # one scale for every accuracy in the report, decided over all of them together
    factor = d.percent_factor(trials["val_accuracy"], trials["test_accuracy"], teachers["val_accuracy"])
    final_accuracies = ["val_accuracy", "test_accuracy", "search_val_accuracy", "search_test_accuracy"]
    scaled = (
        (trials, [*d.ACCURACY_COLUMNS, "worst_class_accuracy"]),
        (teachers, d.ACCURACY_COLUMNS),
        (final, final_accuracies),
    )
    for frame, columns in (*scaled, (curves, ["val_accuracy"])):
        for column in columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce") * factor
    if "trial_id" in curves:
        curves["trial_id"] = curves["trial_id"].astype(str)
    if "trial_id" in hypervolume:
        hypervolume["trial_id"] = hypervolume["trial_id"].astype(str)
    final["member"] = final["member"].astype(str)
    return RunData(
        path=path,
        info=info,
        objectives=objectives,
        directions=directions,
        trials=trials,
        category=d.classify(trials, objectives, directions),
        curves=curves,
        hypervolume=hypervolume,
        pareto=pareto,
        teachers=teachers,
        student_paths=_student_paths(path, trials, pareto),
        knowledge_defaults=knowledge_defaults(trials["distiller"].unique()),
        final=final,
    )


def _json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{path}: not readable JSON ({error})") from None


def _csv(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        return read_table(path, columns)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ReportError(f"{path}: not a readable CSV table ({str(error).splitlines()[0]})") from None


def _teachers(path: Path) -> pd.DataFrame:
    raw = _json(path, [])
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ReportError(f"{path}: must hold a JSON list of teacher objects")
    teachers = pd.DataFrame(raw)
    for column in dict.fromkeys([*TEACHER_COLUMNS, *d.ACCURACY_COLUMNS]):
        if column not in teachers:
            teachers[column] = float("nan") if column in ("params", "flops", *d.ACCURACY_COLUMNS) else ""
    for column in ("params", "flops", *d.ACCURACY_COLUMNS):
        teachers[column] = pd.to_numeric(teachers[column], errors="coerce").astype(float)
    teachers["role"] = teachers["role"].fillna("teacher").astype(str)
    teachers["name"] = teachers["name"].fillna("").astype(str)
    return teachers


def _student_paths(path: Path, trials: pd.DataFrame, pareto: dict[str, Any]) -> dict[str, str]:
    """trial_id -> absolute student folder. The run directory's own ``students/<trial_id>`` when it is there
    (a copied or moved run directory points at its own students), else the path pareto.json or the trials
    table recorded (a relative one relative to the run directory)."""
    raw = dict(zip(trials["trial_id"], trials["student_path"], strict=True))
    for member in pareto.get("members") or []:
        if isinstance(member, dict) and member.get("student_path"):
            raw[str(member.get("trial_id"))] = str(member["student_path"])
    out = {}
    for trial, recorded in raw.items():
        if not recorded:
            continue
        own = path.resolve() / "students" / str(trial)
        out[trial] = str(
            own if own.is_dir() else Path(recorded) if Path(recorded).is_absolute() else path.resolve() / recorded
        )
    return out


def knowledge_defaults(names: Any) -> dict[str, dict[str, Any]]:
    """{distiller: {response/feature/relation: default}} from the registry, for settings a run did not
    record (fixed at their defaults). A distiller this installation lacks just gets none."""
    try:
        from nas_kd.distill import DISTILLERS
    except ImportError:  # pragma: no cover - the report still works without the training stack
        return {}
    out = {}
    for name in names:
        fields = DISTILLERS[name].Settings.model_fields if name in DISTILLERS else {}
        out[name] = {k: fields[k].default for k in d.KNOWLEDGE_KEYS if k in fields}
    return out


def param_importances(run: RunData) -> tuple[dict[str, dict[str, float]], str]:
    """fANOVA importances per objective from the run's Optuna study, and a note for the reader.

    The study is opened read-only (no table creation or migration: a search may be writing to it).
    Any failure becomes the note instead of an error: importances are one panel, not the report.
    """
    storage_url = _storage_url(run)
    if storage_url is None:
        return {}, "No Optuna study found (optuna.db is missing)."
    try:
        import optuna
        from optuna.trial import TrialState

        storage = optuna.storages.RDBStorage(storage_url, skip_compatibility_check=True, skip_table_creation=True)
        try:
            names = optuna.study.get_all_study_names(storage)
            name = run.info.get("study_name") or (names[0] if len(names) == 1 else None)
            if name not in names:
                return {}, f"Optuna study {name!r} is not in {storage_url}."
            study = optuna.load_study(study_name=name, storage=storage)
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if len(complete) < MIN_IMPORTANCE_TRIALS:
                return {}, (
                    f"Parameter importances need at least {MIN_IMPORTANCE_TRIALS} COMPLETE trials "
                    f"(this study has {len(complete)})."
                )
            out: dict[str, dict[str, float]] = {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's experimental and small-sample warnings
                for i, objective in enumerate(run.objectives[: len(study.directions)]):
                    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
                    values = optuna.importance.get_param_importances(
                        study, evaluator=evaluator, target=lambda t, i=i: t.values[i]
                    )
                    out[objective] = {k: float(v) for k, v in values.items()}
        finally:
            storage.engine.dispose()
    except Exception as error:  # any optuna/SQLite problem only blanks this one panel
        return {}, f"Parameter importances unavailable: {type(error).__name__}: {str(error).splitlines()[0]}"
    if not any(out.values()):
        return {}, "No parameter was sampled in every COMPLETE trial, so fANOVA has nothing to rank."
    note = (
        f"{len(complete)} COMPLETE trials; parameters present in every one of them "
        "(conditional per-stage parameters of optional stages are left out)"
    )
    return out, note


def _storage_url(run: RunData) -> str | None:
    """The run directory's own optuna.db first (the run dir may have been moved), then run.json's storage."""
    local = run.path / "optuna.db"
    if local.is_file():
        return f"sqlite:///{local.resolve()}"
    url = str(run.info.get("storage") or "")
    if url.startswith("sqlite:///") and Path(url.removeprefix("sqlite:///")).is_file():
        return url
    return None
