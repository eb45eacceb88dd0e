"""Teacher-assistant distillation (TAKD, Mirzadeh et al. 2020): teacher -> assistant(s) -> student.

A large capacity gap can make a teacher a poor one; an assistant of intermediate size bridges it.
Assistant ``i`` of ``N`` has the parameter count closest to the geometric interpolation
``P_t^(1 - i/(N+1)) * P_s^(i/(N+1))`` between teacher and student (one assistant: their geometric mean).
Each is trained once by Hinton KD (T = 4, alpha = 0.9) from the teacher or the previous assistant with
the study's teacher recipe, and cached by content hash. The student then learns from the last assistant
with the knowledge settings, exactly as ``offline`` learns from a teacher.

An assistant costs as much as a teacher to train, so a search shares them through a ladder: with
``ladder: R`` (default 2) the student's size is rounded to the nearest of R rungs per decade
(1k, 3.2k, 10k, 32k, ... for R = 2) and the assistant is the ladder's shape for the student's family and
stage count (``ladder_shape``), widened to the rung's interpolation. Every trial whose student falls on the
same rung, family and stage count then uses the same cached chain. ``ladder: 0`` gives each student its own
chain instead: its own architecture (family and depths) widened, shared only by identical width profiles.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from nas_kd.arch import count_params
from nas_kd.distill.base import DistillContext, Teacher
from nas_kd.distill.helpers import params_of, resize_to_params, trained_helper
from nas_kd.distill.knowledge import KnowledgeSettings, TermSettings
from nas_kd.distill.offline import Offline
from nas_kd.distill.registry import register


class AssistantSettings(KnowledgeSettings):
    assistants: int = Field(1, ge=1, le=4, description="length of the assistant chain between teacher and student")
    ladder: int = Field(
        2,
        ge=0,
        le=10,
        description="rungs per decade of student size that share one assistant chain across trials "
        "(0: every student architecture trains its own)",
    )


def assistant_params(teacher: int, student: float, count: int) -> list[float]:
    """Target parameter counts, teacher side first: geometric steps from teacher to student."""
    return [teacher ** (1 - i / (count + 1)) * student ** (i / (count + 1)) for i in range(1, count + 1)]


def ladder_rung(params: int, rungs_per_decade: int) -> float:
    """The rung nearest to ``params`` (in log size) on a ladder of ``rungs_per_decade`` rungs per decade."""
    return 10 ** (round(math.log10(params) * rungs_per_decade) / rungs_per_decade)


def ladder_shape(student: dict[str, Any]) -> dict[str, Any]:
    """The shape every assistant on a rung shares: the student's family and number of stages (which its input
    size is known to allow), two blocks per stage, widths doubling per stage, the family's default block
    settings and full precision (an assistant is a teacher, whatever the student's bit widths)."""
    stages = len(student["stages"])
    return {
        "family": student["family"],
        "stem": 16,
        "stages": [{"channels": 16 * 2**i, "depth": 2} for i in range(stages)],
    }


@register
class Assistant(Offline):
    name = "assistant"
    summary = (
        "teacher assistant (TAKD): teacher -> assistant(s) of intermediate size in the student's family "
        "(trained once, cached) -> student; knowledge settings as offline"
    )
    Settings = TermSettings(AssistantSettings)
    requires_teacher = True

    def source(self, context: DistillContext) -> Teacher:
        if context.student_arch is None:
            raise ValueError("the assistant distiller needs the student's genome (DistillContext.student_arch)")
        teacher = context.teachers[0]
        shape, classes = context.data.input_shape, context.data.num_classes
        student_params = params_of(context.student_arch, shape, classes)
        rungs = self.settings.ladder
        if rungs:
            base, size = ladder_shape(context.student_arch), ladder_rung(student_params, rungs)
        else:
            base, size = context.student_arch, student_params
        for target in assistant_params(count_params(teacher.model), size, self.settings.assistants):
            teacher = trained_helper(context, resize_to_params(base, target, shape, classes), "assistant", teacher)
        return teacher
