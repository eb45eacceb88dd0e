"""Benchmarks: commands that print ratios measured in one run against a baseline (never timed tests).

``nas-kd bench WHAT``: each WHAT is one module here with ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from nas_kd.config import parse_override


class BenchError(Exception):
    """Bad benchmark input (unknown arm, missing student block, unreadable runs): one line, exit code 2."""


BENCHMARKS = {
    "trainer": "nas_kd.bench.trainer",
    "distillers": "nas_kd.bench.distillers",
    "search": "nas_kd.bench.search",
    "gap": "nas_kd.bench.gap",
    "gpu": "nas_kd.bench.gpu",
    "driver": "nas_kd.bench.driver",
    "quant": "nas_kd.bench.quant",
    "quant-latency": "nas_kd.bench.quant_latency",
}


def study_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The study fields a benchmark run changes: each ``--set KEY=VALUE``, and ``--epochs N`` as ``train.epochs``."""
    overrides = dict(parse_override(text) for text in args.set or [])
    if args.epochs:
        overrides["train.epochs"] = args.epochs
    return overrides


def main(args: argparse.Namespace) -> int:
    return importlib.import_module(BENCHMARKS[args.what]).run(args)
