"""Genome -> network, whatever the genome describes: one of nas-kd's families (``net.py``), quantized
(``quant.py``), a torchvision model (``tv.py``) or a wrapped network with its own view of the data
(``external.py``). Same dict, same network."""

from __future__ import annotations

from torch import nn

from nas_kd.arch.external import TeacherNet, build_network, view_shape
from nas_kd.arch.net import Arch, build_family
from nas_kd.arch.tv import build_torchvision


def build_model(arch: Arch, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build the network a genome describes; ``input_shape`` is (channels, height, width)."""
    if "quant" in arch:  # imported only here: brevitas adds seconds to every import of nas_kd otherwise
        from nas_kd.arch.quant import build_quantized

        return build_quantized(arch, input_shape, num_classes)
    if "torchvision" in arch:
        return build_torchvision(arch, input_shape, num_classes)
    if "wrap" in arch:  # a network nas-kd does not describe itself (see arch/external.py)
        seen = view_shape(arch.get("view"), input_shape)
        source = arch["wrap"]
        inner = build_model(source["genome"], seen, num_classes) if "genome" in source else None
        return TeacherNet(inner or build_network(source, seen, num_classes), input_shape, arch.get("feature_nodes"),
                          arch.get("view"))  # fmt: skip
    return build_family(arch, input_shape, num_classes)
