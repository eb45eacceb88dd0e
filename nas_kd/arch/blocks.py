"""Stage builders for the three student families, made of torchvision's own blocks.

Each builder returns ``nn.Sequential`` that maps ``in_channels`` to ``stage["channels"]`` and
downsamples by ``stride``. A stage dict holds only plain values (it is part of the genome).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig
from torchvision.models.resnet import BasicBlock
from torchvision.ops import Conv2dNormActivation

StageBuilder = Callable[[int, dict[str, Any], int], nn.Sequential]


def cnn_stage(in_channels: int, stage: dict[str, Any], stride: int) -> nn.Sequential:
    """Plain conv-bn-relu layers ("simplified teacher"); downsampling by max-pool after the stage."""
    channels, kernel = stage["channels"], stage.get("kernel", 3)
    layers: list[nn.Module] = []
    for i in range(stage["depth"]):
        layers.append(Conv2dNormActivation(in_channels if i == 0 else channels, channels, kernel_size=kernel))
    if stride > 1:
        layers.append(nn.MaxPool2d(stride, ceil_mode=True))
    return nn.Sequential(*layers)


def resnet_stage(in_channels: int, stage: dict[str, Any], stride: int) -> nn.Sequential:
    """CIFAR-style ResNet stage: torchvision BasicBlocks, the first one strided with a 1x1 shortcut."""
    channels = stage["channels"]
    blocks: list[nn.Module] = []
    for i in range(stage["depth"]):
        block_stride = stride if i == 0 else 1
        block_in = in_channels if i == 0 else channels
        downsample = None
        if block_stride != 1 or block_in != channels:
            downsample = nn.Sequential(
                nn.Conv2d(block_in, channels, 1, stride=block_stride, bias=False), nn.BatchNorm2d(channels)
            )
        blocks.append(BasicBlock(block_in, channels, stride=block_stride, downsample=downsample))
    return nn.Sequential(*blocks)


def mobilenet_stage(in_channels: int, stage: dict[str, Any], stride: int) -> nn.Sequential:
    """Inverted residuals (depthwise-separable, optional squeeze-excitation): torchvision's MobileNetV3 block,
    which generalises MobileNetV2's with a kernel size and SE."""
    channels, expand = stage["channels"], stage.get("expand", 4)
    kernel, use_se = stage.get("kernel", 3), bool(stage.get("se", False))
    blocks: list[nn.Module] = []
    for i in range(stage["depth"]):
        block_in = in_channels if i == 0 else channels
        config = InvertedResidualConfig(
            block_in, kernel, block_in * expand, channels, use_se, "RE", stride if i == 0 else 1, 1, 1.0
        )
        # The config rounds widths to multiples of 8 (an ImageNet width-multiplier rule); a genome's widths
        # are meant literally, so set them back.
        config.input_channels, config.expanded_channels, config.out_channels = block_in, block_in * expand, channels
        # Default batch-norm momentum: MobileNetV3's 0.01 suits long ImageNet runs, not 10-epoch students.
        blocks.append(InvertedResidual(config, norm_layer=nn.BatchNorm2d))
    return nn.Sequential(*blocks)


STAGE_BUILDERS: dict[str, StageBuilder] = {
    "cnn": cnn_stage,
    "resnet": resnet_stage,
    "mobilenet": mobilenet_stage,
}
