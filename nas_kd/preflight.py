"""Proves a study can start, before anything is written or any Ray process runs.

``check_study`` goes beyond the schema (``nas_kd.config``): given the study's data (loading it is part of the
proof), it builds every fixed architecture of the study on the meta device (no memory, no weights) and every
teacher brought with weights (weights loaded, outputs matched to the data's classes), samples the search space to show it can produce a student within the
constraints, and checks that the distillers have the teachers they need. Everything that would otherwise fail
after Ray started fails here, as one ``StudyError`` line naming the file and the field.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nas_kd.arch import arch_summary, build_model, count_params, model_bytes
from nas_kd.arch.zero_cost import relu_modules
from nas_kd.config import Study, StudyError, TeacherConfig
from nas_kd.data import Dataset
from nas_kd.distill import DISTILLERS, parse_distiller_space
from nas_kd.space import load_space
from nas_kd.teachers import check_teachers

SPACE_SAMPLES = 32  # students drawn to show that the space can satisfy the constraints
META_COSTS = {"params": count_params, "model_bytes": model_bytes}  # computable without weights


def build_on_meta(
    arch: dict[str, Any], input_shape: tuple[int, int, int], classes: int, forward: bool = True
) -> torch.nn.Module:
    """Build a genome without allocating its weights, and run it on a meta image unless ``forward`` is False
    (a meta forward costs ~0.1 s of Python dispatch; the space's families chain their shapes by construction).
    Raises ValueError with the builder's reason."""
    try:
        # brevitas' quantizers read their scales while they are built, which the meta device cannot give.
        with torch.device("cpu" if "quant" in arch else "meta"):
            model = build_model(arch, input_shape, classes)
            if forward:  # shapes must chain: too many stages for the image fail here
                # In eval mode: shapes do not depend on it, and in training mode batch norm refuses a single
                # image reduced to 1x1, which real batches train on.
                model.eval()(torch.empty(1, *input_shape))
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as error:
        reason = f"missing key {error}" if isinstance(error, KeyError) else str(error).splitlines()[0]
        raise ValueError(f"cannot build this architecture: {reason}") from None
    return model


def check_study(study: Study, data: Dataset) -> None:
    """Raise StudyError for anything that would stop ``study`` after its run started. ``data`` is the study's
    data, loaded (``pipeline.study_data``): that it loads at all is part of the proof."""
    source = study.path or "<study>"
    input_shape, classes = data.input_shape, data.num_classes
    fixed = [("teacher", study.teacher)] if study.teacher is not None else []
    fixed += [(f"teachers.{i}", t) for i, t in enumerate(study.teachers)]
    if study.student is not None:
        fixed.append(("student", study.student))
    for field, model_source in fixed:
        if isinstance(model_source, TeacherConfig) and model_source.genome().keys() & {"wrap", "torchvision"}:
            continue  # a library's or the user's network: check_teachers builds it with its weights
        try:
            build_on_meta(model_source.genome(), input_shape, classes)
        except ValueError as error:
            key = "torchvision" if model_source.torchvision else "arch_file" if model_source.arch_file else "arch"
            raise StudyError(source, f"{field}.{key}", str(error)) from None
    teachers = check_teachers(study, data)  # built for real: weights loaded, outputs matched to the classes
    for name in parse_distiller_space(study.distiller).names:
        try:
            DISTILLERS[name].check_teachers(teachers)
        except ValueError as error:
            raise StudyError(source, "teacher", str(error)) from None
    prescreen = study.search.prescreen
    if prescreen is not None and prescreen.batch_size > len(data.train):
        raise StudyError(
            source,
            "search.prescreen.batch_size",
            f"{prescreen.batch_size} is more than the {len(data.train)} training images",
        )
    if study.search.space is not None:
        _check_space(study, source, input_shape, classes)


def _check_space(study: Study, source: str, input_shape: tuple[int, int, int], classes: int) -> None:
    """Every drawn student must build, and one at least must meet the constraints computable without training."""
    space = load_space(study.search.space)
    rng = np.random.default_rng(study.seed)
    limits = {name.removeprefix("max_"): v for name, v in study.search.constraints.items()}
    checked = {k: v for k, v in limits.items() if k in META_COSTS}
    smallest = dict.fromkeys(checked, float("inf"))
    feasible = False
    for _ in range(SPACE_SAMPLES):
        arch = space.sample(rng)
        try:
            model = build_on_meta(arch, input_shape, classes, forward=False)
        except ValueError as error:
            raise StudyError(source, "search.space", f"{error} (drawn: {arch})") from None
        if study.search.prescreen is not None and not relu_modules(model):
            raise StudyError(
                source,
                "search.prescreen",
                f"naswot scores ReLU networks and a student drawn from the space has none ({arch_summary(arch)})",
            )
        costs = {name: META_COSTS[name](model) for name in checked}
        feasible = feasible or all(costs[name] <= limit for name, limit in checked.items())
        smallest = {name: min(smallest[name], costs[name]) for name in checked}
    if not feasible:
        name = next(n for n in checked if smallest[n] > checked[n])
        raise StudyError(
            source,
            f"search.constraints.max_{name}",
            f"none of {SPACE_SAMPLES} students drawn from the space has {name} <= {checked[name]:,.6g} "
            f"(the smallest has {smallest[name]:,}); widen the space or the constraint",
        )
