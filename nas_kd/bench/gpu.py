"""``nas-kd bench gpu [STUDY]``: GPU packing and mixed precision, each as a ratio measured in the same run.

1. Search throughput: the same study (same trials, seed and epochs) with 1, 0.5 and 0.25 GPU per trial, i.e.
   1, 2 and 4 students sharing each GPU; trials per hour for each.
2. Student training throughput (images/s) of the study's student: the trainer's GPU path (bf16 autocast,
   channels_last) against the same loop in fp32 with the default memory format.

``--arms packed`` instead runs the torch-only packed-student benchmark (``nas_kd/bench/packed.py``: N students
as N processes on one GPU, no Ray; ``scripts/gpu-check.sh`` runs the same file without the CLI).

Needs CUDA; without it the command says so and exits 2. Default study: studies/quickstart.yaml (digits, always
available); pass a larger one (e.g. studies/fashion_mnist.yaml) for figures closer to real use.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
import torch

import nas_kd.train
from nas_kd.bench import BenchError, packed
from nas_kd.bench.tables import markdown
from nas_kd.config import Study, load_study, parse_override
from nas_kd.pipeline import build_trainer, ready_teachers, study_data
from nas_kd.train import Trainer

DEFAULT_STUDY = "studies/quickstart.yaml"
GPU_SHARES = (1.0, 0.5, 0.25)
THROUGHPUT_EPOCHS = 5  # the first is warm-up (cuDNN autotuning, allocator) and is left out


def run(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print(
            "nas-kd bench gpu: no CUDA device here (torch.cuda.is_available() is False); "
            "run it on a machine with an NVIDIA GPU and a CUDA build of torch",
            file=sys.stderr,
        )
        return 2
    if args.arms == "packed":
        return packed.main(["--device", "cuda", *(["--out", args.out] if args.out else [])])
    study_path = args.study or DEFAULT_STUDY
    overrides = dict(parse_override(text) for text in args.set or [])
    if args.epochs:
        overrides["train.epochs"] = args.epochs
    gpu = torch.cuda.get_device_name(0)
    print(f"nas-kd bench gpu: {study_path} on {gpu} (torch {torch.__version__})")

    study = load_study(study_path, overrides)
    # Teachers first (into the study's usual cache), outside the timings: the first arm must not pay for them.
    ready_teachers(study, study_data(study, torch.device("cpu")))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    packing = pd.DataFrame([search_arm(study_path, overrides, f"{study.name}-bench{stamp}", s) for s in GPU_SHARES])
    packing["speedup"] = packing["trials_per_hour"] / packing["trials_per_hour"].iloc[0]

    precision = throughput(load_study(study_path, {**overrides, "train.epochs": THROUGHPUT_EPOCHS}))
    print(f"\nSearch throughput ({gpu}):\n{packing.to_string(index=False, float_format='%.2f')}")
    print(f"\nStudent training throughput ({gpu}):\n{precision.to_string(index=False, float_format='%.2f')}")
    if args.out:
        write_tables(Path(args.out), gpu, {"search throughput": packing, "training throughput": precision})
    return 0


def search_arm(study_path: str, overrides: dict[str, Any], name: str, share: float) -> dict[str, Any]:
    """One full search with ``share`` GPU per trial, in its own run directory ``<runs_dir>/<name>-gpu<share>``
    (kept for a look at its report); Ray start-up is included in the time, the same for every arm."""
    from nas_kd.search.runner import run_study

    start = time.perf_counter()
    result = run_study(
        study_path, dashboard=False, report=False, log=lambda *a: None,
        overrides={**overrides, "name": f"{name}-gpu{share:g}", "resources.gpu": share},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    complete = int((result.trials["status"] == "COMPLETE").sum())
    print(
        f"  gpu {share:g} per trial: {len(result.trials)} trials ({complete} COMPLETE) in {seconds:.0f}s -> {result.run_dir}"
    )
    return {
        "gpu_per_trial": share,
        "students_per_gpu": round(1 / share),
        "trials": len(result.trials),
        "seconds": seconds,
        "trials_per_hour": len(result.trials) * 3600 / seconds,
    }


def throughput(study: Study) -> pd.DataFrame:
    """images/s of the study's student trained with plain cross-entropy (the loop alone, no teacher)."""
    if study.student is None:
        raise BenchError(f"{study.path}: student: the throughput test needs a student block")
    data = study_data(study, torch.device("cuda"))
    rows = []
    for label, fast in (("fp32, default memory format", False), ("bf16 autocast + channels_last", True)):
        precision = "bf16" if fast else "fp32"
        recipe = study.model_copy(update={"train": study.train.model_copy(update={"precision": precision})})
        trainer = build_trainer(recipe, data, [], study.student.genome(), "ce", {}, study.seed)
        rows.append({"loop": label, "images_per_second": images_per_second(trainer, fast)})
    table = pd.DataFrame(rows)
    table["speedup"] = table["images_per_second"] / table["images_per_second"].iloc[0]
    return table


def images_per_second(trainer: Trainer, channels_last: bool) -> float:
    """Median images/s over the epochs after the first. ``channels_last=False`` undoes the trainer's default
    memory format: contiguous weights and inputs."""
    if channels_last:
        history = trainer.fit()
    else:
        trainer.distiller.to(memory_format=torch.contiguous_format)
        with mock.patch.object(nas_kd.train, "MEMORY_FORMAT", torch.contiguous_format):
            history = trainer.fit()
    torch.cuda.synchronize()
    return statistics.median(r.images_per_second for r in history[1:] or history)


def write_tables(path: Path, gpu: str, tables: dict[str, pd.DataFrame]) -> None:
    if path.suffix == ".md":
        path.write_text("\n".join(f"### {title} ({gpu})\n\n{markdown(table)}\n" for title, table in tables.items()))
    else:
        pd.concat([t.assign(table=title, gpu=gpu) for title, t in tables.items()]).to_csv(path, index=False)
    print(f"\nwritten to {path}")
