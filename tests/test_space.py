from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from nas_kd.space import SearchSpace, SpaceError, SpaceUnion, load_space

ROOT = Path(__file__).resolve().parents[1]


def test_define_by_run_asks_only_for_existing_stages() -> None:
    space = load_space(str(ROOT / "search_spaces" / "resnet.yaml"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        arch = space.suggest(trial)
        assert space.contains(arch)
        stage_keys = {k.split(".")[0] for k in trial.params if k.startswith("s")}
        assert stage_keys == {f"s{i}" for i in range(len(arch["stages"]))} | {"stem", "stages"}
        study.tell(trial, 0.0)


def test_per_stage_overrides_and_contains() -> None:
    space = SearchSpace.from_dict(
        {
            "family": "cnn",
            "stem": 8,
            "stages": 2,
            "stage": {"channels": {"choices": [16, 32]}, "depth": 1},
            "per_stage": [{"channels": 8}],
        }
    )
    arch = space.sample(np.random.default_rng(0))
    assert arch["stages"][0]["channels"] == 8
    assert arch["stages"][1]["channels"] in (16, 32)
    assert space.contains(arch)
    arch["stages"][0]["channels"] = 16
    assert not space.contains(arch)


def test_union_searches_the_family() -> None:
    space = load_space([str(ROOT / "search_spaces" / "cnn.yaml"), str(ROOT / "search_spaces" / "mobilenet.yaml")])
    assert isinstance(space, SpaceUnion)
    rng = np.random.default_rng(0)
    families = {space.sample(rng)["family"] for _ in range(30)}
    assert families == {"cnn", "mobilenet"}


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"family": "vgg", "stage": {"channels": 8, "depth": 1}}, ".family"),
        ({"family": "cnn", "stage": {"channels": 8}}, ".stage.depth"),
        ({"family": "resnet", "stage": {"channels": 8, "depth": 1, "expand": 2}}, ".stage.expand"),
        ({"family": "cnn", "stage": {"channels": {"choices": [8, 0]}, "depth": 1}}, ".stage.channels"),
        ({"family": "cnn", "stage": {"channels": 8, "depth": 1}, "extra": 1}, ".extra"),
    ],
)
def test_invalid_spaces_name_the_field(raw: dict, where: str) -> None:
    with pytest.raises(SpaceError) as info:
        SearchSpace.from_dict(raw)
    assert info.value.where == where
