"""The one training loop: every student, teacher and assistant is trained here (``make_trainer`` builds one).

Data is already on the device; a batch is an index slice; the distiller returns named losses.
The whole state (model, optimizer, schedule, RNG, epoch) can be saved and restored mid-way.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas_kd.arch import build_model
from nas_kd.arch.quant_spec import set_quantizers
from nas_kd.config import Precision, TrainConfig
from nas_kd.data import Dataset, Split, augment, batches
from nas_kd.distill import DistillContext, HelperTrainer, Teacher, make_distiller

# Every network trains and runs in channels_last (NHWC): on CPU it selects oneDNN's faster convolutions
# (1.5x on the Fashion-MNIST student, docs/benchmarks.md), on GPU it is what tensor cores want.
MEMORY_FORMAT = torch.channels_last
# train.compile: auto compiles only runs of at least this many steps. Compiling the student (and again for
# the last, shorter batch and for evaluation) costs a fixed time up front, and on CPU compile alone (1.3x eager
# fp32) gained less than channels_last (1.5x), which the trainer always uses; so auto stays off for the short
# trials of a search. The threshold is conservative, not measured: `nas-kd bench trainer --arms compiled`
# prints the compile cost and the per-epoch gain on a given machine.
COMPILE_MIN_STEPS = 20_000


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class EpochResult:
    epoch: int  # epochs finished so far (1-based)
    train_loss: float
    losses: dict[str, float]
    val_accuracy: float
    seconds: float
    images_per_second: float
    extra: dict[str, float] = field(default_factory=dict)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig, foreach: bool | None = True) -> torch.optim.Optimizer:
    """``foreach``: one multi-tensor kernel per update instead of a Python loop over the parameters (torch's
    default, None, is the loop on CPU)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=foreach)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
        foreach=foreach,
    )


def make_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = 1024) -> torch.Tensor:
    """The predicted class of every image of ``split`` (eval mode, then restored), on the split's device."""
    was_training = model.training
    model.eval()
    predictions = [torch.zeros(0, dtype=torch.long, device=split.device)]
    for index in batches(len(split), batch_size, None, split.device):  # fp32: what an exported model computes
        predictions.append(model(split.batch(index)).argmax(1))
    model.train(was_training)
    return torch.cat(predictions)


def evaluate(model: nn.Module, split: Split, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``split``."""
    return (predict(model, split, batch_size) == split.y).sum().item() / max(1, len(split))


def class_accuracy(model: nn.Module, split: Split, num_classes: int) -> torch.Tensor:
    """Top-1 accuracy per class (NaN for a class the split does not hold)."""
    hits = split.y[predict(model, split) == split.y]
    return torch.bincount(hits, minlength=num_classes) / torch.bincount(split.y, minlength=num_classes)


@functools.cache
def auto_bf16(device_type: str) -> bool:
    """Whether ``train.precision: auto`` trains in bf16 on ``device_type``: on CUDA GPUs that support it. Not
    on CPU, even with AVX512-BF16 or AMX, where bf16 trains the Fashion-MNIST student 1.5x faster at the same
    accuracy but the data-free digits test student fell from 42% to 26% (docs/benchmarks.md): opt in there."""
    return device_type == "cuda" and torch.cuda.is_bf16_supported()


def uses_bf16(precision: Precision, device: torch.device) -> bool:
    """``train.precision`` resolved: bf16 as asked, or auto where ``auto_bf16``."""
    return precision == "bf16" or (precision == "auto" and auto_bf16(device.type))


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """bf16 autocast where ``uses_bf16``; a no-op otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(precision, device))


def should_compile(cfg: TrainConfig, total_steps: int) -> bool:
    """``train.compile``: true or false as given; auto only for runs long enough to repay compiling."""
    return cfg.compile if isinstance(cfg.compile, bool) else total_steps >= COMPILE_MIN_STEPS


def epoch_size(cfg: TrainConfig, train_size: int) -> int:
    """Images one epoch trains on: the whole training split unless ``samples_per_epoch`` asks for fewer."""
    return min(cfg.samples_per_epoch or train_size, train_size)


class Trainer:
    """Trains ``distiller`` (student plus whatever it adds) on ``data`` for ``cfg.epochs``."""

    def __init__(self, distiller: nn.Module, data: Dataset, cfg: TrainConfig, seed: int, augment_data: bool):
        self.distiller, self.data, self.cfg, self.augment_data = distiller, data, cfg, augment_data
        self.device = data.train.device
        self.samples_per_epoch = epoch_size(cfg, len(data.train))
        self.steps_per_epoch = math.ceil(self.samples_per_epoch / cfg.batch_size)
        distiller.to(memory_format=MEMORY_FORMAT)
        self.compiled = should_compile(cfg, cfg.epochs * self.steps_per_epoch)
        if self.compiled:
            distiller.student.compile()  # in place: the state dict keeps its keys
        trainable = [p for p in distiller.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(trainable, cfg)
        self.schedule = make_schedule(self.optimizer, cfg, cfg.epochs * self.steps_per_epoch)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.epoch = 0

    def run_epoch(self) -> EpochResult:
        distiller, train, spec = self.distiller, self.data.train, self.data.spec
        distiller.train()
        if hasattr(distiller, "on_epoch_start"):  # schedules (e.g. DKD's warm-up) see the epoch
            distiller.on_epoch_start(self.epoch, self.cfg.epochs)
        if self.cfg.quant_warmup_epochs:  # from the epoch alone, so a resumed run switches at the same point
            set_quantizers(distiller.student, enabled=self.epoch >= self.cfg.quant_warmup_epochs)
        start = time.perf_counter()
        totals: dict[str, torch.Tensor] = {}
        for index in batches(
            len(train), self.cfg.batch_size, self.generator, self.device, limit=self.samples_per_epoch
        ):
            x, y = train.batch(index), train.y[index]
            if self.augment_data:
                x = augment(x, spec.crop_padding, spec.flip, self.generator)
            x = x.contiguous(memory_format=MEMORY_FORMAT)  # free for one channel (the same bytes)
            with autocast(self.device, self.cfg.precision):
                _, losses = distiller.forward_train(x, y, index)
            loss = sum(losses.values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0) + value.detach()
        # One host sync per epoch (not per step) to check the loss and log it.
        means = {name: float(total) / self.steps_per_epoch for name, total in totals.items()}
        train_loss = sum(means.values())
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training loss is {train_loss} at epoch {self.epoch + 1}")
        seconds = time.perf_counter() - start
        self.epoch += 1
        val_accuracy = evaluate(distiller.export_student(), self.data.val)
        return EpochResult(self.epoch, train_loss, means, val_accuracy, seconds, self.samples_per_epoch / seconds)

    def fit(self, on_epoch: Callable[[EpochResult, Trainer], None] | None = None) -> list[EpochResult]:
        """Train the remaining epochs; ``on_epoch`` sees every result (and may checkpoint the trainer)."""
        history = []
        while self.epoch < self.cfg.epochs:
            result = self.run_epoch()
            history.append(result)
            if on_epoch is not None:
                on_epoch(result, self)
        return history

    def state_dict(self) -> dict:
        """Everything needed to resume mid-way; loadable with ``torch.load(weights_only=True)``."""
        return {
            "distiller": self.distiller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.distiller.load_state_dict(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])


def make_trainer(
    arch: dict[str, Any],
    data: Dataset,
    cfg: TrainConfig,
    seed: int,
    augment: bool,
    distiller: str = "ce",
    settings: dict[str, Any] | None = None,
    teachers: list[Teacher] | None = None,
    train_helper: HelperTrainer | None = None,
    cache_dir: Path | None = None,
) -> Trainer:
    """A fresh student of ``arch`` wrapped in ``distiller``, ready to train: students, teachers and
    assistants are all built here."""
    device = data.train.device
    torch.manual_seed(seed)
    student = build_model(arch, data.input_shape, data.num_classes).to(device)  # Trainer sets channels_last
    context = DistillContext(
        data, teachers or [], device, seed, augment, cfg.label_smoothing, arch, train_helper, cache_dir
    )
    return Trainer(make_distiller(distiller, settings or {}, student, context), data, cfg, seed, augment)
