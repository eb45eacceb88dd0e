"""``nas-kd bench search``: a tiny real run on the quickstart study (not a benchmark), and the table rebuilt
from pieces (``--from-runs``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import ray

from nas_kd import teachers
from nas_kd.bench.search import ARMS
from nas_kd.cli import main
from nas_kd.teachers import train_plain

pytestmark = pytest.mark.slow  # Ray, searches or end-to-end runs: left out of `make test-fast`

QUICKSTART = Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml"
SETUP = {"study": "fashion_mnist", "budget": 60, "epochs": 5, "device": "cpu"}


def write_runs(path: Path, seed: int, hypervolumes: list[float], **setup: object) -> Path:
    """One piece: every arm once for ``seed``."""
    rows = [
        {"arm": arm.name, "seed": seed, "hypervolume": hv, "student_epochs": 60, "trials": 12, "complete": 12}
        | {"failed": 0, "wall_seconds": 300.0}
        for arm, hv in zip(ARMS, hypervolumes, strict=True)
    ]
    pd.DataFrame(rows).assign(**{**SETUP, **setup}).to_csv(path, index=False)
    return path


def test_bench_search_on_quickstart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs_csv, out = tmp_path / "runs.csv", tmp_path / "bench.md"
    trained: list[dict] = []

    def counted(genome: dict, *args: object, **kwargs: object) -> object:
        trained.append(genome)
        return train_plain(genome, *args, **kwargs)

    monkeypatch.setattr(teachers, "train_plain", counted)
    tried = [ARMS[0], ARMS[-1]]  # the baseline and the prescreen: every arm's path is one of these two or between
    argv = ["bench", "search", str(QUICKSTART), "--budget", "2", "--epochs", "2", "--seeds", "1"]
    argv += ["--arms", ",".join(arm.slug for arm in tried)]
    argv += ["--set", f"runs_dir={tmp_path}", "--set", "teacher.train.epochs=2", "--out", str(runs_csv)]
    try:
        assert main(argv) == 0
    finally:
        ray.shutdown()  # the bench stops its cluster itself; this covers a failure before it could
    assert len(trained) == 1  # the teacher is trained once, not again for the runs in the bench's own folder
    runs = pd.read_csv(runs_csv)  # written run by run
    assert sorted(runs["arm"]) == sorted(arm.name for arm in tried)
    assert (runs["failed"] == 0).all() and (runs["device"] == "cpu").all()
    assert (runs["student_epochs"] <= 2).all()

    assert main(["bench", "search", "--from-runs", str(runs_csv), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("### Final hypervolume of quickstart at 2 student-epochs (1 seed, cpu")
    assert all(f"| {arm.name} | 1 |" in text for arm in tried) and "pareto_halving" not in text
    assert "± nan" in text  # one seed: no spread


def test_pieces_make_one_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = write_runs(tmp_path / "a.csv", 0, [0.40, 0.42, 0.50, 0.52, 0.48])
    second = write_runs(tmp_path / "b.csv", 1, [0.44, 0.46, 0.54, 0.60, 0.52])
    merged = tmp_path / "all.csv"
    assert main(["bench", "search", "--from-runs", str(first), str(second), "--out", str(merged)]) == 0
    printed = capsys.readouterr().out
    assert "Final hypervolume of fashion_mnist at 60 student-epochs (2 seeds, cpu" in printed
    assert "| random + ce | 2 | 0.4200 ± 0.0283 | 1.00x |" in printed
    assert "| tpe + distiller + pareto_halving | 2 | 0.5600 ± 0.0566 | 1.33x |" in printed
    assert "| tpe + distiller + prescreen | 2 | 0.5000 ± 0.0283 | 1.19x |" in printed
    assert len(pd.read_csv(merged)) == 10


@pytest.mark.parametrize(
    ("setup", "message"),
    [({"device": "NVIDIA H200"}, "device: the pieces differ"), ({"budget": 120}, "budget: the pieces differ")],
)
def test_pieces_from_other_setups_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: dict, message: str
) -> None:
    first = write_runs(tmp_path / "a.csv", 0, [0.4, 0.4, 0.5, 0.5, 0.5])
    second = write_runs(tmp_path / "b.csv", 1, [0.4, 0.4, 0.5, 0.5, 0.5], **setup)
    assert main(["bench", "search", "--from-runs", str(first), str(second)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_an_unknown_arm_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "search", str(QUICKSTART), "--arms", "random-ce,tpe-magic"]) == 2
    assert "--arms: unknown ['tpe-magic']; choose from random-ce," in capsys.readouterr().err


def test_an_existing_runs_csv_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = write_runs(tmp_path / "a.csv", 0, [0.4, 0.4, 0.5, 0.5, 0.5])
    before = existing.read_text()
    assert main(["bench", "search", str(QUICKSTART), "--budget", "2", "--out", str(existing)]) == 2
    assert f"--out: {existing} exists" in capsys.readouterr().err
    assert existing.read_text() == before
