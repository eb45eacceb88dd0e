"""``nas-kd finalize RUN_DIR``: retrain a search's best students at a full budget, over seeds.

Search trials are short and single-seed, and the front's accuracies carry the winner's curse (the best of many
noisy trials). finalize takes the Pareto members (or the top N by validation accuracy), trains each with the
recipe the search found ("searched") and optionally a tournament of named recipes (``nas_kd.distill.presets``),
each for ``seeds`` seeds that no search trial used, in parallel on Ray like the search and resumable the same
way. It writes ``RUN_DIR/final/`` (the ``nas_kd.results`` contract) and rebuilds the report, which gains the
final front and the proxy's fidelity (Kendall tau between search and final validation accuracy).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import torch
import yaml
from ray import tune

from nas_kd.config import SchedulerConfig, Study, study_from_dict
from nas_kd.distill import DISTILLERS, DistillerConfigError, parse_distiller_space
from nas_kd.distill.presets import select_presets
from nas_kd.pipeline import ready_teachers, study_data
from nas_kd.plugins import import_plugins
from nas_kd.report import write_report
from nas_kd.report.data import MIN_RANKED, fidelity, final_arms
from nas_kd.results import FINAL_COLUMNS, FINAL_DIR, read_json, write_json, write_table
from nas_kd.search.bookkeeping import error_line, latest_rows
from nas_kd.search.runner import TUNE_DIR, SearchError, quiet_libraries, restore_tuner, start_ray, tune_run_config
from nas_kd.search.trainable import STUDENT_DIR, train_trial
from nas_kd.teachers import check_teachers, teacher_bundle

SEARCHED = "searched"  # the arm that retrains a member with the distiller and settings the search chose
PLAN = "plan.json"


@dataclass(frozen=True)
class FinalizeOptions:
    top: int | None = None  # None: the Pareto members
    members: tuple[str, ...] = ()  # these trials instead (COMPLETE ones), e.g. the front's best under a size
    epochs: int | None = None  # None: the study's train.epochs
    seeds: int = 3
    distillers: str | None = None  # presets for the tournament, e.g. "ce,offline-dkd"; None: only "searched"


def train_job(config: dict[str, Any], study: dict[str, Any], teachers: list[dict[str, Any]], jobs: dict) -> None:
    """Tune trainable: one job (member x recipe x seed) is one search trial's training at the final budget."""
    train_trial(jobs[config["job"]], study, teachers)


class JobLog(tune.Callback):
    """One line per finished job."""

    def __init__(self, total: int, log: Any = print):
        self.total, self.log, self.done = total, log, 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        result = trial.last_result or {}
        test = result.get("test_accuracy")
        self.log(
            f"[{self.done}/{self.total}] {trial.config['job']}: val {result.get('val_accuracy', float('nan')):.4f}"
            + (f" test {test:.4f}" if test is not None else "")
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        self.log(f"[{self.done}/{self.total}] {trial.config['job']}: FAILED (see final/final.csv)")


def finalize(
    run_dir: str | Path,
    options: FinalizeOptions = FinalizeOptions(),
    *,
    resume: bool = False,
    fresh: bool = False,
    address: str | None = None,
    dashboard: bool = True,
    dashboard_host: str = "127.0.0.1",
    cpus: int | None = None,
    report: bool = True,
    log: Any = print,
) -> pd.DataFrame:
    """Retrain the members of a finished search; returns final.csv's rows. Bad input raises SearchError (one
    line, nothing written); a failing job is a FAILED row, never the end of the others."""
    run_dir = Path(run_dir).resolve()
    study_file = run_dir / "study.yaml"
    if not study_file.is_file():
        raise SearchError(f"{run_dir}: not a nas-kd run directory (no study.yaml)")
    study = study_from_dict(yaml.safe_load(study_file.read_text()), study_file)
    import_plugins(study.plugins)
    final_dir = run_dir / FINAL_DIR
    if resume:
        if not (final_dir / PLAN).is_file():
            raise SearchError(f"{run_dir}: nothing to resume: no {FINAL_DIR}/{PLAN}")
        plan = read_json(final_dir / PLAN)
    elif final_dir.exists() and not fresh:
        raise SearchError(
            f"{final_dir} already exists; continue it with --resume, or start over with --fresh (deletes it)"
        )
    else:
        plan = make_plan(run_dir, study, options)
    final_study = final_budget(study, int(plan["epochs"]))
    data = study_data(final_study, torch.device("cpu"), log)
    check_arms(final_study, check_teachers(final_study, data), plan["arms"])
    if not resume:  # everything above can refuse; from here on the plan is written
        if final_dir.exists():
            shutil.rmtree(final_dir)
        final_dir.mkdir(parents=True)
        write_json(final_dir / PLAN, plan)
    jobs = {job["job"]: job for job in plan["jobs"]}
    log(
        f"finalizing {len(plan['members'])} members x {len(plan['arms'])} recipes x {len(plan['seeds'])} seeds "
        f"= {len(jobs)} jobs of {plan['epochs']} epochs -> {final_dir}"
    )
    started_ray = not ray.is_initialized()
    try:
        start_ray(address, cpus, dashboard, dashboard_host, log)
        cached = ready_teachers(final_study, data, log)
        trainable = tune.with_parameters(
            train_job, study=final_study.resolved(), teachers=[teacher_bundle(c) for c in cached], jobs=jobs
        )
        trainable = tune.with_resources(trainable, {"cpu": study.resources.cpu, "gpu": study.resources.gpu})
        callbacks = [JobLog(len(jobs), log)]
        with quiet_libraries():
            if resume and tune.Tuner.can_restore(str(final_dir / TUNE_DIR)):
                tuner = restore_tuner(final_dir / TUNE_DIR, trainable, callbacks)
            else:
                shutil.rmtree(final_dir / TUNE_DIR, ignore_errors=True)  # killed before Tune's first snapshot
                tuner = tune.Tuner(
                    trainable,
                    param_space={"job": tune.grid_search(list(jobs))},
                    tune_config=tune.TuneConfig(max_concurrent_trials=study.search.max_concurrent, reuse_actors=True),
                    run_config=tune_run_config(final_dir, callbacks),
                )
            results = {result.config["job"]: result for result in tuner.fit()}
    finally:
        if started_ray:
            ray.shutdown()
    rows = [
        job_row(job, results[name], final_dir, int(plan["epochs"])) for name, job in jobs.items() if name in results
    ]
    write_table(final_dir / "final.csv", rows, FINAL_COLUMNS)
    final = pd.DataFrame(rows, columns=FINAL_COLUMNS)
    arms = final_arms(final)
    write_json(
        final_dir / "final.json",
        {
            "epochs": plan["epochs"],
            "seeds": plan["seeds"],
            "recipes": plan["arms"],
            "members": arms.to_dict("records"),
            "fidelity": fidelity(arms),
        },
    )
    _summary(final, arms, log)
    if report:
        log(f"report: {write_report(run_dir)}")
    return final


def final_budget(study: Study, epochs: int) -> Study:
    """The study as a final training runs it: ``epochs`` per student, every job to the end (no scheduler),
    and no size constraint (the members already met it; a finalize must not reject them)."""
    search = study.search.model_copy(update={"constraints": {}, "scheduler": SchedulerConfig(name="fifo")})
    return study.model_copy(update={"train": study.train.model_copy(update={"epochs": epochs}), "search": search})


def make_plan(run_dir: Path, study: Study, options: FinalizeOptions) -> dict[str, Any]:
    """Members x recipes x seeds, as plain data (final/plan.json: what a resumed finalize continues)."""
    where = str(run_dir)
    if options.seeds < 1:
        raise SearchError(f"--seeds: at least 1 (got {options.seeds})")
    if options.top is not None and options.top < 1:
        raise SearchError(f"--top: at least 1 (got {options.top})")
    epochs = study.train.epochs if options.epochs is None else options.epochs
    if epochs < 1:
        raise SearchError(f"--epochs: at least 1 (got {epochs})")
    try:
        presets = select_presets(options.distillers, "--distillers") if options.distillers else []
    except ValueError as error:
        raise SearchError(str(error)) from None
    rows = latest_rows(run_dir)
    complete = [row for row in rows.values() if row.get("status") == "COMPLETE"]
    if options.members:
        if options.top is not None:
            raise SearchError("--members and --top: give one of them")
        unknown = [m for m in options.members if rows.get(m, {}).get("status") != "COMPLETE"]
        if unknown:
            raise SearchError(f"--members: {', '.join(unknown)}: not a COMPLETE trial of {where}")
        chosen = [rows[m] for m in dict.fromkeys(options.members)]
        rule = "--members"
    elif options.top is None:
        front = read_json(run_dir / "pareto.json", {}).get("members") or []
        chosen = [rows[m["trial_id"]] for m in front if m.get("trial_id") in rows]
        rule = "the Pareto front"
    else:
        chosen = sorted(complete, key=lambda r: (-float(r["val_accuracy"]), float(r["params"])))[: options.top]
        rule = f"--top {options.top}"
    if not chosen:
        raise SearchError(f"{where}: no COMPLETE trial to finalize ({rule} is empty)")
    # Seeds after the study's: the search trained every trial with study.seed, so no job repeats one.
    seeds = [study.seed + 1 + i for i in range(options.seeds)]
    members, jobs, arms = [], [], [{"name": SEARCHED, "distiller": None, "settings": None}]
    arms += [{"name": p.name, "distiller": p.distiller, "settings": p.settings} for p in presets]
    for row in chosen:
        searched = {"distiller": row["distiller"], "settings": searched_settings(row)}
        member = {
            "member": str(row["trial_id"]),
            "arch": json.loads(row["arch"]) if isinstance(row["arch"], str) else row["arch"],
            "arch_summary": row.get("arch_summary", ""),
            "params": row.get("params"),
            "flops": row.get("flops"),
            "search_distiller": row["distiller"],
            "search_epochs": row.get("epochs"),
            "search_val_accuracy": row.get("val_accuracy"),
            "search_test_accuracy": row.get("test_accuracy"),
        }
        members.append(member)
        for arm in arms:
            recipe = (
                searched if arm["name"] == SEARCHED else {"distiller": arm["distiller"], "settings": arm["settings"]}
            )
            if arm["name"] != SEARCHED and same_recipe(recipe, searched):
                continue  # the searched arm already trains this recipe
            for seed in seeds:
                jobs.append(
                    {
                        "job": f"{member['member']}-{arm['name']}-s{seed}",
                        "arm": arm["name"],
                        **{k: v for k, v in member.items() if k != "params" and k != "flops"},
                        **recipe,
                        "seed": seed,
                    }
                )
    return {"rule": rule, "epochs": epochs, "seeds": seeds, "arms": arms, "members": members, "jobs": jobs}


def searched_settings(row: dict[str, Any]) -> dict[str, Any]:
    """The distiller settings a search trial was sampled with (its ``<distiller>.<setting>`` columns)."""
    prefix = f"{row['distiller']}."
    return {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix)}


def same_recipe(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same distiller and the same settings once defaults are filled in ({} is the defaults)."""
    if a["distiller"] != b["distiller"] or a["distiller"] not in DISTILLERS:
        return a == b
    settings = DISTILLERS[a["distiller"]].Settings
    return settings(**a["settings"]).model_dump() == settings(**b["settings"]).model_dump()


def check_arms(study: Study, teachers: list[torch.nn.Module], arms: list[dict[str, Any]]) -> None:
    """Every tournament recipe can run with this study's teachers (e.g. multi_teacher needs two)."""
    for arm in arms:
        if arm["name"] == SEARCHED:
            continue
        try:
            parse_distiller_space({"name": arm["distiller"], **arm["settings"]})
            DISTILLERS[arm["distiller"]].check_teachers(teachers)
            if arm["distiller"] == "multi_teacher" and len(teachers) < 2:
                raise ValueError("the study has one teacher, and with one multi_teacher is offline KD: add teachers")
        except (DistillerConfigError, ValueError) as error:
            raise SearchError(f"--distillers: {arm['name']}: {error}") from None


def job_row(job: dict[str, Any], result: Any, final_dir: Path, epochs: int) -> dict[str, Any]:
    """One final.csv row from a job and its Tune result; the student is copied to final/students/<job>."""
    metrics = result.metrics or {}
    reached = int(metrics.get("epoch") or 0)
    status = "FAILED" if result.error is not None else "COMPLETE" if reached >= epochs else "INTERRUPTED"
    row = {k: job.get(k) for k in FINAL_COLUMNS if k in job}
    row.update(
        status=status,
        epochs=reached,
        max_epochs=epochs,
        **{k: metrics.get(k) for k in ("val_accuracy", "test_accuracy", "params", "flops", "model_bytes")},
        seconds=round(float(metrics.get("time_total_s") or 0.0), 3),
        error=error_line(str(result.error)) if result.error is not None else "",
        student_path="",
    )
    if status == "COMPLETE" and result.checkpoint is not None:
        with result.checkpoint.as_directory() as folder:
            source = Path(folder) / STUDENT_DIR
            if source.is_dir():
                target = final_dir / "students" / job["job"]
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target)
                row["student_path"] = str(target)
    return row


def _summary(final: pd.DataFrame, arms: pd.DataFrame, log: Any) -> None:
    counts = final["status"].value_counts().to_dict()
    log(f"\nfinal: jobs {counts}")
    for arm in arms.to_dict("records"):
        mark = "*" if arm["front"] else " "
        log(
            f" {mark} {arm['member']}  {arm['arm']:<16} {int(arm['seeds'])} seeds  "
            f"val {_pm(arm['val_mean'], arm['val_sd'])}  test {_pm(arm['test_mean'], arm['test_sd'])}  "
            f"search val {_pm(arm['search_val_accuracy'], float('nan'))}  {arm['params']:,.0f} params"
        )
    tau = fidelity(arms)
    if math.isfinite(tau["kendall_tau"]):
        log(f"proxy fidelity: Kendall tau {tau['kendall_tau']:.2f} over {tau['members']} members (search vs final val)")
    else:
        log(f"proxy fidelity: Kendall tau needs {MIN_RANKED} members with distinct accuracies ({tau['members']} here)")
    if counts.get("INTERRUPTED"):
        log("interrupted: continue with nas-kd finalize RUN_DIR --resume")


def _pm(mean: float, sd: float) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.4f}" + ("" if pd.isna(sd) else f" ± {sd:.4f}")
