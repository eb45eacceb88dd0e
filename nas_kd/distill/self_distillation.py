"""Self-distillation: Be Your Own Teacher (Zhang et al. 2019), optionally with a born-again teacher.

BYOT: every stage but the deepest gets an auxiliary head (a 1x1 conv + BN + ReLU bottleneck onto the
deepest stage's channels, pooled to its spatial size, then global pooling and a linear classifier).
Each head learns from the labels (weight 1 - alpha), from the deepest classifier's softened output
(KL, weight alpha) and from the deepest features (L2 hint, weight hint_weight); the deepest classifier
learns from the labels. The network's own outputs are detached when used as targets, so only the
shallower parts learn from them. The heads are distiller modules, absent from the exported student.

Born-again (Furlanello et al. 2018): a copy of the student's architecture trained once with
cross-entropy (cached like a teacher) also teaches the deepest classifier by Hinton KD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from nas_kd.distill.base import DistillContext, Distiller, Outputs
from nas_kd.distill.helpers import trained_helper
from nas_kd.distill.knowledge import Knowledge, KnowledgeSettings
from nas_kd.distill.losses import kd_loss
from nas_kd.distill.registry import register
from nas_kd.distill.terms.fitnet import fitnet_loss
from nas_kd.distill.terms.pairing import adapter


class SelfSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(3.0, gt=0, description="softening temperature of every KL term")
    alpha: float = Field(
        0.3,
        ge=0,
        le=1,
        description="weight of each auxiliary head's KL towards the deepest head; its CE gets 1 - alpha",
    )
    hint_weight: float = Field(
        0.03, ge=0, description="weight of each auxiliary head's L2 hint to the deepest features"
    )
    born_again: bool = Field(
        False, description="also distil the deepest head from a trained copy of the student's architecture"
    )
    born_again_alpha: float = Field(
        0.9, ge=0, le=1, description="born_again: weight of its KD term; the deepest head's CE gets 1 - this"
    )


class AuxiliaryHead(nn.Module):
    """Bottleneck onto the deepest stage's channels and size, then a classifier."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int):
        super().__init__()
        self.bottleneck = nn.Sequential(adapter(in_channels, out_channels), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(out_channels, num_classes)

    def forward(self, feature: torch.Tensor, size: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        # Pooling first is cheaper and equivalent up to batch-norm statistics.
        feature = self.bottleneck(F.adaptive_avg_pool2d(feature, size))
        return feature, self.classifier(feature.mean((2, 3)))


@register
class SelfDistillation(Distiller):
    name = "self"
    summary = (
        "self-distillation (Be Your Own Teacher): auxiliary heads on shallower stages learn from the deepest "
        "head (KL) and features (hint), stripped at export; optionally a born-again teacher"
    )
    Settings = SelfSettings

    def __init__(self, student: nn.Module, settings: BaseModel, context: DistillContext):
        super().__init__(student, settings, context)
        channels = student.stage_channels
        classes = context.data.num_classes
        self.heads = nn.ModuleList(AuxiliaryHead(c, channels[-1], classes) for c in channels[:-1]).to(context.device)
        self.born_again_teacher = None
        if settings.born_again:
            if context.student_arch is None:
                raise ValueError("born_again needs the student's genome (DistillContext.student_arch)")
            self.born_again_teacher = trained_helper(context, context.student_arch, "born_again", None)
            response = KnowledgeSettings(temperature=settings.temperature, alpha=settings.born_again_alpha)
            self.knowledge = Knowledge(response, [], [])  # Hinton KD: logits only

    def gradient_barriers(self) -> dict[str, list[nn.Parameter]]:
        # The heads learn from the deepest classifier and features; those never learn from the heads.
        deepest = [*self.student.stages[-1].parameters(), *self.student.head.parameters()]
        return {"heads_kl": deepest, "heads_hint": deepest}

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        logits, features, _ = self.student.forward_features(x)
        if self.born_again_teacher is None:
            terms = {"ce": self.cross_entropy(logits, y)}
        else:
            teacher = self.born_again_teacher.outputs(x, index, self.context.augmented)
            terms = self.knowledge(Outputs(logits), teacher, y, self.cross_entropy)
        if not self.heads:
            return logits, terms
        deepest, soft_target = features[-1].detach(), logits.detach()
        ce = kl = hint = torch.zeros((), device=x.device)
        for head, feature in zip(self.heads, features, strict=False):
            head_feature, head_logits = head(feature, deepest.shape[2:])
            ce = ce + self.cross_entropy(head_logits, y)
            kl = kl + kd_loss(head_logits, soft_target, s.temperature)
            hint = hint + fitnet_loss(head_feature, deepest)
        terms.update(heads_ce=(1 - s.alpha) * ce, heads_kl=s.alpha * kl, heads_hint=s.hint_weight * hint)
        return logits, terms
