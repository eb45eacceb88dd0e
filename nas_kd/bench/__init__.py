"""Benchmarks: commands that print ratios measured in one run against a baseline (never timed tests).

``nas-kd bench WHAT``: each WHAT is one module here with ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

import torch

from nas_kd.config import Study, parse_override
from nas_kd.data import Dataset
from nas_kd.pipeline import ready_teachers, resolve_device, study_data
from nas_kd.teachers import Teacher


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


def student_bench_setup(study: Study, teacher_for: str) -> tuple[dict[str, Any], torch.device, Dataset, list[Teacher]]:
    """For a benchmark that trains the study's student against its teacher: the student's genome, the device,
    the study's data on it and the teachers, ready (trained once, then cached). BenchError without a student block, or without a
    teacher (``teacher_for`` says what the benchmark needs one for)."""
    if study.student is None:
        raise BenchError(f"{study.path}: student: the benchmark needs a student block (its family and depths)")
    device = resolve_device()
    data = study_data(study, device)
    teachers = [cached.as_teacher(device) for cached in ready_teachers(study, data)]
    if not teachers:
        raise BenchError(f"{study.path}: teacher: {teacher_for}; add one")
    return study.student.genome(), device, data, teachers


def main(args: argparse.Namespace) -> int:
    return importlib.import_module(BENCHMARKS[args.what]).run(args)
