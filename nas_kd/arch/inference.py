"""A frozen network made cheap to run: what a live teacher needs (it runs on every training batch).

``frozen_for_inference`` returns a copy (the original is left alone, so it can still be trained, saved or
compared) in eval mode, without gradients, with every batch norm that directly follows a convolution folded
into that convolution, in channels_last. On CPU the fold saves one pass over each feature map, and
channels_last selects oneDNN's faster convolutions; on GPU channels_last is what tensor cores want.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def frozen_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode, gradient-free, batch-norm-folded, channels_last copy of ``model``; same outputs up to
    float rounding."""
    frozen = copy.deepcopy(model).eval()
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    fold_batch_norms(frozen)
    return frozen.to(memory_format=torch.channels_last)


def fold_batch_norms(model: nn.Module) -> int:
    """Fold each eval-mode ``BatchNorm2d`` whose only input is a ``Conv2d`` used once (and used by nothing
    else) into that convolution, in place; the batch norm becomes ``Identity``. Returns how many were folded.

    The pairs are found on a symbolic trace of ``forward``; a model that cannot be traced is left as it is.
    """
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # untraceable models (data-dependent control flow) just stay unfolded
        return 0
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        conv, norm = modules[source.target], modules[node.target]
        if not (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and not norm.training):
            continue
        if calls[source.target] != 1 or calls[node.target] != 1 or len(source.users) != 1:
            continue
        fused = fuse_conv_bn_eval(conv, norm)
        conv.weight, conv.bias = fused.weight, fused.bias
        parent_name, _, attribute = node.target.rpartition(".")
        setattr(model.get_submodule(parent_name), attribute, nn.Identity())
        folded += 1
    return folded
