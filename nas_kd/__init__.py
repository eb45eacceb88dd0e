"""nas-kd: neural-architecture search with knowledge distillation in the loop.

The public names are imported on first use, so that ``import nas_kd`` (and ``nas-kd --help``) does not pay for
torch and Ray before they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas_kd.arch import build_model, measure
    from nas_kd.checkpoint import Preprocess, class_names, load_student
    from nas_kd.config import Study, StudyError, load_study
    from nas_kd.data import load_dataset
    from nas_kd.search.runner import run_study
    from nas_kd.space import SearchSpace, load_space

_PUBLIC = {
    "Preprocess": "nas_kd.checkpoint",
    "class_names": "nas_kd.checkpoint",
    "SearchSpace": "nas_kd.space",
    "Study": "nas_kd.config",
    "StudyError": "nas_kd.config",
    "build_model": "nas_kd.arch",
    "load_dataset": "nas_kd.data",
    "load_space": "nas_kd.space",
    "load_student": "nas_kd.checkpoint",
    "load_study": "nas_kd.config",
    "measure": "nas_kd.arch",
    "run_study": "nas_kd.search.runner",
}
__all__ = [
    "Preprocess",
    "SearchSpace",
    "Study",
    "StudyError",
    "build_model",
    "class_names",
    "load_dataset",
    "load_space",
    "load_student",
    "load_study",
    "measure",
    "run_study",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'nas_kd' has no attribute {name!r}")
