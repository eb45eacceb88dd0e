"""Continuing an interrupted search exactly.

Why runs could come back with ghosts: Tune snapshots its experiment (trials, searcher) into a staging
folder at the end of a controller step and copies it into the run directory asynchronously, at most every
few seconds unless a trial checkpointed. The run directory's own files are written as events arrive. A
driver killed between the two leaves trials that the run directory knows and the restored experiment does
not: a row that stays RUNNING forever, and an Optuna trial that stays RUNNING in the storage (and, with
``constant_liar``, keeps steering the sampler).

So on resume the restored experiment is the truth, and on its first step ``ReconcileRestored``:

- drops the run directory's rows (and curves) of trials the experiment does not hold; their work since the
  snapshot is lost, which is at most the time between a snapshot and the kill (a checkpointing trial forces a
  snapshot), and the study still trains the number of trials it asked for;
- marks Optuna trials that are RUNNING in the storage but belong to no restored trial as FAIL, with the user
  attribute ``lost`` saying why, so the storage has no ghosts either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune

LOST = "interrupted before the experiment snapshot recorded it; replaced by a new trial"


def fail_orphan_optuna_trials(storage_url: str, study_name: str, live_numbers: set[int]) -> list[int]:
    """Mark RUNNING/WAITING Optuna trials whose number no live Tune trial carries as FAIL; their numbers."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:  # killed before the searcher created the study: nothing to mend
        return []
    storage = study._storage  # Optuna's public API cannot finish another process's trial
    orphans = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        if trial.number in live_numbers:
            continue
        storage.set_trial_user_attr(trial._trial_id, "lost", LOST)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        orphans.append(trial.number)
    return orphans


class ReconcileRestored(tune.Callback):
    """On the first step of a resumed experiment, forget what the interrupted driver recorded but Tune did not.

    ``forget_trials(keep)`` is the run directory's: it drops every trial not in ``keep`` and returns their ids.
    """

    def __init__(
        self,
        forget_trials: Callable[[set[str]], list[str]],
        storage_url: str,
        study_name: str,
        log: Callable[[str], None] = print,
    ):
        self.forget_trials, self.storage_url, self.study_name, self.log = forget_trials, storage_url, study_name, log
        self.done = False

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        # The first step runs before the searcher is asked for anything new, so every RUNNING Optuna trial
        # that no restored trial carries is an orphan of the killed driver.
        if self.done:
            return
        self.done = True
        forgotten = self.forget_trials({t.trial_id for t in trials})
        numbers = {int(t.config["optuna_number"]) for t in trials if t.config.get("optuna_number") is not None}
        orphans = fail_orphan_optuna_trials(self.storage_url, self.study_name, numbers)
        if forgotten or orphans:
            self.log(
                f"resume: {len(forgotten)} trial(s) the interrupted driver had started were not in Tune's last "
                f"snapshot and are replaced ({', '.join(forgotten) or 'none in the run directory'})"
            )
