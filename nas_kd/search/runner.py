"""``nas-kd search``: the driver. Teachers first, then Ray Tune runs Optuna-sampled students.

ray.init -> teachers ready (trained once or loaded from cache) -> teacher bundles into the object
store once (``tune.with_parameters``) -> Tuner(train_trial, OptunaSearch(define-by-run space),
scheduler) -> run directory kept current by ``RunDirectory`` -> report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import ray
import torch
import yaml
from ray import tune

from nas_kd.arch import arch_summary, measure_latency_ms
from nas_kd.config import Study, StudyError, load_study, study_from_dict
from nas_kd.data import Dataset
from nas_kd.distill import parse_distiller_space
from nas_kd.pipeline import ready_teachers, study_data
from nas_kd.plugins import import_plugins
from nas_kd.preflight import check_study
from nas_kd.report import write_report
from nas_kd.results import read_json, read_trials, write_json
from nas_kd.search.bookkeeping import RunDirectory
from nas_kd.search.candidates import SizeCheck
from nas_kd.search.metrics import StudyMetricsCallback
from nas_kd.search.optuna_search import OVER_SIZE, PRESCREENED_OUT, REPEAT, UNTRAINED, PruningAwareOptunaSearch
from nas_kd.search.pareto import StudyHypervolume, directions, modes
from nas_kd.search.prescreen import Prescreen
from nas_kd.search.progress import accuracy_text, make_progress, size_text
from nas_kd.search.resume import ReconcileRestored
from nas_kd.search.schedulers import make_scheduler
from nas_kd.search.trainable import train_trial
from nas_kd.space import load_space
from nas_kd.teachers import teacher_bundle

TUNE_DIR = "tune"
# Tune warns on every per-epoch checkpoint of short trials; epoch checkpoints are what make resume exact.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


class SearchError(RuntimeError):
    """A user-facing problem with starting or resuming a search (one line, exit code 2)."""


@dataclass
class SearchResult:
    run_dir: Path
    trials: pd.DataFrame
    pareto: list[dict[str, Any]]
    report: Path | None


class TrialSpace:
    """The define-by-run space: architecture and distiller sampled together. A picklable object (not a
    lambda) so the searcher can be checkpointed."""

    def __init__(self, space_spec: Any, distiller_spec: Any, seed: int):
        self.space_spec, self.distiller_spec, self.seed = space_spec, distiller_spec, seed

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        arch = load_space(self.space_spec).suggest(trial)
        distiller, settings = parse_distiller_space(self.distiller_spec).suggest(trial)
        return {
            "arch": arch,
            "distiller": distiller,
            "settings": settings,
            "seed": self.seed,
            "optuna_number": trial.number,
        }


def make_sampler(study: Study) -> optuna.samplers.BaseSampler:
    seed, trials = study.seed, study.search.trials
    if study.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if study.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(50, max(4, trials // 3)))
    # multivariate+group handle the conditional (per-stage) parameters; constant_liar spreads parallel asks.
    with warnings.catch_warnings():  # both are "experimental" in Optuna; we rely on them knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=max(4, trials // 4)
        )


def optuna_storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'optuna.db').resolve()}"


def make_searcher(study: Study, run_dir: Path, study_name: str, data: Dataset) -> Any:
    resolved = study.resolved()
    objectives, prescreen = study.search.objectives, study.search.prescreen
    return PruningAwareOptunaSearch(
        space=TrialSpace(resolved["search"]["space"], resolved["distiller"], study.seed),
        metric=objectives,
        mode=modes(objectives),
        sampler=make_sampler(study),
        study_name=study_name,
        storage=optuna.storages.RDBStorage(optuna_storage_url(run_dir)),
        max_epochs=study.train.epochs,
        constraints={k.removeprefix("max_"): v for k, v in study.search.constraints.items()},
        size_check=SizeCheck(study.search.constraints, data.input_shape, data.num_classes),
        prescreen=Prescreen(prescreen, data.train, data.num_classes, study.seed) if prescreen else None,
    )


def start_ray(address: str | None, cpus: int | None, dashboard: bool, dashboard_host: str, log: Any = print) -> None:
    """Join ``address`` or start a local cluster; the dashboard on 127.0.0.1 unless asked otherwise."""
    if ray.is_initialized():
        return
    if address:
        context = ray.init(address=address, log_to_driver=False)
    else:
        context = ray.init(
            address="local",  # a private local cluster, never one another process happens to run here
            num_cpus=cpus,
            include_dashboard=dashboard,
            dashboard_host=dashboard_host,
            log_to_driver=False,
            _system_config={"metrics_report_interval_ms": 1000},
        )
    url = getattr(context, "dashboard_url", None)
    if url:
        log(f"Ray dashboard: http://{url}  (token auth is on: `ray get-auth-token` prints the token; "
            "the browser asks for it, the REST API wants 'Authorization: Bearer <token>')")  # fmt: skip


def run_dir_of(study: Study) -> Path:
    return Path(study.runs_dir).resolve() / study.name


def _existing_run(study: Study, run_dir: Path, resume: bool, fresh: bool) -> dict[str, Any] | None:
    """The run to resume (its run.json), or None for a new run; refuses to clobber an existing run. Writes nothing."""
    exists = (run_dir / "run.json").exists()
    source = study.path or "<study>"
    if resume:
        # A run killed before its first trial (teachers still training) has run.json but no tune/: it continues
        # too, with its teachers' epoch checkpoints and a fresh Tuner on the same Optuna study.
        if not exists:
            raise SearchError(f"{source}: nothing to resume: {run_dir} holds no run")
        return read_json(run_dir / "run.json")
    if exists and not fresh:
        raise SearchError(
            f"{source}: run directory {run_dir} already exists; continue it with --resume, "
            "or start over with --fresh (deletes it)"
        )
    return None


def _new_run_dir(study: Study, run_dir: Path, data: Dataset) -> dict[str, Any]:
    """Create the run directory (replacing one that ``--fresh`` was asked to replace) and its run.json."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "study.yaml").write_text(yaml.safe_dump(study.resolved(), sort_keys=False))
    run = {
        # A unique Optuna study name per run: re-using a name silently appends to an old study.
        "study_name": f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        "storage": optuna_storage_url(run_dir),
        "objectives": study.search.objectives,
        "directions": directions(study.search.objectives),
        "state": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "trials_requested": study.search.trials,
        "scheduler": study.search.scheduler.name,
        "wall_seconds": 0.0,
        "data_notes": data.notes,  # e.g. that the data has no test split (test accuracy is then n/a)
        "classes": data.class_names,
    }
    write_json(run_dir / "run.json", run)
    return run


def _teachers_json(cached: list[Any], run_dir: Path) -> None:
    """teachers.json: each teacher's cost and accuracy, measured like a student's (latency_ms included)."""
    teachers = []
    for c in cached:
        model = c.load("cpu")
        teachers.append(
            {
                "name": c.info.get("name", c.key),
                "role": "teacher",
                "key": c.key,
                "arch": c.info["arch"],
                "arch_summary": arch_summary(c.info["arch"]),
                "params": c.info["params"],
                "flops": c.info["flops"],
                "latency_ms": measure_latency_ms(model, tuple(c.info["input_shape"])),
                "val_accuracy": c.info.get("val_accuracy"),
                "test_accuracy": c.info.get("test_accuracy"),
                "pretrained": bool(c.info.get("pretrained")),  # given with weights: evaluated, never trained
                "weights": c.info.get("weights"),
                "path": str(c.path),
            }
        )
    write_json(run_dir / "teachers.json", teachers)


def run_study(
    study_or_path: Study | str | Path,
    *,
    resume: bool = False,
    fresh: bool = False,
    address: str | None = None,
    runs_dir: str | Path | None = None,
    dashboard: bool = True,
    dashboard_host: str = "127.0.0.1",
    cpus: int | None = None,
    report: bool = True,
    log: Any = print,
    verbose: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> SearchResult:
    """Run (or resume) a search study; returns the trials table and the Pareto set.

    ``overrides`` are dotted study fields, e.g. ``run_study("s.yaml", overrides={"train.epochs": 2})``; a
    mapping of its own, so that a field may share a name with an option (``runs_dir``).
    """
    if isinstance(study_or_path, Study):
        study = study_or_path
        if overrides:
            raise ValueError("overrides apply to a study file path, not to a Study object")
    else:
        study = load_study(study_or_path, dict(overrides or {}))
    import_plugins(study.plugins)  # a no-op when load_study imported them; a Study built in Python may not have
    if study.search.space is None:
        raise StudyError(
            study.path or "<study>", "search.space", "a search needs a space: a file, a list, or a mapping"
        )
    if runs_dir is not None:  # teachers are cached under the same runs_dir as the run itself
        study = study.model_copy(update={"runs_dir": str(Path(runs_dir).resolve())})
    run_dir = run_dir_of(study)
    run = _existing_run(study, run_dir, resume, fresh)
    if run is not None:  # continue exactly the study that was started (overrides and files as they were then)
        source = study.path
        study = study_from_dict(yaml.safe_load((run_dir / "study.yaml").read_text()), run_dir / "study.yaml")
        study.path = source
    # Everything that would fail once Ray runs fails here, before anything is written.
    data = study_data(study, torch.device("cpu"), log)
    check_study(study, data)
    for note in data.notes:
        log(f"note: {note}")
    if run is None:
        run = _new_run_dir(study, run_dir, data)
    started_ray = not ray.is_initialized()
    try:
        start_ray(address, cpus, dashboard, dashboard_host, log)
        cached = ready_teachers(study, data, log)
        _teachers_json(cached, run_dir)
        trainable = tune.with_parameters(
            train_trial,
            study=study.resolved(),
            teachers=[teacher_bundle(c) for c in cached],
        )
        resources = {"cpu": study.resources.cpu, "gpu": study.resources.gpu}
        trainable = tune.with_resources(trainable, resources)
        metrics = StudyMetricsCallback(study.name, study.train.epochs)
        objectives = study.search.objectives
        bookkeeping = RunDirectory(
            run_dir,
            objectives,
            study.train.epochs,
            _hypervolume_fn(study, cached),
            on_front=metrics.update_front,
            progress=make_progress(objectives, study.search.trials, study.train.epochs, verbose=verbose, log=log),
        )
        fresh_callbacks: list[tune.Callback] = [bookkeeping, metrics]
        if resume:
            fresh_callbacks.append(ReconcileRestored(bookkeeping.forget_trials, run["storage"], run["study_name"], log))
        log(f"searching {study.search.trials} trials x {study.train.epochs} epochs of {study.name} -> {run_dir}")
        with quiet_libraries():
            if resume and tune.Tuner.can_restore(str(run_dir / TUNE_DIR)):
                tuner = restore_tuner(run_dir / TUNE_DIR, trainable, fresh_callbacks)
            else:
                if resume:  # killed before Tune's first snapshot: start the trials over, same Optuna study
                    shutil.rmtree(run_dir / TUNE_DIR, ignore_errors=True)
                scheduler, scheduler_callbacks = make_scheduler(
                    study.search.scheduler, study.search.objectives, study.train.epochs
                )
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        search_alg=make_searcher(study, run_dir, run["study_name"], data),
                        scheduler=scheduler,
                        num_samples=study.search.trials,
                        max_concurrent_trials=study.search.max_concurrent,
                        reuse_actors=True,
                    ),
                    run_config=tune_run_config(
                        run_dir, [*fresh_callbacks[:1], *scheduler_callbacks, *fresh_callbacks[1:]]
                    ),
                )
            tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    return _finish(study, run_dir, report, log)


def tune_run_config(parent: Path, callbacks: list[tune.Callback]) -> tune.RunConfig:
    """Tune's experiment in ``parent/tune``: the last checkpoint of each trial kept (what a resume restores
    and what holds its student), and a failing trial never ends the others."""
    return tune.RunConfig(
        name=TUNE_DIR,
        storage_path=str(parent),
        callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        verbose=0,
    )


def restore_tuner(path: Path, trainable: Any, fresh_callbacks: list[tune.Callback]) -> tune.Tuner:
    """``Tuner.restore`` with this driver's callbacks: the restored experiment keeps its own scheduler state
    callback, while the run directory, metrics and the reconciler are this driver's objects (their log and
    hooks). ``Tuner.restore`` takes no callbacks, hence the private ``_local_tuner``."""
    tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False)
    run_config = tuner._local_tuner.get_run_config()
    fresh = {type(callback): callback for callback in fresh_callbacks}
    # Same order as at the start (callback states are restored by position); new kinds go last.
    run_config.callbacks = [fresh.pop(type(c), c) for c in run_config.callbacks or []] + list(fresh.values())
    return tuner


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """nas-kd prints one line per trial epoch itself (``RunDirectory``); Tune and Optuna add boxes and notes.

    Tune's new output engine prints its configuration box and result paths even at ``verbose=0``; its legacy
    engine is silent there. Tune and Optuna log routine steps at INFO. Warnings still show, and everything
    is restored afterwards, so a Python caller's own settings survive.
    """
    tune_logger = logging.getLogger("ray.tune")
    output_engine, optuna_level, tune_level = (
        os.environ.get("RAY_AIR_NEW_OUTPUT"),
        optuna.logging.get_verbosity(),
        tune_logger.level,
    )
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tune_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        tune_logger.setLevel(tune_level)
        optuna.logging.set_verbosity(optuna_level)
        if output_engine is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = output_engine


def untrained_candidates(run: dict[str, Any]) -> dict[str, int]:
    """Candidates the searcher answered without a trial (optuna_search.py): repeats, size rejections and those
    the prescreen left out."""
    try:
        trials = optuna.load_study(study_name=run["study_name"], storage=run["storage"]).get_trials(deepcopy=False)
    except KeyError:  # no trial was ever asked for
        trials = []
    answers = [t.user_attrs.get(UNTRAINED) for t in trials]
    return {
        "repeats": answers.count(REPEAT),
        "rejected": answers.count(OVER_SIZE),
        "prescreened_out": answers.count(PRESCREENED_OUT),
    }


def _hypervolume_fn(study: Study, cached: list[Any]) -> Any:
    teacher = cached[0].info if cached else None
    return StudyHypervolume(study.search.objectives, teacher)


def _finish(study: Study, run_dir: Path, report: bool, log: Any) -> SearchResult:
    trials = read_trials(run_dir)
    finished = trials["status"].isin(["COMPLETE", "PRUNED", "FAILED", "REJECTED"]).sum() if len(trials) else 0
    run = read_json(run_dir / "run.json", {})
    run["state"] = "finished" if finished >= study.search.trials else "interrupted"
    run["answered_without_training"] = untrained_candidates(run)
    write_json(run_dir / "run.json", run)
    pareto = read_json(run_dir / "pareto.json", {"members": []})["members"]
    report_path = None
    if report:
        report_path = write_report(run_dir)
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    untrained = run["answered_without_training"]
    log(
        f"\n{study.name}: {run['state']}; trials {counts}; candidates answered without training: "
        f"{untrained['repeats']} repeats, {untrained['rejected']} over a size constraint"
        + (f", {untrained['prescreened_out']} prescreened out" if study.search.prescreen else "")
    )
    log(f"Pareto set ({len(pareto)} students):")
    for member in pareto:
        m = member["metrics"]
        sizes = "  ".join(size_text(name, m.get(name)) for name in study.search.objectives[1:])
        log(
            f"  {member['trial_id']}  val {accuracy_text(m.get('val_accuracy'))}  "
            f"test {accuracy_text(m.get('test_accuracy'))}  {sizes}  {member['distiller']:<13} {member['arch_summary']}"
        )
    if run["state"] == "interrupted":
        log(f"resume with: nas-kd search {study.path} --resume --runs-dir {run_dir.parent}")
    if report_path:
        log(f"report: {report_path}")
    return SearchResult(run_dir, trials, pareto, report_path)
