"""The drop-ins under ``torch.export`` (time and batch left free) and ``torch.jit.trace``.

An exported drop-in is one ``recurrentkit::*_layer`` op per layer, so the program runs at
lengths and batch sizes other than the example's; it equals the drop-in's reference
executor (the library's step loop, not torch's op) in float64.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.export import Dim
from torch.utils._pytree import tree_leaves

import recurrentkit as rk

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

I, H = 3, 5
KINDS = {
    "RNN_TANH": (rk.RNN, {"nonlinearity": "tanh"}),
    "RNN_RELU": (rk.RNN, {"nonlinearity": "relu"}),
    "GRU": (rk.GRU, {}),
    "LSTM": (rk.LSTM, {}),
}
# (num_layers, bidirectional, batch_first, with hx): each flag both ways over the set
SHAPES = [
    (1, False, False, False),
    (2, True, True, True),
    (2, False, True, False),
    (1, True, False, True),
]
CASES = [(mode, *shape, 0) for mode in KINDS for shape in SHAPES]
CASES += [("LSTM", 2, True, False, True, 3), ("LSTM", 1, False, True, False, 2)]  # proj_size


def case_id(case: tuple[Any, ...]) -> str:
    mode, L, bi, bf, with_hx, proj = case
    return f"{mode}-L{L}{'-bi' if bi else ''}{'-bf' if bf else ''}{'-hx' if with_hx else ''}" + (
        f"-proj{proj}" if proj else ""
    )


def make(case: tuple[Any, ...], **kw: Any) -> rk.RNN | rk.GRU | rk.LSTM:
    mode, L, bi, bf, _, proj = case
    cls, extra = KINDS[mode]
    if proj:
        extra = {**extra, "proj_size": proj}
    torch.manual_seed(0)
    return cls(I, H, num_layers=L, bidirectional=bi, batch_first=bf, **extra, **kw)


def example(module: nn.Module, T: int, B: int, with_hx: bool) -> tuple[Any, ...]:
    """``(x,)`` or ``(x, hx)`` for ``module`` at length ``T`` and batch ``B``."""
    dtype = module.weight_ih_l0.dtype
    x = torch.randn((B, T, I) if module.batch_first else (T, B, I), dtype=dtype)
    if not with_hx:
        return (x,)
    D = 2 if module.bidirectional else 1
    h = torch.randn(D * module.num_layers, B, module.proj_size or H, dtype=dtype)
    if module.mode == "LSTM":
        return (x, (h, torch.randn(D * module.num_layers, B, H, dtype=dtype)))
    return (x, h)


def free_axes(module: nn.Module, with_hx: bool) -> tuple[Any, ...]:
    T, B = Dim("T"), Dim("B")
    x = {0: B, 1: T} if module.batch_first else {0: T, 1: B}
    if not with_hx:
        return (x,)
    return (x, ({1: B}, {1: B}) if module.mode == "LSTM" else {1: B})


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_export_with_free_time_and_batch_equals_eager(case) -> None:
    with_hx = case[4]
    module = make(case, dtype=torch.float64).eval()
    reference = make(case, dtype=torch.float64, executor="reference").eval()
    program = torch.export.export(
        module, example(module, 5, 2, with_hx), dynamic_shapes=free_axes(module, with_hx)
    )
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    op = "lstm" if case[0] == "LSTM" else case[0].lower()
    assert f"recurrentkit.{op}_layer.default" in targets, targets
    assert not any("aten.gru" in t or "aten.lstm" in t or "aten.rnn" in t for t in targets)
    run = program.module()
    for T in (1, 5, 64):
        for B in (1, 3):
            args = example(module, T, B, with_hx)
            got, want = tree_leaves(run(*args)), tree_leaves(reference(*args))
            assert [g.shape for g in got] == [w.shape for w in want]
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


@settings(max_examples=6)
@given(
    mode=st.sampled_from(list(KINDS)),
    L=st.integers(1, 3),
    bi=st.booleans(),
    bf=st.booleans(),
    with_hx=st.booleans(),
    proj=st.integers(0, 4),
    T=st.integers(1, 12),
    B=st.integers(1, 4),
    strict=st.booleans(),
)
def test_export_holds_over_configurations_and_shapes(
    mode: str, L: int, bi: bool, bf: bool, with_hx: bool, proj: int, T: int, B: int, strict: bool
) -> None:
    """Any configuration, exported at one shape (strict or not), runs at any other."""
    case = (mode, L, bi, bf, with_hx, proj if mode == "LSTM" else 0)
    module = make(case, dtype=torch.float64).eval()
    reference = make(case, dtype=torch.float64, executor="reference").eval()
    program = torch.export.export(
        module,
        example(module, 4, 2, with_hx),
        dynamic_shapes=free_axes(module, with_hx),
        strict=strict,
    )
    args = example(module, T, B, with_hx)
    for g, w in zip(tree_leaves(program.module()(*args)), tree_leaves(reference(*args))):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


def test_exported_program_saves_and_loads(tmp_path) -> None:
    """``torch.export.save``/``load`` keep the layer ops (importing recurrentkit registers
    them) and the free axes."""
    lstm = rk.LSTM(I, H, num_layers=2, bidirectional=True, dtype=torch.float64).eval()
    x = torch.randn(4, 2, I, dtype=torch.float64)
    program = torch.export.export(lstm, (x,), dynamic_shapes=free_axes(lstm, False))
    torch.export.save(program, tmp_path / "lstm.pt2")
    loaded = torch.export.load(tmp_path / "lstm.pt2").module()
    x = torch.randn(9, 3, I, dtype=torch.float64)
    for g, w in zip(tree_leaves(loaded(x)), tree_leaves(lstm(x))):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


def test_export_unbatched_input_keeps_time_free() -> None:
    gru = rk.GRU(I, H, num_layers=2, dtype=torch.float64).eval()
    program = torch.export.export(
        gru, (torch.randn(4, I, dtype=torch.float64),), dynamic_shapes=({0: Dim("T")},)
    )
    for T in (1, 9):
        x = torch.randn(T, I, dtype=torch.float64)
        for g, w in zip(program.module()(x), gru(x)):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


def test_export_in_training_with_dropout_runs_the_parts() -> None:
    """Dropout has no place in the layer ops: a training module with dropout traces the
    library's parts (the exported program is then fixed to the example's length)."""
    gru = rk.GRU(I, H, num_layers=2, dropout=0.5).train()
    x = torch.randn(4, 2, I)
    program = torch.export.export(gru, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("recurrentkit." in t for t in targets)
    assert any("dropout" in t for t in targets)


@pytest.mark.parametrize("case", [c for c in CASES if c[4] or c[0] == "GRU"], ids=case_id)
def test_jit_trace_equals_eager_at_the_traced_shape_and_others(case) -> None:
    with_hx = case[4]
    module = make(case, dtype=torch.float64).eval()
    reference = make(case, dtype=torch.float64, executor="reference").eval()
    args = example(module, 5, 2, with_hx)
    with warnings.catch_warnings():  # the input checks read shapes: tracer warnings
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, args, check_trace=False)
    for T, B in ((5, 2), (1, 1), (9, 3)):  # the traced shape, then others
        args = example(module, T, B, with_hx)
        for g, w in zip(tree_leaves(traced(*args)), tree_leaves(reference(*args))):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", [c for c in CASES if c[1] == 2], ids=case_id)
def test_exported_program_gradients_equal_the_reference(case) -> None:
    """Exported in training mode (no dropout), the program differentiates: its layer ops'
    registered gradient equals the reference executor's, for inputs, states and weights."""
    with_hx = case[4]
    module = make(case, dtype=torch.float64)
    reference = make(case, dtype=torch.float64, executor="reference")
    program = torch.export.export(
        module, example(module, 4, 2, with_hx), dynamic_shapes=free_axes(module, with_hx)
    )
    run = program.module()
    args = example(module, 6, 3, with_hx)
    leaves = [t.requires_grad_() for t in tree_leaves(args)]
    outs = [tree_leaves(run(*args)), tree_leaves(reference(*args))]
    weights = [dict(run.named_parameters()), dict(reference.named_parameters())]
    found = []
    for out, named in zip(outs, weights):
        probe = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in out)
        found.append(torch.autograd.grad(probe, [*leaves, *named.values()]))
    assert list(weights[0]) == list(weights[1])  # the same parameters, in the same order
    for g, w in zip(*found):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", list(KINDS))
def test_layer_op_gradcheck(mode) -> None:
    from recurrentkit._layer_ops import _OPS

    torch.manual_seed(0)
    module = make((mode, 1, True, False, True, 0), dtype=torch.float64)
    weights = [getattr(module, n).detach().requires_grad_() for n in module._flat_weights_names]
    x = torch.randn(3, 2, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, H, dtype=torch.float64, requires_grad=True)
    op = _OPS[mode]
    if mode == "LSTM":
        c0 = torch.randn(2, 2, H, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda x, h0, c0, *w: op(x, h0, c0, list(w), True, True), (x, h0, c0, *weights)
        )
    else:
        assert torch.autograd.gradcheck(
            lambda x, h0, *w: op(x, h0, list(w), True, True), (x, h0, *weights)
        )
    assert torch.autograd.gradcheck(  # no initial state: zeros inside the op
        lambda x, *w: op(x, *([None] * (2 if mode == "LSTM" else 1)), list(w), True, True),
        (x, *weights),
    )


def test_layer_op_outside_export_is_torchs_fused_op() -> None:
    """The custom op run eagerly (what an ExportedProgram's module() calls) is torch's
    one-layer op: equal to the reference executor's layer."""
    lstm = rk.LSTM(I, H, bidirectional=True, proj_size=2, dtype=torch.float64)
    reference = rk.LSTM(I, H, bidirectional=True, proj_size=2, dtype=torch.float64)
    reference.load_state_dict(lstm.state_dict())
    reference.executor = "reference"
    x = torch.randn(6, 3, I, dtype=torch.float64)
    weights: list[Tensor] = [getattr(lstm, n) for n in lstm._flat_weights_names]
    y, h, c = torch.ops.recurrentkit.lstm_layer(x, None, None, weights, True, True)
    want_y, (want_h, want_c) = reference(x)
    for g, w in ((y, want_y), (h, want_h), (c, want_c)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)
