"""benchmarks/bench.py: it runs, its JSON holds ratios to torch.nn, bad flags fail clearly.

Timing figures are never asserted (speed lives in the benchmark's output, not in tests);
only the structure of a tiny run and the relations that hold by construction.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The script as a module (``benchmarks/`` on the path just for the import)."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        return importlib.import_module("bench")
    finally:
        sys.path.remove(str(BENCH.parent))


def test_a_tiny_run_prints_ratios_as_json(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    try:
        args = ["--sizes", "alpha", "--repeat", "1", "--no-memory", "--no-packed", "--json"]
        assert bench.main(["--threads", "1", *args]) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(capsys.readouterr().out)
    assert doc["device"] == "cpu" and [s["rows"][0]["size"] for s in doc["sizes"]] == ["alpha"]
    rows = {(r["implementation"], r["routing"], r["executor"]): r for r in doc["sizes"][0]["rows"]}
    assert rows[("nn.GRU", "-", "torch")]["train_ratio"] == 1.0
    assert rows[("nn.LSTM", "-", "torch")]["train_ratio"] == 1.0
    for (_, routing, _), r in rows.items():
        assert r["train_ms"] > 0 and r["sample_b1_ms"] > 0 and r["sample_b64_ms"] > 0
        base = rows[(r["baseline"], "-", "torch")]
        assert r["train_ratio"] == pytest.approx(r["train_ms"] / base["train_ms"])
        if routing == "cross_layer":
            assert r["flop_ratio"] == 1.0  # one layer: nothing to mix
    assert ("Stack GRU", "cross_layer", "handbuilt") in rows


def test_cross_layer_flop_ratio_counts_the_mixing(bench: ModuleType) -> None:
    """Two layers of width 4 over input 2, GRU: base 3·4·(2+4) + 3·4·(4+4) = 168 MACs;
    mixing per layer: gates (L-1)·(I_k + L·H) and feedback (L-1)·H·H = 10+16, 12+16."""
    assert bench.cross_layer_flop_ratio(2, 4, 2, gates=3) == pytest.approx((168 + 54) / 168)


def test_cuda_without_a_gpu_is_a_clear_usage_error(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as err:
        bench.main(["--device", "cuda"])
    assert err.value.code == 2
    assert "--device: expected cpu" in capsys.readouterr().err
