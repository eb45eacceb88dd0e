"""Offline distillation from a frozen, pre-trained teacher, with any mix of knowledge terms.

Response knowledge reads the teacher's cached logits when the batch allows it; feature and relation
knowledge need a live teacher forward (its stage features), which then supplies the logits too.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel
from torch import nn

from nas_kd.distill.base import DistillContext, Distiller, Teacher, run
from nas_kd.distill.knowledge import Knowledge, KnowledgeSettings, TermSettings
from nas_kd.distill.registry import register


@register
class Offline(Distiller):
    name = "offline"
    summary = (
        "frozen pre-trained teacher; one registered term per slot: response (KD, DKD, DIST, LS-KD), feature "
        "(FitNets, AT) and relation (RKD, SP, CRD), weighted against CE"
    )
    Settings = TermSettings(KnowledgeSettings)
    requires_teacher = True

    def __init__(self, student: nn.Module, settings: BaseModel, context: DistillContext):
        super().__init__(student, settings, context)
        # Not a submodule: the teacher stays frozen, in eval mode and out of the distiller's state.
        self.teacher = self.source(context)
        labels = context.data.train.y
        self.knowledge = Knowledge.between(settings, student, self.teacher.model, labels, context.seed)
        self.knowledge.to(context.device)

    def source(self, context: DistillContext) -> Teacher:
        """The teacher the student learns from (subclasses put another network there)."""
        return context.teachers[0]

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student = run(self.student, x, self.knowledge.needs_features)
        teacher = self.teacher.outputs(x, index, self.context.augmented, self.knowledge.needs)
        return student.logits, self.knowledge(student, teacher, y, self.cross_entropy, index)
