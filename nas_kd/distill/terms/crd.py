"""Contrastive representation distillation (Tian et al. ICLR 2020), as RepDistiller's CRD.

Both pooled embeddings go through a linear embed head onto ``feat_dim`` and are L2-normalised. Two
memory banks (one row per training sample) hold momentum averages of the student's and the teacher's
embeddings. For each sample, the positive is its own row and ``nce_k`` negatives are rows of other
classes (RepDistiller's ``exact`` sampling); scores exp(v . m / nce_t) / Z (Z fixed from the first
batch as mean score x dataset size) go into the NCE loss with noise 1/N, with the teacher as anchor over
the student bank and the student as anchor over the teacher bank. After the step each sample's bank
rows move towards its new embeddings (momentum ``nce_m``) and are re-normalised.

Published (RepDistiller, CIFAR-100): feat_dim 128, nce_k 16384, nce_t 0.07, nce_m 0.5, weight 0.8 beside
CE 1. On small datasets ``nce_k`` is capped at the rows of the other classes. The negatives are drawn
from a stream seeded by the trial's seed and the step count (saved with the distiller, so a resumed run
draws the same), and the banks and Z are buffers: resume is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from nas_kd.distill.base import Outputs
from nas_kd.distill.terms.base import Term, TermSetup, register_term

EPS = 1e-7


def nce_loss(scores: torch.Tensor, dataset_size: int) -> torch.Tensor:
    """RepDistiller's ContrastLoss (Eq. 18): column 0 positive, the rest negatives, noise 1/N."""
    k = scores.shape[1] - 1
    noise = k / dataset_size
    log_positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    log_negative = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(log_positive.sum() + log_negative.sum()) / len(scores)


def bank_dots(bank: torch.Tensor, anchor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, k+1) dot products of each anchor with its drawn bank rows.

    RepDistiller gathers the B x (k+1) rows and multiplies them in a bmm; that moves B x (k+1) x feat_dim
    floats per step (1 GB per bank at the published nce_k and batch 128) and is memory-bound. One (B, N)
    product with the whole bank, then a gather of the drawn columns, gives the same numbers 25-33x faster
    at 50k-54k rows and 6x at 262k on one CPU thread (docs/benchmarks.md), for B x N floats of memory.
    """
    return (anchor @ bank.t()).gather(1, rows)


class CRDSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feat_dim: int = Field(128, ge=1, description="width of the embedding both heads project onto")
    nce_k: int = Field(16384, ge=1, description="negatives per sample (capped at the other classes' rows)")
    nce_t: float = Field(0.07, gt=0, description="temperature of the contrastive scores")
    nce_m: float = Field(0.5, ge=0, lt=1, description="momentum of the memory-bank update")


@register_term
class CRD(Term):
    name = "crd"
    role = "relation"
    summary = "contrastive representation distillation: NCE against momentum memory banks of embeddings"
    reference = "Tian, Krishnan & Isola ICLR 2020, Contrastive representation distillation (RepDistiller crd/)"
    weight = 0.8
    needs = frozenset({"embedding", "index"})
    Settings = CRDSettings

    def __init__(self, settings: BaseModel, setup: TermSetup):
        super().__init__(settings, setup)
        if setup.train_labels is None:
            raise ValueError("crd needs the training labels (its memory bank has one row per training sample)")
        labels = setup.train_labels.long().cpu()
        n, dim = len(labels), settings.feat_dim
        self.embed_student = nn.Linear(setup.student_embedding, dim)
        self.embed_teacher = nn.Linear(setup.teacher_embedding, dim)
        # Rows sorted by class: the negatives of a class-c sample are every row outside c's block. Drawn on
        # the CPU (plain tensors, not buffers: they follow from the labels and stay there).
        self.labels = labels
        self.counts = torch.bincount(labels, minlength=setup.num_classes)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.order = torch.argsort(labels, stable=True)
        self.k = min(settings.nce_k, int(n - self.counts.max()))
        bound = 1 / math.sqrt(dim / 3)  # RepDistiller's initialisation of the banks
        self.register_buffer("memory_student", torch.rand(n, dim).mul_(2 * bound).add_(-bound))
        self.register_buffer("memory_teacher", torch.rand(n, dim).mul_(2 * bound).add_(-bound))
        self.register_buffer("normaliser", torch.full((2,), -1.0))  # Z of the student and teacher scores
        self.steps = 0

    def negatives(self, index: torch.Tensor) -> torch.Tensor:
        """(B, k) rows of other classes than each sample's, uniform, from the seeded step stream."""
        draw = torch.Generator().manual_seed(self.setup_info.seed * 1_000_003 + self.steps)
        self.steps += 1
        label = self.labels[index.cpu()]
        others = (len(self.labels) - self.counts[label]).to(torch.float64)
        r = (torch.rand(len(index), self.k, generator=draw, dtype=torch.float64) * others[:, None]).long()
        r = torch.where(r >= self.starts[label][:, None], r + self.counts[label][:, None], r)
        return self.order[r].to(index.device)

    def forward(
        self, student: Outputs, teacher: Outputs, target: torch.Tensor, index: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        if index is None:
            raise ValueError("crd needs the batch's row indices in the training set")
        with torch.autocast(index.device.type, enabled=False):  # scores exp(x / 0.07) need float32
            return self._nce(student, teacher, index)

    def _nce(self, student: Outputs, teacher: Outputs, index: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.settings.nce_m
        v_s = F.normalize(self.embed_student(student.embedding.float()).float(), dim=1)
        v_t = F.normalize(self.embed_teacher(teacher.embedding.float()).float(), dim=1)
        rows = torch.cat([index[:, None], self.negatives(index)], 1)  # positive first
        # Teacher as anchor against the student bank, and the student against the teacher bank.
        scores_t = torch.exp(bank_dots(self.memory_student, v_t, rows) / self.settings.nce_t)
        scores_s = torch.exp(bank_dots(self.memory_teacher, v_s, rows) / self.settings.nce_t)
        n = len(self.memory_student)
        with torch.no_grad():
            unset = self.normaliser < 0
            first = torch.stack([scores_s.mean(), scores_t.mean()]) * n
            self.normaliser.copy_(torch.where(unset, first, self.normaliser))
            for name, v in (("memory_student", v_s), ("memory_teacher", v_t)):
                bank = getattr(self, name)
                # Out of place: the scores' backward still needs the bank they were computed from.
                setattr(
                    self, name, bank.index_copy(0, index, F.normalize(bank[index] * m + v.detach() * (1 - m), dim=1))
                )
        loss = nce_loss(scores_s / self.normaliser[0], n) + nce_loss(scores_t / self.normaliser[1], n)
        return {"crd": loss}

    def get_extra_state(self) -> dict[str, int]:
        return {"steps": self.steps}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.steps = int(state["steps"])
