"""benchmarks/onnx_bench.py compares equal functions: onnxruntime on the exported drop-in
computes what the eager torch.nn baseline computes; its repeated calls are counted."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the [export] extra is not installed")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def onnx_bench() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))  # it imports bench.py's timing helpers
    try:
        return importlib.import_module("onnx_bench")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_onnxruntime_and_the_baseline_compute_the_same(onnx_bench, kind, tmp_path) -> None:
    reference, ours, path = onnx_bench.build(kind, (4, 6, 2), tmp_path)
    run = onnx_bench.session(path, 1)
    x = torch.randn(9, 3, 4)
    got = run.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = reference(x)[0]
    torch.testing.assert_close(torch.from_numpy(got[0]), want, rtol=0, atol=1e-5)
    jobs = onnx_bench.jobs_for(reference, ours, run, x)
    assert sorted(jobs) == ["nn", "ort", "rk"]


def test_batched_repeats_each_call_k_times(onnx_bench) -> None:
    calls = {"fast": 0}

    def fast() -> None:
        calls["fast"] += 1

    (k, job) = onnx_bench.batched({"fast": fast}, 5.0)["fast"]
    assert k > 1 and calls["fast"] == 2  # warmed and timed once
    job()
    assert calls["fast"] == 2 + k


@pytest.mark.parametrize("kind", ["shared", "cross_layer"])
def test_a_stack_kind_is_compared_with_the_eager_stack(onnx_bench, kind, tmp_path) -> None:
    reference, ours, path = onnx_bench.build(kind, (4, 6, 2), tmp_path)
    assert reference is None and isinstance(ours, torch.nn.Module)
    run = onnx_bench.session(path, 1)
    x = torch.randn(9, 3, 4)
    got = run.run(None, {"x": x.numpy()})  # a Stack's forward names its input x
    with torch.no_grad():
        want = ours(x)[0]
    torch.testing.assert_close(torch.from_numpy(got[0]), want, rtol=0, atol=1e-5)
    assert sorted(onnx_bench.jobs_for(reference, ours, run, x)) == ["ort", "rk"]
