"""Pareto successive halving fed scripted trial results (no Ray cluster), next to ASHA on the same script."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from nas_kd.config import SchedulerConfig
from nas_kd.search.schedulers import ParetoSuccessiveHalving, SchedulerState, make_scheduler, rung_milestones

OBJECTIVES = ["val_accuracy", "params"]
CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def trial(trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id)  # all a scheduler reads of a Trial


def result(epoch: int, accuracy: float, params: int) -> dict[str, float]:
    return {"epoch": epoch, "val_accuracy": accuracy, "params": params}


def feed(scheduler: TrialScheduler, script: list[tuple[str, int, float, int]]) -> dict[str, str]:
    """Feeds (trial, epoch, accuracy, params) results in order; returns each trial's last decision."""
    decisions = {}
    for trial_id, epoch, accuracy, params in script:
        if trial_id not in decisions:
            scheduler.on_trial_add(None, trial(trial_id))
        decisions[trial_id] = scheduler.on_trial_result(None, trial(trial_id), result(epoch, accuracy, params))
    return decisions


def pareto(**kwargs: int) -> ParetoSuccessiveHalving:
    return ParetoSuccessiveHalving(OBJECTIVES, **{"max_t": 9, "grace_period": 1, "reduction_factor": 3, **kwargs})


# Three regular students reach the first rung, then a small, weak one, then a dominated one.
RUNG_1 = [
    ("big", 1, 0.90, 100_000),
    ("mid", 1, 0.85, 50_000),
    ("worse", 1, 0.80, 80_000),  # dominated by mid
    ("small", 1, 0.50, 2_000),  # the least accurate by far, but nobody smaller is better
    ("dominated", 1, 0.70, 90_000),  # dominated by big and mid
]


def test_keeps_small_non_dominated_student_that_asha_stops() -> None:
    asha = ASHAScheduler(
        time_attr="epoch", metric="val_accuracy", mode="max", max_t=9, grace_period=1, reduction_factor=3
    )
    by_accuracy = feed(asha, RUNG_1)
    by_pareto = feed(pareto(), RUNG_1)

    assert by_accuracy["small"] == STOP  # below ASHA's accuracy cut-off at the rung
    assert by_pareto["small"] == CONTINUE  # an extreme of the first front (infinite crowding distance)
    assert by_pareto["dominated"] == STOP
    assert by_pareto["worse"] == STOP
    assert by_pareto["big"] == by_pareto["mid"] == CONTINUE  # too few recorded to judge yet


def test_three_objectives() -> None:
    scheduler = ParetoSuccessiveHalving(["val_accuracy", "params", "flops"], max_t=9, reduction_factor=2)
    script = [("a", 0.9, 100, 1e6), ("d", 0.4, 200, 2e6), ("b", 0.5, 10, 1e6)]
    decisions = {
        trial_id: scheduler.on_trial_result(
            None, trial(trial_id), {"epoch": 1, "val_accuracy": acc, "params": params, "flops": flops}
        )
        for trial_id, acc, params, flops in script
    }
    # d is dominated by a; b, less accurate than both, has the fewest parameters.
    assert decisions == {"a": CONTINUE, "d": STOP, "b": CONTINUE}


def test_judges_once_per_rung_and_only_at_rungs() -> None:
    scheduler = pareto()
    feed(scheduler, RUNG_1)
    # Between rungs nothing is judged, however poor the result; at epoch 3 the small one meets the next rung.
    assert scheduler.on_trial_result(None, trial("small"), result(2, 0.05, 2_000)) == CONTINUE
    assert scheduler.on_trial_result(None, trial("small"), result(3, 0.55, 2_000)) == CONTINUE
    assert scheduler.state()["rungs"]["3"] == {"small": [0.55, 2_000.0]}
    # Reported again (a resumed trial), a rung it was judged at is not judged twice.
    assert scheduler.on_trial_result(None, trial("small"), result(3, 0.0, 2_000)) == CONTINUE
    assert scheduler.state()["rungs"]["3"] == {"small": [0.55, 2_000.0]}


def test_resumed_trial_skipping_a_rung_is_judged_at_the_highest_reached() -> None:
    scheduler = pareto(max_t=27)
    assert scheduler.milestones == [1, 3, 9]
    scheduler.on_trial_result(None, trial("a"), result(4, 0.6, 1_000))
    assert list(scheduler.state()["rungs"]["3"]) == ["a"] and scheduler.state()["rungs"]["1"] == {}


def test_incomplete_result_is_not_judged() -> None:
    scheduler = pareto()
    assert scheduler.on_trial_result(None, trial("a"), {"epoch": 1, "val_accuracy": 0.5}) == CONTINUE
    assert scheduler.on_trial_result(None, trial("a"), result(1, float("nan"), 10)) == CONTINUE
    assert scheduler.state()["rungs"]["1"] == {}


@pytest.mark.parametrize(
    ("grace", "eta", "max_t", "milestones"),
    [(1, 3, 9, [1, 3]), (1, 2, 8, [1, 2, 4]), (2, 3, 20, [2, 6, 18]), (4, 2, 4, [])],
)
def test_rungs_below_the_final_epoch(grace: int, eta: int, max_t: int, milestones: list[int]) -> None:
    assert rung_milestones(grace, eta, max_t) == milestones


def test_scheduler_state_callback_round_trip() -> None:
    scheduler = pareto()
    feed(scheduler, RUNG_1[:4])
    restored = pareto()
    SchedulerState(restored).set_state(SchedulerState(scheduler).get_state())
    assert restored.state() == scheduler.state()
    # Decisions continue from the restored rung table.
    assert feed(restored, RUNG_1[4:])["dominated"] == STOP


def test_callback_and_scheduler_stay_linked_through_one_pickle() -> None:
    # Tuner pickles TuneConfig and RunConfig together in tuner.pkl before the run; Tuner.restore unpickles
    # them and then sets the callback state Tune checkpointed during the run.
    scheduler, callbacks = make_scheduler(SchedulerConfig(name="pareto_halving"), OBJECTIVES, 9)
    restored_scheduler, restored_callbacks = pickle.loads(pickle.dumps((scheduler, callbacks)))
    feed(scheduler, RUNG_1)
    restored_callbacks[0].set_state(callbacks[0].get_state())
    assert restored_scheduler.state() == scheduler.state()


def test_asha_state_survives_through_the_callback() -> None:
    asha, callbacks = make_scheduler(SchedulerConfig(name="asha", reduction_factor=3), OBJECTIVES, 9)
    feed(asha, RUNG_1[:3])
    fresh, fresh_callbacks = make_scheduler(SchedulerConfig(name="asha", reduction_factor=3), OBJECTIVES, 9)
    fresh_callbacks[0].set_state(callbacks[0].get_state())
    assert feed(fresh, RUNG_1[3:4])["small"] == STOP  # judged against the restored rung


def test_make_scheduler() -> None:
    fifo, callbacks = make_scheduler(SchedulerConfig(name="fifo"), OBJECTIVES, 9)
    assert type(fifo) is FIFOScheduler and callbacks == []

    asha, callbacks = make_scheduler(SchedulerConfig(name="asha", grace_epochs=2, reduction_factor=2), OBJECTIVES, 9)
    assert isinstance(asha, ASHAScheduler) and asha.metric == "val_accuracy"
    assert [m for m, _ in reversed(asha._brackets[0]._rungs)] == [2, 4, 8]
    assert [type(c) for c in callbacks] == [SchedulerState]

    halving, callbacks = make_scheduler(
        SchedulerConfig(name="pareto_halving", grace_epochs=1, reduction_factor=2), OBJECTIVES, 4
    )
    assert isinstance(halving, ParetoSuccessiveHalving) and halving.milestones == [1, 2]
    assert halving.metric == "val_accuracy" and callbacks[0].scheduler is halving
    assert "ParetoSuccessiveHalving" in halving.debug_string()


def test_search_properties_must_agree() -> None:
    scheduler = pareto()
    assert scheduler.set_search_properties(None, None)
    assert scheduler.set_search_properties("val_accuracy", "max")
    assert not scheduler.set_search_properties("params", "min")
