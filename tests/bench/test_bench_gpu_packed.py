"""The torch-only packed-student benchmark (``nas_kd/bench/packed.py``, ``scripts/gpu-check.sh``): it must load
without Ray, Optuna, plotly, pydantic or torchvision, and run end to end on CPU in its tiny configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PACKED = ROOT / "nas_kd" / "bench" / "packed.py"
BLOCKED = ("ray", "optuna", "plotly", "pydantic", "torchvision", "pandas", "sklearn", "nas_kd")


@pytest.mark.slow  # a fresh interpreter: seconds
def test_packed_benchmark_needs_torch_only() -> None:
    # A module set to None in sys.modules cannot be imported: any import of a blocked package fails loudly.
    code = f"""
import importlib.util, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None
spec = importlib.util.spec_from_file_location("packed", {str(PACKED)!r})
module = sys.modules["packed"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
model = module.student(module.Setup(device="cpu"))
print(sum(p.numel() for p in model.parameters()))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 90_000 <= int(done.stdout.split()[-1]) <= 120_000  # the ~100k-parameter default student


def test_one_step_learns_and_uses_uint8_data() -> None:
    sys.path.insert(0, str(PACKED.parent))
    try:
        import packed
    finally:
        sys.path.remove(str(PACKED.parent))
    setup = packed.Setup(device="cpu", width=8, batch=8, pool=32)
    step = packed.train_step_fn(setup, "bf16-cl", seed=0)
    assert step() == 8
    with pytest.raises(ValueError, match="needs CUDA"):
        packed.train_step_fn(setup, "bf16-cl-graph", seed=0)


@pytest.mark.slow  # a fresh interpreter: seconds
def test_unknown_mode_is_one_line_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, str(PACKED), "--device", "cpu", "--modes", "fp16"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "packed: error: --modes: unknown ['fp16']; known: fp32, bf16-cl, bf16-cl-graph"


@pytest.mark.slow
def test_gpu_check_script_runs_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--tiny", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ")][1:]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [("fp32", "2"), ("bf16-cl", "2")]
    assert all(float(r[2].replace(",", "")) > 0 for r in rows)  # aggregate images/s were measured
    assert f"torch {torch.__version__}" in out.read_text()
