"""What a teacher costs per training epoch, against the trainer with ``ce``: response KD with the teacher as
loaded and as the frozen inference copy the trainer makes of it (batch norms folded, channels_last), and
feature and relation knowledge (FitNets, AT, RKD) with that copy run live or read from
``teacher.cache_features``. The teacher is the study's teacher architecture with fresh weights: its cost
does not depend on what it has learnt, and no teacher training is needed. Its features are cached into a
temporary folder first (timed and sized, removed at the end). Arms interleaved, medians:

    python scripts/live-teacher-cost.py studies/fashion_mnist.yaml --repeats 5 --set train.samples_per_epoch=1280
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

from torch import nn

from nas_kd.arch import build_model
from nas_kd.config import Study, load_study, parse_override
from nas_kd.data import Dataset
from nas_kd.distill import Teacher
from nas_kd.pipeline import build_trainer, resolve_device, study_data
from nas_kd.teachers import TrainFeatures, write_train_features

TERMS = {"FitNets": {"feature": "fitnet"}, "AT": {"feature": "at"}, "RKD": {"relation": "rkd"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    study = load_study(args.study, dict(parse_override(o) for o in args.set))
    data = study_data(study, resolve_device())
    data = replace(data, val=data.val.subset(slice(0, 1024)))  # validation is not timed
    arch = study.student.genome()
    teacher_model = build_model(study.teacher.genome(), data.input_shape, data.num_classes)
    folder = Path(tempfile.mkdtemp(prefix="nas-kd-features-")) / "teacher.features"
    start = time.perf_counter()
    write_train_features(teacher_model, data, folder)
    size = sum(path.stat().st_size for path in folder.iterdir())
    print(f"features of {len(data.train):,} training images cached in {time.perf_counter() - start:.1f} s: "
          f"{size / 1e9:.2f} GB ({size / len(data.train) / 1e3:.1f} KB per image) in {folder}")  # fmt: skip
    try:
        measure(study, data, arch, teacher_model, TrainFeatures.open(folder), args.repeats)
    finally:
        shutil.rmtree(folder.parent)


def measure(
    study: Study, data: Dataset, arch: dict[str, Any], teacher_model: nn.Module, features: TrainFeatures, repeats: int
) -> None:
    def arm(
        distiller: str, settings: dict[str, Any], prepared: bool = True, cached_features: bool = False
    ) -> Callable[[], float]:
        teacher = Teacher(teacher_model, train_features=features if cached_features else None)
        trainer = build_trainer(study, data, [teacher] if distiller != "ce" else [], arch, distiller, settings,
                                study.seed)  # fmt: skip

        def epoch() -> float:
            as_loaded = property(lambda teacher: teacher.model)  # live forwards on the model as loaded
            with mock.patch.object(Teacher, "runner", Teacher.runner if prepared else as_loaded):
                return trainer.run_epoch().seconds

        return epoch

    arms = {
        "trainer ce": arm("ce", {}),
        "offline KD, live teacher as loaded": arm("offline", {}, prepared=False),
        "offline KD, live teacher, frozen inference copy": arm("offline", {}),
    }
    for term, settings in TERMS.items():
        arms[f"offline {term}, live teacher, frozen inference copy"] = arm("offline", settings)
        arms[f"offline {term}, cached features"] = arm("offline", settings, cached_features=True)
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        arms[name]()  # warm-up (for the cached arm: the page cache too)
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            times[name].append(arms[name]())
    median = {name: statistics.median(t) for name, t in times.items()}
    print("| arm | s/epoch (median) | cost vs trainer ce |\n|---|---|---|")
    for name in names:
        print(f"| {name} | {median[name]:.3f} | {median[name] / median['trainer ce']:.2f}x |")


if __name__ == "__main__":
    main()
