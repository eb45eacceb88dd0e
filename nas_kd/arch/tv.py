"""torchvision classification models as teachers nas-kd trains: ResNets adapted to small images (3x3 stem, no
max-pool); other families as torchvision builds them (``arch/external.py``)."""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn

from nas_kd.arch.external import TeacherNet
from nas_kd.arch.net import StudentNet


def build_torchvision(arch: dict[str, Any], input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``{"torchvision": "resnet18"}`` -> that ResNet with a 3x3 stride-1 stem and no max-pool, exposed
    through the same ``StudentNet`` interface so feature knowledge can read its four stages."""
    name = arch["torchvision"]
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError as error:
        raise ValueError(f"unknown torchvision model {name!r}") from error
    if not all(hasattr(model, a) for a in ("conv1", "bn1", "layer1", "layer4", "fc")):
        # Not a ResNet: trained as torchvision builds it (grey images repeated to its 3 input channels).
        return TeacherNet(model, input_shape, None, {"channels": 3} if input_shape[0] != 3 else None)
    stem_width = model.conv1.out_channels
    stem = nn.Sequential(
        nn.Conv2d(input_shape[0], stem_width, 3, padding=1, bias=False), model.bn1, nn.ReLU(inplace=True)
    )
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    channels = [_out_channels(stage) for stage in stages]
    net = StudentNet(stem, stages, channels, num_classes)
    net.head = model.fc
    return net


def _out_channels(stage: nn.Module) -> int:
    convs = [m for m in stage.modules() if isinstance(m, torch.nn.Conv2d)]
    return convs[-1].out_channels
