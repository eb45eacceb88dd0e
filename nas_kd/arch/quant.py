"""Quantized students: a genome's ``quant`` block turns the network into a brevitas quantization-aware one.

Genome::

    {"family": "cnn", "stem": 16, "stages": [...],
     "quant": {"weight_bits": 4, "act_bits": 4,           # every layer of the stages
               "first_last_bits": 8,                        # optional; stem and head (default: max(8, bits))
               "stages": [{"weight_bits": 2}, {}]}}         # optional per-stage overrides

What is quantized: the weights of every convolution and linear layer (symmetric, per output channel,
brevitas ``Int8WeightPerChannelFloat`` at the given width) and the input of every such layer (per tensor,
a learned scale starting from a +-4 clipping range). An input that is never negative (after a ReLU)
is quantized unsigned, one that can be (a projection's output, the image) signed: decided once by a probe
forward on the freshly built network. So every multiply-accumulate takes ``act_bits`` by ``weight_bits``
integers; additions (residuals), batch norm and pooling stay in float, as in integer deployments that fold
batch norm and keep a wider accumulator. 32 bits means full precision for that layer (a plain torch layer).

The network stays a ``StudentNet`` (forward, forward_features, stage_channels), so every distiller and
feature/relation knowledge works unchanged; its state dict round-trips through safetensors.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import onnxruntime
import torch
from brevitas import nn as qnn
from brevitas.export import export_onnx_qcdq
from brevitas.quant import Int8ActPerTensorFloatMinMaxInit, Int8WeightPerChannelFloat, Uint8ActPerTensorFloatMaxInit
from torch import nn

from nas_kd.arch.net import Arch, StudentNet, build_family
from nas_kd.arch.quant_spec import FULL_PRECISION, check_quant, layer_bits

ACT_RANGE = 4.0  # initial clipping range of layer inputs (batch-normalised: a few standard deviations)
SCALE_BYTES = 4  # one fp32 scale per output channel; symmetric quantization stores no zero point


def _scope(name: str) -> tuple[str, int]:
    if name.startswith("stem"):
        return "first", 0
    if name.startswith("head"):
        return "last", 0
    return "stage", int(name.split(".")[1])


def _signed_inputs(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, bool]:
    """Which weighted layers can see negative inputs: one eval-mode forward of random images (a local
    generator, so the global seed stream is untouched)."""
    seen: dict[str, bool] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):

            def record(_: nn.Module, inputs: tuple[torch.Tensor, ...], name: str = name) -> None:
                seen[name] = seen.get(name, False) or bool((inputs[0] < 0).any())

            hooks.append(module.register_forward_pre_hook(record))
    generator = torch.Generator().manual_seed(0)
    model.eval()
    with torch.no_grad():
        model(torch.randn(4, *input_shape, generator=generator))
    model.train()
    for hook in hooks:
        hook.remove()
    return seen


def _quant_kwargs(weight_bits: int, act_bits: int, signed: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"weight_quant": Int8WeightPerChannelFloat, "weight_bit_width": weight_bits}
    if act_bits < FULL_PRECISION:
        # A learned scale from a fixed start, not brevitas' default runtime statistics: those keep a step
        # counter outside the state dict, so a resumed or reloaded student would not continue the same run.
        if signed:
            kwargs |= {"input_quant": Int8ActPerTensorFloatMinMaxInit, "input_min_val": -ACT_RANGE}
        else:
            kwargs["input_quant"] = Uint8ActPerTensorFloatMaxInit
        kwargs |= {"input_max_val": ACT_RANGE, "input_bit_width": act_bits}
    return kwargs


def _quantized_layer(layer: nn.Module, weight_bits: int, act_bits: int, signed: bool) -> nn.Module:
    kwargs = _quant_kwargs(weight_bits, act_bits, signed)
    if isinstance(layer, nn.Conv2d):
        new: nn.Module = qnn.QuantConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            **kwargs,
        )
    else:
        new = qnn.QuantLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, **kwargs)
    with torch.no_grad():  # keep the fp network's initialisation: same genome and seed, same start
        new.weight.copy_(layer.weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


def build_quantized(arch: Arch, input_shape: tuple[int, int, int], num_classes: int) -> StudentNet:
    """The full-precision network of ``arch`` with its convolutions and linear layers made quantization-aware."""
    check_quant(arch)
    if torch.empty(0).device.type == "meta":  # brevitas cannot initialise on the meta device; these nets are tiny
        with torch.device("cpu"):
            return build_quantized(arch, input_shape, num_classes)
    model = build_family(arch, input_shape, num_classes)
    signed = _signed_inputs(model, input_shape)
    quant = arch["quant"]
    for name in list(signed):
        weight_bits, act_bits = layer_bits(quant, *_scope(name))
        if weight_bits == FULL_PRECISION:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _quantized_layer(getattr(parent, child), weight_bits, act_bits, signed[name]))
    return model


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """(name, layer, weight bits) of every layer whose weights are quantized."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, (qnn.QuantConv2d, qnn.QuantLinear)) and module.weight_quant.is_quant_enabled:
            out.append((name, module, int(module.weight_quant.bit_width())))
    return out


def packed_weight_bytes(model: nn.Module) -> dict[int, int]:
    """``id(tensor) -> bytes`` where storage differs from torch's: quantized weights packed at their bit width
    plus one scale per channel; brevitas' constant buffers (bit width, zero point 0, sentinels: the genome
    fixes them) take none."""
    constants = {
        id(buffer): 0
        for name, buffer in model.named_buffers()
        if name.endswith(("_zero_hw_sentinel.value", "zero_point.value", "bit_width.value"))
    }
    return constants | {
        id(layer.weight): math.ceil(layer.weight.numel() * bits / 8) + layer.weight.shape[0] * SCALE_BYTES
        for _, layer, bits in quantized_layers(model)
    }


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path) -> Path:
    """Write ``model`` as ONNX with a dynamic batch: a quantized network as QCDQ (int8 weights with their
    scales; QuantizeLinear/Clip/DequantizeLinear around every quantized tensor, which onnxruntime runs), a
    plain one as float32. Input ``input``, output ``logits``."""
    path = Path(path)
    model = model.eval()
    example = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    names = {"input_names": ["input"], "output_names": ["logits"]}
    axes = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}
    with warnings.catch_warnings():  # brevitas' notices about optional packages and the default opset
        warnings.simplefilter("ignore", UserWarning)
        if quantized_layers(model):
            export_onnx_qcdq(model, args=example, export_path=str(path), dynamo=False, **names, **axes)
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, **names, **axes)
    return path


def onnx_session(path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session (all graph optimisations on, ``threads`` intra-op threads)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about initializers listed as inputs are noise here
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_accuracy(path: str | Path, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of an exported model on ``x``/``y`` through onnxruntime."""
    session = onnx_session(path)
    correct = 0
    for start in range(0, len(x), batch_size):
        images = x[start : start + batch_size].float().cpu().contiguous().numpy()
        logits = session.run(None, {"input": images})[0]
        correct += int((logits.argmax(1) == y[start : start + batch_size].cpu().numpy()).sum())
    return correct / len(x)
