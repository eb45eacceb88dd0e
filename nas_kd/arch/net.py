"""Genome (a plain dict) -> network. Same dict, same network.

Genome::

    {"family": "resnet" | "cnn" | "mobilenet",
     "stem": 16,                                   # stem conv channels
     "stages": [{"channels": 16, "depth": 2, ...}, ...],   # family-specific keys: kernel, expand, se
     "quant": {"weight_bits": 4, "act_bits": 4}}   # optional: quantization-aware (see nas_kd.arch.quant)

Stage 0 keeps the resolution; each later stage halves it (while the map is larger than 1x1).
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from nas_kd.arch.blocks import STAGE_BUILDERS
from nas_kd.arch.quant_spec import Arch, bits_of


def arch_hash(arch: Arch) -> str:
    """Stable short hash of a genome (names caches)."""
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]


def arch_summary(arch: Arch) -> str:
    """One-line human summary, e.g. ``resnet 16|16x2 32x2 64x1``."""
    if "torchvision" in arch:
        return f"torchvision {arch['torchvision']}"
    if "wrap" in arch:
        ((library, name),) = arch["wrap"].items()
        return f"{library} {arch_summary(name) if library == 'genome' else name}"
    stages = " ".join(f"{s['channels']}x{s['depth']}" for s in arch["stages"])
    bits = bits_of(arch)
    bits = f" w{bits['weight_bits']}a{bits['act_bits']}" if arch.get("quant") else ""
    return f"{arch['family']} {arch.get('stem', '-')}|{stages}{bits}"


class StudentNet(nn.Module):
    """Stem -> stages -> global pool -> linear. ``forward`` gives logits; ``forward_features`` also gives
    the output of every stage (for feature and relation knowledge) and the pooled embedding."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], channels: list[int], num_classes: int):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels[-1], num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        embedding = torch.flatten(self.pool(x), 1)
        return self.head(embedding), features, embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def build_family(arch: Arch, input_shape: tuple[int, int, int], num_classes: int) -> StudentNet:
    """Build one of nas-kd's own families (cnn, resnet, mobilenet); ``input_shape`` is (channels, height, width)."""
    family = arch["family"]
    if family not in STAGE_BUILDERS:
        raise ValueError(f"unknown family {family!r}; known: {sorted(STAGE_BUILDERS)}")
    in_channels, size = input_shape[0], min(input_shape[1:])
    stem_channels = arch.get("stem", arch["stages"][0]["channels"])
    stem = Conv2dNormActivation(in_channels, stem_channels, kernel_size=3)
    stages, channels, previous = [], [], stem_channels
    for i, stage in enumerate(arch["stages"]):
        stride = 2 if i > 0 and size > 1 else 1
        size = (size + 1) // stride
        stages.append(STAGE_BUILDERS[family](previous, stage, stride))
        channels.append(stage["channels"])
        previous = stage["channels"]
    return StudentNet(stem, stages, channels, num_classes)
