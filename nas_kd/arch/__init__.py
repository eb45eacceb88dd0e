"""Architectures: genome dicts, the networks they describe, and what they cost."""

from nas_kd.arch.build import build_model
from nas_kd.arch.measure import Cost, count_flops, count_params, measure, measure_latency_ms, model_bytes
from nas_kd.arch.net import Arch, StudentNet, arch_hash, arch_summary

__all__ = [
    "Arch",
    "Cost",
    "StudentNet",
    "arch_hash",
    "arch_summary",
    "build_model",
    "count_flops",
    "count_params",
    "measure",
    "measure_latency_ms",
    "model_bytes",
]
