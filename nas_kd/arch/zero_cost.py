"""Zero-cost proxies: how promising an untrained network is, from one batch at initialisation.

``naswot_score`` is NASWOT (Mellor et al., "Neural Architecture Search without Training", ICML 2021), as in the
authors' code (BayesWatch/nas-without-training, ``score_networks.py`` and ``scores.py``, hook_logdet): the
network, freshly initialised and in training mode, sees one batch of training images; the input of every ReLU
is binarised per image (unit on: > 0), and K[i, j] counts the units where images i and j agree (both on or both
off) summed over the ReLUs; the score is log|det K|. A network whose activation patterns tell the images apart
scores higher, which on NAS-Bench-201 correlates with accuracy after training.

One choice differs from the reference and is kept on purpose: the reference counts a ReLU module once per
forward call reached by the backward pass; here every call counts the same way, without the backward pass
(in these networks every ReLU is on it, and torchvision's BasicBlock calls its one ReLU module twice).
"""

from __future__ import annotations

import torch
from torch import nn


def relu_modules(model: nn.Module) -> list[nn.Module]:
    """The modules NASWOT listens to: every module whose class name has ReLU in it, as the reference selects
    them (nn.ReLU, nn.ReLU6, brevitas' QuantReLU ...)."""
    return [m for m in model.modules() if "ReLU" in type(m).__name__]


def naswot_score(model: nn.Module, images: torch.Tensor) -> float:
    """log|det K| of ``model`` (untrained) on ``images`` (a normalised batch); -inf when K is singular (two
    images with the same activation pattern everywhere), NaN when the model has no ReLU."""
    modules = relu_modules(model)
    if not modules:
        return float("nan")
    kernel = torch.zeros(len(images), len(images), dtype=torch.float64)

    def count(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        nonlocal kernel
        on = (inputs[0].detach().flatten(1) > 0).to(torch.float32)
        # Agreements: both on (on @ on.T) plus both off; exact in float32 up to 2**24 units per call.
        agree = on @ on.T + (1 - on) @ (1 - on).T
        kernel = kernel + agree.to(torch.float64)

    hooks = [m.register_forward_hook(count) for m in modules]
    was_training = model.training
    try:
        with torch.no_grad():
            model.train()(images)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return float(torch.linalg.slogdet(kernel).logabsdet)
