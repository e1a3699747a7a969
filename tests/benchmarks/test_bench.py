"""benchmarks/bench.py: it runs at torch's default thread count and at one thread, its JSON
holds ratios to torch.nn and the goals' verdicts at each, bad flags fail clearly.

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


TINY = ["--sizes", "alpha", "--repeat", "1", "--no-memory", "--no-packed"]


def check_rows(rows: list[dict], threads: int) -> None:
    """What holds by construction in one thread count's rows of a tiny α run."""
    by_id = {(r["implementation"], r["routing"], r["executor"]): r for r in rows}
    assert by_id[("nn.GRU", "-", "torch")]["train_ratio"] == 1.0
    assert by_id[("nn.LSTM", "-", "torch")]["train_ratio"] == 1.0
    for (_, routing, _), r in by_id.items():
        assert r["threads"] == threads
        assert r["train_ms"] > 0 and r["sample_b1_ms"] > 0 and r["sample_b64_ms"] > 0
        base = by_id[(r["baseline"], "-", "torch")]
        assert r["train_ratio"] == pytest.approx(r["train_ms"] / base["train_ms"])
        if routing == "cross_layer":
            assert r["flop_ratio"] == 1.0  # one layer: nothing to mix
        for measure, g in r.get("goals", {}).items():
            assert g["met"] == (round(r[measure], 2) <= round(g["goal"], 2))
            if g["flop_goal"]:
                assert g["goal"] == r["flop_ratio"]
    assert ("Stack GRU", "cross_layer", "handbuilt") in by_id
    assert "goals" not in by_id[("nn.GRU", "-", "torch")]  # torch.nn is the reference
    assert by_id[("rk.GRU", "independent", "drop-in")]["goals"]["train_ratio"]["goal"] == 1.05


def test_a_tiny_run_prints_ratios_as_json(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--threads", "1", *TINY, "--json"]) == 0
        assert torch.get_num_threads() == threads  # the script leaves torch as it was
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(capsys.readouterr().out)
    assert doc["device"] == "cpu" and doc["thread_counts"] == [1]
    assert list(doc["by_threads"]) == ["1"]  # --threads 1: that count alone
    run = doc["by_threads"]["1"]
    assert run["threads"] == 1
    assert [s["rows"][0]["size"] for s in run["sizes"]] == ["alpha"]
    check_rows(run["sizes"][0]["rows"], 1)


def test_a_plain_run_measures_at_torchs_default_and_at_one_thread(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --threads every row is measured at torch's thread count (here set to 2
    before the run, so that it differs from 1) and at one thread, each with its goals."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert bench.main([*TINY, "--json"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(capsys.readouterr().out)
    assert doc["default_threads"] == 2 and doc["thread_counts"] == [2, 1]
    assert list(doc["by_threads"]) == ["2", "1"]
    assert doc["by_threads"]["2"]["default"] and not doc["by_threads"]["1"]["default"]
    ids = []
    for key, n in (("2", 2), ("1", 1)):
        (size,) = doc["by_threads"][key]["sizes"]
        check_rows(size["rows"], n)
        ids.append([(r["implementation"], r["routing"], r["executor"]) for r in size["rows"]])
    assert ids[0] == ids[1]  # every row at both thread counts
    goals = doc["goals"]
    assert goals and all(set(g["by_threads"]) == {"2", "1"} for g in goals)
    for key in ("2", "1"):
        met = sum(g["by_threads"][key]["met"] for g in goals)
        assert doc["goals_met"][key] == {"met": met, "of": len(goals)}


def test_the_tables_show_both_thread_counts_and_the_goals(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert bench.main(TINY) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "\n## 2 threads (torch's default)\n" in out and "\n## 1 thread\n" in out
    assert "### alpha (E=64, H=128, L=1), 2 threads (torch's default)" in out
    assert "### alpha (E=64, H=128, L=1), 1 thread" in out
    assert "| measure | goal | 2 threads (torch's default) | 1 thread |" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("| alpha | rk.GRU | independent"))
    assert "| train | ≤ 1.05 |" in line and line.count(" ok") + line.count(" MISS") == 2
    assert "Goals met: 2 threads (torch's default) " in out


def test_threads_takes_counts_and_default(bench: ModuleType) -> None:
    assert bench.parse_threads("default,1", 4) == [4, 1]
    assert bench.parse_threads("default,1", 1) == [1]  # torch's default is one thread
    assert bench.parse_threads("1, 2,default", 2) == [1, 2]
    for bad in ("0", "two", "", "1,,2", "-1"):
        with pytest.raises(ValueError):
            bench.parse_threads(bad, 2)


def test_bad_threads_is_a_clear_usage_error(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as err:
        bench.main(["--threads", "0"])
    assert err.value.code == 2
    assert "--threads: expected positive integers or 'default'" in capsys.readouterr().err


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


def test_the_backbones_rows_compare_new_cells_with_torch_and_regularisers_with_the_bare_cell(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--threads", "1", "--rows", "backbones", *TINY, "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(capsys.readouterr().out)
    rows = doc["by_threads"]["1"]["sizes"][0]["rows"]
    by_name = {r["implementation"]: r for r in rows}
    goals = {
        "Stack MGU": ("nn.GRU", 0.85),
        "Stack CoupledLSTM": ("nn.LSTM", 1.0),
        "Stack IndRNN": ("nn.RNN (relu)", 1.0),
        "Stack LayerNormGRU": ("nn.GRU", 1.4),
        "Stack LayerNormLSTM": ("nn.LSTM", 1.5),
    }
    for cell in ("CoupledLSTM", "LSTM"):
        for wrap, goal in (("Zoneout", 1.2), ("RecurrentDropout", 1.2), ("WeightDrop", 1.1)):
            goals[f"{wrap} {cell}"] = (f"Stack {cell}", goal)
    for name, (base, goal) in goals.items():
        r = by_name[name]
        assert r["baseline"] == base
        assert r["train_ratio"] == pytest.approx(r["train_ms"] / by_name[base]["train_ms"])
        for b in (1, 64):
            want = r[f"sample_b{b}_ms"] / by_name[base][f"sample_b{b}_ms"]
            assert r[f"sample_b{b}_ratio"] == pytest.approx(want)
        assert set(r["goals"]) == {"train_ratio"} and r["goals"]["train_ratio"]["goal"] == goal
    assert "Stack GRU" not in by_name  # the speed issue's rows are not in this set
    assert {"nn.GRU", "nn.LSTM", "nn.RNN (relu)", "Stack LSTM"} <= set(by_name)


def test_the_linear_rows_compare_each_linear_cell_as_the_issue_asks(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    tiny = ["--rows", "linear", "--threads", "1", "--repeat", "1", "--max-steps", "16"]
    try:
        assert bench.main([*tiny, "--no-memory", "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(capsys.readouterr().out)
    rows = {r["implementation"]: r for r in doc["rows"]}
    assert set(rows) == {
        "nn.GRU",
        "Stack MinGRU",
        "Stack MinGRU (log)",
        "Stack MinLSTM",
        "Stack LRU",
    }
    assert {r["T"] for r in doc["rows"]} == {16} and rows["nn.GRU"]["train_ratio"] == 1.0
    for r in rows.values():
        assert r["train_ratio"] == pytest.approx(r["train_ms"] / rows["nn.GRU"]["train_ms"])
    seen = {(g["row"], g["measure"], g["over"]): g for g in doc["goals"]}
    want = {
        ("Stack MinGRU", "train", "nn.GRU"): 0.35,
        ("Stack MinGRU", "train", "Stack MinGRU (log)"): 0.5,
        ("Stack MinLSTM", "train", "Stack MinGRU"): 1.2,
        ("Stack MinGRU", "sample", "nn.GRU"): 0.6,
    }
    for key, bound in want.items():
        g = seen[key]
        assert g["goal"] == bound and g["met"] == (round(g["ratio"], 2) <= bound)
    assert ("Stack LRU", "train", "nn.GRU") not in seen  # its goal holds from T = 128
    assert not any(g["measure"] == "peak" for g in doc["goals"])  # --no-memory
    stack = bench.linear_models()["Stack MinGRU (log)"]()
    assert [c.scan_method for c in stack.cells] == ["log", "log"]


def test_compare_marks_only_rows_worse_beyond_the_noise() -> None:
    """benchmarks/compare.py: before → after per row; 'worse' only past --noise."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "compare", Path(__file__).parents[2] / "benchmarks" / "compare.py"
    )
    assert spec is not None and spec.loader is not None
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)

    def result(ratio: float) -> dict:
        row = {"size": "beta", "implementation": "Stack GRU", "routing": "shared"}
        row.update(executor="auto", train_ratio=ratio)
        return {"default_threads": 2, "by_threads": {"2": {"sizes": [{"rows": [row]}]}}}

    report, worse = compare.compare(result(1.00), result(1.04), 0.05)
    assert worse == 0 and "1.00 → 1.04 |" in report
    report, worse = compare.compare(result(1.00), result(1.10), 0.05)
    assert worse == 1 and "1.00 → 1.10 **worse**" in report


def test_ab_imports_an_earlier_commit_beside_this_checkout() -> None:
    """benchmarks/ab.py: the base revision's package, renamed rkbase, imports on its own
    (its imports rewritten) and builds the same model from the same seed."""
    import importlib.util
    import shutil

    if shutil.which("git") is None or not (Path(__file__).parents[2] / ".git").exists():
        pytest.skip("needs git and a git checkout")
    spec = importlib.util.spec_from_file_location(
        "ab", Path(__file__).parents[2] / "benchmarks" / "ab.py"
    )
    assert spec is not None and spec.loader is not None
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    try:
        base = ab.base_package("HEAD")
        assert base.__name__ == "rkbase" and base.Stack is not ab.new_rk.Stack
        a, b = (ab.build(rk, "gru", "shared", "auto", 4, 5, 2) for rk in (base, ab.new_rk))
        x = torch.randn(3, 2, 4)
        torch.testing.assert_close(a(x)[0], b(x)[0], rtol=0, atol=1e-6)
        # the copy's torch.library ops do not replace this package's (their namespace is
        # the copy's name): a compiled stack still runs on this package's kernel ops
        torch._dynamo.reset()
        compiled = torch.compile(b, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x)[0], b(x)[0], rtol=0, atol=1e-6)
    finally:
        torch._dynamo.reset()
        for name in [m for m in sys.modules if m == "rkbase" or m.startswith("rkbase.")]:
            del sys.modules[name]


def test_state_bench_baseline_is_the_segments_run_alone() -> None:
    """benchmarks/state_bench.py's user baseline (split at resets, pack, one nn.GRU call,
    scatter back) computes what recurrentkit's resets compute: each segment from zeros."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "state_bench", Path(__file__).parents[2] / "benchmarks" / "state_bench.py"
    )
    assert spec is not None and spec.loader is not None
    sb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sb)
    torch.manual_seed(0)
    gru = torch.nn.GRU(4, 5, 2).double()
    x = torch.randn(sb.T, sb.B, 4, dtype=torch.float64)
    mask = sb.resets_mask()
    import recurrentkit as rk

    ours = rk.interop.stack_from_torch(gru)
    torch.testing.assert_close(
        sb.split_and_pad(gru, x, mask), ours(x, resets=mask)[0], rtol=0, atol=1e-10
    )
