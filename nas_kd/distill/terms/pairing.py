"""Joining two networks of any families stage by stage (used by the feature terms).

A network with ``n`` stages is cut into ``k = min(n_student, n_teacher)`` equal parts by depth; pair
``m`` (1..k) joins stage ``ceil(m * n / k)`` (1-based) of each. The deepest stages are always paired; the
network with more stages contributes every ``n/k``-th stage, so a 2-stage student facing a 4-stage teacher
is paired (1, 2) and (2, 4). In each pair the larger feature map is adaptive-average-pooled to the
smaller one's height and width (pooling never invents detail, and a smaller map is cheaper).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def pair_stages(n_student: int, n_teacher: int, keep: int = 0) -> list[tuple[int, int]]:
    """(student stage, teacher stage) index pairs, 0-based, shallow to deep; ``keep`` > 0 keeps the deepest."""
    k = min(n_student, n_teacher)
    pairs = [(math.ceil(m * n_student / k) - 1, math.ceil(m * n_teacher / k) - 1) for m in range(1, k + 1)]
    return pairs[-keep:] if keep > 0 else pairs


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the larger of two (N, C, H, W) maps to the other's height and width."""
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    return (
        a if a.shape[2:] == size else F.adaptive_avg_pool2d(a, size),
        b if b.shape[2:] == size else F.adaptive_avg_pool2d(b, size),
    )


def adapter(in_channels: int, out_channels: int) -> nn.Module:
    """1x1 conv + batch norm: maps a student map onto a teacher map's channels."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
