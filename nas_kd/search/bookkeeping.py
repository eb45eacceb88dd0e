"""Keeps the run directory current while Tune runs, at a cost per Tune event that does not grow with the study.

Written as events arrive (append-only, one short write each; durable against SIGKILL):

- ``trials.jsonl``    the event log: one JSON object per trial start and finish (the whole row at a finish). It is
                      the truth a resumed driver rebuilds its state from.
- ``curves.csv``      one row per reported epoch.
- ``hypervolume.csv`` one row per finished trial (the indicator is recomputed only when the front changed).

Written at most every ``flush_seconds`` (checked on each event and each Tune loop step) and always when the
experiment ends, atomically (write + ``os.replace``): ``trials.csv``, ``pareto.json``, ``run.json``. After a
finished run they hold what they always did (``nas_kd.results``).

The Pareto front is kept incrementally: a new COMPLETE row is either dominated by a current member (nothing
changes) or joins the front and evicts the members it dominates. Pareto students are copied into
``students/`` when they join and deleted when they are evicted.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray import tune

from nas_kd.arch import arch_summary
from nas_kd.arch.quant_spec import bits_of
from nas_kd.config import OBJECTIVES as SIZE_OBJECTIVES
from nas_kd.results import (
    CURVE_COLUMNS,
    EVENT_LOG,
    HYPERVOLUME_COLUMNS,
    TRIAL_COLUMNS,
    json_default,
    read_json,
    read_table,
    write_json,
    write_table,
)
from nas_kd.search.pareto import directions
from nas_kd.search.progress import PlainProgress

FINISHED = ("COMPLETE", "PRUNED", "FAILED", "REJECTED")
INTERRUPTED = "INTERRUPTED"
FORGOTTEN = "forgotten"  # event-log key: the trial was dropped on resume (``forget_trials``)
FLUSH_SECONDS = 5.0
FLUSH_SHARE = 20  # wait at least this many times the last flush's duration between flushes (<= 5% of the time)
APPENDED = (EVENT_LOG, "curves.csv", "hypervolume.csv")
METRIC_KEYS = (
    "val_accuracy",
    "test_accuracy",
    "robust_accuracy",
    "worst_class",
    "worst_class_accuracy",
    *SIZE_OBJECTIVES,
)
# Tune's final trial states -> what bookkeeping records if it never saw the trial's last event.
TUNE_TERMINATED, TUNE_ERROR = "TERMINATED", "ERROR"


class RunDirectory(tune.Callback):
    """A Tune callback that mirrors the experiment into the run directory's files (see the module docstring).

    ``progress`` receives every event (``nas_kd.search.progress``); without one, plain lines go to ``log``.
    ``flush_seconds`` bounds how stale ``trials.csv``/``pareto.json``/``run.json`` may be (0: every event).
    """

    def __init__(
        self,
        run_dir: str | Path,
        objectives: list[str],
        max_epochs: int,
        hypervolume_fn: Any = None,
        log: Any = print,
        on_front: Any = None,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        progress: Any = None,
    ):
        self.run_dir = Path(run_dir)
        self.objectives = list(objectives)
        self.max_epochs = max_epochs
        self.hypervolume_fn = hypervolume_fn  # rows -> float, or None
        self.on_front = on_front  # (pareto_size, hypervolume) -> None after each finished trial
        self.flush_seconds = flush_seconds
        self.progress = progress if progress is not None else PlainProgress(objectives, log=log, verbose=True)
        self._signs = [-1.0 if d == "maximize" else 1.0 for d in directions(self.objectives)]
        self._reset()

    def _reset(self) -> None:
        if getattr(self, "_files", None):
            self.close_files()
        self._files: dict[str, Any] = {}  # name -> open append handle
        self.rows: dict[str, dict[str, Any]] = {}
        self.front: dict[str, dict[str, Any]] = {}  # trial_id -> row, the current Pareto set
        self.counts: Counter[str] = Counter()  # status -> number of rows
        self.hypervolume = float("nan")
        self.finished = 0
        self.student_epochs = 0
        self._loaded = False
        self._clock_start = time.time()
        self._wall_before = 0.0
        self._last_flush = time.monotonic()
        self._flush_cost = 0.0
        self._dirty = False

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks into the experiment (``tuner.pkl``) before the run: only the settings
        travel, and a restored copy rebuilds its state from the files in ``load``."""
        keep = ("run_dir", "objectives", "max_epochs", "hypervolume_fn", "on_front", "flush_seconds", "progress")
        return {k: self.__dict__[k] for k in keep} | {"_signs": self._signs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- state on disk ------------------------------------------------------------------------------
    def load(self) -> None:
        """Rebuild the state from what an earlier (interrupted) driver wrote: the event log is the truth; a
        row still running there takes its progress (epochs, seconds, last accuracy) from curves.csv."""
        if self._loaded:
            return
        self._reset()
        self._loaded = True
        for name in APPENDED:
            drop_torn_line(self.run_dir / name)
        self.rows = latest_rows(self.run_dir)
        running = {tid for tid, row in self.rows.items() if row.get("status") == "RUNNING"}
        if running:
            curves = read_table(self.run_dir / "curves.csv", CURVE_COLUMNS)
            curves = curves[curves["trial_id"].astype(str).isin(running)]
            for tid, group in curves.groupby(curves["trial_id"].astype(str), sort=False):
                row = self.rows[tid]
                row["epochs"] = int(group["epoch"].max())
                row["seconds"] = round(float(group["seconds"].fillna(0).sum()), 3)
                if not _missing(group["val_accuracy"].iloc[-1]):
                    row["val_accuracy"] = float(group["val_accuracy"].iloc[-1])
        for row in self.rows.values():
            row["pareto"] = False
            self.counts[row["status"]] += 1
            self.student_epochs += int(row.get("epochs") or 0)
            if row.get("student_path") and not Path(row["student_path"]).is_dir():
                row.pop("student_path")
            if row["status"] == "COMPLETE":
                self._join_front(row)
        self.finished = sum(self.counts[s] for s in FINISHED)
        self.hypervolume = self._front_hypervolume()
        self._wall_before = float(read_json(self.run_dir / "run.json", {}).get("wall_seconds", 0.0))
        self._clock_start = time.time()

    def setup(self, **info: Any) -> None:
        self.load()
        self.progress.start(self)

    def wall_seconds(self) -> float:
        return self._wall_before + time.time() - self._clock_start

    def forget_trials(self, keep: set[str]) -> list[str]:
        """Drop every trial not in ``keep`` (its row, curves and saved student); returns the dropped ids.

        On resume, for trials the interrupted driver recorded but Tune's snapshot did not (``search/resume.py``):
        new trials replace them. Rewrites curves.csv once, which only a resume pays for."""
        self.load()
        gone = [tid for tid in self.rows if tid not in keep]
        for tid in gone:
            row = self.rows.pop(tid)
            self.counts[row["status"]] -= 1
            self.finished -= row["status"] in FINISHED
            self.student_epochs -= int(row.get("epochs") or 0)
            if self.front.pop(tid, None) is not None and row.get("student_path"):
                shutil.rmtree(row["student_path"], ignore_errors=True)
            self._log_event({"trial_id": tid, FORGOTTEN: True})
        if gone:
            self._rewrite_curves(lambda line: str(line["trial_id"]) not in gone)
            self.hypervolume = self._front_hypervolume()
            self.flush()
        return gone

    def _rewrite_curves(self, keep: Any) -> list[dict[str, Any]]:
        """Rewrite curves.csv with the lines ``keep`` accepts; returns the others."""
        if "curves.csv" in self._files:
            self._files.pop("curves.csv").close()
        lines = read_table(self.run_dir / "curves.csv", CURVE_COLUMNS).to_dict("records")
        dropped = [line for line in lines if not keep(line)]
        if dropped:
            write_table(self.run_dir / "curves.csv", [line for line in lines if keep(line)], CURVE_COLUMNS)
        return dropped

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
                **bits_of(config["arch"]),
                "pareto": False,
                **{f"{config['distiller']}.{k}": v for k, v in config.get("settings", {}).items()},
            }
            self.rows[trial.trial_id] = row
            self.counts["RUNNING"] += 1
            self._log_event(row)
        return row

    def _set_status(self, row: dict[str, Any], status: str) -> None:
        self.counts[row["status"]] -= 1
        self.counts[status] += 1
        row["status"] = status

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        if row["status"] != "RUNNING":  # a trial Tune starts again (resume): it runs, whatever it was before
            self._set_status(row, "RUNNING")
            self._log_event({"trial_id": row["trial_id"], "status": "RUNNING"})
        self._changed()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self._row(trial)
        epoch = int(result.get("epoch", 0))
        if 0 < epoch <= int(row.get("epochs") or 0):
            self._count_redone(row, epoch)
        self.student_epochs += epoch - int(row.get("epochs") or 0)
        row["epochs"] = epoch
        row["seconds"] = round(float(row.get("seconds") or 0) + float(result.get("epoch_seconds", 0)), 3)
        for key in METRIC_KEYS:
            if key in result:
                row[key] = result[key]
        if result.get("rejected"):
            row["error"] = f"rejected by constraint: {result['rejected']}"
        else:
            self._append_csv(
                "curves.csv",
                CURVE_COLUMNS,
                {
                    "trial_id": trial.trial_id,
                    "epoch": epoch,
                    "val_accuracy": result.get("val_accuracy"),
                    "train_loss": result.get("train_loss"),
                    "seconds": result.get("epoch_seconds"),
                    "images_per_second": result.get("images_per_second"),
                },
            )
            self.progress.epoch(self, row)
        self._changed()

    def _count_redone(self, row: dict[str, Any], epoch: int) -> None:
        """The trial resumed from a checkpoint older than its last report: epochs from ``epoch`` on are trained
        again. Their old curve lines go (each epoch appears once), and the row records what was redone."""
        tid = row["trial_id"]
        redone = self._rewrite_curves(lambda line: str(line["trial_id"]) != tid or int(line["epoch"]) < epoch)
        row["redone_epochs"] = int(row.get("redone_epochs") or 0) + len(redone)
        seconds = sum(float(line.get("seconds") or 0) for line in redone if not _missing(line.get("seconds")))
        row["redone_seconds"] = round(float(row.get("redone_seconds") or 0) + seconds, 3)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        self._finish(trial, row, _completed_status(row, self.max_epochs))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row["error"] = _error_line(trial)
        self._finish(trial, row, "FAILED")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Called on every turn of Tune's event loop: the timer for the summaries and the live display."""
        self._flush_when_due()
        self.progress.tick(self)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Give every row Tune finished without telling us (a trial that ended while the driver was down) its
        final status; close rows Tune does not know at all (see ``close_unfinished``); write the summaries.

        Tune calls this when the experiment ends, interrupted too: rows of trials Tune knows and will resume
        stay RUNNING then."""
        known = {trial.trial_id for trial in trials}
        ghosts = [tid for tid, row in self.rows.items() if row["status"] == "RUNNING" and tid not in known]
        if trials and ghosts:
            self.close_unfinished(ids=ghosts)
        for trial in trials:
            row = self.rows.get(trial.trial_id)
            if row is None or row["status"] != "RUNNING":
                continue
            if trial.status == TUNE_TERMINATED:
                result = getattr(trial, "last_result", None) or {}
                if not _ended(result, self.max_epochs):
                    continue  # stopped by Ctrl-C: RUNNING in Tune's final snapshot, and a resume continues it
                _apply_result(row, result)
                self._finish(trial, row, _completed_status(row, self.max_epochs))
            elif trial.status == TUNE_ERROR:
                row["error"] = _error_line(trial)
                self._finish(trial, row, "FAILED")
        self.flush()
        self.close_files()
        self.progress.close(self)

    def close_unfinished(self, status: str = INTERRUPTED, ids: list[str] | None = None) -> list[str]:
        """Mark rows still RUNNING (or those of ``ids``) as ``status`` and flush; returns their trial ids.

        A row is RUNNING with no trial to finish it when the driver was killed after the trial started but
        before Tune's experiment checkpoint recorded it: the resumed experiment does not have that trial and
        it will never report. ``on_experiment_end`` closes those itself (rows whose trial Tune does not know).
        The runner may call this after ``tuner.fit()`` returned with every trial of the study finished, for
        whatever is still RUNNING; not after an interrupted run: a resume continues those rows.
        """
        self.load()
        running = [tid for tid, row in self.rows.items() if row["status"] == "RUNNING"]
        closed = [tid for tid in running if ids is None or tid in ids]
        for tid in closed:
            row = self.rows[tid]
            self._set_status(row, status)
            row.setdefault(
                "error", "the experiment ended without this trial (started before a driver kill, never resumed)"
            )
            self._log_event(row)
        self.flush()
        return closed

    def _finish(self, trial: Any, row: dict[str, Any], status: str) -> None:
        was_finished = row["status"] in FINISHED
        self._set_status(row, status)
        if status == "COMPLETE" and self._join_front(row):
            self.export_student(trial, row)
            self.hypervolume = self._front_hypervolume()
        if not was_finished:
            self.finished += 1
        self._log_event(row)
        self._append_csv(
            "hypervolume.csv",
            HYPERVOLUME_COLUMNS,
            {
                "finished": self.finished,
                "trial_id": trial.trial_id,
                "hypervolume": self.hypervolume,
                "student_epochs": self.student_epochs,
                "wall_seconds": round(self.wall_seconds(), 2),
            },
        )
        if self.on_front is not None:
            self.on_front(len(self.front), self.hypervolume)
        self.progress.finished(self, row)
        self._changed()

    # -- Pareto set ---------------------------------------------------------------------------------
    def _point(self, row: dict[str, Any]) -> list[float] | None:
        """The row's objectives as a minimisation point, or None when one is missing or not finite."""
        try:
            point = [sign * float(row[name]) for sign, name in zip(self._signs, self.objectives, strict=True)]
        except (KeyError, TypeError, ValueError):
            return None
        return point if all(math.isfinite(v) for v in point) else None

    def _join_front(self, row: dict[str, Any]) -> bool:
        """Add a COMPLETE row to the front unless a member dominates it; evict the members it dominates.
        Returns whether the front changed. Equal points both stay (as ``pareto_mask`` keeps duplicates)."""
        point = self._point(row)
        if point is None:
            return False
        evicted = []
        for tid, member in self.front.items():
            other = self._point(member)
            if _dominates(other, point):
                return False
            if _dominates(point, other):
                evicted.append(tid)
        for tid in evicted:
            member = self.front.pop(tid)
            member["pareto"] = False
            if member.get("student_path"):
                shutil.rmtree(member.pop("student_path"), ignore_errors=True)
        row["pareto"] = True
        self.front[row["trial_id"]] = row
        return True

    def _front_hypervolume(self) -> float:
        return float(self.hypervolume_fn(list(self.front.values()))) if self.hypervolume_fn else float("nan")

    def export_student(self, trial: Any, row: dict[str, Any]) -> None:
        """Copy a Pareto member's saved student out of its Tune checkpoint into students/<trial_id>."""
        if getattr(trial, "checkpoint", None) is None:
            return
        target = self.run_dir / "students" / trial.trial_id
        with trial.checkpoint.as_directory() as folder:
            source = Path(folder) / "student"
            if source.is_dir():
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(source, target)
                row["student_path"] = str(target)

    def pareto_members(self) -> list[dict[str, Any]]:
        members = []
        for row in self.front.values():
            distiller = row["distiller"]
            prefix = f"{distiller}."
            members.append(
                {
                    "trial_id": row["trial_id"],
                    "arch": json.loads(row["arch"]),
                    "arch_summary": row["arch_summary"],
                    "bits": {k: row[k] for k in ("weight_bits", "act_bits") if k in row},
                    "distiller": distiller,
                    "settings": {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)},
                    "metrics": {k: row.get(k) for k in METRIC_KEYS if k in row},
                    "student_path": row.get("student_path"),
                }
            )
        return sorted(members, key=lambda m: m["metrics"].get(self.objectives[1], 0))

    # -- files --------------------------------------------------------------------------------------
    def _log_event(self, event: dict[str, Any]) -> None:
        self._append(EVENT_LOG, json.dumps(event, default=json_default) + "\n")

    def _append_csv(self, name: str, columns: list[str], row: dict[str, Any]) -> None:
        header = "" if name in self._files else _header_unless_written(self.run_dir / name, columns)
        cells = [_csv_cell(row.get(column)) for column in columns]
        self._append(name, header + _csv_line(cells))

    def _append(self, name: str, text: str) -> None:
        """Append whole lines in one write (a kill leaves whole lines); files stay open between events."""
        f = self._files.get(name)
        if f is None:
            f = self._files[name] = open(self.run_dir / name, "a")  # noqa: SIM115 - closed in close_files
        f.write(text)
        f.flush()

    def close_files(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def _changed(self) -> None:
        self._dirty = True
        self._flush_when_due()

    def _flush_when_due(self) -> None:
        """Due after ``flush_seconds``, and never sooner than ``FLUSH_SHARE`` times the last flush took: a
        flush rewrites every row, so on a big study this keeps it a small share of the driver's time."""
        interval = self.flush_seconds and max(self.flush_seconds, FLUSH_SHARE * self._flush_cost)
        if self._dirty and time.monotonic() - self._last_flush >= interval:
            self.flush()

    def flush(self) -> None:
        """Write trials.csv, pareto.json and run.json now (atomically)."""
        start = time.perf_counter()
        rows = sorted(self.rows.values(), key=lambda r: (r.get("number") is None, r.get("number"), r["trial_id"]))
        write_table(self.run_dir / "trials.csv", rows, TRIAL_COLUMNS)
        reference = self.hypervolume_fn.reference_point() if hasattr(self.hypervolume_fn, "reference_point") else None
        write_json(
            self.run_dir / "pareto.json",
            {"objectives": self.objectives, "reference_point": reference, "members": self.pareto_members()},
        )
        run = read_json(self.run_dir / "run.json", {})
        run.update(wall_seconds=round(self.wall_seconds(), 2), updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_json(self.run_dir / "run.json", run)
        self._last_flush = time.monotonic()
        self._flush_cost = time.perf_counter() - start
        self._dirty = False


def latest_rows(run_dir: Path) -> dict[str, dict[str, Any]]:
    """trial_id -> its latest trials.csv row, with JSON types, from the event log (later lines update earlier
    ones; a forgotten trial is dropped); from trials.csv for a run directory written before the log existed."""
    rows: dict[str, dict[str, Any]] = {}
    for event in read_events(run_dir / EVENT_LOG):
        if event.get(FORGOTTEN):
            rows.pop(str(event["trial_id"]), None)
        else:
            rows.setdefault(str(event["trial_id"]), {}).update(event)
    if not rows:
        trials = read_table(run_dir / "trials.csv", TRIAL_COLUMNS)
        for row in trials.to_dict("records"):
            rows[str(row["trial_id"])] = {k: v for k, v in row.items() if not _missing(v)}
    return rows


def drop_torn_line(path: Path) -> None:
    """Cut a last line the driver was killed while writing, so that appends start on a line of their own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, 2)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


def read_events(path: Path) -> list[dict[str, Any]]:
    """The event log's entries; a torn last line (the driver killed mid-write) is skipped."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "trial_id" in event:
            events.append(event)
    return events


def _header_unless_written(path: Path, columns: list[str]) -> str:
    return _csv_line(columns) if not path.exists() or path.stat().st_size == 0 else ""


def _csv_line(cells: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    return "" if _missing(value) else value


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Minimisation: ``a`` is no worse than ``b`` everywhere and better somewhere."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def _ended(result: dict[str, Any], max_epochs: int) -> bool:
    """Whether a trial's last result ends it. Tune marks ``done`` a trial whose trainable returned or that its
    scheduler stopped; on Ctrl-C it sets every running trial TERMINATED without a done result."""
    return bool(result.get("done")) or "rejected" in result or int(result.get("epoch") or 0) >= max_epochs


def _completed_status(row: dict[str, Any], max_epochs: int) -> str:
    if str(row.get("error", "")).startswith("rejected"):
        return "REJECTED"
    return "COMPLETE" if int(row.get("epochs") or 0) >= max_epochs else "PRUNED"


def _apply_result(row: dict[str, Any], result: dict[str, Any]) -> None:
    """A trial's last result (Tune's ``last_result``) into its row, for a finish bookkeeping did not see."""
    if "epoch" in result:
        row["epochs"] = max(int(row.get("epochs") or 0), int(result["epoch"]))
    for key in METRIC_KEYS:
        if key in result:
            row[key] = result[key]
    if result.get("rejected"):
        row["error"] = f"rejected by constraint: {result['rejected']}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Diverged|Interrupt)): ")


def _error_line(trial: Any) -> str:
    """The trial's error in one line (``error_line``) from what Ray recorded."""
    text = ""
    error_file = getattr(trial, "error_file", None)
    if error_file and Path(error_file).exists():
        text = Path(error_file).read_text()
    if not text:
        try:
            text = str(trial.get_error())
        except Exception:  # best effort: an unreadable error must not stop bookkeeping
            text = "trial failed"
    return error_line(text)


def error_line(text: str) -> str:
    """A traceback in one line: its last exception line (``TrainingDiverged: training loss is nan at epoch 3``)
    with the lines that detail it, else its last line."""
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
