"""Every family builds from every shipped space; counts agree with hand formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nas_kd.arch import arch_hash, build_model, count_flops, count_params, measure
from nas_kd.space import load_space

SPACES = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("space_file", SPACES, ids=lambda p: p.stem)
@pytest.mark.parametrize("input_shape", [(1, 8, 8), (3, 32, 32)])
def test_sampled_architectures_build_forward_and_backward(space_file: Path, input_shape: tuple[int, int, int]) -> None:
    space = load_space(str(space_file))
    rng = np.random.default_rng(0)
    for _ in range(4):
        arch = space.sample(rng)
        model = build_model(arch, input_shape, 10)
        x = torch.randn(2, *input_shape)
        logits, features, embedding = model.forward_features(x)
        assert logits.shape == (2, 10)
        assert len(features) == len(arch["stages"])
        assert [f.shape[1] for f in features] == [s["channels"] for s in arch["stages"]]
        assert embedding.shape == (2, arch["stages"][-1]["channels"])
        logits.sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def bn(c: int) -> int:
    return 2 * c


def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def test_cnn_parameter_count_matches_formula() -> None:
    arch = {
        "family": "cnn",
        "stem": 8,
        "stages": [{"channels": 16, "depth": 2, "kernel": 5}, {"channels": 32, "depth": 1}],
    }
    expected = (
        conv(1, 8, 3) + bn(8)
        + conv(8, 16, 5) + bn(16) + conv(16, 16, 5) + bn(16)
        + conv(16, 32, 3) + bn(32)
        + 32 * 10 + 10
    )  # fmt: skip
    assert count_params(build_model(arch, (1, 28, 28), 10)) == expected


def test_resnet_parameter_count_matches_formula() -> None:
    arch = {"family": "resnet", "stem": 16, "stages": [{"channels": 16, "depth": 2}, {"channels": 32, "depth": 1}]}

    def block(cin: int, cout: int) -> int:
        shortcut = conv(cin, cout, 1) + bn(cout) if cin != cout else 0
        return conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout) + shortcut

    # the second stage's first block is strided, so it has a shortcut even though 16 -> 32 already needs one
    expected = conv(3, 16, 3) + bn(16) + block(16, 16) + block(16, 16) + block(16, 32) + 32 * 100 + 100
    assert count_params(build_model(arch, (3, 32, 32), 100)) == expected


def test_flops_of_a_known_network() -> None:
    arch = {"family": "cnn", "stem": 4, "stages": [{"channels": 4, "depth": 1, "kernel": 3}]}
    model = build_model(arch, (1, 8, 8), 10)
    # two 3x3 convs at 8x8 (1->4, 4->4) and the linear head; FLOPs = 2 x multiply-adds
    expected = 2 * (8 * 8 * conv(1, 4, 3) + 8 * 8 * conv(4, 4, 3) + 4 * 10)
    assert count_flops(model, (1, 8, 8)) == expected


def test_measure_reports_bytes_and_latency() -> None:
    model = build_model({"family": "resnet", "stem": 8, "stages": [{"channels": 8, "depth": 1}]}, (1, 8, 8), 10)
    cost = measure(model, (1, 8, 8), latency=True)
    assert cost.model_bytes >= 4 * cost.params
    assert cost.latency_ms is not None and cost.latency_ms > 0
    assert model.training  # measuring leaves the mode as it was


def test_same_genome_same_network() -> None:
    arch = {
        "family": "mobilenet",
        "stem": 8,
        "stages": [{"channels": 16, "depth": 2, "expand": 4, "kernel": 5, "se": True}],
    }
    torch.manual_seed(0)
    a = build_model(arch, (1, 8, 8), 10)
    torch.manual_seed(0)
    b = build_model(dict(reversed(list(arch.items()))), (1, 8, 8), 10)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert arch_hash(arch) == arch_hash(dict(reversed(list(arch.items()))))


def test_torchvision_teacher_is_adapted_to_small_images() -> None:
    model = build_model({"torchvision": "resnet18"}, (1, 8, 8), 10)
    logits, features, _ = model.forward_features(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 10) and len(features) == 4
    assert features[0].shape[-1] == 8  # 3x3 stride-1 stem and no max-pool keep the resolution
