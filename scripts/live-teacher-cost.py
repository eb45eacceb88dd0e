"""What a live teacher costs per training epoch, against the trainer with ``ce``, with and without the frozen
inference copy the trainer makes of it (batch norms folded, channels_last). The teacher is the study's teacher
architecture with fresh weights: its cost does not depend on what it has learnt, and no teacher training is
needed. Arms interleaved, medians:

    python scripts/live-teacher-cost.py studies/fashion_mnist.yaml --repeats 3 --set train.samples_per_epoch=1280
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from unittest import mock

from nas_kd.arch import build_model
from nas_kd.config import load_study, parse_override
from nas_kd.distill import Teacher
from nas_kd.pipeline import build_trainer, resolve_device, study_data


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

    def arm(distiller: str, prepared: bool):
        teachers = [Teacher(build_model(study.teacher.genome(), data.input_shape, data.num_classes))]
        trainer = build_trainer(study, data, teachers if distiller != "ce" else [], arch, distiller, {}, study.seed)

        def epoch() -> float:
            as_loaded = property(lambda teacher: teacher.model)  # live forwards on the model as loaded
            with mock.patch.object(Teacher, "runner", Teacher.runner if prepared else as_loaded):
                return trainer.run_epoch().seconds

        return epoch

    arms = {
        "trainer ce": arm("ce", True),
        "offline KD, live teacher as loaded": arm("offline", False),
        "offline KD, live teacher, frozen inference copy": arm("offline", True),
    }
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        arms[name]()  # warm-up
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            times[name].append(arms[name]())
    median = {name: statistics.median(t) for name, t in times.items()}
    print("| arm | s/epoch (median) | cost vs trainer ce |\n|---|---|---|")
    for name in names:
        print(f"| {name} | {median[name]:.3f} | {median[name] / median['trainer ce']:.2f}x |")


if __name__ == "__main__":
    main()
