"""Study and trial metrics through ``ray.util.metrics``: Ray's Prometheus endpoint, its dashboard, Grafana.

Two producers, both tagged with the study name:

- ``StudyMetricsCallback`` (driver, a ``tune.Callback``): trials started, finished, pruned, failed and rejected
  (by a size constraint, before training) as counters;
  the current Pareto-set size and hypervolume (gauges, set by the runner through ``update_front``).
- ``TrialMetrics`` (inside the trainable): per-trial validation accuracy, epoch and images/s (gauges, also tagged
  with the trial id, because Tune trials show up as unnamed ``ImplicitFunc`` actors in the dashboard).

Ray exports a metric ``nas_kd_x`` as ``ray_nas_kd_x`` (counters as ``ray_nas_kd_x_total``); ``EXPORTED_NAMES`` lists
what Prometheus/Grafana see. Without Ray (``nas-kd train``, unit tests) every call is a cheap no-op: monitoring
must never fail or slow a study.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ray.tune import Callback

logger = logging.getLogger(__name__)

STUDY_TAGS = ("study",)
TRIAL_TAGS = ("study", "trial_id")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["counter", "gauge"]
    description: str
    tag_keys: tuple[str, ...]

    @property
    def exported_name(self) -> str:
        """The name Prometheus scrapes from Ray's metrics export port."""
        return f"ray_{self.name}" + ("_total" if self.kind == "counter" else "")


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("nas_kd_trials_started", "counter", "Trials started", STUDY_TAGS),
        MetricSpec("nas_kd_trials_finished", "counter", "Trials that trained all their epochs", STUDY_TAGS),
        MetricSpec("nas_kd_trials_pruned", "counter", "Trials stopped early by the scheduler", STUDY_TAGS),
        MetricSpec("nas_kd_trials_failed", "counter", "Trials that raised (or diverged)", STUDY_TAGS),
        MetricSpec("nas_kd_trials_rejected", "counter", "Trials refused by a size constraint", STUDY_TAGS),
        MetricSpec("nas_kd_pareto_size", "gauge", "Members of the current Pareto set", STUDY_TAGS),
        MetricSpec("nas_kd_hypervolume", "gauge", "Hypervolume of the current Pareto front", STUDY_TAGS),
        MetricSpec("nas_kd_trial_val_accuracy", "gauge", "Validation accuracy at the last epoch", TRIAL_TAGS),
        MetricSpec("nas_kd_trial_epoch", "gauge", "Epochs finished", TRIAL_TAGS),
        MetricSpec("nas_kd_trial_images_per_second", "gauge", "Training throughput of the last epoch", TRIAL_TAGS),
    )
}
EXPORTED_NAMES = frozenset(spec.exported_name for spec in METRICS.values())

# One Ray metric object per name and process: with reuse_actors a worker runs many trials, and registering
# the same metric again per trial is wasted work.
_created: dict[str, Any] = {}


def _metric(name: str) -> Any | None:
    """The process's Ray metric ``name``, or None where Ray (or its metrics) is unavailable."""
    if name in _created:
        return _created[name]
    try:
        import ray

        if not ray.is_initialized():
            return None  # not cached: Ray may be started later in this process
        from ray.util.metrics import Counter, Gauge

        spec = METRICS[name]
        cls = Counter if spec.kind == "counter" else Gauge
        metric = cls(spec.name, description=spec.description, tag_keys=spec.tag_keys)
    except Exception as error:  # e.g. a Ray build without metrics support: monitoring is optional
        logger.warning("nas-kd metrics disabled: %s", error)
        metric = None
    _created[name] = metric
    return metric


def _record(name: str, value: float, tags: dict[str, str]) -> None:
    metric = _metric(name)
    if metric is None:
        return
    try:
        if METRICS[name].kind == "counter":
            metric.inc(value, tags=tags)
        else:
            metric.set(value, tags=tags)
    except Exception as error:  # a broken metrics pipe must not fail a trial
        logger.debug("could not record %s: %s", name, error)


class TrialMetrics:
    """Per-trial gauges, recorded from inside the trainable once per epoch."""

    def __init__(self, study_name: str, trial_id: str):
        self.tags = {"study": study_name, "trial_id": trial_id}

    @classmethod
    def for_current_trial(cls, study_name: str) -> TrialMetrics:
        """Tagged with the id of the Tune trial this code runs in."""
        from ray.tune import get_context

        return cls(study_name, get_context().get_trial_id())

    def record_epoch(self, epoch: int, val_accuracy: float, images_per_second: float) -> None:
        _record("nas_kd_trial_epoch", epoch, self.tags)
        _record("nas_kd_trial_val_accuracy", val_accuracy, self.tags)
        _record("nas_kd_trial_images_per_second", images_per_second, self.tags)


class StudyMetricsCallback(Callback):
    """Counts trials by outcome on the driver; the runner feeds the Pareto front through ``update_front``.

    Holds no Ray objects (only names), so Tune can pickle it with the run config.
    """

    def __init__(self, study_name: str, max_epochs: int):
        self.study_name = study_name
        self.max_epochs = max_epochs

    @property
    def tags(self) -> dict[str, str]:
        return {"study": self.study_name}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _record("nas_kd_trials_started", 1, self.tags)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _record(f"nas_kd_trials_{self.outcome(trial.last_result or {})}", 1, self.tags)

    def outcome(self, last_result: dict[str, Any]) -> Literal["finished", "pruned", "rejected"]:
        """How a trial that ended without an error ended, from its last reported result."""
        if last_result.get("rejected"):  # the trainable's constraint check reports epoch 0 with a reason
            return "rejected"
        epoch = last_result.get("epoch")
        # A trial that ends before the study's epochs was stopped by the scheduler.
        return "pruned" if epoch is not None and epoch < self.max_epochs else "finished"

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _record("nas_kd_trials_failed", 1, self.tags)

    def update_front(self, pareto_size: int, hypervolume: float) -> None:
        _record("nas_kd_pareto_size", pareto_size, self.tags)
        _record("nas_kd_hypervolume", hypervolume, self.tags)


def dashboard_token() -> str | None:
    """The token Ray's dashboard REST API expects (``Authorization: Bearer <token>``), looked up in Ray 2.60's
    order: ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), Path.home() / ".ray" / "auth_token"):
        if path and Path(path).is_file():
            token = Path(path).read_text().strip()
            if token:
                return token
    return None
