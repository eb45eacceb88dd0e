"""Run directories written by the real ``RunDirectory`` from synthetic Tune events (no Ray, no training).

Used by the report tests (fixtures in every state) and by ``nas-kd bench driver`` (the bookkeeping's cost
per event). Fake trials carry what Tune's trials carry for the callback (``trial_id``, ``config``,
``checkpoint``, ``status``, ``last_result``, ``error_file``); results carry what ``train_trial`` reports.
Numbers are made up but plausible (accuracy grows with log-params, distillation helps a little).

What ``RunDirectory`` does not write comes from where a real search gets it: ``run.json``/``study.yaml``
(the runner's first write), ``teachers.json`` and the Optuna study (``optuna.db``, written by Optuna).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nas_kd.arch import arch_summary
from nas_kd.results import read_json, write_json
from nas_kd.search.bookkeeping import RunDirectory
from nas_kd.search.pareto import StudyHypervolume, directions
from nas_kd.search.progress import SearchProgress

CHANNELS = [8, 16, 24, 32, 48, 64]
TEACHER = {"family": "resnet", "stem": 32, "stages": [{"channels": c, "depth": 2} for c in (32, 64, 128)]}
ASSISTANT = {"family": "resnet", "stem": 16, "stages": [{"channels": c, "depth": 2} for c in (16, 32, 64)]}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
OBJECTIVE_UNITS = {"params": 1.0, "flops": 60.0, "model_bytes": 4.0, "latency_ms": 2e-5}
STUDY_STARTED = "2025-01-01T00:00:00"


@dataclass
class RunSpec:
    """What to synthesise; the defaults are a finished two-objective study with a ``ce`` arm."""

    trials: int
    state: str = "finished"  # finished | interrupted | running (run.json's state)
    objectives: tuple[str, ...] = ("val_accuracy", "params")
    distillers: tuple[str, ...] = ("ce", "offline")
    max_epochs: int = 12
    running: int = 0  # the last n trials are still RUNNING when the files are read
    fail_every: int = 0  # every n-th trial FAILED (0: none)
    prune_every: int = 0  # every n-th trial PRUNED by the scheduler
    reject: tuple[int, ...] = ()  # trial numbers rejected by a constraint
    concurrent: int = 4  # trials in flight at once (their events interleave, as under Tune)
    teachers: bool = True
    students: bool = True  # fake checkpoints holding a student, so Pareto members are exported
    optuna: bool = True  # write the Optuna study (the report's importances read it)
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # more run.json keys


class FakeCheckpoint:
    """Stands in for a Tune checkpoint: ``as_directory()`` yields a folder with ``student/model.json``."""

    def __init__(self, folder: Path):
        self.folder = folder
        (folder / "student").mkdir(parents=True, exist_ok=True)
        (folder / "student" / "model.json").write_text("{}")

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        yield str(self.folder)


@dataclass
class FakeTrial:
    trial_id: str
    config: dict[str, Any]
    checkpoint: Any = None
    status: str = "PENDING"
    last_result: dict[str, Any] = field(default_factory=dict)
    error_file: str | None = None


@dataclass
class EpochResults:
    """A trial's per-epoch results, made when read (10,000 trials x 20 epochs of dicts would take a GB)."""

    epochs: int
    max_epochs: int
    final: float
    test_gap: float
    sizes: dict[str, Any]
    number: int
    robust: bool = False  # report robust_accuracy: measured at the last epoch only, NaN before (as trials do)

    def __len__(self) -> int:
        return self.epochs

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch = range(1, self.epochs + 1)[index]
        result = {
            "epoch": epoch,
            "val_accuracy": self.final - (0.5 - 0.02 * epoch) * math.exp(-epoch / 2.5),
            "train_loss": 2.3 * math.exp(-epoch / 4),
            "epoch_seconds": 2.0 + (7 * epoch + self.number) % 20 / 10,
            "images_per_second": 3000.0,
            **self.sizes,
        }
        if epoch == self.max_epochs:
            result["test_accuracy"] = result["val_accuracy"] + self.test_gap
            result["worst_class"] = CLASS_NAMES[self.number % len(CLASS_NAMES)]
            result["worst_class_accuracy"] = result["val_accuracy"] - 0.15
        if self.robust:
            last = epoch == self.max_epochs
            result["robust_accuracy"] = result["val_accuracy"] * (0.5 + self.test_gap) if last else math.nan
        return result

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(self.epochs))


@dataclass
class TrialPlan:
    """One synthetic trial: its Tune trial, the results it will report, and how it ends."""

    trial: FakeTrial
    results: Any  # a sequence of result dicts (EpochResults, or one rejection)
    ending: str  # complete | error | none (still running)


def arch_params(arch: dict[str, Any]) -> int:
    """A ResNet-like parameter count: 3x3 convs, two per block, plus a 10-way head."""
    total, width = 27 * arch["stem"], arch["stem"]
    for stage in arch["stages"]:
        for block in range(stage["depth"]):
            c_in = width if block == 0 else stage["channels"]
            total += 9 * c_in * stage["channels"] + 9 * stage["channels"] ** 2
        width = stage["channels"]
    return total + 10 * width + 10


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


def _status(number: int, spec: RunSpec) -> str:
    if number >= spec.trials - spec.running:
        return "RUNNING"
    if number in spec.reject:
        return "REJECTED"
    if spec.fail_every and number % spec.fail_every == spec.fail_every - 1:
        return "FAILED"
    if spec.prune_every and number % spec.prune_every == spec.prune_every - 1:
        return "PRUNED"
    return "COMPLETE"


def plan_trials(spec: RunSpec, workdir: Path) -> list[TrialPlan]:
    """Every trial of ``spec`` with the results Tune would hand the callback, in trial-number order."""
    rng = np.random.default_rng(spec.seed)
    width = max(4, len(str(max(spec.trials - 1, 0))))
    checkpoint = FakeCheckpoint(workdir / "checkpoint") if spec.students else None
    error_file = workdir / "error.txt"
    error_file.write_text("Failure # 1\nTraceback (most recent call last):\nRuntimeError: loss is NaN at epoch 2\n")
    archs: list[dict[str, Any]] = []
    plans = []
    for number in range(spec.trials):
        # repeat some architectures so that same-architecture ce pairing has something to find
        arch = archs[int(rng.integers(len(archs)))] if archs and rng.random() < 0.25 else _arch(rng)
        archs.append(arch)
        distiller = spec.distillers[number % len(spec.distillers)]
        settings: dict[str, Any] = {}
        if distiller != "ce":
            settings = {
                "temperature": round(float(rng.uniform(1, 8)), 2),
                "alpha": round(float(rng.uniform(0.1, 0.95)), 2),
            }
        if distiller == "offline":  # knowledge types searched too: the comparison splits them
            settings["response"] = str(rng.choice(["kd", "dkd"]))
            settings["feature"] = str(rng.choice(["none", "at"]))
        status = _status(number, spec)
        epochs = {"COMPLETE": spec.max_epochs, "PRUNED": 3, "RUNNING": 5, "FAILED": 2, "REJECTED": 1}[status]
        if status == "PRUNED" and number % 2:
            epochs = 6  # a later rung of the scheduler
        epochs = min(epochs, spec.max_epochs - (status in ("PRUNED", "RUNNING")))
        params = arch_params(arch)
        sizes = {
            k: params * unit * float(rng.uniform(0.9, 1.1)) if k == "latency_ms" else round(params * unit)
            for k, unit in OBJECTIVE_UNITS.items()
        }
        final = _accuracy(params, distiller, rng)
        test_gap = float(rng.normal(-0.004, 0.006))
        if status == "REJECTED":  # the trainable measures the student and reports it over the limit
            results: Any = [{"epoch": 0, "rejected": "max_params", **{k: v * 40 for k, v in sizes.items()}}]
        else:
            robust = "robust_accuracy" in spec.objectives
            results = EpochResults(max(epochs, 1), spec.max_epochs, final, test_gap, sizes, number, robust)
        config = {
            "arch": arch,
            "distiller": distiller,
            "settings": settings,
            "seed": spec.seed,
            "optuna_number": number,
        }
        trial = FakeTrial(
            trial_id=f"t{number:0{width}d}",
            config=config,
            checkpoint=checkpoint,
            error_file=str(error_file) if status == "FAILED" else None,
        )
        ending = {"FAILED": "error", "RUNNING": "none"}.get(status, "complete")
        plans.append(TrialPlan(trial, results, ending))
    return plans


Event = tuple[str, FakeTrial, dict[str, Any] | None]


def tune_events(plans: list[TrialPlan], concurrent: int) -> Iterator[Event]:
    """(kind, trial, result) in the order Tune would deliver them with ``concurrent`` trials in flight:
    ``start``, ``result`` (one per epoch), then ``complete`` or ``error`` (none for a still-running trial)."""
    queue = iter(plans)
    active: list[tuple[TrialPlan, Iterator[dict[str, Any]]]] = []
    turn = 0
    while True:
        while len(active) < concurrent:
            plan = next(queue, None)
            if plan is None:
                break
            plan.trial.status = "RUNNING"
            active.append((plan, iter(plan.results)))
            yield "start", plan.trial, None
        if not active:
            return
        turn %= len(active)
        plan, results = active[turn]
        result = next(results, None)
        if result is not None:
            plan.trial.last_result = result
            yield "result", plan.trial, result
            turn += 1
            continue
        active.pop(turn)
        if plan.ending == "complete":
            plan.trial.status = "TERMINATED"
            yield "complete", plan.trial, None
        elif plan.ending == "error":
            plan.trial.status = "ERROR"
            yield "error", plan.trial, None
        # "none": a trial still running when the files are read (it reports nothing more)


def deliver(run: RunDirectory, kind: str, trial: FakeTrial, result: dict[str, Any] | None) -> None:
    """Hand one event to the callback as Tune's controller does, then one turn of Tune's loop."""
    if kind == "start":
        run.on_trial_start(0, [], trial)
    elif kind == "result":
        run.on_trial_result(0, [], trial, result)
    elif kind == "complete":
        run.on_trial_complete(0, [], trial)
    else:
        run.on_trial_error(0, [], trial)
    run.on_step_end(0, [])


class Silent(SearchProgress):
    """A display that shows nothing (tests and the bench measure the bookkeeping, not printing)."""

    def emit(self, line: str) -> None:
        pass


def start_run_dir(run_dir: Path, spec: RunSpec) -> dict[str, Any]:
    """What the runner writes before the first trial: study.yaml, run.json (and teachers.json)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    objectives = list(spec.objectives)
    (run_dir / "study.yaml").write_text(
        yaml.safe_dump({"name": run_dir.name, "search": {"objectives": objectives, "trials": spec.trials}})
    )
    run = {
        "study_name": f"{run_dir.name}-20250101-000000-1",
        "storage": f"sqlite:///{(run_dir / 'optuna.db').resolve()}",
        "objectives": objectives,
        "directions": directions(objectives),
        "state": "running",
        "started": STUDY_STARTED,
        "trials_requested": max(spec.trials, 12),
        "scheduler": "asha" if spec.prune_every else "fifo",
        "wall_seconds": 0.0,
        "data_notes": [],
        "classes": CLASS_NAMES,
    }
    write_json(run_dir / "run.json", run)
    if spec.teachers:
        write_json(run_dir / "teachers.json", teachers_json())
    return run


def write_synthetic_run(
    run_dir: Path,
    spec: RunSpec,
    *,
    flush_seconds: float = 0.0,
    progress: SearchProgress | None = None,
    timer: Callable[[str, FakeTrial], Any] | None = None,
) -> RunDirectory:
    """Write a whole run directory for ``spec`` through ``RunDirectory`` and return the callback.

    ``timer(kind, trial)`` (optional) is a context manager entered around each event's delivery: the bench
    times the bookkeeping with it.
    """
    run_dir = Path(run_dir)
    start_run_dir(run_dir, spec)
    with tempfile.TemporaryDirectory() as workdir:  # the fake checkpoint and error file
        return _feed(run_dir, spec, plan_trials(spec, Path(workdir)), flush_seconds, progress, timer)


def _feed(
    run_dir: Path,
    spec: RunSpec,
    plans: list[TrialPlan],
    flush_seconds: float,
    progress: SearchProgress | None,
    timer: Callable[[str, FakeTrial], Any] | None,
) -> RunDirectory:
    objectives = list(spec.objectives)
    run = RunDirectory(
        run_dir,
        objectives,
        spec.max_epochs,
        StudyHypervolume(objectives, teachers_json()[0] if spec.teachers else None),
        flush_seconds=flush_seconds,
        progress=progress or Silent(objectives, spec.trials, spec.max_epochs),
    )
    run.setup()
    for kind, trial, result in tune_events(plans, spec.concurrent):
        with timer(kind, trial) if timer else contextlib.nullcontext():
            deliver(run, kind, trial, result)
    if spec.state == "finished":
        run.on_experiment_end([p.trial for p in plans])
    else:  # the driver is still at work (or was killed): the timer's flush is the last that happened
        run.flush()
        run.close_files()
    info = {"state": spec.state, "updated": "2025-01-01T01:23:45", **spec.extra}
    write_json(run_dir / "run.json", {**read_json(run_dir / "run.json"), **info})
    if spec.optuna:
        write_optuna_study(run_dir, plans, spec)
    return run


def write_optuna_study(run_dir: Path, plans: list[TrialPlan], spec: RunSpec) -> None:
    """The study Optuna would have recorded for these trials (what the report's importances read)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    setting_space = {
        "temperature": FloatDistribution(1.0, 8.0),
        "alpha": FloatDistribution(0.1, 0.95),
        "response": CategoricalDistribution(["kd", "dkd"]),
        "feature": CategoricalDistribution(["none", "at"]),
    }
    states = {"complete": TrialState.COMPLETE, "error": TrialState.FAIL, "none": TrialState.RUNNING}
    objectives = list(spec.objectives)
    trials = []
    for plan in plans:
        arch, distiller = plan.trial.config["arch"], plan.trial.config["distiller"]
        params: dict[str, Any] = {"stem": arch["stem"], "stages": len(arch["stages"])}
        dists: dict[str, Any] = {"stem": CategoricalDistribution([8, 16, 32]), "stages": IntDistribution(2, 3)}
        for i, stage in enumerate(arch["stages"]):
            params[f"s{i}.channels"], dists[f"s{i}.channels"] = stage["channels"], CategoricalDistribution(CHANNELS)
            params[f"s{i}.depth"], dists[f"s{i}.depth"] = stage["depth"], IntDistribution(1, 3)
        if len(spec.distillers) > 1:
            params["distiller"], dists["distiller"] = distiller, CategoricalDistribution(list(spec.distillers))
        for key, value in plan.trial.config["settings"].items():
            params[f"{distiller}.{key}"], dists[f"{distiller}.{key}"] = value, setting_space[key]
        last = plan.results[-1]
        complete = plan.ending == "complete" and "rejected" not in last and last["epoch"] == spec.max_epochs
        state = TrialState.COMPLETE if complete else states[plan.ending]
        if plan.ending == "complete" and not complete:
            state = TrialState.FAIL if "rejected" in last else TrialState.PRUNED
        values = [last[o] for o in objectives] if state == TrialState.COMPLETE else None
        trials.append(create_trial(state=state, params=params, distributions=dists, values=values))
    info = read_json(run_dir / "run.json")
    study = optuna.create_study(
        storage=info["storage"], study_name=info["study_name"], directions=directions(objectives)
    )
    study.add_trials(trials)
    study._storage.remove_session()  # close SQLite so a tmp dir can be deleted on any platform


def teachers_json() -> list[dict[str, Any]]:
    """teachers.json as the runner writes it, for a teacher and an assistant."""
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
                "arch_summary": arch_summary(arch),
                "params": params,
                "flops": params * 60,
                "val_accuracy": val,
                "test_accuracy": test,
                "path": f"/cache/teachers/{name}",
            }
        )
    return out
