"""nas-kd: neural-architecture search with knowledge distillation in the loop."""

from nas_kd.arch import build_model, measure
from nas_kd.checkpoint import Preprocess, class_names, load_student
from nas_kd.config import Study, StudyError, load_study
from nas_kd.data import load_dataset
from nas_kd.space import SearchSpace, load_space

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


def __getattr__(name: str) -> object:  # lazy: importing nas_kd should not import Ray
    if name == "run_study":
        from nas_kd.search.runner import run_study

        return run_study
    raise AttributeError(f"module 'nas_kd' has no attribute {name!r}")


__version__ = "0.1.0"
