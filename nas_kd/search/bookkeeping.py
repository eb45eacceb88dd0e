"""Keeps the run directory current while Tune runs: trials.csv, curves.csv, pareto.json, hypervolume.csv,
the Pareto students, and a live per-trial progress line.

State lives on disk (rewritten after every event), so a driver killed with SIGKILL and resumed with
``--resume`` picks up exactly where the files left off.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from nas_kd.arch import arch_summary
from nas_kd.config import OBJECTIVES as SIZE_OBJECTIVES
from nas_kd.results import (
    CURVE_COLUMNS,
    HYPERVOLUME_COLUMNS,
    TRIAL_COLUMNS,
    read_json,
    read_table,
    write_json,
    write_table,
)
from nas_kd.search.pareto import directions, pareto_mask

FINISHED = ("COMPLETE", "PRUNED", "FAILED", "REJECTED")


class RunDirectory(tune.Callback):
    """A Tune callback that mirrors the experiment into the run directory's files."""

    def __init__(
        self,
        run_dir: str | Path,
        objectives: list[str],
        max_epochs: int,
        hypervolume_fn: Any = None,
        log: Any = print,
        on_front: Any = None,
    ):
        self.run_dir = Path(run_dir)
        self.objectives = objectives
        self.max_epochs = max_epochs
        self.hypervolume_fn = hypervolume_fn  # rows -> float, or None
        self.log = log
        self.on_front = on_front  # (pareto_size, hypervolume) -> None after each finished trial
        self.rows: dict[str, dict[str, Any]] = {}
        self.curves: list[dict[str, Any]] = []
        self.hypervolume: list[dict[str, Any]] = []
        self._loaded = False
        self._clock_start = time.time()
        self._wall_before = 0.0

    # -- state on disk ------------------------------------------------------------------------------
    def load(self) -> None:
        """Read what an earlier (interrupted) driver wrote, so resuming continues the same files."""
        if self._loaded:
            return
        self._loaded = True
        trials = read_table(self.run_dir / "trials.csv", TRIAL_COLUMNS)
        for row in trials.to_dict("records"):
            row = {k: v for k, v in row.items() if not (isinstance(v, float) and np.isnan(v))}
            self.rows[str(row["trial_id"])] = row
        self.curves = read_table(self.run_dir / "curves.csv", CURVE_COLUMNS).to_dict("records")
        self.hypervolume = read_table(self.run_dir / "hypervolume.csv", HYPERVOLUME_COLUMNS).to_dict("records")
        self._wall_before = float(read_json(self.run_dir / "run.json", {}).get("wall_seconds", 0.0))
        self._clock_start = time.time()

    def setup(self, **info: Any) -> None:
        self.load()

    def wall_seconds(self) -> float:
        return self._wall_before + time.time() - self._clock_start

    def student_epochs(self) -> int:
        return int(sum(int(r.get("epochs") or 0) for r in self.rows.values()))

    def forget_trials(self, keep: set[str]) -> list[str]:
        """Drop every trial not in ``keep`` (rows, curves, saved students); returns the dropped ids.

        Used on resume for trials the interrupted driver recorded but Tune's snapshot did not (search/resume.py).
        """
        self.load()
        gone = [trial_id for trial_id in self.rows if trial_id not in keep]
        for trial_id in gone:
            row = self.rows.pop(trial_id)
            if row.get("student_path"):
                shutil.rmtree(row["student_path"], ignore_errors=True)
        if gone:
            self.curves = [c for c in self.curves if c["trial_id"] not in gone]
            write_table(self.run_dir / "curves.csv", self.curves, CURVE_COLUMNS)
            self.update_front()
            self._write()
        return gone

    # -- Tune events --------------------------------------------------------------------------------
    def _row(self, trial: Any) -> dict[str, Any]:
        row = self.rows.get(trial.trial_id)
        if row is None:
            config = trial.config
            row = {
                "trial_id": trial.trial_id,
                "number": config.get("optuna_number"),
                "status": "RUNNING",
                "epochs": 0,
                "max_epochs": self.max_epochs,
                "distiller": config["distiller"],
                "family": config["arch"].get("family", "torchvision"),
                "arch": json.dumps(config["arch"], sort_keys=True),
                "arch_summary": arch_summary(config["arch"]),
                "pareto": False,
                **{f"{config['distiller']}.{k}": v for k, v in config.get("settings", {}).items()},
            }
            self.rows[trial.trial_id] = row
        return row

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial)["status"] = "RUNNING"
        self._write()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self._row(trial)
        epoch = int(result.get("epoch", 0))
        row["epochs"] = epoch
        row["seconds"] = round(float(row.get("seconds") or 0) + float(result.get("epoch_seconds", 0)), 3)
        for key in ("val_accuracy", "test_accuracy", *SIZE_OBJECTIVES):
            if key in result:
                row[key] = result[key]
        if result.get("rejected"):
            row["error"] = f"rejected by constraint: {result['rejected']}"
            return
        redone = [c for c in self.curves if c["trial_id"] == trial.trial_id and c["epoch"] >= epoch]
        if redone:  # resumed from a checkpoint older than its last report: those epochs are trained again
            self.curves = [c for c in self.curves if not (c["trial_id"] == trial.trial_id and c["epoch"] >= epoch)]
            row["redone_epochs"] = int(row.get("redone_epochs") or 0) + len(redone)
            row["redone_seconds"] = round(
                float(row.get("redone_seconds") or 0) + sum(float(c.get("seconds") or 0) for c in redone), 3
            )
        self.curves.append(
            {
                "trial_id": trial.trial_id,
                "epoch": epoch,
                "val_accuracy": result.get("val_accuracy"),
                "train_loss": result.get("train_loss"),
                "seconds": result.get("epoch_seconds"),
                "images_per_second": result.get("images_per_second"),
            }
        )
        write_table(self.run_dir / "curves.csv", self.curves, CURVE_COLUMNS)
        self._write_trials()  # trials.csv shows running trials' progress too
        self.log(
            f"[{self.wall_seconds():6.0f}s] {trial.trial_id}  epoch {epoch:>3}/{self.max_epochs}  "
            f"val_accuracy {row.get('val_accuracy', 0):.4f}  params {int(row.get('params', 0)):>9,}  "
            f"{row['distiller']:<13} {row['arch_summary']}"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        if row.get("error", "").startswith("rejected"):
            row["status"] = "REJECTED"
        else:
            row["status"] = "COMPLETE" if int(row.get("epochs", 0)) >= self.max_epochs else "PRUNED"
        self._finished(trial, row)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row["status"] = "FAILED"
        row["error"] = _error_line(trial)
        self._finished(trial, row)

    def _finished(self, trial: Any, row: dict[str, Any]) -> None:
        self.update_front()
        if row["pareto"]:
            self.export_student(trial, row)
        self.drop_dominated_students()
        finished = sum(r["status"] in FINISHED for r in self.rows.values())
        hypervolume = self.hypervolume_fn(self.complete_rows()) if self.hypervolume_fn else float("nan")
        self.hypervolume.append(
            {
                "finished": finished,
                "trial_id": trial.trial_id,
                "hypervolume": hypervolume,
                "student_epochs": self.student_epochs(),
                "wall_seconds": round(self.wall_seconds(), 2),
            }
        )
        write_table(self.run_dir / "hypervolume.csv", self.hypervolume, HYPERVOLUME_COLUMNS)
        if self.on_front is not None:
            self.on_front(sum(bool(r["pareto"]) for r in self.rows.values()), hypervolume)
        self._write()
        detail = f"  error: {row['error']}" if row.get("error") else ""
        self.log(f"[{self.wall_seconds():6.0f}s] {trial.trial_id}  {row['status']}{detail}")

    # -- Pareto set ---------------------------------------------------------------------------------
    def complete_rows(self) -> list[dict[str, Any]]:
        """Only full-budget trials count for the Pareto set (early-stopped ones would mislead)."""
        return [r for r in self.rows.values() if r["status"] == "COMPLETE" and r.get("val_accuracy") is not None]

    def update_front(self) -> None:
        rows = self.complete_rows()
        for row in self.rows.values():
            row["pareto"] = False
        if not rows:
            return
        values = np.array([[float(r[o]) for o in self.objectives] for r in rows])
        for row, member in zip(rows, pareto_mask(values, directions(self.objectives)), strict=True):
            row["pareto"] = bool(member)

    def export_student(self, trial: Any, row: dict[str, Any]) -> None:
        """Copy a Pareto member's saved student out of its Tune checkpoint into students/<trial_id>."""
        if trial.checkpoint is None:
            return
        target = self.run_dir / "students" / trial.trial_id
        with trial.checkpoint.as_directory() as folder:
            source = Path(folder) / "student"
            if source.is_dir():
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(source, target)
                row["student_path"] = str(target)

    def drop_dominated_students(self) -> None:
        """students/ holds the current Pareto set only: a trial pushed off the front loses its copy."""
        for row in self.rows.values():
            if not row.get("pareto") and row.get("student_path"):
                shutil.rmtree(row.pop("student_path"), ignore_errors=True)

    def pareto_members(self) -> list[dict[str, Any]]:
        members = []
        for row in self.rows.values():
            if not row.get("pareto"):
                continue
            distiller = row["distiller"]
            prefix = f"{distiller}."
            members.append(
                {
                    "trial_id": row["trial_id"],
                    "arch": json.loads(row["arch"]),
                    "arch_summary": row["arch_summary"],
                    "distiller": distiller,
                    "settings": {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)},
                    "metrics": {k: row.get(k) for k in ("val_accuracy", "test_accuracy", *SIZE_OBJECTIVES) if k in row},
                    "student_path": row.get("student_path"),
                }
            )
        return sorted(members, key=lambda m: m["metrics"].get(self.objectives[1], 0))

    def _write_trials(self) -> None:
        rows = sorted(self.rows.values(), key=lambda r: (r.get("number") is None, r.get("number"), r["trial_id"]))
        write_table(self.run_dir / "trials.csv", rows, TRIAL_COLUMNS)

    def _write(self) -> None:
        self._write_trials()
        reference = self.hypervolume_fn.reference_point() if self.hypervolume_fn else None
        write_json(
            self.run_dir / "pareto.json",
            {"objectives": self.objectives, "reference_point": reference, "members": self.pareto_members()},
        )
        run = read_json(self.run_dir / "run.json", {})
        run.update(wall_seconds=round(self.wall_seconds(), 2), updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_json(self.run_dir / "run.json", run)


EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Diverged|Interrupt)): ")


def _error_line(trial: Any) -> str:
    """The trial's error in one line: its last exception line (``TrainingDiverged: training loss is nan at
    epoch 3``) with the lines that detail it, else the last line of what Ray recorded."""
    text = ""
    error_file = getattr(trial, "error_file", None)
    if error_file and Path(error_file).exists():
        text = Path(error_file).read_text()
    if not text:
        try:
            text = str(trial.get_error())
        except Exception:  # best effort: an unreadable error must not stop bookkeeping
            text = "trial failed"
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "trial failed"
    # The last exception line ("pkg.Type: message") and the lines that detail it (pydantic lists each field),
    # without pydantic's closing "For further information" links; else the last line.
    headers = [i for i, line in enumerate(lines) if EXCEPTION_LINE.match(line)]
    if not headers:
        return lines[-1].strip()[:500]
    last = headers[-1]
    detail = [line.strip() for line in lines[last + 1 :] if not line.strip().startswith("For further information")]
    return " | ".join([EXCEPTION_LINE.sub(r"\1: ", lines[last]), *detail])[:500]
