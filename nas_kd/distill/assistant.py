"""Teacher-assistant distillation (TAKD, Mirzadeh et al. 2020): teacher -> assistant(s) -> student.

A large capacity gap can make a teacher a poor one; an assistant of intermediate size bridges it.
Assistant ``i`` of ``N`` is the student's architecture (same family and depths) widened until its
parameter count is closest to the geometric interpolation ``P_t^(1 - i/(N+1)) * P_s^(i/(N+1))`` (one
assistant: the geometric mean of teacher and student). Each is trained once by Hinton KD (T = 4,
alpha = 0.9) from the teacher or the previous assistant with the study's teacher recipe, and cached by
content hash, so every trial with the same student width profile shares it. The student then learns
from the last assistant with the knowledge settings, exactly as ``offline`` learns from a teacher.
"""

from __future__ import annotations

from pydantic import Field

from nas_kd.arch import count_params
from nas_kd.distill.base import DistillContext, Teacher
from nas_kd.distill.helpers import params_of, resize_to_params, trained_helper
from nas_kd.distill.knowledge import KnowledgeSettings, TermSettings
from nas_kd.distill.offline import Offline
from nas_kd.distill.registry import register


class AssistantSettings(KnowledgeSettings):
    assistants: int = Field(1, ge=1, le=4, description="length of the assistant chain between teacher and student")


def assistant_params(teacher: int, student: int, count: int) -> list[float]:
    """Target parameter counts, teacher side first: geometric steps from teacher to student."""
    return [teacher ** (1 - i / (count + 1)) * student ** (i / (count + 1)) for i in range(1, count + 1)]


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
        for target in assistant_params(count_params(teacher.model), student_params, self.settings.assistants):
            arch = resize_to_params(context.student_arch, target, shape, classes)
            teacher = trained_helper(context, arch, "assistant", teacher)
        return teacher
