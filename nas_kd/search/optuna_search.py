"""OptunaSearch that tells Optuna the truth about early-stopped trials.

Ray's OptunaSearch tells a trial a scheduler stopped as COMPLETE with its partial values, so half-trained
students join the Pareto front and mislead the sampler. ``PruningAwareOptunaSearch`` tells:

- COMPLETE, with its values: a trial that reported its full budget (``epoch`` >= ``max_epochs``);
- PRUNED: a trial that ended earlier (stopped by a scheduler, rejected by a constraint, or never run).
  Optuna's PRUNED trials carry no values (so ``study.best_trials`` leaves them out); a rejected trial's
  reason is the user attribute ``rejected``;
- FAIL: a trial that raised, or reported a non-finite objective at full budget.

Every finished trial gets the user attribute ``epochs``; one that did not run its full budget also gets
its last values as ``partial_<metric>`` (Tune tells an error without its result, so the searcher keeps
the last one). With ``constraints`` ({metric: maximum}) every trial gets Optuna constraint values
``value / maximum - 1`` (feasible when <= 0): TPE and NSGA-II steer away from infeasible students and
``best_trials`` leaves them out.

No student is trained twice, and no candidate over a size constraint takes a trial: ``suggest`` redraws
(up to ``MAX_REDRAWS`` times) a candidate whose key (``candidates.candidate_key``) equals one already finished,
telling Optuna the first one's outcome at once (user attribute ``duplicate_of``), and one that ``size_check``
rejects, telling it PRUNED with its constraint values (user attribute ``rejected``), so the sampler learns from
both while Tune only ever sees new, feasible students and ``trials: N`` means N students trained. A repeat of
a failed candidate is told FAIL the same way (training is deterministic for a seed). A repeat of a candidate
still in training is redrawn too; it stays RUNNING in Optuna (which, with ``constant_liar``, steers the sampler
off that point meanwhile) and is told the first one's outcome when that finishes.

With a ``prescreen`` (``search.prescreen``, ``prescreen.py``), ``suggest`` gathers that many new, feasible
candidates for each trial, trains the one the prescreen chooses and tells the others PRUNED (user attribute
``untrained``: "prescreened out"), all before Tune sees the trial.

It uses OptunaSearch's private ``_ot_trials``, ``_ot_study`` and ``_completed_trials`` (Ray 2.60) and
pickles like it (searcher checkpoints): the space must be a module-level function or picklable object.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from nas_kd.search.candidates import candidate_key
from nas_kd.search.prescreen import SCORE, Prescreen

logger = logging.getLogger(__name__)

EPOCH = "epoch"
REJECTED = "rejected"  # result key: why a trial was rejected before training
CANDIDATE = "candidate"  # user attribute: candidate_key of the trial's config
DUPLICATE_OF = "duplicate_of"  # user attribute: number of the trial whose outcome a repeat was told
UNTRAINED = "untrained"  # user attribute of a candidate answered by the searcher, one of:
REPEAT, OVER_SIZE, PRESCREENED_OUT = "repeat", "over size constraint", "prescreened out"
MAX_REDRAWS = 100  # a space (nearly) exhausted by the constraints and earlier trials trains a repeat after this


@dataclass(frozen=True)
class Outcome:
    number: int
    state: TrialState
    values: list[float] | None


class PruningAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch(space, metric, mode, ...)`` plus ``max_epochs`` (the full budget), ``epoch_attr``
    (the result key counting epochs done) and optional ``constraints``."""

    def __init__(
        self,
        space: Any = None,
        metric: str | list[str] | None = None,
        mode: str | list[str] | None = None,
        *,
        max_epochs: int,
        epoch_attr: str = EPOCH,
        constraints: Mapping[str, float] | None = None,
        size_check: Callable[[dict[str, Any]], tuple[str | None, dict[str, int]]] | None = None,
        prescreen: Prescreen | None = None,
        points_to_evaluate: list[dict[str, Any]] | None = None,
        sampler: optuna.samplers.BaseSampler | None = None,
        study_name: str | None = None,
        storage: optuna.storages.BaseStorage | None = None,
        seed: int | None = None,
    ):
        super().__init__(
            space=space,
            metric=metric,
            mode=mode,
            points_to_evaluate=points_to_evaluate,
            sampler=sampler,
            study_name=study_name,
            storage=storage,
            seed=seed,
        )
        self._max_epochs = max_epochs
        self._epoch_attr = epoch_attr
        self._constraints = dict(constraints or {})
        self._last_results: dict[str, dict[str, Any]] = {}  # trial_id -> last result, for errored trials
        self._size_check = size_check
        self._prescreen = prescreen
        self._outcomes: dict[str, Outcome] | None = None  # candidate key -> first trained outcome (from storage)
        self._training: dict[str, str] = {}  # Tune trial id -> candidate key, while it trains
        self._waiting: dict[str, list[optuna.Trial]] = {}  # candidate key -> its repeats drawn meanwhile

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._outcomes = None  # the storage may know more than the snapshot did: rebuild from it

    def known_outcomes(self) -> dict[str, Outcome]:
        """Finished candidates that were trained (not repeats, not lost in a crash) by key; read once from the
        storage, then kept up to date. A repeat of a pruned candidate is told PRUNED: it would stop at the same rung."""
        if self._outcomes is None:
            self._outcomes = {}
            finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
            for trial in self._ot_study.get_trials(deepcopy=False, states=finished):
                attrs = trial.user_attrs
                if CANDIDATE in attrs and UNTRAINED not in attrs and "lost" not in attrs:
                    self._outcomes.setdefault(attrs[CANDIDATE], Outcome(trial.number, trial.state, trial.values))
        return self._outcomes

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        pool: list[tuple[optuna.Trial, dict[str, Any]]] = []  # new, feasible candidates for this trial
        wanted = self._prescreen.pool if self._prescreen else 1
        config: Any = None
        for draw in range(MAX_REDRAWS):
            config = super().suggest(trial_id)
            if not isinstance(config, dict):
                break
            ot_trial = self._ot_trials.pop(trial_id)  # the next ask draws a new candidate for the same Tune trial
            key = candidate_key(config)
            ot_trial.set_user_attr(CANDIDATE, key)
            known = self.known_outcomes().get(key)
            training = known is None and key in self._training.values()
            new = known is None and not training
            reason, costs = self._size_check(config) if self._size_check and new else (None, {})
            if (new and reason is None) or (draw == MAX_REDRAWS - 1 and not pool):
                if not new or reason is not None:
                    logger.warning("no new feasible candidate in %d draws: training this one", MAX_REDRAWS)
                pool.append((ot_trial, config))
                if len(pool) == wanted:
                    break
                continue
            # Answered without training.
            ot_trial.set_user_attr(UNTRAINED, OVER_SIZE if new else REPEAT)
            if known is not None:
                self._tell_repeat(ot_trial, known)
            elif training:
                self._waiting.setdefault(key, []).append(ot_trial)
            else:
                self._outcome(ot_trial, {EPOCH: 0, REJECTED: reason, **costs}, error=False)
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        if not pool:
            return config  # the searcher's own answer (finished, or wait for a free slot)
        chosen = 0
        if self._prescreen is not None:
            chosen, scores = self._prescreen.choose([c for _, c in pool])
            for i, ((ot_trial, _), score) in enumerate(zip(pool, scores, strict=True)):
                ot_trial.set_user_attr(SCORE, score if math.isfinite(score) else None)
                if i != chosen:
                    ot_trial.set_user_attr(UNTRAINED, PRESCREENED_OUT)
                    self._outcome(ot_trial, {EPOCH: 0}, error=False)
                    self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._ot_trials[trial_id] = pool[chosen][0]
        self._training[trial_id] = candidate_key(pool[chosen][1])
        return pool[chosen][1]

    def _tell_repeat(self, ot_trial: optuna.Trial, first: Outcome) -> None:
        ot_trial.set_user_attr(DUPLICATE_OF, first.number)
        self._ot_study.tell(ot_trial, first.values, state=first.state)

    @property
    def metrics(self) -> list[str]:
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        keys = (self._epoch_attr, REJECTED, *self.metrics, *self._constraints)
        self._last_results[trial_id] = {k: result[k] for k in keys if k in result}
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        last = self._last_results.pop(trial_id, None)
        if trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)  # logs the duplicate, tells nothing
        ot_trial = self._ot_trials[trial_id]
        waiting = self._waiting.pop(self._training.pop(trial_id, ""), [])
        stored = self._ot_study._storage.get_trial(ot_trial._trial_id)
        if stored.state.is_finished():
            # Told before a driver crash that the searcher checkpoint missed: the storage already has the
            # truth, and telling twice would raise (UpdateFinishedTrialError) and stop a resumed study. Its
            # waiting repeats were RUNNING with no Tune trial, so the resume marked them lost.
            self._completed_trials.add(trial_id)
            return None
        state, values = self._outcome(ot_trial, result or last or {}, error)
        try:
            self._ot_study.tell(ot_trial, values, state=state)
        except Exception as exc:  # as OptunaSearch does: a refused tell must not stop the experiment
            logger.warning("Optuna refused trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)
        outcome = Outcome(ot_trial.number, state, values)
        candidate = ot_trial.user_attrs.get(CANDIDATE)
        if candidate:
            self.known_outcomes().setdefault(candidate, outcome)
        for repeat in waiting:
            if not self._ot_study._storage.get_trial(repeat._trial_id).state.is_finished():  # not lost in a resume
                self._tell_repeat(repeat, outcome)

    def _outcome(
        self, ot_trial: optuna.Trial, result: dict[str, Any], error: bool
    ) -> tuple[TrialState, list[float] | None]:
        """The state to tell and its values; records the user attributes and constraints on the way."""
        epochs = int(result.get(self._epoch_attr) or 0)
        ot_trial.set_user_attr("epochs", epochs)
        for name, limit in self._constraints.items():
            if _finite(result.get(name)):
                ot_trial.set_constraint(name, float(result[name]) / limit - 1.0)
        values = [result.get(name) for name in self.metrics]
        if not error and epochs >= self._max_epochs and not result.get(REJECTED):
            if all(_finite(v) for v in values):
                return TrialState.COMPLETE, [float(v) for v in values]
            return TrialState.FAIL, None
        if result.get(REJECTED):
            ot_trial.set_user_attr(REJECTED, str(result[REJECTED]))
        for name, value in zip(self.metrics, values, strict=True):
            if _finite(value):
                ot_trial.set_user_attr(f"partial_{name}", float(value))
        return (TrialState.FAIL if error else TrialState.PRUNED), None


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value)
