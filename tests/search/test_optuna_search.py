"""PruningAwareOptunaSearch: what Optuna is told, its checkpoint, and one tiny real Tune run with
Pareto successive halving that is then restored."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import ray
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray import tune

from nas_kd.config import SchedulerConfig
from nas_kd.search.optuna_search import PruningAwareOptunaSearch
from nas_kd.search.pareto import modes
from nas_kd.search.schedulers import SchedulerState, make_scheduler
from nas_kd.testing.tune_trainables import TOY_EPOCHS, TOY_MAX_PARAMS, toy_space, toy_student

OBJECTIVES = ["val_accuracy", "params"]


def make_searcher(storage: optuna.storages.BaseStorage, **kwargs: object) -> PruningAwareOptunaSearch:
    return PruningAwareOptunaSearch(
        toy_space,
        metric=OBJECTIVES,
        mode=modes(OBJECTIVES),
        max_epochs=TOY_EPOCHS,
        constraints={"params": TOY_MAX_PARAMS},
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="toy",
        storage=storage,
        **kwargs,
    )


@pytest.fixture
def journal(tmp_path: Path) -> optuna.storages.JournalStorage:
    # A journal file: as persistent as the run's SQLite storage, and much quicker to create.
    return optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log")))


def stored_study(storage: optuna.storages.BaseStorage | str) -> optuna.Study:
    return optuna.load_study(study_name="toy", storage=storage)


def test_tells_complete_pruned_and_failed(journal: optuna.storages.JournalStorage) -> None:
    searcher = make_searcher(journal)
    for trial_id in "abcde":
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", {"epoch": 4, "val_accuracy": 0.9, "params": 8_000})
    searcher.on_trial_complete("b", {"epoch": 1, "val_accuracy": 0.2, "params": 16_000})  # stopped by a scheduler
    searcher.on_trial_complete("c", None, error=True)
    searcher.on_trial_complete("d", {"epoch": 0, "val_accuracy": 0.0, "params": 64_000, "rejected": "too big"})
    searcher.on_trial_complete("e", {"epoch": 4, "val_accuracy": float("nan"), "params": 1_000})
    searcher.on_trial_complete("a", {"epoch": 1, "val_accuracy": 0.1, "params": 8_000})  # a duplicate: ignored

    a, b, c, d, e = stored_study(journal).trials
    assert [t.state for t in (a, b, c, d, e)] == [
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.PRUNED, TrialState.FAIL,
    ]  # fmt: skip
    assert a.values == [0.9, 8_000] and a.user_attrs["epochs"] == 4
    assert a.constraints == {"params": pytest.approx(8_000 / TOY_MAX_PARAMS - 1)}
    assert b.values is None
    assert {k: v for k, v in b.user_attrs.items() if k != "candidate"} == {
        "epochs": 1, "partial_val_accuracy": 0.2, "partial_params": 16_000,
    }  # fmt: skip
    assert d.user_attrs["rejected"] == "too big" and d.constraints["params"] > 0
    assert [t.number for t in stored_study(journal).best_trials] == [0]


def test_a_trial_told_before_a_crash_is_not_told_again(journal: optuna.storages.JournalStorage) -> None:
    # The driver told Optuna, then died before the searcher's checkpoint recorded it; the resumed
    # searcher (restored from that older checkpoint) sees the trial complete once more.
    searcher = make_searcher(journal)
    searcher.suggest("a")
    stale = pickle.loads(pickle.dumps(searcher.__dict__))
    searcher.on_trial_complete("a", {"epoch": 4, "val_accuracy": 0.9, "params": 8_000})
    resumed = PruningAwareOptunaSearch(max_epochs=TOY_EPOCHS)
    resumed.__dict__.update(stale)
    resumed.on_trial_complete("a", {"epoch": 4, "val_accuracy": 0.5, "params": 8_000})
    (a,) = stored_study(journal).trials
    assert a.state == TrialState.COMPLETE and a.values == [0.9, 8_000]


def test_checkpoint_round_trip(journal: optuna.storages.JournalStorage, tmp_path: Path) -> None:
    searcher = make_searcher(journal)
    searcher.suggest("a")
    searcher.save(str(tmp_path / "searcher.pkl"))

    restored = PruningAwareOptunaSearch(max_epochs=99)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("a", {"epoch": TOY_EPOCHS, "val_accuracy": 0.7, "params": 2_000})
    (a,) = stored_study(journal).trials
    assert a.state == TrialState.COMPLETE and a.values == [0.7, 2_000]


def three_students(trial: optuna.Trial) -> dict[str, object]:
    return {"arch": {"width": trial.suggest_categorical("width", [8, 16, 64])}, "distiller": "ce", "seed": 0}


def test_no_student_is_trained_twice_and_size_rejections_take_no_trial(
    journal: optuna.storages.JournalStorage,
) -> None:
    def size_check(config: dict) -> tuple[str | None, dict[str, int]]:
        params = config["arch"]["width"] * 1_000
        return ("params too big" if params > TOY_MAX_PARAMS else None), {"params": params}

    searcher = make_searcher(journal, size_check=size_check)
    searcher._space = three_students  # the toy space's fields are not those of a student config
    searcher.suggest("a")
    first = searcher._ot_trials["a"].params["width"]
    searcher.on_trial_complete("a", {"epoch": TOY_EPOCHS, "val_accuracy": 0.8, "params": first * 1_000})
    searcher.suggest("b")  # never the same student again, never the one over the constraint
    second = searcher._ot_trials["b"].params["width"]
    assert {first, second} == {8, 16}
    stored = stored_study(journal).trials
    untrained = [t for t in stored if "untrained" in t.user_attrs]
    assert len(stored) == 2 + len(untrained) and untrained  # the random sampler redrew at least once in 50 asks
    for trial in untrained:
        if trial.user_attrs["untrained"] == "repeat":  # told the first one's outcome, not trained
            assert trial.params["width"] == first and trial.values == [0.8, first * 1_000]
            assert trial.user_attrs["duplicate_of"] == 0
        else:
            assert trial.params["width"] == 64 and trial.state == TrialState.PRUNED
            assert trial.user_attrs["rejected"] == "params too big" and trial.constraints["params"] > 0


def repeats_waiting(storage: optuna.storages.BaseStorage) -> list[optuna.trial.FrozenTrial]:
    return [t for t in stored_study(storage).trials if t.user_attrs.get("untrained") == "repeat"]


@pytest.mark.parametrize("checkpointed", [False, True])
def test_a_repeat_of_a_student_in_training_is_not_trained_and_gets_its_outcome(
    journal: optuna.storages.JournalStorage, tmp_path: Path, checkpointed: bool
) -> None:
    searcher = make_searcher(journal)
    searcher._space = three_students
    for trial_id in "abc":  # three trials in flight at once: each must be a different student
        searcher.suggest(trial_id)
    widths = {trial_id: searcher._ot_trials[trial_id].params["width"] for trial_id in "abc"}
    assert sorted(widths.values()) == [8, 16, 64]
    waiting = repeats_waiting(journal)
    assert waiting and all(t.state == TrialState.RUNNING for t in waiting)  # drawn meanwhile, told nothing yet
    if checkpointed:  # the driver stops and resumes between the draw and the first one's end
        searcher.save(str(tmp_path / "searcher.pkl"))
        searcher = PruningAwareOptunaSearch(max_epochs=TOY_EPOCHS)
        searcher.restore(str(tmp_path / "searcher.pkl"))
    searcher.on_trial_complete("a", {"epoch": TOY_EPOCHS, "val_accuracy": 0.8, "params": 8_000})
    searcher.on_trial_complete("b", {"epoch": 1, "val_accuracy": 0.5, "params": 16_000})  # stopped early
    searcher.on_trial_complete("c", None, error=True)
    outcome = {
        widths["a"]: (TrialState.COMPLETE, [0.8, 8_000], 0),
        widths["b"]: (TrialState.PRUNED, None, 1),
        widths["c"]: (TrialState.FAIL, None, 2),
    }
    told = repeats_waiting(journal)
    assert len(told) == len(waiting)
    for trial in told:
        assert (trial.state, trial.values, trial.user_attrs["duplicate_of"]) == outcome[trial.params["width"]]


def test_a_waiting_repeat_lost_in_a_resume_is_left_as_the_resume_marked_it(
    journal: optuna.storages.JournalStorage,
) -> None:
    searcher = make_searcher(journal)
    searcher._space = three_students
    for trial_id in "abc":
        searcher.suggest(trial_id)
    waiting = repeats_waiting(journal)
    assert waiting
    for trial in waiting:  # what resume.fail_orphan_optuna_trials does to RUNNING trials no Tune trial carries
        journal.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    for trial_id in "abc":
        searcher.on_trial_complete(trial_id, {"epoch": TOY_EPOCHS, "val_accuracy": 0.8, "params": 8_000})
    assert [t.state for t in repeats_waiting(journal)] == [TrialState.FAIL] * len(waiting)
    assert [t.state for t in stored_study(journal).trials[:1]] == [TrialState.COMPLETE]


@pytest.fixture
def local_ray() -> Iterator[None]:
    # address="local": always our own cluster, never one that another process on this machine started.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_tune_run_with_pareto_halving_then_restore(tmp_path: Path, local_ray: None) -> None:
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"  # what the runner uses: it must survive checkpoints
    # Run one after another, so each rung sees the trials in this order (eta 2: rungs at epochs 1 and 2).
    points = [
        {"size": 8, "quality": 0.9, "fail": False},  # runs its full budget
        {"size": 16, "quality": 0.5, "fail": False},  # dominated by the first at epoch 1: stopped
        {"size": 4, "quality": 0.2, "fail": True},  # small enough to go on at epoch 1; raises at epoch 2
        {"size": 64, "quality": 0.9, "fail": False},  # over TOY_MAX_PARAMS: rejected at epoch 0
    ]
    scheduler, callbacks = make_scheduler(
        SchedulerConfig(name="pareto_halving", grace_epochs=1, reduction_factor=2), OBJECTIVES, TOY_EPOCHS
    )
    tuner = tune.Tuner(
        toy_student,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(optuna.storages.RDBStorage(storage_url), points_to_evaluate=points),
            scheduler=scheduler,
            num_samples=len(points),
            max_concurrent_trials=1,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name="toy", storage_path=str(tmp_path), callbacks=callbacks, verbose=0),
    )
    results = tuner.fit()

    assert results.num_errors == 1
    trials = stored_study(storage_url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.PRUNED]
    assert [t.user_attrs["epochs"] for t in trials] == [TOY_EPOCHS, 1, 1, 0]
    assert trials[1].user_attrs["partial_val_accuracy"] == pytest.approx(0.5 / TOY_EPOCHS)
    assert "rejected" in trials[3].user_attrs
    recorded = scheduler.state()["rungs"]
    assert [len(recorded[m]) for m in ("1", "2")] == [3, 1]

    restored = tune.Tuner.restore(str(tmp_path / "toy"), toy_student)
    restored.fit()  # nothing left to run; Tune restores the callbacks' state
    # Private access, test only: the callback and the scheduler Tune runs after the restore.
    (state,) = [c for c in restored._local_tuner.get_run_config().callbacks if isinstance(c, SchedulerState)]
    assert state.scheduler is restored._local_tuner._tune_config.scheduler
    assert state.scheduler.state()["rungs"] == recorded
