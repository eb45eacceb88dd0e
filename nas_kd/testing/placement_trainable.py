"""A Tune trainable that reports where Ray placed it; used by tests/search/test_cluster.py.

It lives in the package because trainables defined in a test module cannot be unpickled on Ray workers.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
from ray import tune


@ray.remote(num_cpus=0)
class Rendezvous:
    """Counts arrivals: trials that all arrive hold their resources at the same time."""

    def __init__(self) -> None:
        self.arrived = 0

    def arrive(self) -> int:
        self.arrived += 1
        return self.arrived

    def count(self) -> int:
        return self.arrived


def placement_trainable(config: dict[str, Any]) -> None:
    """Waits (up to ``timeout_seconds``) until ``expect`` trials have reached the named ``Rendezvous``, then
    reports its node, its GPU ids and whether they all met."""
    rendezvous = ray.get_actor(config["rendezvous"])
    ray.get(rendezvous.arrive.remote())
    deadline = time.monotonic() + config.get("timeout_seconds", 60.0)
    met = False
    while not met and time.monotonic() < deadline:
        met = ray.get(rendezvous.count.remote()) >= config["expect"]
        time.sleep(0 if met else 0.2)
    tune.report(
        {
            "met": met,
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": ",".join(str(i) for i in ray.get_gpu_ids()),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        }
    )
