"""RunDirectory: what trials.csv says about a failed trial, and the files it keeps, fed synthetic Tune events."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from nas_kd.results import CURVE_COLUMNS, EVENT_LOG, HYPERVOLUME_COLUMNS, read_table, read_trials
from nas_kd.search.bookkeeping import RunDirectory, _error_line, read_events
from nas_kd.search.pareto import StudyHypervolume, directions, pareto_mask
from nas_kd.testing.synthetic_run import (
    RunSpec,
    Silent,
    deliver,
    plan_trials,
    teachers_json,
    tune_events,
    write_synthetic_run,
)

RAY_TRACEBACK = """Failure # 1 (occurred at 2026-11-27_23-19-20)
ray::ImplicitFunc.train() (pid=20360, ip=192.0.2.2, actor_id=2bd2, repr=train_trial)
  File "/venv/ray/tune/trainable/function_trainable.py", line 261, in _trainable_func
    output = fn()
"""


def failed_trial(tmp_path: Path, tail: str) -> SimpleNamespace:
    error_file = tmp_path / "error.txt"
    error_file.write_text(RAY_TRACEBACK + tail)
    return SimpleNamespace(error_file=str(error_file))


def test_plain_exception_is_its_last_line(tmp_path: Path) -> None:
    trial = failed_trial(tmp_path, "nas_kd.train.TrainingDiverged: training loss is nan at epoch 3\n")
    assert _error_line(trial) == "TrainingDiverged: training loss is nan at epoch 3"


def test_validation_error_names_the_fields_not_the_help_link(tmp_path: Path) -> None:
    tail = """pydantic_core._pydantic_core.ValidationError: 2 validation errors for Study
search.space.str
  Input should be a valid string [type=string_type, input_value=[...], input_type=list]
    For further information visit https://errors.pydantic.dev/2.14/v/string_type
"""
    line = _error_line(failed_trial(tmp_path, tail))
    assert line == (
        "ValidationError: 2 validation errors for Study | search.space.str | "
        "Input should be a valid string [type=string_type, input_value=[...], input_type=list]"
    )


def test_without_an_exception_line_the_last_line_is_kept(tmp_path: Path) -> None:
    assert _error_line(failed_trial(tmp_path, "worker died unexpectedly\n")) == "worker died unexpectedly"


# ---------------------------------------------------------------- the run directory RunDirectory writes

SPEC = RunSpec(40, max_epochs=6, prune_every=5, fail_every=7, reject=(3,), students=True, optuna=False, teachers=True)


def complete_front(trials: pd.DataFrame, objectives: list[str]) -> set[str]:
    """The Pareto set recomputed from scratch (batch, moocore) over trials.csv's COMPLETE rows."""
    complete = trials[trials["status"] == "COMPLETE"]
    mask = pareto_mask(complete[objectives].to_numpy(dtype=float), directions(objectives))
    return set(complete["trial_id"][mask])


def test_files_after_a_run_agree_with_the_events(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", SPEC, flush_seconds=3600)
    trials = read_trials(tmp_path / "run")
    assert len(trials) == 40
    statuses = trials["status"].value_counts().to_dict()
    assert statuses == {"COMPLETE": 27, "PRUNED": 7, "FAILED": 5, "REJECTED": 1}
    assert (trials.loc[trials["status"] == "COMPLETE", "epochs"] == 6).all()
    assert trials.loc[trials["status"] == "FAILED", "error"].str.contains("RuntimeError: loss is NaN").all()
    objectives = ["val_accuracy", "params"]
    front = complete_front(trials, objectives)
    assert set(trials.loc[trials["pareto"], "trial_id"]) == front == set(run.front)
    pareto = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert {m["trial_id"] for m in pareto["members"]} == front
    assert sorted(p.name for p in (tmp_path / "run" / "students").iterdir()) == sorted(front)  # evicted: deleted
    curves = read_table(tmp_path / "run" / "curves.csv", CURVE_COLUMNS)
    assert len(curves) == trials["epochs"].sum()  # one line per reported epoch, header once
    hypervolume = read_table(tmp_path / "run" / "hypervolume.csv", HYPERVOLUME_COLUMNS)
    assert list(hypervolume["finished"]) == list(range(1, 41))
    indicator = StudyHypervolume(objectives, teachers_json()[0])
    assert hypervolume["hypervolume"].iloc[-1] == pytest.approx(indicator(trials[trials["pareto"]].to_dict("records")))
    assert hypervolume["hypervolume"].iloc[-1] == pytest.approx(
        indicator(trials[trials["status"] == "COMPLETE"].to_dict("records"))
    )
    assert hypervolume["student_epochs"].iloc[-1] == trials["epochs"].sum()


def test_summaries_wait_for_the_timer_but_the_log_does_not(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = RunDirectory(
        run_dir, ["val_accuracy", "params"], 6, flush_seconds=3600, progress=Silent(["val_accuracy", "params"])
    )
    run.setup()
    plans = plan_trials(RunSpec(5, max_epochs=6, students=False), tmp_path)
    for kind, trial, result in tune_events(plans, 2):
        deliver(run, kind, trial, result)
    assert not (run_dir / "trials.csv").exists()  # summaries are due only after flush_seconds
    assert len(read_events(run_dir / "trials.jsonl")) == 10  # a start and a finish per trial
    run.on_experiment_end([p.trial for p in plans])
    assert (read_trials(run_dir)["status"] == "COMPLETE").sum() == 5


def test_the_front_is_the_batch_front_whatever_the_order() -> None:
    rng = np.random.default_rng(3)
    objectives = ["val_accuracy", "params", "latency_ms"]
    run = RunDirectory("/nonexistent", objectives, 1, progress=Silent(objectives))
    values = np.column_stack([rng.uniform(0.5, 1, 300), rng.integers(1, 50, 300), rng.integers(1, 50, 300)])
    values[10] = values[11]  # a duplicate point: both stay on the front if either does
    rows = [{"trial_id": f"t{i}", **dict(zip(objectives, v, strict=True))} for i, v in enumerate(values)]
    for row in rows:
        run._join_front(row)
    expected = {r["trial_id"] for r, m in zip(rows, pareto_mask(values, directions(objectives)), strict=True) if m}
    assert set(run.front) == expected
    assert {r["trial_id"] for r in rows if r.get("pareto")} == expected


def test_load_rebuilds_the_state_and_resumed_trials_finish(tmp_path: Path) -> None:
    """A driver killed with trials running; a new one loads the files, Tune resumes and finishes them."""
    spec = RunSpec(12, max_epochs=6, running=3, students=False, optuna=False)
    killed = write_synthetic_run(tmp_path / "run", spec, flush_seconds=3600)
    with open(tmp_path / "run" / "trials.jsonl", "a") as f:
        f.write('{"trial_id": "t00')  # torn by the kill mid-write
    objectives = ["val_accuracy", "params"]
    indicator = StudyHypervolume(objectives, teachers_json()[0])
    resumed = RunDirectory(tmp_path / "run", objectives, 6, indicator, progress=Silent(objectives))
    resumed.setup()
    assert (tmp_path / "run" / "trials.jsonl").read_text().endswith("}\n")  # the torn line is cut
    assert resumed.counts == killed.counts and set(resumed.front) == set(killed.front)
    assert resumed.hypervolume == pytest.approx(killed.hypervolume)
    running = [r for r in resumed.rows.values() if r["status"] == "RUNNING"]
    assert len(running) == 3 and all(r["epochs"] == 5 for r in running)  # progress taken from curves.csv
    assert all(r["val_accuracy"] == killed.rows[r["trial_id"]]["val_accuracy"] for r in running)
    # Tune resumes two of them; the third finished while the driver was down (Tune knows, we never heard)
    plans = {p.trial.trial_id: p for p in plan_trials(spec, tmp_path)}
    first, second, third = (plans[r["trial_id"]] for r in running)
    for plan in (first, second):
        deliver(resumed, "start", plan.trial, None)
        result = {**plan.results[-1], "epoch": 6}
        plan.trial.last_result = result
        deliver(resumed, "result", plan.trial, result)
        deliver(resumed, "complete", plan.trial, None)
    third.trial.status, third.trial.last_result = "TERMINATED", {**third.results[-1], "epoch": 6}
    resumed.on_experiment_end([first.trial, second.trial, third.trial])
    trials = read_trials(tmp_path / "run")
    assert "RUNNING" not in set(trials["status"])
    assert (trials["status"] == "COMPLETE").sum() == 12
    assert set(trials.loc[trials["pareto"], "trial_id"]) == complete_front(trials, ["val_accuracy", "params"])


def test_close_unfinished_marks_rows_tune_never_finished(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path / "run", RunSpec(6, max_epochs=4, running=2, students=False, optuna=False))
    run = RunDirectory(tmp_path / "run", ["val_accuracy", "params"], 4, progress=Silent(["val_accuracy", "params"]))
    closed = run.close_unfinished()
    assert closed == ["t0004", "t0005"]
    trials = read_trials(tmp_path / "run").set_index("trial_id")
    assert list(trials.loc[closed, "status"]) == ["INTERRUPTED", "INTERRUPTED"]
    again = RunDirectory(tmp_path / "run", ["val_accuracy", "params"], 4, progress=Silent(["val_accuracy", "params"]))
    again.load()  # the log says so too
    assert again.counts["INTERRUPTED"] == 2 and again.counts["RUNNING"] == 0


def test_pickled_by_tune_it_travels_without_state(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", RunSpec(4, max_epochs=3, running=1, students=False, optuna=False))
    run._append(EVENT_LOG, "")  # an open file handle, as during a run
    copy = pickle.loads(pickle.dumps(run))
    assert copy.rows == {} and copy.run_dir == run.run_dir
    copy.load()
    assert copy.counts == run.counts


def reopened_run(tmp_path: Path, spec: RunSpec) -> tuple[RunDirectory, list]:
    """A synthetic run with trials still running, reopened by a new driver, and the trials' plans."""
    write_synthetic_run(tmp_path / "run", spec, flush_seconds=3600)
    objectives = ["val_accuracy", "params"]
    run = RunDirectory(tmp_path / "run", objectives, spec.max_epochs, progress=Silent(objectives))
    run.setup()
    return run, plan_trials(spec, tmp_path)


def test_experiment_end_closes_rows_tune_does_not_know(tmp_path: Path) -> None:
    """The driver was killed after a trial started but before Tune checkpointed it: the resumed experiment
    ends without that trial, and its row must not stay RUNNING."""
    resumed, plans = reopened_run(tmp_path, RunSpec(5, max_epochs=3, running=2, students=False, optuna=False))
    known = plans[3].trial  # Tune resumed t0003 and finished it; it never heard of t0004
    for result in plans[3].results:
        deliver(resumed, "result", known, result)
    deliver(resumed, "result", known, {**plans[3].results[-1], "epoch": 3})
    deliver(resumed, "complete", known, None)
    resumed.on_experiment_end([p.trial for p in plans[:4]])
    status = read_trials(tmp_path / "run").set_index("trial_id")["status"]
    assert status["t0003"] == "COMPLETE" and status["t0004"] == "INTERRUPTED"
    assert (status == "RUNNING").sum() == 0


def test_ctrl_c_leaves_running_trials_running(tmp_path: Path) -> None:
    """On Ctrl-C Tune snapshots the running trials as RUNNING (a resume continues them), then sets them
    TERMINATED without a done result before on_experiment_end: they are not PRUNED (they were, before)."""
    run, plans = reopened_run(tmp_path, RunSpec(4, max_epochs=3, running=2, students=False, optuna=False))
    interrupted, stopped = plans[2].trial, plans[3].trial
    interrupted.status, interrupted.last_result = "TERMINATED", {**plans[2].results[0], "epoch": 1}
    stopped.status, stopped.last_result = "TERMINATED", {**plans[3].results[0], "epoch": 1, "done": True}
    run.on_experiment_end([p.trial for p in plans])
    status = read_trials(tmp_path / "run").set_index("trial_id")["status"]
    assert status[interrupted.trial_id] == "RUNNING"
    assert status[stopped.trial_id] == "PRUNED"  # done at epoch 1 of 3: its scheduler stopped it
