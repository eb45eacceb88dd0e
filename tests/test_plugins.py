"""Plugins: a study's own modules, imported before validation, in the driver and in every Ray worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from nas_kd.cli import main
from nas_kd.config import StudyError, load_study
from nas_kd.distill import DISTILLERS, parse_distiller_space

ROOT = Path(__file__).resolve().parents[1]

# A complete plugin: CE plus a weighted uniform-target term (label-smoothing-like), with one setting. It
# leaves a marker named after the process that trained with it, so the tests can tell which processes did.
PLUGIN = """
import os
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from nas_kd.distill.base import Distiller
from nas_kd.distill.registry import register


@register
class UniformSmoothing(Distiller):
    name = "{name}"
    summary = "cross-entropy plus a uniform-target term"

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        weight: float = Field(0.1, ge=0, description="weight of the uniform-target term")

    def forward_train(self, x, y, index):
        Path(__file__).with_name(f"trained-by-{{os.getpid()}}").touch()
        logits = self.student(x)
        uniform = -torch.log_softmax(logits, dim=1).mean()
        return logits, {{"ce": self.cross_entropy(logits, y), "uniform": self.settings.weight * uniform}}
"""


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[None]:
    """Plugins register into the process-wide registry; put it back, and forget this test's plugin modules."""
    distillers = dict(DISTILLERS)
    yield
    DISTILLERS.clear()
    DISTILLERS.update(distillers)
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def write_plugin(folder: Path, module: str, distiller: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module}.py"
    path.write_text(PLUGIN.format(name=distiller))
    return path


def write_study(folder: Path, plugins: object, distiller: object, **extra: object) -> Path:
    study = {
        "name": "plugin-study",
        "plugins": plugins,
        "runs_dir": str(folder / "runs"),
        "data": {"dataset": "digits", "val_fraction": 0.15},
        "train": {"epochs": 1, "batch_size": 64, "samples_per_epoch": 256},
        "distiller": distiller,
        "search": {"space": str(ROOT / "search_spaces" / "cnn.yaml"), "trials": 2, "sampler": "random"},
        **extra,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_a_study_names_a_distiller_from_its_plugin_module(
    tmp_path: Path, registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_plugin(tmp_path / "code", "uniform_plugin_a", "uniform_a")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    study_file = write_study(tmp_path, ["uniform_plugin_a"], {"name": "uniform_a", "weight": 0.3})
    assert "uniform_a" not in DISTILLERS
    study = load_study(study_file)
    assert study.plugins == ["uniform_plugin_a"]
    assert DISTILLERS["uniform_a"].__module__ == "uniform_plugin_a"
    assert parse_distiller_space(study.distiller).choices[0].settings["weight"].value == 0.3
    assert load_study(study_file).plugins == ["uniform_plugin_a"]  # a second load does not register twice
    # The plugin's settings are validated like a built-in's.
    with pytest.raises(StudyError) as error:
        load_study(write_study(tmp_path, ["uniform_plugin_a"], {"name": "uniform_a", "weight": -1}))
    assert error.value.field == "distiller.weight"


def test_a_py_file_plugin_is_relative_to_the_study_and_never_loaded_twice(
    tmp_path: Path, registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = write_plugin(tmp_path / "code", "uniform_plugin_b", "uniform_b")
    study = load_study(write_study(tmp_path, ["code/uniform_plugin_b.py"], "uniform_b"))
    assert study.plugins == [str(plugin.resolve())]  # absolute, so Ray workers in other folders find it
    assert study.resolved()["plugins"] == [str(plugin.resolve())]
    first = DISTILLERS["uniform_b"]
    # The same file again, and then by module name: the module is reused, not registered a second time.
    load_study(write_study(tmp_path, ["code/uniform_plugin_b.py"], "uniform_b"))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    load_study(write_study(tmp_path, ["uniform_plugin_b"], "uniform_b"))
    assert DISTILLERS["uniform_b"] is first


@pytest.mark.parametrize(
    ("plugins", "field", "message"),
    [
        (["no_such_plugin_module"], "plugins.0", "cannot import 'no_such_plugin_module' (ModuleNotFoundError: "),
        (["json", "broken_plugin"], "plugins.1", "cannot import 'broken_plugin' (SyntaxError: "),
        (["missing.py"], "plugins.0", "(FileNotFoundError: no such file: "),
        ("json", "plugins", "a list of module names"),
    ],
)
def test_a_plugin_that_cannot_be_imported_is_one_line_and_exit_2(
    tmp_path: Path,
    registry: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    plugins: object,
    field: str,
    message: str,
) -> None:
    (tmp_path / "broken_plugin.py").write_text("def oops(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    study_file = write_study(tmp_path, plugins, "ce")
    assert main(["validate", str(study_file)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"nas-kd: error: {study_file}: {field}: ")
    assert message in lines[0]
    assert not (tmp_path / "runs").exists()


def test_list_distillers_shows_a_plugin(
    tmp_path: Path, registry: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_plugin(tmp_path, "uniform_plugin_c", "uniform_c")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["list", "distillers", "--plugin", "uniform_plugin_c"]) == 0
    out = capsys.readouterr().out
    assert "uniform_c: cross-entropy plus a uniform-target term" in out and "weight = 0.1" in out
    assert main(["list", "distillers", "--plugin", "no_such_plugin_module"]) == 2
    assert capsys.readouterr().err.startswith("nas-kd: error: --plugin: cannot import 'no_such_plugin_module'")


@pytest.mark.slow
def test_the_plugin_distiller_trains_inside_the_ray_workers(tmp_path: Path) -> None:
    code = tmp_path / "code"
    write_plugin(code, "uniform_plugin_d", "uniform_d")
    study_file = write_study(tmp_path, ["uniform_plugin_d"], {"name": "uniform_d", "weight": 0.2})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(code)]), "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "nas_kd.cli"]
    checked = subprocess.run([*cli, "validate", str(study_file)], capture_output=True, text=True, env=env, timeout=300)
    assert checked.returncode == 0, checked.stderr
    assert "distiller uniform_d" in checked.stdout
    assert not list(code.glob("trained-by-*"))  # validating trains nothing

    search = subprocess.Popen(
        [*cli, "search", str(study_file), "--no-dashboard"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    output, _ = search.communicate(timeout=900)
    assert search.returncode == 0, output
    trainers = {int(p.name.removeprefix("trained-by-")) for p in code.glob("trained-by-*")}
    assert trainers and search.pid not in trainers  # trained by Ray worker processes, not the driver

    run_dir = tmp_path / "runs" / "plugin-study"
    trials = (run_dir / "trials.csv").read_text().splitlines()
    assert len(trials) == 3 and all(",COMPLETE," in row and ",uniform_d," in row for row in trials[1:])
    results = [json.loads(p.read_text().splitlines()[-1]) for p in (run_dir / "tune").glob("*/result.json")]
    assert len(results) == 2 and all(r["loss/uniform"] > 0 for r in results)  # the plugin's own loss term
    assert yaml.safe_load((run_dir / "study.yaml").read_text())["plugins"] == ["uniform_plugin_d"]
