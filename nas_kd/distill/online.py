"""Online distillation: deep mutual learning (Zhang et al. 2018).

A cohort of K networks, the student and K-1 peers, is trained together from scratch. Each network
learns from the labels and from the KL towards every other network's current (detached) prediction,
averaged over the others. The peers are distiller modules: optimised with the student, saved in the
trainer state, absent from the exported student.
"""

from __future__ import annotations

import json

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from nas_kd.arch import build_model
from nas_kd.distill.base import DistillContext, Distiller
from nas_kd.distill.helpers import fresh_copy
from nas_kd.distill.losses import kd_loss
from nas_kd.distill.registry import register


class OnlineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    peers: int = Field(1, ge=1, le=8, description="peers trained with the student (cohort size - 1)")
    peer: str = Field(
        "student",
        description="peer architecture: student (a fresh copy), teacher (the study teacher's, from scratch) "
        "or a JSON genome",
    )
    temperature: float = Field(1.0, gt=0, description="softening temperature of the mutual KL terms")
    kl_weight: float = Field(1.0, ge=0, description="weight of each network's KL towards the others (CE has 1)")

    @field_validator("peer")
    @classmethod
    def _peer(cls, value: str) -> str:
        if value in ("student", "teacher"):
            return value
        try:
            genome = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("peer is student, teacher or a JSON genome") from None
        if not isinstance(genome, dict):
            raise ValueError("a peer genome is a JSON object")
        return value


@register
class Online(Distiller):
    name = "online"
    summary = (
        "deep mutual learning: the student and K-1 peers trained together, each with CE plus KL towards "
        "the others; exports the student"
    )
    Settings = OnlineSettings

    def __init__(self, student: nn.Module, settings: BaseModel, context: DistillContext):
        super().__init__(student, settings, context)
        self.peers = nn.ModuleList(self._peer(student, settings.peer, context) for _ in range(settings.peers))

    @staticmethod
    def _peer(student: nn.Module, peer: str, context: DistillContext) -> nn.Module:
        if peer == "student":
            return fresh_copy(student)
        if peer == "teacher":
            if not context.teachers:
                raise ValueError("peer: teacher needs a study with a teacher (its architecture is used)")
            model = fresh_copy(context.teachers[0].model)  # the teacher's architecture, from scratch
        else:
            model = build_model(json.loads(peer), context.data.input_shape, context.data.num_classes)
        model = model.to(context.device)
        return model.to(memory_format=torch.channels_last) if context.device.type == "cuda" else model

    def gradient_barriers(self) -> dict[str, list[nn.Parameter]]:
        # Each network learns only from its own terms: the others' predictions are targets.
        peers = list(self.peers.parameters())
        student = list(self.student.parameters())
        return {"ce": peers, "kl": peers, "peers_ce": student, "peers_kl": student}

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        logits = [net(x) for net in (self.student, *self.peers)]
        targets = [out.detach() for out in logits]
        ce = [self.cross_entropy(out, y) for out in logits]
        kl = [
            sum(kd_loss(out, targets[j], s.temperature) for j in range(len(logits)) if j != i) / (len(logits) - 1)
            for i, out in enumerate(logits)
        ]
        return logits[0], {
            "ce": ce[0],
            "kl": s.kl_weight * kl[0],
            "peers_ce": sum(ce[1:]),
            "peers_kl": s.kl_weight * sum(kl[1:]),
        }
