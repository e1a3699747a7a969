"""Hand-built kernels: each equals the cell's own step loop, forward and backward."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import recurrentkit as rk
from recurrentkit._scan import scan
from recurrentkit._validation import map_state
from recurrentkit.executors import packing
from recurrentkit.executors.kernels import kernel_for
from recurrentkit.executors.packing import schedule

D = torch.float64
KERNEL_CELLS: dict[str, Callable[[int, int], nn.Module]] = {
    "rnn": lambda i, h: rk.RNNCell(i, h),
    "rnn_relu": lambda i, h: rk.RNNCell(i, h, nonlinearity="relu"),
    "gru": lambda i, h: rk.GRUCell(i, h),
    "gru_before": lambda i, h: rk.GRUCell(i, h, reset="before"),
    "gru_nobias": lambda i, h: rk.GRUCell(i, h, bias=False),
    "lstm": lambda i, h: rk.LSTMCell(i, h),
    "lstm_nobias": lambda i, h: rk.LSTMCell(i, h, bias=False),
    "nested": lambda i, h: rk.NestedLSTMCell(i, h),
    "nested3": lambda i, h: rk.NestedLSTMCell(i, h, depth=3),
    "gru_before_nobias": lambda i, h: rk.GRUCell(i, h, bias=False, reset="before"),
    "lstm_proj": lambda i, h: rk.LSTMCell(i, h + 1, proj_size=h - 1),
    "nested4_nobias": lambda i, h: rk.NestedLSTMCell(i, h, depth=4, bias=False),
    "rnn_relu_nobias": lambda i, h: rk.RNNCell(i, h, nonlinearity="relu", bias=False),
}


def flat(state: Any) -> list[Tensor]:
    return [state] if isinstance(state, Tensor) else [t for s in state for t in flat(s)]


def run_kernel(cell: Any, x: Tensor, state: Any, lengths: Tensor | None) -> list[Tensor]:
    """The kernel's whole-sequence op, moved back to the reference's layout."""
    kern = kernel_for(cell)
    assert kern is not None
    sched = schedule(x, lengths)
    out, seq = kern.sequence(
        cell, kern.project(cell, sched.pack(x)), sched.sort_state(state), sched
    )
    final = sched.unsort_state(map_state(sched.last, seq))
    return [sched.unpack(out), *flat(final)]


def check(cell: Any, T: int, B: int, lengths: Tensor | None) -> None:
    cell = cell.to(D)
    x = torch.randn(T, B, cell.input_size, dtype=D, requires_grad=True)
    state = map_state(lambda t: torch.randn_like(t).requires_grad_(), cell.initial_state(B))
    y, s = scan(cell._step, x, state, lengths)
    ref = [y, *flat(s)]
    got = run_kernel(cell, x, state, lengths)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
    same_grads(ref, got, [x, *flat(state), *cell.parameters()], 1e-10)


def same_grads(ref: list[Tensor], got: list[Tensor], wrt: list[Tensor], tol: float) -> None:
    """One random cotangent through ``ref`` and ``got``: equal gradients of ``wrt``."""
    cot = [torch.randn_like(t) for t in ref]

    def grads(outs: list[Tensor]) -> list[Tensor]:
        g = torch.autograd.grad(
            sum((o * c).sum() for o, c in zip(outs, cot)), wrt, allow_unused=True
        )
        return [torch.zeros_like(w) if v is None else v for v, w in zip(g, wrt)]

    for a, b in zip(grads(ref), grads(got)):
        torch.testing.assert_close(b, a, rtol=0, atol=tol)


@pytest.mark.parametrize("name", KERNEL_CELLS)
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_kernel_equals_step_loop(name: str, ragged: bool) -> None:
    torch.manual_seed(0)
    lengths = torch.tensor([3, 6, 1, 6, 2]) if ragged else None
    check(KERNEL_CELLS[name](3, 4), T=6, B=5, lengths=lengths)


@given(
    name=st.sampled_from(["gru", "gru_before", "lstm", "rnn", "nested"]),
    T=st.integers(1, 5),
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_kernel_equals_step_loop_for_any_lengths(
    name: str, T: int, lengths: list[int], seed: int
) -> None:
    torch.manual_seed(seed)
    lens = torch.tensor([min(n, T) for n in lengths])
    check(KERNEL_CELLS[name](2, 3), T=T, B=len(lengths), lengths=lens)


@pytest.mark.parametrize("chunk_rows", [1, 4, 7])
@pytest.mark.parametrize("name", ["gru", "gru_nobias", "nested", "nested3", "nested4_nobias"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_backward_in_runs_of_steps(
    monkeypatch: pytest.MonkeyPatch, chunk_rows: int, name: str, ragged: bool
) -> None:
    """The reset-after GRU's and the Nested LSTM's backward add up their weight gradients
    over runs of steps of at least ``CHUNK_ROWS`` rows (the other tests' sequences are one
    run): any run size gives the step loop's results."""
    monkeypatch.setattr(packing, "CHUNK_ROWS", chunk_rows)
    torch.manual_seed(1)
    lengths = torch.tensor([3, 6, 1, 6, 2]) if ragged else None
    check(KERNEL_CELLS[name](3, 4), T=6, B=5, lengths=lengths)


@pytest.mark.parametrize("name", ["gru", "gru_before", "lstm_proj", "rnn", "nested3"])
def test_kernel_gradcheck(name: str) -> None:
    """torch.autograd.gradcheck of the hand-written backward against finite differences."""
    torch.manual_seed(0)
    cell = KERNEL_CELLS[name](2, 3).to(D)
    lengths = torch.tensor([3, 1, 2])
    x = torch.randn(3, 3, 2, dtype=D, requires_grad=True)
    state = map_state(lambda t: torch.randn_like(t).requires_grad_(), cell.initial_state(3))
    leaves = flat(state)

    def fn(x: Tensor, *tensors: torch.Tensor) -> tuple:
        it = iter(tensors)
        s = map_state(lambda _: next(it), state)
        return tuple(run_kernel(cell, x, s, lengths))

    assert torch.autograd.gradcheck(fn, (x, *leaves))


def test_only_builtin_classes_get_kernels(checks: SimpleNamespace) -> None:
    assert kernel_for(rk.GRUCell(2, 3)) is not None
    assert kernel_for(checks.GRUSubclass(2, 3)) is None
    assert kernel_for(checks.LeakyCell(2, 3)) is None
    nested = rk.NestedLSTMCell(2, 3)
    nested.inner = checks.LeakyCell(3, 3)  # a swapped-in inner cell: not the built-in chain
    assert kernel_for(nested) is None


@pytest.mark.parametrize("name", KERNEL_CELLS)
def test_step_tied_equals_step_with_input_h(name: str) -> None:
    """``step_tied(linear(h, *tied_weights))`` is ``step(project(h))``: a step whose input
    is its own ``h``, forward and every gradient (weights included)."""
    torch.manual_seed(0)
    probe = KERNEL_CELLS[name](4, 6)
    width = flat(probe.initial_state(1))[0].shape[1]  # h's width (proj_size where set)
    cell = KERNEL_CELLS[name](width, 6).to(D)
    kern = kernel_for(cell)
    assert kern is not None
    state = map_state(lambda t: torch.randn_like(t).requires_grad_(), cell.initial_state(3))
    h = flat(state)[0]
    ref = flat(kern.step(cell, kern.project(cell, h), state))
    tied = kern.tied_weights(cell)
    assert tied is not None
    got = flat(kern.step_tied(cell, torch.nn.functional.linear(h, *tied), state))
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
    same_grads(ref, got, [*flat(state), *cell.parameters()], 1e-12)


def test_no_tied_weights_where_input_and_h_differ_in_width() -> None:
    for cell in (rk.GRUCell(3, 5), rk.LSTMCell(3, 5), rk.RNNCell(3, 5), rk.NestedLSTMCell(3, 5)):
        kern = kernel_for(cell)
        assert kern is not None and kern.tied_weights(cell) is None
