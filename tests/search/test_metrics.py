"""Study metrics reach Ray's Prometheus endpoint while a search runs; the dashboard REST API lists the trials.

One local Ray (dashboard on 127.0.0.1, token auth on, metrics every second) serves the whole module and is
stopped by its finaliser.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
from ray import tune

from nas_kd.search.metrics import EXPORTED_NAMES, METRICS, StudyMetricsCallback, TrialMetrics, dashboard_token
from nas_kd.testing.metrics_trainable import metrics_trainable
from tests.conftest import QUICKSTART

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_prometheus(text: str) -> list[Sample]:
    samples = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(LABEL.findall(match["labels"] or ""))
            samples.append(Sample(match["name"], labels, float(match["value"])))
    return samples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalRay:
    metrics_url: str
    dashboard_url: str

    def scrape(self, study: str) -> list[Sample]:
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        return [s for s in parse_prometheus(text) if s.name in EXPORTED_NAMES and s.labels.get("study") == study]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[LocalRay]:
    metrics_port = free_port()
    context = ray.init(
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),  # not 8265: other Ray clusters may share this machine
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
        log_to_driver=False,
    )
    try:
        yield LocalRay(f"http://127.0.0.1:{metrics_port}/metrics", f"http://{context.dashboard_url}")
    finally:
        ray.shutdown()


class Scraper:
    """Scrapes the metrics endpoint every half second in a thread while the search runs in the main one."""

    def __init__(self, local: LocalRay, study: str):
        self.local, self.study = local, study
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(OSError):  # the agent may not be listening yet
                self.samples += self.local.scrape(self.study)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_for(local: LocalRay, study: str, names: dict[str, float], timeout: float = 60.0) -> dict[str, float]:
    """Scrape until each counter/gauge in ``names`` reaches its value; returns the last values seen."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {s.name: s.value for s in local.scrape(study)}
        if all(seen.get(n, float("nan")) >= v for n, v in names.items()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def per_trial(samples: list[Sample], name: str) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for s in samples:
        if s.name == name:
            values.setdefault(s.labels["trial_id"], []).append(s.value)
    return values


def assert_plausible(
    accuracy: dict[str, list[float]], epochs: dict[str, list[float]], speed: dict[str, list[float]], max_epochs: int
) -> None:
    """Values seen while trials ran. A trial's last epoch may never be exported: its actor can exit before the
    next one-second metrics report, so the checks are about ranges, not final values."""
    assert all(0.0 <= v <= 1.0 for values in accuracy.values() for v in values)
    assert all(1 <= v <= max_epochs for values in epochs.values() for v in values)
    assert all(v > 0 for values in speed.values() for v in values)


def dashboard_get(local: LocalRay, path: str, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(local.dashboard_url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


# -- without Ray --------------------------------------------------------------------------------------------


def test_metrics_are_a_no_op_without_ray() -> None:
    if ray.is_initialized():
        pytest.skip("Ray is running in this process")
    TrialMetrics("s", "t").record_epoch(1, 0.5, 100.0)
    StudyMetricsCallback("s", 3).update_front(1, 0.2)
    assert not ray.is_initialized()  # recording a metric must not start Ray behind the caller's back


def test_outcome_from_the_last_result() -> None:
    callback = StudyMetricsCallback("s", max_epochs=3)
    assert callback.outcome({"epoch": 3}) == "finished"
    assert callback.outcome({"epoch": 1}) == "pruned"
    assert callback.outcome({"epoch": 0, "rejected": "params 9 > max_params 1"}) == "rejected"
    assert callback.outcome({}) == "finished"


def test_metric_names_follow_ray_export_rules() -> None:
    assert all(name.startswith("nas_kd_") for name in METRICS)
    assert "ray_nas_kd_trials_started_total" in EXPORTED_NAMES
    assert "ray_nas_kd_trial_val_accuracy" in EXPORTED_NAMES


# -- a tiny Tune job ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tune_job_metrics_and_dashboard(local_ray: LocalRay, tmp_path: Path) -> None:
    study = "metrics-test"
    callback = StudyMetricsCallback(study, max_epochs=3)
    # Three trials: one runs all 3 epochs (finished), one stops after 2 (pruned), one raises in its 2nd (failed).
    cases = [{"epochs": 3, "fail": False}, {"epochs": 2, "fail": False}, {"epochs": 3, "fail": True}]
    param_space = {"study": study, "seconds_per_epoch": 1.0, "case": tune.grid_search(cases)}
    tuner = tune.Tuner(
        tune.with_resources(metrics_trainable, {"cpu": 0.5}),
        param_space=param_space,
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[callback], verbose=0),
    )
    with Scraper(local_ray, study) as scraper:
        results = tuner.fit()
        callback.update_front(pareto_size=2, hypervolume=0.42)  # what the runner does after each finished trial
    trial_ids = {r.metrics["trial_id"] for r in results}  # every trial reported at least once

    seen = wait_for(
        local_ray,
        study,
        {"ray_nas_kd_trials_started_total": 3, "ray_nas_kd_trials_failed_total": 1, "ray_nas_kd_pareto_size": 2},
    )
    assert seen["ray_nas_kd_trials_started_total"] == 3
    assert seen["ray_nas_kd_trials_finished_total"] == 1
    assert seen["ray_nas_kd_trials_pruned_total"] == 1
    assert seen["ray_nas_kd_trials_failed_total"] == 1
    assert seen["ray_nas_kd_pareto_size"] == 2
    assert seen["ray_nas_kd_hypervolume"] == pytest.approx(0.42)

    # Per-trial gauges were visible while the trials ran, one series per trial id, with plausible values.
    accuracy = per_trial(scraper.samples, "ray_nas_kd_trial_val_accuracy")
    epochs = per_trial(scraper.samples, "ray_nas_kd_trial_epoch")
    speed = per_trial(scraper.samples, "ray_nas_kd_trial_images_per_second")
    # A trial shorter than Ray's 1 s metrics report interval may end before its gauges are exported, so
    # the scrape sees a non-empty subset of the trials, never a series for a trial that did not run.
    assert set(accuracy) and set(accuracy) <= trial_ids
    assert set(epochs) <= trial_ids and set(speed) <= trial_ids
    assert_plausible(accuracy, epochs, speed, max_epochs=3)

    # The dashboard REST API: 401 without the token, the trial actors (ImplicitFunc) with it.
    token = dashboard_token()
    assert token, "Ray 2.60 starts local clusters with token auth; the token should be in ~/.ray/auth_token"
    status, _ = dashboard_get(local_ray, "/api/v0/actors?limit=1000&detail=1", None)
    assert status == 401
    # The state API answers from the GCS, which learns of actors asynchronously (slowly on a loaded machine):
    # ask until the trial actors are listed or a deadline passes.
    # Tune's function-trainable actor: listed as ImplicitFunc or by its qualified name,
    # wrap_function.<locals>.ImplicitFunc (both seen with Ray 2.60.0, the latter on a fresh machine)
    deadline, classes = time.monotonic() + 60, set()
    while "ImplicitFunc" not in classes and time.monotonic() < deadline:
        status, body = dashboard_get(local_ray, "/api/v0/actors?limit=1000&detail=1", token)
        assert status == 200, body[:300]
        classes = {a["class_name"].rsplit(".", 1)[-1] for a in json.loads(body)["data"]["result"]["result"]}
        time.sleep(0.5)
    assert "ImplicitFunc" in classes, classes
    status, body = dashboard_get(local_ray, "/api/jobs/", token)
    assert status == 200 and any(job["type"] == "DRIVER" for job in json.loads(body))


# -- a real search ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_study_exports_metrics(local_ray: LocalRay, tmp_path: Path) -> None:
    from nas_kd.search.runner import run_study

    with Scraper(local_ray, "quickstart") as scraper:
        result = run_study(
            QUICKSTART,
            runs_dir=tmp_path,
            report=False,
            log=lambda *a: None,
            overrides={"train.epochs": 2, "teacher.train.epochs": 1, "search.trials": 2},
        )
    assert len(result.trials) == 2
    seen = wait_for(local_ray, "quickstart", {"ray_nas_kd_trials_started_total": 2, "ray_nas_kd_pareto_size": 1})
    assert seen["ray_nas_kd_trials_started_total"] == 2
    ended = sum(seen.get(f"ray_nas_kd_trials_{s}_total", 0) for s in ("finished", "pruned", "failed", "rejected"))
    assert ended == 2
    assert seen["ray_nas_kd_pareto_size"] == len(result.pareto) >= 1
    assert seen["ray_nas_kd_hypervolume"] > 0
    accuracy = per_trial(scraper.samples, "ray_nas_kd_trial_val_accuracy")
    epochs = per_trial(scraper.samples, "ray_nas_kd_trial_epoch")
    speed = per_trial(scraper.samples, "ray_nas_kd_trial_images_per_second")
    ran = set(result.trials["trial_id"])
    assert set(accuracy) and set(accuracy) <= ran  # short trials may end before their gauges are exported
    assert set(epochs) <= ran and set(speed) <= ran
    assert_plausible(accuracy, epochs, speed, max_epochs=2)
