"""``nas-kd finalize`` end to end on digits: jobs, seeds, saved students, refusals, resume after SIGKILL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from nas_kd import load_student
from nas_kd.arch import count_params
from nas_kd.cli import main
from nas_kd.config import study_from_dict
from nas_kd.results import read_json, read_table
from nas_kd.search.finalize import FinalizeOptions, finalize, make_plan
from nas_kd.search.runner import SearchError, run_study
from tests.conftest import QUICKSTART
from tests.search.test_runner import SMALL, SMALL_TEACHER, Driver

pytestmark = pytest.mark.slow  # Ray and end-to-end runs: left out of `make test-fast`

OPTIONS = FinalizeOptions(top=2, epochs=2, seeds=2, distillers="ce")


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-trial search, offline KD against ce (the quickstart, scaled down)."""
    runs = tmp_path_factory.mktemp("runs")
    run_study(
        QUICKSTART,
        runs_dir=runs,
        cpus=2,
        dashboard=False,
        log=lambda _: None,
        overrides={**SMALL, "teacher.arch": SMALL_TEACHER},
    )
    return runs / "quickstart"


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the search's run directory (its teacher cache stays shared through study.yaml's runs_dir)."""
    import shutil

    target = tmp_path / "quickstart"
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("final"))
    return target


def test_finalize_retrains_the_top_members_over_fresh_seeds(searched: Path, tmp_path: Path) -> None:
    run_dir = copy_run(searched, tmp_path)
    lines: list[str] = []
    final = finalize(run_dir, OPTIONS, cpus=2, dashboard=False, log=lines.append)

    trials = read_table(run_dir / "trials.csv", []).set_index("trial_id")
    top = trials[trials["status"] == "COMPLETE"].sort_values(["val_accuracy", "params"], ascending=[False, True])
    members = [str(t) for t in top.index[:2]]
    expected = {(m, "searched") for m in members} | {(m, "ce") for m in members if trials.loc[m, "distiller"] != "ce"}
    assert set(zip(final["member"], final["arm"], strict=True)) == expected
    assert len(final) == 2 * len(expected)
    assert sorted(set(final["seed"])) == [1, 2]  # the search trained with seed 0: no job repeats a trial
    assert (final["status"] == "COMPLETE").all(), final["error"].tolist()
    assert (final["epochs"] == 2).all()
    on_disk = pd.read_csv(run_dir / "final" / "final.csv")
    assert list(on_disk["job"]) == list(final["job"])
    for row in final.itertuples():
        assert row.params == trials.loc[row.member, "params"]  # the member's architecture, not another
        student = load_student(row.student_path)
        assert count_params(student) == row.params
        if row.arm == "searched":  # the trial's own recipe, its sampled settings included
            assert row.distiller == trials.loc[row.member, "distiller"]
            prefix = f"{row.distiller}."
            sampled = {k.removeprefix(prefix): trials.loc[row.member, k] for k in trials if k.startswith(prefix)}
            assert row.settings == sampled
        else:
            assert (row.distiller, row.settings) == ("ce", {})
    assert [json.loads(text) for text in on_disk["settings"]] == list(final["settings"])
    summary = read_json(run_dir / "final" / "final.json")
    assert summary["seeds"] == [1, 2] and summary["epochs"] == 2
    assert {(m["member"], m["arm"]) for m in summary["members"]} == expected
    assert all(m["seeds"] == 2 for m in summary["members"])
    assert sum(m["best"] for m in summary["members"]) == 2
    assert summary["fidelity"]["members"] == 2
    assert 'id="final-table"' in (run_dir / "report.html").read_text()
    assert sum(line.startswith("[") for line in lines) == len(final)  # one line per finished job

    # A second finalize refuses to overwrite; --resume trains nothing more
    before = (run_dir / "final" / "final.csv").read_text()
    with pytest.raises(SearchError, match="already exists"):
        finalize(run_dir, OPTIONS, cpus=2, dashboard=False, log=lambda _: None)
    resumed: list[str] = []
    again = finalize(run_dir, resume=True, cpus=2, dashboard=False, log=resumed.append)
    assert not any(line.startswith("[") for line in resumed)
    assert again[["job", "val_accuracy", "test_accuracy"]].equals(final[["job", "val_accuracy", "test_accuracy"]])
    assert (run_dir / "final" / "final.csv").read_text() == before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (FinalizeOptions(distillers="ce,bogus"), "--distillers: unknown"),
        (FinalizeOptions(distillers="multi_teacher"), "multi_teacher: the study has one teacher"),
        (FinalizeOptions(seeds=0), "--seeds"),
        (FinalizeOptions(top=0), "--top"),
        (FinalizeOptions(members=("nope",)), "--members: nope: not a COMPLETE trial"),
        (FinalizeOptions(members=("nope",), top=1), "give one of them"),
    ],
)
def test_bad_options_refuse_before_anything_is_written(
    searched: Path, tmp_path: Path, options: FinalizeOptions, message: str
) -> None:
    run_dir = copy_run(searched, tmp_path)
    with pytest.raises(SearchError, match=message):
        finalize(run_dir, options, fresh=True, dashboard=False, log=lambda _: None)
    assert not (run_dir / "final").exists()


def test_members_picks_exactly_those_trials(searched: Path) -> None:
    study = study_from_dict(yaml.safe_load((searched / "study.yaml").read_text()))
    trials = read_table(searched / "trials.csv", [])
    smallest = str(trials[trials["status"] == "COMPLETE"].sort_values("params")["trial_id"].iloc[0])
    plan = make_plan(searched, study, FinalizeOptions(members=(smallest, smallest), seeds=3))
    assert [m["member"] for m in plan["members"]] == [smallest]  # a repeated id is one member
    assert [(j["member"], j["arm"], j["seed"]) for j in plan["jobs"]] == [(smallest, "searched", s) for s in (1, 2, 3)]


def test_cli_bad_input_is_one_line_and_exit_2(searched: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["finalize", str(tmp_path), "--no-dashboard"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"nas-kd: error: {tmp_path.resolve()}: not a nas-kd run directory (no study.yaml)"
    )
    run_dir = copy_run(searched, tmp_path)
    assert main(["finalize", str(run_dir), "--no-dashboard", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not (run_dir / "final").exists()


def test_sigkill_then_resume_finishes_every_job_once(searched: Path, tmp_path: Path) -> None:
    run_dir = copy_run(searched, tmp_path)
    args = ("--top", "2", "--epochs", "3", "--seeds", "2")
    driver = Driver(tmp_path, *args, command=("finalize", str(run_dir)))
    deadline = time.monotonic() + 300
    while "[1/" not in driver.text() and driver.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    driver.kill()  # one job finished, others mid-epoch: any point after the plan is written will do
    assert (run_dir / "final" / "plan.json").is_file(), driver.text()
    resumed = Driver(tmp_path, "--resume", command=("finalize", str(run_dir)))
    assert resumed.wait(timeout=420) == 0, resumed.text()
    final = pd.read_csv(run_dir / "final" / "final.csv")
    plan = read_json(run_dir / "final" / "plan.json")
    assert sorted(final["job"]) == sorted(job["job"] for job in plan["jobs"])  # each job once
    assert (final["status"] == "COMPLETE").all() and (final["epochs"] == 3).all()
    assert all(Path(path).is_dir() for path in final["student_path"])
