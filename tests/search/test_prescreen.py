"""The training-free prescreen: NASWOT against a reference written from the paper's equations, the pool's
choice, what the searcher tells Optuna, and what validation refuses."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from torch import nn

from nas_kd.arch.zero_cost import naswot_score
from nas_kd.config import PrescreenConfig, Study, StudyError, load_study
from nas_kd.data import Split
from nas_kd.pipeline import study_data
from nas_kd.preflight import check_study
from nas_kd.search.optuna_search import PRESCREENED_OUT, PruningAwareOptunaSearch
from nas_kd.search.pareto import modes
from nas_kd.search.prescreen import SCORE, Prescreen

QUICKSTART = Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml"
CNN = {"family": "cnn", "stem": 8, "stages": [{"channels": 8, "depth": 1}, {"channels": 16, "depth": 2}]}


def reference_naswot(model: nn.Module, images: torch.Tensor) -> float:
    """Mellor et al. 2021, eq. 2 as written: binary codes c_i of every ReLU's input for image i, then
    K_H[i, j] = N_A - d_H(c_i, c_j), score = log|det K_H|; pair by pair, in numpy."""
    codes: list[np.ndarray] = []
    hooks = [
        m.register_forward_hook(lambda _m, inputs, _o: codes.append((inputs[0].flatten(1) > 0).numpy()))
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    with torch.no_grad():
        model.train()(images)
    for hook in hooks:
        hook.remove()
    c = np.concatenate(codes, axis=1).astype(int)
    n_units, n = c.shape[1], len(c)
    kernel = np.empty((n, n))
    for i, j in itertools.product(range(n), range(n)):
        kernel[i, j] = n_units - np.sum(c[i] != c[j])
    return float(np.linalg.slogdet(kernel)[1])


def small_net() -> nn.Module:
    torch.manual_seed(0)  # batch norm before the ReLU: its training-mode batch statistics shape the codes
    return nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 20), nn.ReLU(),
        nn.Linear(20, 10),
    )  # fmt: skip


def test_naswot_matches_the_equations() -> None:
    images = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model = small_net().eval()
    assert naswot_score(model, images) == pytest.approx(reference_naswot(small_net(), images), rel=1e-12)
    assert not model.training  # the caller's mode is given back


def test_naswot_edge_cases() -> None:
    image = torch.randn(1, 1, 8, 8)
    assert naswot_score(small_net(), image.repeat(4, 1, 1, 1)) == float("-inf")  # equal codes: K is singular
    assert np.isnan(naswot_score(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), image.repeat(4, 1, 1, 1)))


def digits_like_split(n: int = 300) -> Split:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=generator)
    return Split(x, torch.randint(0, 10, (n,), generator=generator), torch.tensor([0.5]), torch.tensor([0.3]))


def test_a_candidate_is_scored_as_its_trial_builds_it() -> None:
    prescreen = Prescreen(PrescreenConfig(batch_size=32), digits_like_split(), 10, seed=0)
    assert prescreen.images.shape == (32, 1, 8, 8)
    score, params = prescreen.score({"arch": CNN, "seed": 3})
    again = pickle.loads(pickle.dumps(prescreen))  # searcher checkpoints pickle it
    assert again.score({"arch": CNN, "seed": 3}) == (score, params) and np.isfinite(score)
    assert prescreen.score({"arch": CNN, "seed": 4})[0] != score  # the trial's seed initialises it
    wider = {**CNN, "stages": [{"channels": 32, "depth": 1}, {"channels": 64, "depth": 2}]}
    assert prescreen.score({"arch": wider, "seed": 3})[1] > params


class FixedScores(Prescreen):
    """Each candidate's (score, params) given in its config: the choice, without networks."""

    def __init__(self, pool: int):
        self.pool = pool

    def score(self, config: dict) -> tuple[float, int]:
        return config["arch"]["score"], config["arch"]["params"]


@pytest.mark.parametrize(
    ("pool", "chosen"),
    [
        ([(10.0, 100), (12.0, 50), (5.0, 10)], 1),  # the first is bigger and scores lower than the second
        ([(10.0, 100), (12.0, 200), (5.0, 10)], 0),  # nobody dominates the first: the sampler's first draw
        ([(float("nan"), 10), (3.0, 500)], 1),  # no score ranks last
        ([(1.0, 10), (1.0, 10)], 0),  # ties: the first
    ],
)
def test_the_first_undominated_candidate_is_chosen(pool: list[tuple[float, int]], chosen: int) -> None:
    configs = [{"arch": {"score": s, "params": p}} for s, p in pool]
    index, scores = FixedScores(len(pool)).choose(configs)
    assert index == chosen and len(scores) == len(pool)


def test_the_searcher_trains_one_of_each_pool(tmp_path: Path) -> None:
    def space(trial: optuna.Trial) -> dict:
        arch = {"score": trial.suggest_float("score", 0, 1), "params": trial.suggest_int("params", 1, 1000)}
        return {"arch": arch, "distiller": "ce", "seed": 0}

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log")))
    searcher = PruningAwareOptunaSearch(
        space, metric=["val_accuracy", "params"], mode=modes(["val_accuracy", "params"]), max_epochs=2,
        sampler=optuna.samplers.RandomSampler(seed=0), study_name="s", storage=storage, prescreen=FixedScores(3),
    )  # fmt: skip
    configs = [searcher.suggest(trial_id) for trial_id in "abcd"]
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert len(trials) == 12  # four pools of three
    pools = [trials[i : i + 3] for i in range(0, len(trials), 3)]
    for pool, config in zip(pools, configs, strict=True):
        trained = [t for t in pool if t.state == TrialState.RUNNING]
        assert len(trained) == 1 and trained[0].params == config["arch"]
        others = [t for t in pool if t is not trained[0]]
        assert all(t.state == TrialState.PRUNED and t.user_attrs["untrained"] == PRESCREENED_OUT for t in others)
        assert all(t.user_attrs[SCORE] == t.params["score"] for t in pool)
        # Nobody in the pool is both smaller and higher-scored than the one trained.
        best = trained[0].params
        assert not any(t.params["score"] > best["score"] and t.params["params"] < best["params"] for t in others)
    number = searcher._ot_trials["a"].number
    searcher.on_trial_complete("a", {"epoch": 2, "val_accuracy": 0.9, "params": 10})
    told = optuna.load_study(study_name="s", storage=storage).trials[number]
    assert told.state == TrialState.COMPLETE and told.params == configs[0]["arch"]  # the chosen one gets the result


@pytest.fixture(scope="module")
def quickstart() -> tuple[Study, object]:
    study = load_study(QUICKSTART, {"search.prescreen": {"pool": 4}})
    return study, study_data(study, torch.device("cpu"), log=lambda _: None)


def test_validation_accepts_the_quickstart_with_a_prescreen(quickstart: tuple[Study, object]) -> None:
    check_study(*quickstart)


def test_validation_refuses_a_batch_over_the_training_split(quickstart: tuple[Study, object]) -> None:
    study, data = quickstart
    big = study.model_copy(deep=True)
    big.search.prescreen = PrescreenConfig(batch_size=1024)
    big.data.val_fraction = 0.5
    data = study_data(big, torch.device("cpu"), log=lambda _: None)
    with pytest.raises(StudyError, match=r"search\.prescreen\.batch_size.*1024 is more than the \d+ training"):
        check_study(big, data)


def test_validation_refuses_a_space_without_relus(
    quickstart: tuple[Study, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every built-in family uses ReLUs, so a family without any is stood in for by hiding them."""
    study, data = quickstart
    monkeypatch.setattr("nas_kd.preflight.relu_modules", lambda model: [])
    with pytest.raises(StudyError, match=r"search\.prescreen.*naswot scores ReLU networks.*has none \(resnet "):
        check_study(study, data)
    unscreened = study.model_copy(deep=True)
    unscreened.search.prescreen = None
    check_study(unscreened, data)  # without a prescreen, ReLUs do not matter


def test_the_pool_is_bounded() -> None:
    with pytest.raises(ValueError, match="pool"):
        PrescreenConfig(pool=1)
