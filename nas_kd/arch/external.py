"""Any classification network as a teacher: torchvision, timm, the user's own nn.Module, or a nas-kd genome.

``TeacherNet`` wraps a network so distillers see the interface nas-kd's own networks have
(``forward_features(x) -> (logits, stage features, pooled embedding)`` and ``stage_channels``), with two
additions:

- Stage features are taken by node name with ``torchvision.models.feature_extraction`` (``feature_nodes``);
  without names, the defaults are found per family (ResNet ``layer1..4``; otherwise the last block at each
  resolution of the ``features`` / ``stages`` / ``layers`` / ``blocks`` container, the deepest four).
- The teacher may see its own view of each image (``view``): the data's normalisation is undone, the view's
  steps (resize, channel conversion; ``nas_kd.views``) applied, then the teacher's own normalisation.

Genome form (plain data, so ``build_model`` rebuilds the same network and caches can hash it)::

    {"wrap": {"torchvision": "resnet18"} | {"timm": NAME} | {"python": "pkg.mod:factory"} | {"genome": {...}},
     "feature_nodes": [...] | None,
     "view": {"image_size": [H, W], "channels": 3, "mean": [...], "std": [...],
              "data_mean": [...], "data_std": [...]} | None}

Weights load without pickle (safetensors, or ``torch.load(weights_only=True)``) with ``load_weights``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from nas_kd.views import View

STAGE_CONTAINERS = ("features", "stages", "layers", "blocks")
WRAPPED_KEYS = ("torchvision", "timm", "python", "genome")
MAX_STAGES = 4
SHOWN = 5  # mismatches listed in an error


class WeightsError(ValueError):
    """A weights file that cannot be read, or does not fit the model it is meant for."""


class ModelSourceError(ValueError):
    """A teacher that cannot be built: unknown name, missing library, factory that fails, bad feature nodes."""


def build_network(source: dict[str, Any], input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The bare network of a ``wrap`` entry that is not a nas-kd genome, exactly as its library builds it."""
    if "torchvision" in source:
        name = source["torchvision"]
        try:
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        except ValueError:
            known = ", ".join(torchvision.models.list_models(module=torchvision.models)[:12])
            raise ModelSourceError(f"unknown torchvision model {name!r} (e.g. {known}, ...)") from None
    if "timm" in source:
        try:
            import timm
        except ImportError:
            raise ModelSourceError("timm is not installed: pip install 'nas-kd[timm]' (or pip install timm)") from None
        try:
            return timm.create_model(source["timm"], pretrained=False, num_classes=num_classes, in_chans=input_shape[0])
        except RuntimeError as error:  # timm's unknown-model error
            raise ModelSourceError(f"timm: {error}") from None
    if "python" in source:
        return _call_factory(source["python"], num_classes)
    raise ModelSourceError(f"a wrapped model is one of {', '.join(WRAPPED_KEYS)}, got {sorted(source)}")


def _call_factory(target: str, num_classes: int) -> nn.Module:
    module_name, _, function_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any failure in the user's module is a bad study, said in one line
        raise ModelSourceError(f"cannot import {module_name!r} ({type(error).__name__}: {error})") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ModelSourceError(f"{module_name} has no function {function_name!r}")
    try:
        model = factory(num_classes=num_classes)
    except Exception as error:
        raise ModelSourceError(
            f"{target}(num_classes={num_classes}) failed ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"{target} returned {type(model).__name__}, not a torch nn.Module")
    return model


def view_shape(view: dict[str, Any] | None, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, H, W) the wrapped network sees."""
    if not view:
        return input_shape
    size = view.get("image_size") or input_shape[1:]
    return (view.get("channels") or input_shape[0], int(size[0]), int(size[1]))


class TeacherNet(nn.Module):
    """A network, its input view and its stage features, behind the interface of nas-kd's own networks."""

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, int, int],
        feature_nodes: list[str] | None = None,
        view: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.model = model
        view = view or {}
        steps: list[tuple[str, Any]] = []
        if view.get("image_size"):
            steps.append(("resize", list(view["image_size"])))
        if view.get("channels"):
            steps.append(("channels", int(view["channels"])))
        self.view = View(tuple(steps))
        renormalise = view.get("mean") is not None
        self._renormalise = renormalise
        for name in ("data_mean", "data_std", "mean", "std"):
            values = view.get(name) if renormalise else None
            tensor = torch.tensor(values if values is not None else [0.0], dtype=torch.float32)
            self.register_buffer(f"_{name}", tensor[None, :, None, None], persistent=False)
        self.seen_shape = view_shape(view, input_shape)
        delegate = feature_nodes is None and hasattr(model, "forward_features") and hasattr(model, "stage_channels")
        self.feature_nodes: list[str] = []
        self._extractor: nn.Module | None = None
        self._output = ""
        if delegate:  # a nas-kd network already has stage features
            self.stage_channels = list(model.stage_channels)
        else:
            self.feature_nodes = list(feature_nodes or default_feature_nodes(model, self.seen_shape))
            self._build_extractor()

    def _build_extractor(self) -> None:
        _, nodes = get_graph_node_names(self.model)
        # A module's name stands for its last node (torchvision's rule): "layer4" is the output of layer4.
        unknown = [n for n in self.feature_nodes if not any(m == n or m.startswith(n + ".") for m in nodes)]
        if unknown:
            shown = sorted({".".join(n.split(".")[:2]) for n in nodes}, key=lambda n: nodes.index(_first(nodes, n)))
            raise ModelSourceError(
                f"feature node {unknown[0]!r} is not in the model; its nodes include: {', '.join(shown[:60])}"
                + (" ..." if len(shown) > 60 else "")
            )
        self._output = nodes[-1]
        # Not a submodule: it shares the network's modules, and the state dict keeps one copy of each weight.
        extractor = create_feature_extractor(self.model, return_nodes=[*self.feature_nodes, self._output])
        object.__setattr__(self, "_extractor", extractor)
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        with torch.no_grad():
            outputs = extractor.eval()(torch.zeros(1, *self.seen_shape, device=device))
        self.model.train(was_training)
        channels = []
        for node in self.feature_nodes:
            shape = tuple(outputs[node].shape) if isinstance(outputs[node], torch.Tensor) else None
            if shape is None or len(shape) != 4:
                raise ModelSourceError(f"feature node {node!r} gives {shape}, not an (N, C, H, W) feature map")
            channels.append(shape[1])
        self.stage_channels = channels

    def train(self, mode: bool = True) -> TeacherNet:
        super().train(mode)
        if self._extractor is not None:
            self._extractor.train(mode)  # it picks its train or eval graph by its own flag
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The data's normalised batch -> what the wrapped network expects."""
        if self._renormalise:
            x = x * self._data_std + self._data_mean
        x = self.view(x)
        if self._renormalise:
            x = (x - self._mean) / self._std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(x))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        if self._extractor is None:
            return self.model.forward_features(self.prepare(x))
        outputs = self._extractor(self.prepare(x))
        features = [outputs[node] for node in self.feature_nodes]
        embedding = torch.flatten(F.adaptive_avg_pool2d(features[-1], 1), 1)
        return outputs[self._output], features, embedding


def _first(nodes: list[str], prefix: str) -> str:
    return next(n for n in nodes if n == prefix or n.startswith(prefix + "."))


def default_feature_nodes(model: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """Stage outputs of a classification CNN: ResNet's four layers, else the last block at each resolution of
    its main container (MobileNet, EfficientNet, ConvNeXt, VGG, timm's ``stages``), the deepest four."""
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        return [f"layer{i}" for i in range(1, 5)]
    container = next((n for n in STAGE_CONTAINERS if isinstance(getattr(model, n, None), nn.Sequential)), None)
    if container is not None:
        candidates = [(f"{container}.{name}", child) for name, child in getattr(model, container).named_children()]
    else:
        candidates = list(model.named_children())
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: (
                shapes.__setitem__(name, tuple(out.shape)) if isinstance(out, torch.Tensor) else None
            )
        )
        for name, module in candidates
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    global_pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)  # the classifier's input, not a stage
    maps = [
        (name, shapes[name])
        for name, module in candidates
        if len(shapes.get(name, ())) == 4 and not isinstance(module, global_pools)
    ]
    last_per_size = [
        name for i, (name, shape) in enumerate(maps) if i + 1 == len(maps) or maps[i + 1][1][2:] != shape[2:]
    ]
    if not last_per_size:
        _, nodes = get_graph_node_names(model)
        raise ModelSourceError(
            f"found no stage feature maps in {type(model).__name__}; give teacher.feature_nodes from its nodes: "
            + ", ".join(dict.fromkeys(".".join(n.split(".")[:2]) for n in nodes))
        )
    return last_per_size[-MAX_STAGES:]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a .pt/.pth file (``weights_only=True``, never pickle), unwrapped from a
    checkpoint dict's ``state_dict`` / ``model`` entry, with a DataParallel ``module.`` prefix stripped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise WeightsError(f"{path}: not a readable safetensors file ({error})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle.UnpicklingError and friends: the file holds more than tensors
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise WeightsError(f"{path}: cannot be read as a state dict without pickle ({first})") from None
    while isinstance(state, dict):
        inner = next(
            (state[k] for k in ("state_dict", "model", "model_state_dict") if isinstance(state.get(k), dict)), None
        )
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a mapping of parameter names to tensors (a state dict)")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path, num_classes: int | None = None) -> None:
    """Load a weights file into ``model``; a mismatch lists the first differing keys and shapes."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or reshaped):
        model.load_state_dict(state)
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:SHOWN])}{', ...' if len(keys) > SHOWN else ''})")
    if reshaped:
        shown = ", ".join(
            f"{k} {list(state[k].shape)} in the file vs {list(expected[k].shape)}" for k in reshaped[:SHOWN]
        )
        parts.append(f"{len(reshaped)} of another shape ({shown})")
        head = expected[reshaped[-1]]
        if num_classes is not None and head.ndim >= 1 and head.shape[0] == num_classes:
            parts.append(f"the weights have {state[reshaped[-1]].shape[0]} output classes, the data {num_classes}")
    raise WeightsError(f"{path} does not match the model: " + "; ".join(parts))
