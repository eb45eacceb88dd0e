"""Views: what one network sees of a batch of stored images, as batched transforms on the device.

A view is a short list of steps applied in order to a (N, C, H, W) float batch, e.g. the teacher's view
``[{resize: [224, 224]}, {channels: 3}]`` of 32x32 grayscale data. Steps are registered by name, so a
plugin can add one (``@register_view("name")``). In a study a view is written as a list whose items are a
step name (``grayscale``) or a one-key mapping from the name to its argument (``{resize: [16, 16]}``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

StepFn = Callable[[torch.Tensor, Any], torch.Tensor]
VIEW_STEPS: dict[str, StepFn] = {}


def register_view(name: str) -> Callable[[StepFn], StepFn]:
    """Decorator: make ``fn(batch, argument) -> batch`` available as the view step ``name``."""

    def add(fn: StepFn) -> StepFn:
        if name in VIEW_STEPS:
            raise ValueError(f"view step {name!r} registered twice")
        VIEW_STEPS[name] = fn
        return fn

    return add


@register_view("resize")
def resize(x: torch.Tensor, size: Any) -> torch.Tensor:
    """Bilinear resize to ``[H, W]`` (antialiased when shrinking, so no aliasing of fine detail)."""
    h, w = (size, size) if isinstance(size, int) else size
    if tuple(x.shape[2:]) == (h, w):
        return x
    shrinking = h < x.shape[2] or w < x.shape[3]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrinking)


@register_view("channels")
def channels(x: torch.Tensor, count: int) -> torch.Tensor:
    """1 -> 3 channels by repetition, 3 -> 1 by ITU-R BT.601 luma; same count: unchanged."""
    if x.shape[1] == count:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, count, -1, -1)
    if x.shape[1] == 3 and count == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
        return (x * weights[None, :, None, None]).sum(1, keepdim=True)
    raise ValueError(f"cannot convert {x.shape[1]} channels to {count}")


@register_view("grayscale")
def grayscale(x: torch.Tensor, keep_channels: bool = False) -> torch.Tensor:
    """Luma; with ``keep_channels`` repeated to the input's channel count (the shape stays)."""
    gray = channels(x, 1) if x.shape[1] == 3 else x.mean(1, keepdim=True)
    return gray.expand(-1, x.shape[1], -1, -1) if keep_channels else gray


@register_view("center_crop")
def center_crop(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """The central ``fraction`` of height and width."""
    h, w = max(1, round(x.shape[2] * fraction)), max(1, round(x.shape[3] * fraction))
    top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    return x[:, :, top : top + h, left : left + w]


@dataclass(frozen=True)
class View:
    """An ordered list of (step name, argument); the empty view is the identity."""

    steps: tuple[tuple[str, Any], ...] = ()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for name, argument in self.steps:
            x = VIEW_STEPS[name](x, argument) if argument is not None else VIEW_STEPS[name](x)  # type: ignore[call-arg]
        return x

    def output_shape(self, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(C, H, W) this view makes of ``input_shape``, computed on the meta device (no memory)."""
        return tuple(self(torch.empty(1, *input_shape, device="meta")).shape[1:])  # type: ignore[return-value]

    def spec(self) -> list[Any]:
        """The study form (plain data)."""
        return [name if argument is None else {name: argument} for name, argument in self.steps]


def parse_view(raw: Any) -> View:
    """A view from its study form; raises ValueError naming the unknown step."""
    if raw is None:
        return View()
    if not isinstance(raw, list):
        raise ValueError("a view is a list of steps, e.g. [{resize: [16, 16]}, grayscale]")
    steps = []
    for item in raw:
        if isinstance(item, str):
            name, argument = item, None
        elif isinstance(item, dict) and len(item) == 1:
            ((name, argument),) = item.items()
        else:
            raise ValueError(f"a view step is a name or a one-key mapping, got {item!r}")
        if name not in VIEW_STEPS:
            raise ValueError(f"unknown view step {name!r}; known: {', '.join(sorted(VIEW_STEPS))}")
        steps.append((name, argument))
    return View(tuple(steps))


def parse_view_text(text: str) -> View:
    """A view from its one-line form, for flat settings: steps joined by commas, each ``name`` or
    ``name:argument``, a size as ``HxW`` (``"resize:4x4,channels:3"``); the empty string is the identity."""
    steps: list[Any] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, argument = item.partition(":")
        steps.append({name.strip(): _argument(argument.strip())} if sep else name.strip())
    return parse_view(steps)


def _argument(text: str) -> Any:
    if "x" in text:
        return [int(side) for side in text.split("x")]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise ValueError(f"cannot read view argument {text!r} (a number, HxW, true or false)")
