"""``nas-kd bench trainer``: arms chosen by name, every arm's throughput against the minimal loop."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import nas_kd.bench.trainer
from nas_kd.bench import BenchError
from nas_kd.bench.trainer import chosen_arms, minimal_loop
from nas_kd.cli import main
from nas_kd.config import load_study
from nas_kd.pipeline import study_data

QUICKSTART = Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml"


def test_arms_always_include_the_baseline_in_a_fixed_order() -> None:
    assert chosen_arms(None) == ["minimal", "tuned", "bf16", "cached", "live"]
    assert chosen_arms("live,tuned") == ["minimal", "tuned", "live"]
    with pytest.raises(BenchError, match=r"--arms: unknown \['fast'\]"):
        chosen_arms("tuned,fast")


def test_unknown_arm_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "trainer", str(QUICKSTART), "--arms", "fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--arms: unknown ['fast']" in err


@pytest.mark.slow
def test_prints_each_arm_against_the_minimal_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "trainer", str(QUICKSTART), "--repeats", "1", "--arms", "tuned,live"]
    settings = [f"runs_dir={tmp_path}", "teacher.train.epochs=1", "train.samples_per_epoch=256"]
    assert main(args + [item for s in settings for item in ("--set", s)]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert [r[0].strip() for r in rows] == [
        "minimal fp32 loop (ce)",
        "trainer ce (tuned)",
        "trainer offline, live teacher",
    ]
    assert rows[0][3].strip() == "1.00x the minimal loop"
    assert all(r[3].strip().endswith("x the minimal loop") and float(r[3].split("x")[0]) > 0 for r in rows)
    assert rows[2][4].strip().endswith("x") and not rows[1][4].strip()  # the KD arm's cost vs trainer ce


@pytest.mark.parametrize("channels", [1, 3])
def test_the_minimal_loop_feeds_torch_default_layout(channels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images decoded as NHWC and permuted (as torchvision's and folder datasets are) are read by convolutions
    as channels_last; the baseline must see what a DataLoader gives (NCHW-contiguous strides), or it gets the
    tuned layout for free."""
    study = load_study(QUICKSTART, {"train.samples_per_epoch": 64})
    data = study_data(study, torch.device("cpu"))
    nhwc = data.train.x.permute(0, 2, 3, 1).repeat(1, 1, 1, channels).contiguous()
    mean, std = data.train.mean.repeat(channels), data.train.std.repeat(channels)
    data = replace(data, train=replace(data.train, x=nhwc.permute(0, 3, 1, 2), mean=mean, std=std))
    strides: list[tuple[int, ...]] = []
    build = nas_kd.bench.trainer.build_model

    def recording_model(arch, input_shape, num_classes):
        model = build(arch, data.train.x.shape[1:], num_classes)
        model.register_forward_pre_hook(lambda module, args: strides.append(args[0].stride()))
        return model

    monkeypatch.setattr(nas_kd.bench.trainer, "build_model", recording_model)
    minimal_loop(study, data, study.student.genome(), seed=0)()
    _, c, h, w = data.train.x.shape
    assert data.train.x.stride() != (c * h * w, h * w, w, 1)  # the stored layout is the other one
    assert strides and set(strides) == {(c * h * w, h * w, w, 1)}
