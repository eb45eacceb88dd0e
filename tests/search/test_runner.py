"""End-to-end searches on digits: the run directory, failures, refusal to clobber, SIGKILL + resume."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import numpy as np
import optuna
import optuna_dashboard
import pandas as pd
import pytest
import torch

from nas_kd import load_student
from nas_kd.results import read_table
from nas_kd.search.bookkeeping import read_events
from nas_kd.search.pareto import pareto_mask
from nas_kd.search.runner import SearchError, run_study
from tests.conftest import QUICKSTART

pytestmark = pytest.mark.slow  # Ray, searches or end-to-end runs: left out of `make test-fast`

SMALL = {
    "train.epochs": 2,
    "teacher.train.epochs": 3,
    "search.trials": 4,
    "search.max_concurrent": 2,
}


def search(tmp_path: Path, **overrides: object):
    return run_study(
        QUICKSTART, runs_dir=tmp_path, cpus=2, dashboard=False, log=lambda _: None, overrides={**SMALL, **overrides}
    )


def test_search_writes_the_run_directory(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    optuna_level = optuna.logging.get_verbosity()
    result = search(tmp_path)
    # nas-kd's own lines only: no Tune configuration box, no Optuna INFO notes; the caller's settings are back
    out, err = capfd.readouterr()
    assert "Configuration for experiment" not in out + err and "A new study created" not in out + err
    assert optuna.logging.get_verbosity() == optuna_level and "RAY_AIR_NEW_OUTPUT" not in os.environ
    run_dir = tmp_path / "quickstart"
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "COMPLETE").all()
    assert trials["trial_id"].is_unique and trials["arch"].map(json.loads).map(lambda a: a["family"]).eq("resnet").all()

    # The Pareto set is exactly the non-dominated COMPLETE rows, on validation accuracy and params.
    values = trials[["val_accuracy", "params"]].to_numpy(float)
    expected = set(trials.loc[pareto_mask(values, ["maximize", "minimize"]), "trial_id"])
    assert set(trials.loc[trials["pareto"], "trial_id"]) == expected
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert {m["trial_id"] for m in pareto["members"]} == expected == {m["trial_id"] for m in result.pareto}
    for member in pareto["members"]:
        assert member["metrics"]["test_accuracy"] > 0.3
        student = load_student(member["student_path"])
        assert not student.training
        assert sum(p.numel() for p in student.parameters()) == member["metrics"]["params"]
        assert student(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert sorted(p.name for p in (run_dir / "students").iterdir()) == sorted(expected)

    # Optuna storage: every trial with both objective values, under the run's unique study name.
    run = json.loads((run_dir / "run.json").read_text())
    assert run["state"] == "finished"
    stored = optuna.load_study(study_name=run["study_name"], storage=run["storage"])
    assert len(stored.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE and len(t.values) == 2 for t in stored.trials)
    assert_optuna_dashboard_lists(run["storage"], run["study_name"], expected_trials=4)
    for name in ("study.yaml", "curves.csv", "hypervolume.csv", "teachers.json", "report.html"):
        assert (run_dir / name).stat().st_size > 0
    hypervolume = pd.read_csv(run_dir / "hypervolume.csv")
    assert len(hypervolume) == 4 and hypervolume["hypervolume"].is_monotonic_increasing
    assert hypervolume["student_epochs"].iloc[-1] == 8

    # A second start refuses and touches nothing.
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(SearchError, match="--resume"):
        search(tmp_path)
    assert before == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def wsgi_get(app: object, path: str) -> object:
    environ: dict = {"REQUEST_METHOD": "GET", "PATH_INFO": path}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))  # type: ignore[operator]
    assert status[0].startswith("200"), status
    return json.loads(body)


def assert_optuna_dashboard_lists(storage: str, study_name: str, expected_trials: int) -> None:
    """optuna-dashboard's own API, served from the run's storage, lists every trial with both values."""
    app = optuna_dashboard.wsgi(storage)
    studies = wsgi_get(app, "/api/studies")["study_summaries"]
    (summary,) = [s for s in studies if s["study_name"] == study_name]
    detail = wsgi_get(app, f"/api/studies/{summary['study_id']}")
    assert len(detail["trials"]) == expected_trials
    complete = [t for t in detail["trials"] if t["state"] == "Complete"]
    assert complete and all(len(t["values"]) == 2 for t in complete)


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    # A peer genome of an unknown family passes the study check (it is any JSON object) but cannot be
    # built: every online trial raises inside the trainable, while the ce trials train normally.
    broken = {"name": "online", "peer": '{"family": "vgg", "stages": [{"channels": 8, "depth": 1}]}'}
    search(tmp_path, distiller={"choices": ["ce", broken]}, **{"search.sampler": "random", "search.trials": 6})
    trials = pd.read_csv(tmp_path / "quickstart" / "trials.csv")
    assert len(trials) == 6
    failed = trials[trials["distiller"] == "online"]
    assert len(failed) > 0 and (failed["status"] == "FAILED").all()
    assert failed["error"].str.contains("unknown family 'vgg'").all()
    assert (trials.loc[trials["distiller"] == "ce", "status"] == "COMPLETE").all()
    assert not failed["pareto"].any()


def test_nan_loss_fails_the_trial_not_the_study(tmp_path: Path) -> None:
    search(tmp_path, **{"train.lr": float("inf"), "search.trials": 2})
    trials = pd.read_csv(tmp_path / "quickstart" / "trials.csv")
    assert list(trials["status"]) == ["FAILED", "FAILED"]
    assert trials["error"].str.contains("TrainingDiverged: training loss is nan").all()
    assert json.loads((tmp_path / "quickstart" / "run.json").read_text())["state"] == "finished"


def test_size_constraint_rejects_before_a_trial(tmp_path: Path) -> None:
    """Candidates over max_params never reach Tune: the study trains the 6 students it asked for, all within
    the constraint, and Optuna is told the rejected ones (PRUNED, with their constraint values)."""
    search(tmp_path, **{"search.constraints": {"max_params": 60000}, "search.trials": 6})
    trials = pd.read_csv(tmp_path / "quickstart" / "trials.csv")
    assert len(trials) == 6 and (trials["status"] == "COMPLETE").all() and (trials["params"] <= 60000).all()
    run = json.loads((tmp_path / "quickstart" / "run.json").read_text())
    stored = optuna.load_study(study_name=run["study_name"], storage=run["storage"]).trials
    rejected = [t for t in stored if t.user_attrs.get("untrained") == "over size constraint"]
    assert run["answered_without_training"]["rejected"] == len(rejected)
    assert all(t.state == optuna.trial.TrialState.PRUNED and t.constraints["params"] > 0 for t in rejected)


def test_students_in_training_at_once_are_all_different(tmp_path: Path) -> None:
    """Three trials of a space of three students, drawn before any has finished: three different students,
    and each repeat drawn meanwhile is told the outcome of the one it repeats, without training."""
    space = {"family": "cnn", "stem": 8, "stages": 1, "stage": {"channels": {"choices": [8, 16, 24]}, "depth": 1}}
    overrides = {"search.space": space, "search.sampler": "random", "search.trials": 3, "search.max_concurrent": 3}
    search(tmp_path, distiller="ce", **overrides)
    trials = pd.read_csv(tmp_path / "quickstart" / "trials.csv")
    assert len(trials) == 3 and trials["arch"].is_unique and (trials["status"] == "COMPLETE").all()
    run = json.loads((tmp_path / "quickstart" / "run.json").read_text())
    stored = optuna.load_study(study_name=run["study_name"], storage=run["storage"]).trials
    repeats = [t for t in stored if t.user_attrs.get("untrained") == "repeat"]
    assert repeats and run["answered_without_training"]["repeats"] == len(repeats)
    for repeat in repeats:
        first = stored[repeat.user_attrs["duplicate_of"]]
        assert repeat.params == first.params and repeat.values == first.values
        assert repeat.state == first.state == optuna.trial.TrialState.COMPLETE


EPOCHS = 16  # long enough trials to be caught mid-way
TINY_SPACE = {  # quick epochs, so that the test spends its time on killing and resuming
    "family": "cnn",
    "stem": 8,
    "stages": {"low": 1, "high": 2},
    "stage": {"channels": {"choices": [8, 16]}, "depth": 1},
}
SMALL_TEACHER = {"family": "resnet", "stem": 16, "stages": [{"channels": 16, "depth": 1}, {"channels": 32, "depth": 1}]}
TRIALS = 4


class Driver:
    """``nas-kd search`` in a subprocess with a Ray of its own (its own temp dir), so that a test can SIGKILL
    the driver and every Ray process it started without touching any other Ray on the machine."""

    def __init__(self, tmp_path: Path, *extra: str, command: tuple[str, ...] | None = None):
        """``nas-kd search QUICKSTART --runs-dir tmp_path *extra``, or ``nas-kd *command *extra``."""
        self.ray_dir = tempfile.mkdtemp(prefix="nkray", dir="/tmp")  # short: Ray's socket paths have a limit
        nas_kd = command or ("search", str(QUICKSTART), "--runs-dir", str(tmp_path))
        argv = [sys.executable, "-m", "nas_kd.cli", *nas_kd, "--no-dashboard", *extra]
        self.output = tmp_path / f"driver-{time.monotonic_ns()}.log"
        self.process = subprocess.Popen(
            argv,
            stdout=self.output.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            # One thread: oversubscribed OpenMP threads spin-wait each other on a busy machine (see conftest).
            env={**os.environ, "RAY_TMPDIR": self.ray_dir, "OMP_NUM_THREADS": "1"},
        )

    def text(self) -> str:
        return self.output.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the driver's process group and every process of its Ray (found by its temp dir)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for _ in range(3):
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                with contextlib.suppress(OSError, ValueError):
                    if self.ray_dir.encode() in cmdline.read_bytes():
                        os.kill(int(cmdline.parent.name), signal.SIGKILL)
            time.sleep(0.2)
        shutil.rmtree(self.ray_dir, ignore_errors=True)


def progress(run_dir: Path) -> pd.DataFrame:
    """Each trial's status and epochs as the driver's per-event files show them (trials.csv is a summary written
    every few seconds): the event log's last status, the highest epoch in curves.csv."""
    trials = pd.DataFrame(read_events(run_dir / "trials.jsonl"), columns=["trial_id", "status"])
    trials = trials.dropna(subset=["status"]).groupby("trial_id", as_index=False).last()
    curves = read_table(run_dir / "curves.csv", ["trial_id", "epoch"])
    epochs = curves.groupby("trial_id")["epoch"].max() if len(curves) else pd.Series(dtype=int)
    return trials.assign(epochs=trials["trial_id"].map(epochs).fillna(0))


KILL_POINTS = {
    # When to SIGKILL the first driver, as seen in what it wrote.
    "teacher training": lambda out, trials: "epoch 4/40" in out,
    "mid-trial": lambda out, trials: (
        (trials["status"] == "COMPLETE").sum() >= 1
        and ((trials["status"] == "RUNNING") & (trials["epochs"] >= 2)).any()
    ),
    "between trials": lambda out, trials: (
        (trials["status"] == "COMPLETE").sum() >= 1 and not (trials["status"] == "RUNNING").any()
    ),
    "final report": lambda out, trials: len(trials) == TRIALS and trials["status"].eq("COMPLETE").all(),
}


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_sigkill_then_resume_finishes_exactly_the_trials_asked_for(tmp_path: Path, kill_point: str) -> None:
    checkpoint_seconds = 0.3
    settings = {
        **SMALL,
        "train.epochs": EPOCHS,
        "search.trials": TRIALS,
        "search.max_concurrent": 1,
        "search.checkpoint_seconds": checkpoint_seconds,
        "teacher.train.epochs": 40 if kill_point == "teacher training" else 1,
        "teacher.arch": SMALL_TEACHER,
        "search.space": TINY_SPACE,
    }
    run_dir = tmp_path / "quickstart"
    driver = Driver(tmp_path, *(f"--set={k}={json.dumps(v)}" for k, v in settings.items()))
    deadline = time.time() + 300
    try:
        while not KILL_POINTS[kill_point](driver.text(), progress(run_dir)):
            if driver.process.poll() is not None or time.time() > deadline:
                pytest.fail(f"the search never got to {kill_point}: {driver.text()[-2000:]}")
            time.sleep(0.02)
    finally:
        driver.kill()
    assert json.loads((run_dir / "run.json").read_text())["state"] == "running"

    resumed = Driver(tmp_path, "--resume")  # no overrides: --resume continues the study as it was started
    assert resumed.wait(timeout=600) == 0, resumed.text()[-3000:]
    output = resumed.text()
    if kill_point == "teacher training":  # the teacher goes on from its last epoch checkpoint
        assert "resuming from epoch" in output and "epoch 1/40" not in output, output[-3000:]
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == TRIALS and (trials["status"] == "COMPLETE").all(), output[-3000:]
    assert (trials["epochs"] == EPOCHS).all()
    curves = pd.read_csv(run_dir / "curves.csv")
    assert not curves.duplicated(["trial_id", "epoch"]).any()
    assert (curves.groupby("trial_id")["epoch"].nunique() == EPOCHS).all()
    assert set(curves["trial_id"]) == set(trials["trial_id"])
    # No work older than the last checkpoint is trained again: at most the checkpoint interval, plus the epoch
    # in flight and one more (Tune's snapshot may trail the run directory by one report).
    if "redone_seconds" in trials:
        slowest_epoch = curves["seconds"].max()
        assert trials["redone_seconds"].fillna(0).max() <= checkpoint_seconds + 2 * slowest_epoch + 0.05
    run = json.loads((run_dir / "run.json").read_text())
    assert run["state"] == "finished" and (run_dir / "report.html").stat().st_size > 0
    assert np.isfinite(trials["val_accuracy"]).all()
    # Optuna's storage: exactly the trials of the run COMPLETE, and no ghost left RUNNING.
    stored = optuna.load_study(study_name=run["study_name"], storage=run["storage"]).trials
    states = [t.state for t in stored]
    assert states.count(optuna.trial.TrialState.COMPLETE) == TRIALS
    assert optuna.trial.TrialState.RUNNING not in states
    assert all(t.user_attrs.get("lost") for t in stored if t.state == optuna.trial.TrialState.FAIL)
