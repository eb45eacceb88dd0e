"""Trial schedulers: ``make_scheduler`` builds the study's ``fifo``, ``asha`` or ``pareto_halving``.

Pareto successive halving judges a student at each rung by non-dominated sorting on (accuracy, size),
so a small student competes with students of its size rather than with big ones, which accuracy-only
ASHA would prefer.

Surviving ``Tuner.restore``: Tune checkpoints callbacks but not the scheduler (it comes back as it was
built). ``SchedulerState`` is a callback whose state is the scheduler's own ``save()`` output, fed back
through ``restore()``. The Tuner pickles its TuneConfig (the scheduler) and RunConfig (the callback) in
one ``tuner.pkl``, so after ``Tuner.restore`` the restored callback still points at the scheduler Tune
runs; Tune restores callbacks before it re-adds the trials. It serves ASHA too.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from nas_kd.search.pareto import log_points, modes, nsga2_order

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from nas_kd.config import SchedulerConfig

EPOCH = "epoch"  # what trials report: epochs done, 1-based


def rung_milestones(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """r, r*eta, r*eta^2 ... below ``max_t``: a result at ``max_t`` ends the trial anyway (and one cut off
    by a ``stop=`` criterion never reaches the scheduler)."""
    milestones = []
    milestone = grace_period
    while milestone < max_t:
        milestones.append(milestone)
        milestone *= reduction_factor
    return milestones


class ParetoSuccessiveHalving(FIFOScheduler):
    """Asynchronous successive halving on several objectives.

    When a trial first reaches a rung (``time_attr`` >= milestone), it is ranked against every trial
    recorded at that rung so far, itself included: by non-dominated sorting on ``objectives`` (accuracy
    as error, sizes on a log scale), then by crowding distance. It continues if it is among the best
    ``ceil(n / reduction_factor)`` of those ``n``; with fewer than ``reduction_factor`` recorded there
    is nothing to judge yet and it continues (no waiting for a full rung, as in ASHA).

    Its ``metric`` is the first objective (one string, as Tune requires of schedulers); the study's
    objectives are fixed at construction.
    """

    def __init__(
        self,
        objectives: Sequence[str],
        max_t: int,
        grace_period: int = 1,
        reduction_factor: int = 3,
        time_attr: str = EPOCH,
    ):
        if grace_period < 1 or reduction_factor < 2:
            raise ValueError("grace_period must be >= 1 and reduction_factor >= 2")
        super().__init__()
        self._objectives = list(objectives)
        self._metric = self._objectives[0]
        self._mode = modes(self._objectives)[0]
        self._time_attr = time_attr
        self._eta = reduction_factor
        self._milestones = rung_milestones(grace_period, reduction_factor, max_t)
        # milestone -> {trial_id: objective values at that rung}, in arrival order
        self._rungs: dict[int, dict[str, list[float]]] = {m: {} for m in self._milestones}
        self._num_stopped = 0

    @property
    def milestones(self) -> list[int]:
        return list(self._milestones)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # Tune passes TuneConfig's metric/mode (None in a multi-objective study): accept only agreement.
        return metric in (None, self._metric) and mode in (None, self._mode)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        values = [result.get(name) for name in self._objectives]
        epoch = result.get(self._time_attr)
        if epoch is None or any(v is None or not math.isfinite(v) for v in values):
            return TrialScheduler.CONTINUE  # nothing to judge on (e.g. a diverged trial fails by itself)
        milestone = self._due_rung(trial.trial_id, epoch)
        if milestone is None:
            return TrialScheduler.CONTINUE
        decision = self._judge(milestone, trial.trial_id, [float(v) for v in values])
        self._num_stopped += decision == TrialScheduler.STOP
        return decision

    def _due_rung(self, trial_id: str, epoch: float) -> int | None:
        """The highest rung reached, if the trial was not judged there yet (a resumed trial may skip one)."""
        reached = [m for m in self._milestones if epoch >= m]
        if not reached or trial_id in self._rungs[reached[-1]]:
            return None
        return reached[-1]

    def _judge(self, milestone: int, trial_id: str, values: list[float]) -> str:
        recorded = self._rungs[milestone]
        recorded[trial_id] = values
        if len(recorded) < self._eta:
            return TrialScheduler.CONTINUE
        ids = list(recorded)
        order = nsga2_order(log_points(np.array(list(recorded.values())), self._objectives))
        keep = {ids[i] for i in order[: math.ceil(len(ids) / self._eta)]}
        return TrialScheduler.CONTINUE if trial_id in keep else TrialScheduler.STOP

    def debug_string(self) -> str:
        rungs = ", ".join(f"epoch {m}: {len(self._rungs[m])} recorded" for m in self._milestones)
        return f"Using ParetoSuccessiveHalving (eta={self._eta}): {rungs or 'no rungs'}; stopped {self._num_stopped}"

    def state(self) -> dict[str, Any]:
        return {"rungs": {str(m): r for m, r in self._rungs.items()}, "num_stopped": self._num_stopped}

    def load_state(self, state: dict[str, Any]) -> None:
        self._rungs = {m: dict(state["rungs"].get(str(m), {})) for m in self._milestones}
        self._num_stopped = int(state["num_stopped"])

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.state()))

    def restore(self, checkpoint_path: str) -> None:
        self.load_state(json.loads(Path(checkpoint_path).read_text()))


class SchedulerState(tune.Callback):
    """Checkpoints a scheduler with the experiment (see the module docstring): pass it in
    ``RunConfig(callbacks=[...])`` next to the scheduler in ``TuneConfig``."""

    def __init__(self, scheduler: TrialScheduler):
        self.scheduler = scheduler

    def get_state(self) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "scheduler"
            self.scheduler.save(str(path))
            return {"scheduler": path.read_bytes()}

    def set_state(self, state: dict[str, bytes]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "scheduler"
            path.write_bytes(state["scheduler"])
            self.scheduler.restore(str(path))


def make_scheduler(
    cfg: SchedulerConfig, objectives: list[str], max_epochs: int
) -> tuple[TrialScheduler, list[tune.Callback]]:
    """The study's scheduler and the callbacks to pass in ``RunConfig(callbacks=...)`` with it.

    Trials must report ``epoch`` (epochs done) and every objective.
    """
    if cfg.name == "fifo":
        return FIFOScheduler(), []
    scheduler: TrialScheduler
    if cfg.name == "asha":
        scheduler = ASHAScheduler(
            time_attr=EPOCH,
            metric=objectives[0],
            mode=modes(objectives)[0],
            max_t=max_epochs,
            grace_period=min(cfg.grace_epochs, max_epochs),
            reduction_factor=cfg.reduction_factor,
        )
    elif cfg.name == "pareto_halving":
        scheduler = ParetoSuccessiveHalving(
            objectives, max_t=max_epochs, grace_period=cfg.grace_epochs, reduction_factor=cfg.reduction_factor
        )
    else:
        raise ValueError(f"unknown scheduler {cfg.name!r}; one of fifo, asha, pareto_halving")
    return scheduler, [SchedulerState(scheduler)]
