"""``recurrentkit.export.onnx``: the drop-ins become ONNX's RNN/GRU/LSTM operators, and
onnxruntime's outputs and final states equal eager (float32, 1e-5) at other lengths and
batch sizes than the example's."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

import recurrentkit as rk
from recurrentkit.bidirectional import Bidirectional

onnx = pytest.importorskip("onnx", reason="the [export] extra (onnx) is not installed")
pytest.importorskip("onnxscript", reason="the [export] extra (onnxscript) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the [export] extra (onnxruntime) is not installed")

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported"),
]

I, H = 3, 5
ONNX_OP = {"RNN_TANH": "RNN", "RNN_RELU": "RNN", "GRU": "GRU", "LSTM": "LSTM"}  # by torch mode
# (num_layers, bidirectional, batch_first, with h0): each flag both ways over the set
SHAPES = [
    (1, False, False, False),
    (2, True, True, True),
    (2, False, False, True),
    (1, True, True, False),
]
CASES = [(mode, *shape) for mode in ONNX_OP for shape in SHAPES]


def case_id(case: tuple[Any, ...]) -> str:
    mode, L, bi, bf, with_h0 = case
    return f"{mode}-L{L}{'-bi' if bi else ''}{'-bf' if bf else ''}{'-h0' if with_h0 else ''}"


def make(mode: str, **kw: Any) -> nn.Module:
    torch.manual_seed(0)
    if mode.startswith("RNN"):
        return rk.RNN(I, H, nonlinearity=mode[4:].lower(), **kw)  # RNN_TANH -> "tanh"
    return getattr(rk, mode)(I, H, **kw)


def inputs(module: Any, T: int, B: int, with_h0: bool) -> tuple[Any, ...]:
    x = torch.randn((B, T, I) if module.batch_first else (T, B, I))
    if not with_h0:
        return (x,)
    rows = (2 if module.bidirectional else 1) * module.num_layers
    h = torch.randn(rows, B, H)
    return (x, (h, torch.randn(rows, B, H))) if module.mode == "LSTM" else (x, h)


def run_onnx(path: Path, args: tuple[Any, ...]) -> list[Any]:
    session = ort.InferenceSession(str(path))
    feeds = [t.numpy() for t in tree_leaves(args)]
    return session.run(None, {i.name: f for i, f in zip(session.get_inputs(), feeds)})


def assert_equal_to_eager(
    module: nn.Module, path: Path, args: tuple[Any, ...], atol: float = 1e-5
) -> None:
    got = run_onnx(path, args)
    with torch.no_grad():
        want = tree_leaves(module(*args))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(g), w, rtol=0, atol=atol)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_onnxruntime_equals_eager_at_any_length_and_batch(case, tmp_path) -> None:
    mode, L, bi, bf, with_h0 = case
    module = make(mode, num_layers=L, bidirectional=bi, batch_first=bf).eval()
    path = rk.export.onnx(module, inputs(module, 5, 2, with_h0), tmp_path / "m.onnx")
    assert path == tmp_path / "m.onnx" and path.is_file()
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count(ONNX_OP[mode]) == L, ops  # one node per layer, no loop
    assert not {"Loop", "Scan"} & set(ops)
    for T in (1, 7, 64):
        for B in (1, 3):
            assert_equal_to_eager(module, path, inputs(module, T, B, with_h0))


def test_gru_becomes_onnx_gru_with_linear_before_reset(tmp_path) -> None:
    gru = rk.GRU(I, H, num_layers=2, bidirectional=True)
    path = rk.export.onnx(gru, torch.randn(4, 2, I), tmp_path / "gru.onnx")
    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type == "GRU"]
    assert len(nodes) == 2
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["linear_before_reset"] == 1
        assert attrs["direction"] == b"bidirectional"
        assert attrs["hidden_size"] == H
    names = [i.name for i in model.graph.input]
    assert names == ["input"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["time", "batch", I]
    assert [o.name for o in model.graph.output] == ["output", "h_n"]


def test_relu_rnn_gets_relu_activations(tmp_path) -> None:
    rnn = rk.RNN(I, H, nonlinearity="relu", bidirectional=True)
    path = rk.export.onnx(rnn, torch.randn(4, 2, I), tmp_path / "rnn.onnx")
    (node,) = [n for n in onnx.load(str(path)).graph.node if n.op_type == "RNN"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["activations"] == [b"Relu", b"Relu"]


def test_no_bias_and_unbatched_input(tmp_path) -> None:
    lstm = rk.LSTM(I, H, num_layers=2, bias=False)
    path = rk.export.onnx(lstm, torch.randn(4, I), tmp_path / "lstm.onnx")
    for T in (1, 9):
        assert_equal_to_eager(lstm, path, (torch.randn(T, I),))


def test_fixed_axes_stay_fixed(tmp_path) -> None:
    gru = rk.GRU(I, H)
    path = rk.export.onnx(
        gru, torch.randn(4, 2, I), tmp_path / "g.onnx", dynamic_time=False, dynamic_batch=False
    )
    dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, 2, I]
    assert_equal_to_eager(gru, path, (torch.randn(4, 2, I),))


def test_torch_onnx_export_directly_makes_the_same_operators(tmp_path) -> None:
    """What ``torch.onnx.export(..., dynamo=True)`` needs is in the drop-in itself."""
    model = nn.Sequential(nn.Linear(I, I), rk.LSTM(I, H, bidirectional=True)).eval()
    T, B = torch.export.Dim("T"), torch.export.Dim("B")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (torch.randn(4, 2, I),), dynamo=True, dynamic_shapes=({0: T, 1: B},)
        )
    assert program is not None
    ops = [n.op_type for n in program.model_proto.graph.node]
    assert ops.count("LSTM") == 1 and "Loop" not in ops
    program.save(str(tmp_path / "seq.onnx"))
    assert_equal_to_eager(model, tmp_path / "seq.onnx", (torch.randn(7, 3, I),))


# -- stacks: the time loop becomes an ONNX Scan ------------------------------------------

STACK_CELLS = {
    "gru": rk.GRUCell,
    "lstm": rk.LSTMCell,
    "rnn": rk.RNNCell,
    "nested_lstm": lambda i, h: rk.NestedLSTMCell(i, h, depth=2),
    "mgu": rk.MGUCell,
    "coupled_lstm": rk.CoupledLSTMCell,
    "indrnn": rk.IndRNNCell,
    "layer_norm_gru": rk.LayerNormGRUCell,
    "layer_norm_lstm": rk.LayerNormLSTMCell,
    "min_gru": rk.MinGRUCell,
    "min_lstm": rk.MinLSTMCell,
}
POLICIES = ["independent", "shared", "residual", "cross_layer", "handoff"]
# every policy with the GRU and the LSTM; every other cell under a layer-major policy (its
# fused or linear-scan plan) and a step-major one
STACK_CASES = [(p, c) for p in POLICIES for c in ("gru", "lstm")] + [
    (p, c) for c in STACK_CELLS if c not in ("gru", "lstm") for p in ("independent", "shared")
]


# The layer-norm cells are compared in float64: in float32 a LayerNorm LSTM stack is itself
# 1e-5 to 5e-5 away from its float64 result at T = 64 (measured), so two float32 programs
# cannot agree to 1e-5; in float64 ONNX's LayerNormalization still keeps its epsilon as a
# float32 attribute and its statistics in float32 (stash_type=1), which leaves ~1e-9.
FLOAT64_CELLS = {"layer_norm_gru": 1e-7, "layer_norm_lstm": 1e-7}


def make_stack(policy: str, cell: str, dtype: torch.dtype = torch.float32) -> rk.Stack:
    torch.manual_seed(0)
    build = STACK_CELLS[cell]
    return rk.Stack([build(I, H), build(H, H)], policy).eval().to(dtype)


def assert_stack_runs_at_any_length_and_batch(
    module: nn.Module, path: Path, dtype: torch.dtype = torch.float32, atol: float = 1e-5
) -> None:
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Scan", "Loop"} & ops, ops  # one loop over time, whatever the example's T
    for T in (1, 7, 64):
        for B in (1, 3):
            assert_equal_to_eager(module, path, (torch.randn(T, B, I, dtype=dtype),), atol)


@pytest.mark.parametrize(("policy", "cell"), STACK_CASES, ids=lambda v: str(v))
def test_a_stack_exports_with_free_length_and_batch(policy, cell, tmp_path) -> None:
    dtype = torch.float64 if cell in FLOAT64_CELLS else torch.float32
    stack = make_stack(policy, cell, dtype)
    path = rk.export.onnx(stack, torch.randn(4, 2, I, dtype=dtype), tmp_path / "s.onnx")
    assert_stack_runs_at_any_length_and_batch(stack, path, dtype, FLOAT64_CELLS.get(cell, 1e-5))


def test_a_stack_with_a_given_state(tmp_path) -> None:
    stack = make_stack("shared", "lstm")
    state = stack.initial_state(2)
    state = [rk.LSTMState(torch.randn_like(s.h), torch.randn_like(s.c)) for s in state]
    path = rk.export.onnx(stack, (torch.randn(4, 2, I), state), tmp_path / "s.onnx")
    for T, B in ((1, 1), (7, 3), (64, 3)):
        given = [rk.LSTMState(torch.randn(B, H), torch.randn(B, H)) for _ in range(2)]
        assert_equal_to_eager(stack, path, (torch.randn(T, B, I), given))


def test_bidirectional_stacks(tmp_path) -> None:
    torch.manual_seed(0)
    model = Bidirectional(
        rk.Stack([rk.GRUCell(I, H), rk.GRUCell(H, H)], "shared"),
        rk.Stack([rk.GRUCell(I, H), rk.GRUCell(H, H)], "shared"),
    ).eval()
    path = rk.export.onnx(model, torch.randn(4, 2, I), tmp_path / "b.onnx")
    assert_stack_runs_at_any_length_and_batch(model, path)


def test_a_stack_at_fixed_shape(tmp_path) -> None:
    stack = make_stack("shared", "gru")
    x = torch.randn(6, 2, I)
    path = rk.export.onnx(stack, x, tmp_path / "s.onnx", dynamic_time=False, dynamic_batch=False)
    assert_equal_to_eager(stack, path, (x,))


def test_torch_onnx_export_of_a_stack_directly_under_no_grad(tmp_path) -> None:
    """torch's exporter called directly: a Stack with a free T needs ``torch.no_grad()``
    (torch 2.13 stops decomposing the scan's autograd split otherwise)."""
    stack = make_stack("cross_layer", "gru")
    T, B = torch.export.Dim("T"), torch.export.Dim("B")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            stack, (torch.randn(4, 2, I),), dynamo=True, dynamic_shapes=({0: T, 1: B},)
        )
    assert program is not None
    program.save(str(tmp_path / "s.onnx"))
    assert_stack_runs_at_any_length_and_batch(stack, tmp_path / "s.onnx")


def test_the_lru_is_refused_with_one_error(tmp_path) -> None:
    stack = rk.Stack([rk.LRUCell(I, H), rk.LRUCell(H, H)], "independent")
    with pytest.raises(rk.UnsupportedError, match="complex"):
        rk.export.onnx(stack, torch.randn(4, 2, I), tmp_path / "l.onnx")
    assert not os.listdir(tmp_path)


def test_training_mode_is_restored_and_export_runs_in_eval(tmp_path) -> None:
    gru = rk.GRU(I, H, num_layers=2, dropout=0.5).train()
    path = rk.export.onnx(gru, torch.randn(4, 2, I), tmp_path / "g.onnx")
    assert gru.training
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("GRU") == 2 and "Dropout" not in ops
    assert_equal_to_eager(gru.eval(), path, (torch.randn(7, 3, I),))


# -- refusals and bad input -------------------------------------------------------------------


def test_lstm_projection_is_refused(tmp_path) -> None:
    model = nn.Sequential(rk.LSTM(I, H, proj_size=2))
    with pytest.raises(
        rk.UnsupportedError, match="proj_size: expected 0 .* got 0 with proj_size=2"
    ):
        rk.export.onnx(model, torch.randn(4, 2, I), tmp_path / "p.onnx")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"module": "gru"}, rk.InputTypeError, "module: expected a torch.nn.Module"),
        ({"example_input": [1, 2]}, rk.InputTypeError, "example_input: expected a tensor"),
        ({"example_input": ()}, rk.InputTypeError, "example_input: expected a tensor"),
        ({"path": 3}, rk.InputTypeError, "path: expected a str or os.PathLike"),
        ({"path": "/nonexistent-folder/m.onnx"}, rk.ConfigError, "path: expected a path in"),
        ({"dynamic_time": 1}, rk.InputTypeError, "dynamic_time: expected a bool"),
        ({"dynamic_batch": "yes"}, rk.InputTypeError, "dynamic_batch: expected a bool"),
        ({"example_input": torch.randn(1, 2, I)}, rk.ShapeError, "example_input: .*size >= 2"),
        ({"example_input": torch.randn(4, 1, I)}, rk.ShapeError, "free axis 1 \\(batch"),
        (
            {"example_input": (torch.randn(4, 2, I), torch.randn(1, 1, H))},
            rk.ShapeError,
            "example_input\\[1\\]: expected size >= 2 on its batch axis",
        ),
    ],
)
def test_bad_arguments(kwargs, error, words, tmp_path) -> None:
    args: dict[str, Any] = {
        "module": rk.GRU(I, H),
        "example_input": torch.randn(4, 2, I),
        "path": tmp_path / "m.onnx",
    }
    args.update(kwargs)
    with pytest.raises(error, match=words):
        rk.export.onnx(**args)
    assert not os.listdir(tmp_path)


def test_path_that_is_a_folder(tmp_path) -> None:
    with pytest.raises(rk.ConfigError, match="path: expected a file path"):
        rk.export.onnx(rk.GRU(I, H), torch.randn(4, 2, I), tmp_path)


class _Fails(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("this model cannot be traced")


def test_a_failed_export_leaves_the_earlier_file_and_nothing_else(tmp_path) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"earlier")
    with pytest.raises(ValueError, match="cannot be traced"):
        rk.export.onnx(_Fails(), torch.randn(4, 2, I), target)
    assert os.listdir(tmp_path) == ["m.onnx"] and target.read_bytes() == b"earlier"


def test_a_length_that_cannot_stay_free_says_so(tmp_path) -> None:
    """A module whose forward fixes T: one UnsupportedError naming the way out."""

    class _Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[: x.shape[0]].reshape(4, -1)  # needs T == 4

    with pytest.raises(rk.UnsupportedError, match="dynamic_time=False"):
        rk.export.onnx(_Fixed(), torch.randn(4, 2, I), tmp_path / "f.onnx", dynamic_batch=False)
    assert not os.listdir(tmp_path)
