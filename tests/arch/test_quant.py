"""Quantized students: the genome's quant block, fake quantization, packed bytes, validation, round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from nas_kd.arch import build_model, count_params, model_bytes
from nas_kd.arch.quant import export_onnx, onnx_session, quantized_layers
from nas_kd.arch.quant_spec import bits_of, layer_bits, set_quantizers
from nas_kd.checkpoint import load_student, save_model_dir
from nas_kd.cli import main
from nas_kd.config import StudyError, study_from_dict
from nas_kd.search.trainable import constraint_violations
from nas_kd.space import SearchSpace, load_space

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (1, 8, 8)
STAGES = {
    "cnn": [{"channels": 16, "depth": 1}, {"channels": 32, "depth": 1}],
    "resnet": [{"channels": 16, "depth": 1}, {"channels": 32, "depth": 1}],
    "mobilenet": [{"channels": 16, "depth": 1, "expand": 2, "se": True}, {"channels": 32, "depth": 1, "expand": 2}],
}


def genome(family: str = "cnn", **quant: Any) -> dict[str, Any]:
    arch: dict[str, Any] = {"family": family, "stem": 16, "stages": STAGES[family]}
    return {**arch, "quant": quant} if quant else arch


@pytest.mark.parametrize("family", list(STAGES))
@pytest.mark.parametrize("bits", [2, 4])
def test_weights_take_at_most_2_to_the_bits_values_per_output_channel(family: str, bits: int) -> None:
    torch.manual_seed(0)
    model = build_model(genome(family, weight_bits=bits), SHAPE, 10)
    layers = quantized_layers(model)
    assert {name for name, _, _ in layers} >= {"stem.0", "head"}  # every weighted layer, first and last included
    for name, layer, width in layers:
        expected = 8 if name in ("stem.0", "head") else bits  # first and last layer at 8 bits by default
        assert width == expected, name
        weight = layer.quant_weight().value.detach()
        for channel in weight.flatten(1):
            assert len(torch.unique(channel)) <= 2**width, name
        assert not torch.equal(weight, layer.weight.detach()), name  # it really rounds
    x = torch.randn(64, *SHAPE)
    model(x)  # a training-mode forward collects activation statistics
    seen: dict[str, torch.Tensor] = {}
    layer = dict((n, m) for n, m, _ in layers)["stages.1.0.0" if family == "cnn" else "head"]
    layer.input_quant.register_forward_hook(lambda _m, _i, out: seen.setdefault("input", out))
    model.eval()(x)
    act_bits = bits if family == "cnn" else 8
    assert 1 < len(torch.unique(seen["input"])) <= 2**act_bits


def test_bit_widths_per_layer_follow_the_genome() -> None:
    quant = {"weight_bits": 4, "act_bits": 8, "stages": [{}, {"weight_bits": 2}]}
    assert layer_bits(quant, "first") == (8, 8)
    assert layer_bits(quant, "stage", 0) == (4, 8)
    assert layer_bits(quant, "stage", 1) == (2, 2)  # a stage's act bits default to its own weight bits
    assert layer_bits({"weight_bits": 4, "first_last_bits": 4}, "last") == (4, 4)
    assert bits_of(genome(weight_bits=4, act_bits=8)) == {"weight_bits": 4, "act_bits": 8}
    assert bits_of({**genome(), "quant": quant}) == {"weight_bits": "4/2", "act_bits": "8/2"}
    assert bits_of(genome()) == {"weight_bits": 32, "act_bits": 32}
    assert quantized_layers(build_model(genome(weight_bits=32), SHAPE, 10)) == []  # 32 bits: plain torch layers
    edges = quantized_layers(build_model(genome(weight_bits=32, first_last_bits=8), SHAPE, 10))
    assert {(n, b) for n, _, b in edges} == {("stem.0", 8), ("head", 8)}


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(4 * m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


@pytest.mark.parametrize("family", list(STAGES))
def test_model_bytes_count_4_bit_weights_as_an_eighth_plus_scales(family: str) -> None:
    fp = build_model(genome(family), SHAPE, 10)
    q4 = build_model(genome(family, weight_bits=4, first_last_bits=4), SHAPE, 10)
    assert count_params(q4) == count_params(fp) + len(quantized_layers(q4))  # one learned input scale per layer
    weights = weight_bytes(fp)
    scales = sum(4 * layer.weight.shape[0] for _, layer, _ in quantized_layers(q4))
    saved = model_bytes(fp) - model_bytes(q4)
    # 4-bit weights take 1/8 of their fp32 bytes; each output channel adds a 4-byte scale, each layer an input
    # scale; rounding each layer up to whole bytes adds at most one byte per layer
    overhead = scales + 4 * len(quantized_layers(q4))
    assert weights * 7 / 8 - overhead <= saved <= weights * 7 / 8 - scales + len(quantized_layers(q4))
    sizes = [model_bytes(build_model(genome(family, weight_bits=b), SHAPE, 10)) for b in (2, 4, 8)]
    assert sizes == sorted(sizes) and sizes[-1] < model_bytes(fp)


def test_max_model_bytes_rejects_the_fp32_student_and_keeps_the_4_bit_one() -> None:
    fp, q4 = (build_model(genome(**q), SHAPE, 10) for q in ({}, {"weight_bits": 4}))
    limit = (model_bytes(fp) + model_bytes(q4)) / 2
    study = study_from_dict({"name": "q", "search": {"constraints": {"max_model_bytes": limit}}})
    assert constraint_violations(study, {"model_bytes": model_bytes(q4)}) == []
    assert constraint_violations(study, {"model_bytes": model_bytes(fp)})[0].startswith("model_bytes")


@pytest.mark.parametrize(
    ("quant", "field"),
    [
        ({"weight_bits": 16}, "student.arch.quant.weight_bits"),
        ({"weight_bits": 4, "act_bits": 1}, "student.arch.quant.act_bits"),
        ({"act_bits": 4}, "student.arch.quant.weight_bits"),
        ({"weight_bits": 32, "act_bits": 4}, "student.arch.quant.act_bits"),
        ({"weight_bits": 4, "stages": [{"weight_bits": 5.5}]}, "student.arch.quant.stages.0.weight_bits"),
        ({"weight_bits": 4, "group": 8}, "student.arch.quant.group"),
    ],
)
def test_bad_quant_blocks_are_rejected_at_validation(quant: dict, field: str) -> None:
    with pytest.raises(StudyError) as error:
        study_from_dict({"name": "q", "student": {"arch": {**genome(), "quant": quant}}})
    assert error.value.field == field


def test_quantizing_a_torchvision_model_is_rejected() -> None:
    with pytest.raises(StudyError) as error:
        study_from_dict({"name": "q", "student": {"arch": {"torchvision": "resnet18", "quant": {"weight_bits": 8}}}})
    assert error.value.field == "student.arch.quant"


def test_validate_prints_one_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "study.yaml"
    space = "{family: cnn, stages: 2, stage: {channels: 8, depth: 1}, quant: {weight_bits: {choices: [4, 12]}}}"
    study.write_text(f"name: q\nsearch:\n  space: {space}\n")
    assert main(["validate", str(study)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"nas-kd: error: {study}: search.space.quant.weight_bits: unsupported bit width 12; brevitas backend: 2-8 or 32"
    ]


def test_space_draws_bits_with_the_architecture() -> None:
    space = load_space(str(ROOT / "search_spaces" / "quant_cnn.yaml"))
    assert isinstance(space, SearchSpace)
    rng = np.random.default_rng(0)
    drawn = [space.sample(rng) for _ in range(40)]
    assert {a["quant"]["weight_bits"] for a in drawn} == {2, 4, 8, 32}
    assert all(a["quant"]["act_bits"] == a["quant"]["weight_bits"] for a in drawn)
    assert all(space.contains(a) for a in drawn)
    assert not space.contains({**drawn[0], "quant": {"weight_bits": 3, "act_bits": 3}})
    assert not space.contains({k: v for k, v in drawn[0].items() if k != "quant"})

    mixed = SearchSpace.from_dict(
        {
            "family": "resnet",
            "stages": 3,
            "stage": {"channels": 8, "depth": 1},
            "quant": {"weight_bits": {"choices": [4, 32]}, "act_bits": {"choices": [4, 8]}, "per_stage": True},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        arch = mixed.suggest(trial)
        assert mixed.contains(arch)
        assert len(arch["quant"]["stages"]) == 3
        if arch["quant"]["weight_bits"] == 32:  # conditional: no activation bits drawn for fp32 weights
            assert "quant.act_bits" not in trial.params and arch["quant"]["act_bits"] == 32
        build_model(arch, SHAPE, 10)


def test_saved_quantized_student_loads_back_and_exports_to_int8_onnx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    arch = genome("resnet", weight_bits=4)
    model = build_model(arch, SHAPE, 10)
    x = torch.randn(32, *SHAPE)
    model(x)  # training-mode forward: activation statistics in the state
    model.eval()
    save_model_dir(tmp_path / "s", model, arch, SHAPE, 10)
    loaded = load_student(tmp_path / "s")
    assert torch.equal(loaded(x), model(x))
    path = export_onnx(loaded, SHAPE, tmp_path / "s.onnx")
    import onnx

    graph = onnx.load(str(path)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(math.prod(t.dims) for t in int8) >= sum(layer.weight.numel() for _, layer, _ in quantized_layers(loaded))
    logits = onnx_session(path).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(logits, model(x).detach().numpy(), atol=1e-4)


@pytest.mark.slow
def test_4_bit_student_distilled_on_digits_reaches_95_percent_and_its_onnx_export_agrees(tmp_path: Path) -> None:
    """QAT from scratch with Hinton KD from a small fp32 teacher; 10 epochs (measured: ~98-99%)."""
    from nas_kd.arch.quant import onnx_accuracy
    from nas_kd.deploy import export_student
    from nas_kd.pipeline import ready_teachers, study_data, train_student

    raw = {
        "name": "q4",
        "runs_dir": str(tmp_path),
        "data": {"dataset": "digits", "val_fraction": 0.15},
        "train": {"epochs": 10, "batch_size": 64, "lr": 0.1},
        "teacher": {"arch": genome("resnet"), "train": {"epochs": 10, "batch_size": 64, "lr": 0.1}},
    }
    study = study_from_dict(raw)
    torch.set_num_threads(1)
    data = study_data(study, torch.device("cpu"))
    teachers = [c.as_teacher("cpu") for c in ready_teachers(study, data, log=lambda message: None)]
    arch = genome("cnn", weight_bits=4, act_bits=4)
    result = train_student(study, data, teachers, arch, "offline", {"temperature": 4.0, "alpha": 0.9}, seed=0)
    assert result.test_accuracy >= 0.95
    save_model_dir(tmp_path / "s", result.student, arch, SHAPE, 10, {"test_accuracy": result.test_accuracy})
    exported = export_student(tmp_path / "s", tmp_path / "out", onnx=True)  # raises if onnxruntime disagrees
    assert exported.onnx_max_abs_diff is not None
    everything = data.test.batch(torch.arange(len(data.test)))
    assert abs(onnx_accuracy(tmp_path / "out" / "model.onnx", everything, data.test.y) - result.test_accuracy) <= 0.005


@pytest.mark.slow
def test_the_shipped_quantized_study_searches_bit_widths_and_exports_its_front(tmp_path: Path) -> None:
    """Through the CLI: `nas-kd search` on studies/quant_digits.yaml (cut short), then `nas-kd export --onnx` of
    every Pareto student, each loadable again."""
    study = Path(__file__).resolve().parents[2] / "studies" / "quant_digits.yaml"
    cut = {"search.trials": 4, "search.max_concurrent": 2, "search.sampler": "random", "train.epochs": 2}
    cut["teacher.train.epochs"] = 3
    cut["runs_dir"] = tmp_path  # a field named like one of run_study's options (it raised TypeError once)
    settings = [f"--set={k}={v}" for k, v in cut.items()]
    assert main(["search", str(study), "--no-dashboard", *settings]) == 0
    run_dir = tmp_path / "quant_digits"
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "COMPLETE").all()
    assert trials["weight_bits"].nunique() >= 2 and (trials["model_bytes"] <= 60000).all()  # bits drawn, bytes kept
    members = json.loads((run_dir / "pareto.json").read_text())["members"]
    assert members
    for member in members:
        out = tmp_path / "export" / member["trial_id"]
        assert main(["export", str(run_dir), member["trial_id"], "--out", str(out), "--onnx"]) == 0
        assert (out / "model.onnx").stat().st_size > 0
        assert load_student(out)(torch.zeros(1, *SHAPE)).shape == (1, 10)


def _layer_input_values(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Distinct values entering the second stage's convolution (after its input quantizer)."""
    layer = dict(model.named_modules())["stages.1.0.0"]
    seen: list[torch.Tensor] = []
    handle = layer.input_quant.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    value = seen[0].value if hasattr(seen[0], "value") else seen[0]
    return len(torch.unique(value))


def test_set_quantizers_switches_a_4_bit_network_to_full_precision_and_back() -> None:
    torch.manual_seed(0)
    model = build_model(genome("cnn", weight_bits=4, act_bits=4), SHAPE, 10)
    x = torch.randn(64, *SHAPE)
    assert set_quantizers(model, enabled=False) > 0
    assert _layer_input_values(model, x) > 2**4  # full precision: the inputs are not rounded
    assert set_quantizers(model, enabled=True) > 0
    assert _layer_input_values(model, x) <= 2**4
    assert set_quantizers(build_model(genome("cnn"), SHAPE, 10), enabled=False) == 0  # fp32: nothing to switch


def test_warm_start_trains_full_precision_first_then_quantized_from_the_epoch_alone() -> None:
    from nas_kd.pipeline import study_data
    from nas_kd.train import make_trainer

    study = study_from_dict(
        {"name": "q", "data": {"dataset": "digits"}, "train": {"epochs": 3, "quant_warmup_epochs": 2}}
    )
    data = study_data(study, torch.device("cpu"))
    arch = genome("cnn", weight_bits=4, act_bits=4)
    trainer = make_trainer(arch, data, study.train, 0, augment=False)
    proxies = [m for m in trainer.distiller.student.modules() if hasattr(m, "disable_quant")]
    disabled = []
    for _ in range(3):
        trainer.run_epoch()
        disabled.append({m.disable_quant for m in proxies})
    assert disabled == [{True}, {True}, {False}]  # epochs 1-2 fp32, epoch 3 quantization-aware
    resumed = make_trainer(arch, data, study.train, 0, augment=False)  # a fresh process resuming at epoch 2
    state = trainer.state_dict()
    resumed.load_state_dict({**state, "epoch": 2})
    resumed.run_epoch()
    assert {m.disable_quant for m in resumed.distiller.student.modules() if hasattr(m, "disable_quant")} == {False}


def test_a_warm_up_as_long_as_the_training_is_rejected() -> None:
    with pytest.raises(StudyError) as error:
        study_from_dict({"name": "q", "train": {"epochs": 3, "quant_warmup_epochs": 3}})
    assert error.value.field == "train.quant_warmup_epochs"
