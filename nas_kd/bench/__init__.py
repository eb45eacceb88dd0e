"""Benchmarks: commands that print ratios measured in one run against a baseline (never timed tests).

``nas-kd bench WHAT``: each WHAT is one module here with ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib


class BenchError(Exception):
    """Bad benchmark input (unknown arm, missing student block, unreadable runs): one line, exit code 2."""


BENCHMARKS = {
    "trainer": "nas_kd.bench.trainer",
    "distillers": "nas_kd.bench.distillers",
    "search": "nas_kd.bench.search",
    "gpu": "nas_kd.bench.gpu",
    "driver": "nas_kd.bench.driver",
    "quant": "nas_kd.bench.quant",
    "quant-latency": "nas_kd.bench.quant_latency",
}


def main(args: argparse.Namespace) -> int:
    return importlib.import_module(BENCHMARKS[args.what]).run(args)
