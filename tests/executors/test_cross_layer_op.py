"""The fused cross_layer op: equal to the reference loop, forward and every gradient."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import recurrentkit as rk
from recurrentkit._validation import map_state
from recurrentkit.executors import cross_layer as xl

D = torch.float64
CELLS: dict[str, Callable[[int, int], nn.Module]] = {
    "gru": lambda i, h: rk.GRUCell(i, h),
    "gru_nobias": lambda i, h: rk.GRUCell(i, h, bias=False),
    "gru_before": lambda i, h: rk.GRUCell(i, h, reset="before"),
    "gru_before_nobias": lambda i, h: rk.GRUCell(i, h, reset="before", bias=False),
    "lstm": lambda i, h: rk.LSTMCell(i, h),
    "lstm_nobias": lambda i, h: rk.LSTMCell(i, h, bias=False),
    "lstm_proj": lambda i, h: rk.LSTMCell(i, h + 2, proj_size=h),
    "rnn": lambda i, h: rk.RNNCell(i, h),
    "rnn_relu": lambda i, h: rk.RNNCell(i, h, nonlinearity="relu"),
}
RAGGED = torch.tensor([3, 6, 1, 5])
LENGTHS3 = torch.tensor([4, 2, 3])


@pytest.fixture
def op_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts runs of the fused op (so a test knows it did not fall back)."""
    calls: list[int] = []
    apply = xl._CrossLayerOp.apply

    def spy(*args: Any) -> Any:
        calls.append(1)
        return apply(*args)

    monkeypatch.setattr(xl._CrossLayerOp, "apply", spy)
    yield calls


def build(kinds: list[str], widths: list[int], I: int, executor: str, **kw: Any) -> rk.Stack:
    """A float64 cross_layer stack, layer ``k`` of kind ``kinds[k]`` and width ``widths[k]``."""
    torch.manual_seed(7)
    cells: list[Any] = []
    for k, (kind, w) in enumerate(zip(kinds, widths)):
        below = I if k == 0 else cells[-1].output_size
        cells.append(CELLS[kind](below, w))
    return rk.Stack(cells, "cross_layer", executor=executor, **kw).to(D)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("L", [2, 3, 4])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_op_equals_reference(
    checks: SimpleNamespace, op_calls: list[int], cell: str, L: int, ragged: bool
) -> None:
    ref = build([cell] * L, [5] * L, 3, "reference")
    fast = build([cell] * L, [5] * L, 3, "handbuilt")
    x, state = checks.inputs(ref)
    checks.same_run(ref, fast, x, state, RAGGED if ragged else None)
    assert op_calls  # the fused op ran, not the step-loop fallback


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # stateless fixture
@given(
    kinds=st.lists(st.sampled_from(sorted(CELLS)), min_size=2, max_size=4),
    data=st.data(),
    I=st.integers(1, 4),
    T=st.integers(1, 5),
    B=st.integers(1, 4),
)
def test_op_equals_reference_any_sizes(
    checks: SimpleNamespace, kinds: list[str], data: st.DataObject, I: int, T: int, B: int
) -> None:
    """Mixed cell types, unequal widths, any lengths."""
    widths = data.draw(st.lists(st.integers(1, 5), min_size=len(kinds), max_size=len(kinds)))
    lengths = data.draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B))
    ref = build(kinds, widths, I, "reference")
    fast = build(kinds, widths, I, "handbuilt")
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    state = map_state(lambda t: torch.randn_like(t).requires_grad_(), ref.initial_state(B))
    checks.same_run(ref, fast, x, state, None if lengths is None else torch.tensor(lengths))


@pytest.mark.parametrize("cell", ["gru", "gru_before", "lstm_proj", "rnn"])
def test_gradcheck(op_calls: list[int], cell: str) -> None:
    """The hand-written backward against finite differences, every input of the op."""
    stack = build([cell, cell, cell], [3, 2, 3], 2, "handbuilt")
    x = torch.randn(4, 3, 2, dtype=D, requires_grad=True)
    state = map_state(lambda t: torch.randn_like(t).requires_grad_(), stack.initial_state(3))
    names = [n for n, _ in stack.named_parameters()]
    leaves = [x, *flat(state)]

    def f(*inputs: Tensor) -> tuple[Tensor, ...]:
        xi, *rest = inputs[: len(leaves)]
        params = dict(zip(names, inputs[len(leaves) :]))
        args = (xi, unflat(state, rest))
        y, s = torch.func.functional_call(stack, params, args, {"lengths": LENGTHS3})
        return (y, *flat(s))

    inputs = (*leaves, *(p.detach().requires_grad_() for p in stack.parameters()))
    assert torch.autograd.gradcheck(f, inputs, atol=1e-7)
    assert op_calls


def flat(state: Any) -> list[Tensor]:
    return [state] if isinstance(state, Tensor) else [t for s in state for t in flat(s)]


def unflat(like: Any, items: list[Tensor]) -> Any:
    it = iter(items)

    def rebuild(s: Any) -> Any:
        if isinstance(s, Tensor):
            return next(it)
        parts = [rebuild(p) for p in s]
        return type(s)(*parts) if hasattr(s, "_fields") else tuple(parts)

    return rebuild(like)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("use", ["outputs", "states"])
def test_gradients_of_part_of_the_outputs(checks: SimpleNamespace, cell: str, use: str) -> None:
    """Only the outputs, or only the final states, reach the loss (the op sees ``None``
    for the other gradients)."""
    ref = build([cell] * 3, [4] * 3, 3, "reference")
    fast = build([cell] * 3, [4] * 3, 3, "handbuilt")
    x, state = checks.inputs(ref)
    grads = []
    for stack in (ref, fast):
        y, s = stack(x, state, lengths=RAGGED)
        parts = [y] if use == "outputs" else flat(s)
        loss = torch.stack([t.square().sum() for t in parts]).sum()
        wrt = [x, *flat(state), *stack.parameters()]
        g = torch.autograd.grad(loss, wrt, allow_unused=True)
        grads.append([torch.zeros_like(w) if v is None else v for v, w in zip(g, wrt)])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)


def test_frozen_parameters_and_input_only(checks: SimpleNamespace) -> None:
    ref = build(["gru", "lstm"], [4, 3], 3, "reference").requires_grad_(False)
    fast = build(["gru", "lstm"], [4, 3], 3, "handbuilt").requires_grad_(False)
    x = torch.randn(5, 2, 3, dtype=D, requires_grad=True)
    (g_ref,) = torch.autograd.grad(ref(x)[0].sum(), x)
    (g,) = torch.autograd.grad(fast(x)[0].sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)


def test_without_autograd_equals_reference(checks: SimpleNamespace, op_calls: list[int]) -> None:
    ref = build(["lstm_proj", "gru"], [3, 4], 3, "reference")
    fast = build(["lstm_proj", "gru"], [3, 4], 3, "handbuilt")
    x, state = checks.inputs(ref)
    with torch.no_grad():
        checks.same_run(ref, fast, x, state, RAGGED)
    assert op_calls


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("executor", ["handbuilt", "auto"])
def test_training_dropout_draws_the_reference_masks(cell: str, executor: str) -> None:
    ref = build([cell] * 3, [5] * 3, 3, "reference", dropout=0.5)
    fast = build([cell] * 3, [5] * 3, 3, executor, dropout=0.5)
    x = torch.randn(6, 4, 3, dtype=D, requires_grad=True)
    outs = []
    for stack in (ref, fast):
        torch.manual_seed(3)
        y, s = stack(x)
        wrt = [x, *stack.parameters()]
        outs.append([y, *flat(s), *torch.autograd.grad(y.square().sum(), wrt)])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
    assert not torch.allclose(outs[0][0], ref.eval()(x)[0])  # dropout did act


def test_falls_back_for_other_cells(checks: SimpleNamespace, op_calls: list[int]) -> None:
    for kind in ("nested", "user", "gru_subclass"):
        ref = checks.build(kind, "cross_layer", "reference", L=2)
        fast = checks.build(kind, "cross_layer", "handbuilt", L=2)
        x, state = checks.inputs(ref)
        checks.same_run(ref, fast, x, state, RAGGED)
    assert not op_calls


def test_repeated_backward_through_one_graph(checks: SimpleNamespace) -> None:
    """``retain_graph``: a second backward reads the same saved buffers."""
    fast = build(["gru", "lstm", "gru_before"], [4, 4, 3], 3, "handbuilt")
    x, state = checks.inputs(fast)
    y, _ = fast(x, state)
    loss = y.square().sum()
    first = torch.autograd.grad(loss, [x, *fast.parameters()], retain_graph=True)
    fast(x, state)[0].sum().backward()  # another run in between
    second = torch.autograd.grad(loss, [x, *fast.parameters()])
    for a, b in zip(first, second):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_interleaved_graphs(checks: SimpleNamespace) -> None:
    """Two forward runs, then their backward passes in either order."""
    ref = build(["lstm", "gru"], [4, 4], 3, "reference")
    fast = build(["lstm", "gru"], [4, 4], 3, "handbuilt")
    xs = [torch.randn(5, 3, 3, dtype=D, requires_grad=True) for _ in range(2)]
    losses = [fast(x)[0].square().sum() for x in xs]
    got = [torch.autograd.grad(loss, x)[0] for loss, x in reversed(list(zip(losses, xs)))]
    want = [torch.autograd.grad(ref(x)[0].square().sum(), x)[0] for x in reversed(xs)]
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)


def test_a_run_leaves_nothing_behind(checks: SimpleNamespace) -> None:
    """Once its outputs are gone, a run's graph is freed (no reference cycle through the
    op keeps its buffers alive)."""
    fast = build(["gru", "lstm"], [4, 4], 3, "handbuilt")
    x, state = checks.inputs(fast)
    y, s = fast(x, state)
    y.sum().backward()
    alive = weakref.ref(y)
    del y, s
    gc.collect()
    assert alive() is None
