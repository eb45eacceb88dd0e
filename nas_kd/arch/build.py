"""``build_model``: the one entry from a genome to a network (family, torchvision or quantized)."""

from __future__ import annotations

from torch import nn

from nas_kd.arch.net import Arch, build_fp_model
from nas_kd.arch.tv import build_torchvision


def build_model(arch: Arch, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build the network a genome describes; ``input_shape`` is (channels, height, width)."""
    if "quant" in arch:  # imported only here: brevitas adds seconds to every import of nas_kd otherwise
        from nas_kd.arch.quant import build_quantized

        return build_quantized(arch, input_shape, num_classes)
    if "torchvision" in arch:
        return build_torchvision(arch, input_shape, num_classes)
    return build_fp_model(arch, input_shape, num_classes)
