"""write_report over synthetic run directories in every state, its errors, and the PNG export."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from nas_kd.report import ReportError, html, load_run, write_report
from nas_kd.report.run import param_importances
from nas_kd.testing.synthetic_run import RunSpec, write_synthetic_run
from tests.report.conftest import FIGURES


def page_text(path: Path) -> str:
    """The report with Plotly's JSON escapes (\\u002f for "/", \\u00b7 ...) undone, to search it as read."""
    return re.sub(r"\\u([0-9a-f]{4})", lambda m: chr(int(m.group(1), 16)), path.read_text())


def figure_ids(text: str) -> list[str]:
    return re.findall(r'<div id="fig-([a-z]+)" class="plotly-graph-div"', text)


@pytest.mark.parametrize("name", ["empty", "bare", "one", "many", "three", "robust", "no_teacher", "finalized"])
def test_report_builds_for_every_state(reports: dict[str, Path], run_dirs: dict[str, Path], name: str) -> None:
    path = reports[name]
    assert path == run_dirs[name] / "report.html"
    text = path.read_text()
    assert figure_ids(text) == FIGURES
    assert "Plotly.newPlot" in text and len(text) > 3_000_000  # plotly.js is embedded: opens offline
    assert "<script src=" not in text


def test_final_section_compares_search_and_final(reports: dict[str, Path], run_dirs: dict[str, Path]) -> None:
    members = load_run(run_dirs["finalized"]).pareto["members"]
    text = page_text(reports["finalized"])
    table = re.search(r'<table id="final-table">(.*?)</table>', text, re.S)
    assert table is not None
    assert table.group(1).count("<tr>") == 1 + 2 * len(members)  # header + (searched, ce) per member
    assert text.count("(best)") == len(members)  # ce is one point better everywhere
    assert "Jobs: " in text and f"{len(members)} failed" in text
    first = min(members, key=lambda m: m["metrics"]["params"])
    searched = 100 * (first["metrics"]["val_accuracy"] + 0.004)  # mean of seeds 1-3 (+0.002 each)
    assert f"{searched:.2f} ± 0.20" in table.group(1)
    assert "Kendall tau 1.00" in text  # the final ranking keeps the search's order
    assert "Not run yet: nas-kd finalize" in page_text(reports["one"])


def test_many_report_content(reports: dict[str, Path]) -> None:
    text = page_text(reports["many"])
    assert "Interrupted" in text and "--resume" in text
    for status in ("failed (8)", "pruned (stopped early) (20)", "running / unfinished (3)", "rejected (1)"):
        assert status in text
    assert "teacher: 98.90 % val, 98.30 % test" in text
    members = int((load_run(reports["many"].parent).category == "Pareto front").sum())
    assert members > 5 and text.count("nas_kd.load_student(") == members
    assert "same architecture" in text and "size-matched" in text
    assert "offline · dkd+at" in text and "assistant · kd" in text  # scheme and knowledge type
    assert "10: T-shirt/top, Trouser, Pullover" in text  # the data's class names
    assert re.search(
        r"weakest class: (Coat|Bag|Shirt|Dress|Sandal|Sneaker|Trouser|Pullover|T-shirt/top|Ankle boot) \(\d+\.\d+ % val\)",
        text,
    )


def test_states_and_empty_messages(reports: dict[str, Path]) -> None:
    empty = page_text(reports["empty"])
    assert "Still running" in empty
    assert "No trials yet" in empty and "No Pareto members yet" in empty
    assert "at least 5 COMPLETE trials (this study has 0)" in empty
    assert "No teacher in teachers.json" in page_text(reports["no_teacher"])
    assert "Data: the data has no test split: test accuracy is not reported." in page_text(reports["bare"])
    three = page_text(reports["three"])
    assert "No ce arm in this study" in three
    assert "latency vs params" in three  # pairwise panels for three objectives


def test_robust_accuracy_as_an_objective(reports: dict[str, Path], run_dirs: dict[str, Path]) -> None:
    run = load_run(run_dirs["robust"])
    assert run.size == "params"  # no size objective: accuracy is drawn against params
    front = run.trials[run.category == "Pareto front"]
    assert front["robust_accuracy"].between(1, 100).all()  # in percent, like every accuracy of the report
    text = page_text(reports["robust"])
    assert "robust accuracy vs validation accuracy" in text and "robust acc: " in text


def test_importances_from_the_optuna_study(run_dirs: dict[str, Path]) -> None:
    importances, note = param_importances(load_run(run_dirs["many"]))
    assert set(importances) == {"val_accuracy", "params"}
    assert "s0.channels" in importances["params"]
    assert sum(importances["params"].values()) == pytest.approx(1.0)
    assert "COMPLETE trials" in note
    assert param_importances(load_run(run_dirs["bare"])) == ({}, "No Optuna study found (optuna.db is missing).")


def test_out_path_and_moved_run_dir(run_dirs: dict[str, Path], tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(run_dirs["one"], moved)  # run.json's storage still names the old place
    out = write_report(moved, out=tmp_path / "sub" / "r.html")
    assert out == tmp_path / "sub" / "r.html" and out.is_file()
    assert f"{moved.resolve()}/students/t0000" in out.read_text()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no such run directory"),
        (lambda p: p.mkdir(), "not a nas-kd run directory"),
        (lambda p: (p.mkdir(), (p / "run.json").write_text("{oops")), "run.json: not readable JSON"),
        (lambda p: (p.mkdir(), (p / "run.json").write_text('{"objectives": ["params"]}')), "objectives must be"),
        (lambda p: (p.mkdir(), (p / "trials.csv").write_bytes(b'a,b\n"1,2\n')), "trials.csv: not a readable CSV"),
        (lambda p: (p.mkdir(), (p / "trials.csv").write_text(""), (p / "teachers.json").write_text("{}")), "teachers"),
    ],
)
def test_invalid_run_dir(tmp_path: Path, setup, message: str) -> None:
    run = tmp_path / "run"
    setup(run)
    with pytest.raises(ReportError, match=message) as error:
        write_report(run)
    assert "\n" not in str(error.value)
    assert not (run / "report.html").exists()


def test_png_without_a_browser_says_how_to_install(
    run_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(html, "find_browser", lambda: None)
    with pytest.raises(ReportError, match=r"apt-get install chromium"):
        write_report(run_dirs["one"], out=tmp_path / "r.html", png_dir=tmp_path / "png")
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "png").exists()


@pytest.mark.slow  # starts a browser
@pytest.mark.skipif(html.find_browser() is None, reason="kaleido needs Chrome/Chromium (apt-get install chromium)")
def test_png_export_one_file_per_figure(tmp_path: Path) -> None:
    run = tmp_path / "small"
    write_synthetic_run(run, RunSpec(12, distillers=("ce", "offline")))
    write_report(run, png_dir=tmp_path / "png")
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == [f"{i:02d}-{key}.png" for i, key in enumerate(FIGURES, start=1)]
    assert all((tmp_path / "png" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
