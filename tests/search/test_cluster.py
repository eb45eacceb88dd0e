"""A two-node Ray cluster on one machine, each node declaring one fake GPU.

Trials asking for half a GPU are packed two per GPU and spread over both nodes; a small study runs there
through ``run_study(address=...)`` and its trials fall back to the CPU (Ray assigns GPU ids, CUDA is absent).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray import tune
from ray.cluster_utils import Cluster

from nas_kd.testing.placement_trainable import Rendezvous, placement_trainable
from tests.conftest import QUICKSTART

pytestmark = pytest.mark.slow  # Ray, searches or end-to-end runs: left out of `make test-fast`

NODE = {"num_cpus": 2, "num_gpus": 1, "object_store_memory": 100 * 1024**2, "include_dashboard": False}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster(initialize_head=True, head_node_args=NODE)
    try:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_half_gpu_trials_pack_two_per_gpu_on_both_nodes(cluster: Cluster, tmp_path: Path) -> None:
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        rendezvous = Rendezvous.options(name="placement").remote()  # noqa: F841 - the driver keeps it alive
        tuner = tune.Tuner(
            tune.with_resources(placement_trainable, {"cpu": 0.5, "gpu": 0.5}),
            param_space={"rendezvous": "placement", "expect": 4},
            tune_config=tune.TuneConfig(num_samples=4),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        )
        results = [r.metrics for r in tuner.fit()]
    finally:
        ray.shutdown()

    assert len(results) == 4
    # All four held half a GPU at the same time, which two GPUs allow only when packed two per GPU.
    assert all(r["met"] for r in results), results
    per_gpu = Counter((r["node_id"], r["gpu_ids"]) for r in results)
    assert len({node for node, _ in per_gpu}) == 2, per_gpu  # both nodes
    assert sorted(per_gpu.values()) == [2, 2], per_gpu  # two trials on each node's GPU
    assert all(r["gpu_ids"] and "," not in r["gpu_ids"] for r in results)  # each saw exactly one GPU id
    assert all(r["cuda_visible_devices"] == r["gpu_ids"] for r in results)


def test_small_study_completes_on_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    from nas_kd.search.runner import run_study

    result = run_study(
        QUICKSTART,
        address=cluster.address,
        runs_dir=tmp_path,
        report=False,
        log=lambda *a: None,
        overrides={"train.epochs": 1, "teacher.train.epochs": 1, "search.trials": 2, "resources.gpu": 0.5},
    )
    assert not ray.is_initialized()  # run_study stops the connection it started
    assert list(result.trials["status"]) == ["COMPLETE", "COMPLETE"], result.trials[["status", "error"]]
    assert result.pareto
