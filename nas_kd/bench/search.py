"""``nas-kd bench search [STUDY] --budget N --seeds S``: what each part of the search buys, at equal compute.

Arms, each on the same study with the same budget of student-epochs and the same seeds (the study's seed,
then +1, +2 ...; teachers keep their own seed, so every arm distils from the same cached teacher):

1. random sampler + ``ce`` (no distillation), fifo;
2. TPE + ``ce``, fifo;
3. TPE + the study's distiller, fifo;
4. TPE + the study's distiller + ``pareto_halving`` (the study's grace/reduction settings, else defaults);
5. TPE + the study's distiller + the training-free prescreen (``search.prescreen``: the study's, else its
   defaults), fifo: as many students trained as arm 3, each the one chosen from a pool of sampled candidates.

A fifo arm runs ``budget // epochs`` trials. The halving arm runs the trials that the budget buys if
``1/eta`` of them go on at each rung, and is read where the budget ran out: each run's result is the last
row of its ``hypervolume.csv`` whose ``student_epochs`` is within the budget. Its hypervolume is the study's
normalised one (``pareto.StudyHypervolume``: full-budget trials only, fixed bounds, the same for every arm);
its wall time is the search's wall seconds at that row (Tune's start-up included; the arm that runs first,
on a cold cluster, changes with each seed). Teachers are made ready once, before all arms.

A long benchmark can go in pieces, one seed or arm per machine or session: ``--set seed=1 --seeds 1 --out
b.csv`` or ``--arms random-ce,tpe-distiller-prescreen`` (each arm's name with " + " as "-")
(``--out X.csv`` adds each run as it finishes), then ``--from-runs a.csv b.csv`` prints the one table. Pieces
must share the study, budget, epochs and device.

Default study: studies/quickstart.yaml; default budget: the study's trials x epochs.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import torch

from nas_kd.bench import BenchError, study_overrides
from nas_kd.bench.tables import append_run, mean_std, new_runs_csv, publish, read_runs
from nas_kd.config import PrescreenConfig, SchedulerConfig, Study, load_study
from nas_kd.pipeline import ready_teachers, study_data
from nas_kd.results import HYPERVOLUME_COLUMNS, read_json, read_table
from nas_kd.search.schedulers import rung_milestones

DEFAULT_STUDY = "studies/quickstart.yaml"
SETUP_COLUMNS = ("study", "budget", "epochs", "device")
RUN_COLUMNS = ("arm", "seed", "hypervolume", "student_epochs", "trials", "complete", "failed", "wall_seconds")


@dataclass(frozen=True)
class Arm:
    name: str
    sampler: str
    plain_ce: bool  # True: distiller ce instead of the study's
    scheduler: str
    prescreen: bool = False  # True: search.prescreen as the study gives it, else its defaults

    @property
    def slug(self) -> str:
        """The name in ``--arms`` and in run names: ``tpe-distiller-prescreen``."""
        return self.name.replace(" + ", "-")


ARMS = (
    Arm("random + ce", "random", True, "fifo"),
    Arm("tpe + ce", "tpe", True, "fifo"),
    Arm("tpe + distiller", "tpe", False, "fifo"),
    Arm("tpe + distiller + pareto_halving", "tpe", False, "pareto_halving"),
    Arm("tpe + distiller + prescreen", "tpe", False, "fifo", prescreen=True),
)


def run(args: argparse.Namespace) -> int:
    if args.from_runs:
        runs = read_runs(args.from_runs, RUN_COLUMNS + SETUP_COLUMNS, SETUP_COLUMNS, [arm.name for arm in ARMS])
    else:
        runs = measure(args)
    first, seeds = runs.iloc[0], runs["seed"].nunique()
    title = (
        f"Final hypervolume of {first['study']} at {first['budget']} student-epochs "
        f"({seeds} seed{'s' if seeds > 1 else ''}, {first['device']}, mean ± std)"
    )
    listed = runs.assign(hypervolume=runs["hypervolume"].map("{:.4f}".format)).drop(columns=list(SETUP_COLUMNS))
    publish(title, summarise(runs), runs, listed, args.out, merge=bool(args.from_runs))
    return 0


def measure(args: argparse.Namespace) -> pd.DataFrame:
    """Run every arm for every seed; one row per run, added to ``--out X.csv`` as each finishes."""
    study_path = args.study or DEFAULT_STUDY
    arms = select_arms(args.arms)
    overrides = study_overrides(args)
    study = load_study(study_path, overrides)
    budget = args.budget or study.search.trials * study.train.epochs
    seeds = [study.seed + i for i in range(args.seeds)]
    csv_out = new_runs_csv(args.out)
    setup = {"study": study.name, "budget": budget, "epochs": study.train.epochs, "device": trial_device(study)}
    print(f"nas-kd bench search: {study_path}, {budget} student-epochs per run, seeds {seeds}, {setup['device']}")

    ready_teachers(study, study_data(study, torch.device("cpu")))  # into the study's cache, outside the timings
    # One private cluster for every arm (no start-up per run); "local": never one another process started.
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="nas-kd-bench-search-") as runs_dir:
            # Runs go to the temporary folder; the model cache is the study's, where the teachers just got ready.
            cache = Path(study.runs_dir).resolve() / "_cache"
            cache.mkdir(parents=True, exist_ok=True)
            (Path(runs_dir) / "_cache").symlink_to(cache, target_is_directory=True)
            for seed in seeds:
                # The first run of a seed pays for a cold cluster; which arm that is rotates with the seed.
                for arm in arms[seed % len(arms) :] + arms[: seed % len(arms)]:
                    row = {**search_run(study_path, overrides, study, arm, seed, budget, Path(runs_dir)), **setup}
                    rows.append(row)
                    if csv_out:
                        append_run(csv_out, row)
    finally:
        ray.shutdown()
    if csv_out:
        print(f"\nruns written to {csv_out}")
    return pd.DataFrame(rows)


def select_arms(names: str | None) -> list[Arm]:
    """``--arms random-ce,tpe-distiller-prescreen``: a subset, in the canonical order (all arms by default)."""
    if not names:
        return list(ARMS)
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    unknown = wanted - {arm.slug for arm in ARMS}
    if unknown:
        raise BenchError(f"--arms: unknown {sorted(unknown)}; choose from {', '.join(arm.slug for arm in ARMS)}")
    return [arm for arm in ARMS if arm.slug in wanted]


def trial_device(study: Study) -> str:
    """Where the trials train: the GPU's name when the study gives them one, else cpu."""
    if study.resources.gpu > 0 and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def trials_for(budget: int, study: Study, arm: Arm) -> int:
    epochs = study.train.epochs
    if arm.scheduler == "fifo":
        return max(1, budget // epochs)
    return max(1, math.ceil(budget / expected_epochs(study.search.scheduler, epochs)))


def expected_epochs(cfg: SchedulerConfig, max_epochs: int) -> float:
    """Mean epochs a trial trains under successive halving if 1/eta go on at each rung."""
    total, reached, share = 0.0, 0, 1.0
    for milestone in [*rung_milestones(cfg.grace_epochs, cfg.reduction_factor, max_epochs), max_epochs]:
        total += share * (milestone - reached)
        reached, share = milestone, share / cfg.reduction_factor
    return total


def arm_overrides(study: Study, arm: Arm, seed: int, budget: int) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "name": f"{study.name}-{arm.slug}-seed{seed}",
        "seed": seed,
        "search.sampler": arm.sampler,
        "search.scheduler.name": arm.scheduler,
        "search.trials": trials_for(budget, study, arm),
    }
    if arm.plain_ce:
        overrides["distiller"] = "ce"
    # Only the prescreen arm screens, with the study's settings when it has them.
    overrides["search.prescreen"] = (
        (study.search.prescreen or PrescreenConfig()).model_dump() if arm.prescreen else None
    )
    # Teachers keep the study's seed: a new one per seed would retrain them and change what is distilled.
    if study.teacher:
        overrides["teacher.seed"] = study.teacher_seed(study.teacher)
    if study.teachers:
        overrides["teachers"] = [
            {**t.model_dump(mode="json", exclude_none=True), "seed": study.teacher_seed(t)} for t in study.teachers
        ]
    return overrides


def search_run(
    study_path: str, overrides: dict[str, Any], study: Study, arm: Arm, seed: int, budget: int, runs_dir: Path
) -> dict[str, Any]:
    from nas_kd.search.runner import run_study

    start = time.perf_counter()
    arm_study = load_study(study_path, {**overrides, **arm_overrides(study, arm, seed, budget)})
    result = run_study(arm_study, runs_dir=runs_dir, dashboard=False, report=False, log=lambda *a: None)
    seconds = time.perf_counter() - start
    curve = read_table(result.run_dir / "hypervolume.csv", HYPERVOLUME_COLUMNS)
    curve = curve[curve["student_epochs"] <= budget]
    last = curve.iloc[-1] if len(curve) else pd.Series({"hypervolume": 0.0, "student_epochs": 0, "wall_seconds": 0.0})
    trials = result.trials[result.trials["trial_id"].isin(curve["trial_id"])]
    failed = trials[trials["status"] == "FAILED"]
    run_wall = float(read_json(result.run_dir / "run.json", {}).get("wall_seconds") or seconds)
    row = {
        "arm": arm.name,
        "seed": seed,
        "hypervolume": float(last["hypervolume"]),
        "student_epochs": int(last["student_epochs"]),
        "trials": len(trials),
        "complete": int((trials["status"] == "COMPLETE").sum()),
        "failed": len(failed),
        "wall_seconds": float(last["wall_seconds"]),
        "run_seconds": seconds,
        "slot_use": slot_use(result.trials, arm_study, run_wall),
    }
    print(
        f"  {arm.name:<34} seed {seed}: hypervolume {row['hypervolume']:.4f}, {row['student_epochs']} student-epochs, "
        f"{row['complete']}/{row['trials']} trials complete, {row['wall_seconds']:.0f}s, slots {row['slot_use']:.0%} busy"
        + (f"; {len(failed)} failed, first: {failed['error'].iloc[0]}" if len(failed) else "")
    )
    return row


def slot_use(trials: pd.DataFrame, study: Study, wall_seconds: float) -> float:
    """Share of the search's trial slots spent training: the trials' training seconds over slots x wall
    (what is left is Tune start-up, scheduling, evaluation, reporting and checkpoints)."""
    cpus = ray.cluster_resources().get("CPU", 1.0)
    slots = max(1, int(cpus // study.resources.cpu))
    if study.search.max_concurrent:
        slots = min(slots, study.search.max_concurrent)
    training = float(pd.to_numeric(trials.get("seconds"), errors="coerce").fillna(0).sum()) if len(trials) else 0.0
    return training / (slots * wall_seconds) if wall_seconds > 0 else 0.0


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: mean ± std over seeds, and the hypervolume as a ratio to the first arm's."""
    baseline = runs[runs["arm"] == ARMS[0].name]["hypervolume"].mean()
    rows = []
    for arm in ARMS:
        group = runs[runs["arm"] == arm.name]
        if group.empty:  # run with --arms
            continue
        rows.append(
            {
                "arm": arm.name,
                "seeds": len(group),
                "hypervolume": mean_std(group["hypervolume"], 4),
                f"vs {ARMS[0].name}": f"{group['hypervolume'].mean() / baseline:.2f}x" if baseline > 0 else "-",
                "student-epochs": f"{group['student_epochs'].mean():.0f}",
                "complete trials": f"{group['complete'].mean():.1f}",
                "wall s": mean_std(group["wall_seconds"], 0),
                "slot use": f"{group['slot_use'].mean():.0%}" if "slot_use" in group else "-",  # newer runs record it
            }
        )
    return pd.DataFrame(rows)
