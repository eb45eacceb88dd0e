"""How a study trains the helper networks distillers ask for (assistants, born-again copies).

``study_helper_trainer`` is injected into every ``DistillContext`` as ``train_helper``: distill/ never
sees the study. A helper is trained by the study's first teacher's recipe (else the study's own), so it
is as trained as the teacher it stands beside, and cached like a teacher: the key covers data, recipe,
arch, seed and the weights of the network it learns from, and the cache's file lock makes concurrent
trials train it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from nas_kd import teachers as teacher_cache
from nas_kd.config import Study
from nas_kd.data import Dataset
from nas_kd.distill import Teacher
from nas_kd.distill.base import HelperTrainer
from nas_kd.distill.helpers import weights_key


def study_helper_trainer(study: Study, data: Dataset, cache_dir: Path | None = None) -> HelperTrainer:
    """The study's way to train (once) and load a helper network; ``cache_dir`` defaults to its model cache."""
    configs = study.all_teachers()
    cfg = study.teacher_train(configs[0]) if configs else study.train
    seed = study.teacher_seed(configs[0]) if configs else study.seed
    root = cache_dir or teacher_cache.cache_root(study.runs_dir)
    device = data.train.device

    def train_helper(arch: dict[str, Any], role: str, teacher: Teacher | None) -> Teacher:
        distiller = "offline" if teacher is not None else "ce"
        payload = {
            "role": role,
            "data": teacher_cache.data_identity(study, data),
            "augment": study.data.augment,
            "arch": arch,
            "train": cfg.identity(),
            "seed": seed,
            "distiller": distiller,
            "teacher": weights_key(teacher.model) if teacher is not None else None,
        }

        def train_fn() -> tuple[nn.Module, dict[str, Any]]:
            used = [teacher] if teacher is not None else []
            return teacher_cache.train_plain(arch, data, cfg, seed, study.data.augment, distiller, {}, used)

        return teacher_cache.cached_model(root, payload, train_fn, data, role).as_teacher(device)

    return train_helper
