"""Shared fixtures: the digits dataset and small studies whose run directories live in tmp_path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from nas_kd.config import Study, load_study
from nas_kd.data import Dataset, load_dataset

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "studies" / "quickstart.yaml"


_EXIT_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # Ray sessions started and stopped many times in one process leave core-worker threads behind that
    # can crash interpreter teardown with SIGSEGV after every test has passed (ray-project/ray#31145;
    # seen once in CI). The results are final by now, so leave without a teardown when Ray was used.
    ray = sys.modules.get("ray")
    if ray is not None and _EXIT_STATUS in config.stash:
        if ray.is_initialized():  # a test that failed before its own shutdown
            ray.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT_STATUS])


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    # One thread: Ray trial workers run beside the test process on 2 cores, and oversubscribed OpenMP
    # threads spin-wait each other into 10-100x slowdowns.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits", val_fraction=0.15)


def small_study(runs_dir: Path, **overrides: object) -> Study:
    """The quickstart study, made quick: few epochs, small teacher."""
    base = {
        "runs_dir": str(runs_dir),
        "train.epochs": 2,
        "teacher.train.epochs": 3,
    }
    base.update(overrides)
    return load_study(QUICKSTART, base)


@pytest.fixture
def study(tmp_path: Path) -> Study:
    return small_study(tmp_path)
