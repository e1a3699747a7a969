"""Streaming: for every causal policy, a sequence run in chunks with the state carried
equals one call over it — bit for bit under ``executor="reference"``, to 1e-12 in
float64 elsewhere — outputs, final states and every gradient, with lengths and with
resets across chunk borders. ``handoff`` is not causal: it differs, and warns."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import Tensor

import recurrentkit as rk
from recurrentkit import state as rs

D = torch.float64
CAUSAL = ["independent", "shared", "residual", "cross_layer"]
CELLS = {
    "rnn": lambda i, h: rk.RNNCell(i, h, dtype=D),
    "gru": lambda i, h: rk.GRUCell(i, h, dtype=D),
    "gru_before": lambda i, h: rk.GRUCell(i, h, reset="before", dtype=D),
    "lstm": lambda i, h: rk.LSTMCell(i, h, dtype=D),
    "nested_lstm": lambda i, h: rk.NestedLSTMCell(i, h, dtype=D),
}
EXECUTORS = ["auto", "handbuilt", "reference"]
I, H = 3, 4


def _stack(cell: str, policy: str, executor: str) -> rk.Stack:
    torch.manual_seed(7)
    return rk.Stack(
        [CELLS[cell](I if k == 0 else H, H) for k in range(2)], policy, executor=executor
    )


def _chunk(
    stack: rk.Stack, x: Tensor, s: Any, lengths: Tensor | None, resets: Tensor | None
) -> tuple[Tensor, Any]:
    """One chunk, as a streaming caller runs it: rows whose sequence has ended before
    the chunk (length 0 here) keep their state and give zeros."""
    if lengths is None or bool((lengths > 0).all()):
        return stack(x, s, lengths=lengths, resets=resets)
    if s is None:
        s = stack.initial_state(x.shape[1], dtype=D)
    live = (lengths > 0).nonzero().squeeze(1)
    if live.numel() == 0:
        return x.new_zeros(*x.shape[:2], H), s
    y_l, s_l = stack(
        x[:, live],
        tuple(rs.index(q, live) for q in s),
        lengths=lengths[live],
        resets=None if resets is None else resets[:, live],
    )
    y = y_l.new_zeros(*x.shape[:2], H).index_copy(1, live, y_l)
    s = tuple(rs.map(lambda old, new: old.index_copy(0, live, new), q, n) for q, n in zip(s, s_l))
    return y, s


def _chunked(
    stack: rk.Stack,
    x: Tensor,
    state: Any,
    cuts: list[int],
    lengths: Tensor | None = None,
    resets: Tensor | None = None,
) -> tuple[Tensor, Any]:
    bounds = [0, *cuts, x.shape[0]]
    ys, s = [], state
    for t0, t1 in zip(bounds[:-1], bounds[1:]):
        len_c = None if lengths is None else (lengths - t0).clamp(0, t1 - t0)
        r_c = None if resets is None else resets[t0:t1]
        y, s = _chunk(stack, x[t0:t1], s, len_c, r_c)
        ys.append(y)
    return torch.cat(ys), s


def _grads(stack: rk.Stack, run: Any, x: Tensor, state: Any) -> list[Tensor]:
    x = x.detach().clone().requires_grad_()
    state = None if state is None else rs.map(lambda t: t.detach().clone().requires_grad_(), state)
    y, final = run(x, state)
    g = torch.Generator().manual_seed(3)
    loss = (y * torch.randn(y.shape, generator=g, dtype=D)).sum()
    for t in rs.leaves(final):
        loss = loss + (t * torch.randn(t.shape, generator=g, dtype=D)).sum()
    leaves = [*stack.parameters(), x, *rs.leaves(state)]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    out = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(leaves, grads)]
    return [y, *rs.leaves(final), *out]


def _same(a: list[Tensor], b: list[Tensor], exact: bool) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        if exact:
            assert torch.equal(u, v)
        else:
            assert (u - v).abs().max().item() <= 1e-12 if u.numel() else u.shape == v.shape


@st.composite
def _cases(draw: Any) -> tuple[int, list[int], list[int] | None, list[bool] | None, bool]:
    T = draw(st.integers(2, 7))
    cuts = sorted(draw(st.sets(st.integers(1, T - 1), min_size=1)))
    B = 2
    lengths = draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B))
    resets = draw(st.none() | st.lists(st.booleans(), min_size=T * B, max_size=T * B))
    return T, cuts, lengths, resets, draw(st.booleans())


def _check(stack: rk.Stack, case: Any, exact: bool) -> None:
    T, cuts, lengths, bits, with_state = case
    B = 2
    torch.manual_seed(T)
    x = torch.randn(T, B, I, dtype=D)
    len_t = None if lengths is None else torch.tensor(lengths)
    resets = None if bits is None else torch.tensor(bits).view(T, B)
    state = None
    if with_state:
        state = tuple(rs.map(torch.randn_like, s) for s in stack.initial_state(B, dtype=D))
    whole = _grads(stack, lambda x, s: stack(x, s, lengths=len_t, resets=resets), x, state)
    chunked = _grads(stack, lambda x, s: _chunked(stack, x, s, cuts, len_t, resets), x, state)
    _same(whole, chunked, exact)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("policy", CAUSAL)
@settings(max_examples=3)
@given(case=_cases())
@example(case=(6, [2, 3], [6, 2], [False, False, False, False, True, False] + [False] * 6, True))
def test_chunks_with_the_state_carried_equal_one_call(
    policy: str, cell: str, executor: str, case: Any
) -> None:
    """(1e-12 in float64 everywhere; bit-identical under the reference where no row has
    ended before a chunk: that is :func:`test_the_reference_streams_bit_for_bit`.)"""
    _check(_stack(cell, policy, executor), case, exact=False)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("policy", CAUSAL)
@settings(max_examples=4)
@given(T=st.integers(2, 7), data=st.data())
def test_the_reference_streams_bit_for_bit(policy: str, cell: str, T: int, data: Any) -> None:
    """With lengths (every row alive in every chunk), without resets: resets that cut
    rows run the segments as another batch, whose matrix products may round otherwise
    (to 1e-12: the test above)."""
    cuts = sorted(data.draw(st.sets(st.integers(1, T - 1), min_size=1)))
    lengths = [T, data.draw(st.integers(cuts[-1] + 1, T))]
    _check(_stack(cell, policy, "reference"), (T, cuts, lengths, None, True), exact=True)


def test_a_reset_across_a_chunk_border_is_exact() -> None:
    """A reset at a chunk's first step: the carried state is replaced there."""
    stack = _stack("lstm", "residual", "reference")
    x = torch.randn(6, 2, I, dtype=D)
    r = torch.zeros(6, 2, dtype=torch.bool)
    r[3, 0] = True
    r[4, 1] = True
    y, s = stack(x, resets=r)
    y1, s1 = stack(x[:3], resets=r[:3])
    y2, s2 = stack(x[3:], s1, resets=r[3:])
    _same([y, *rs.leaves(s)], [torch.cat([y1, y2]), *rs.leaves(s2)], exact=False)


def test_handoff_differs_in_chunks_and_warns_with_a_carried_state() -> None:
    stack = _stack("gru", "handoff", "auto").eval()
    x = torch.randn(6, 2, I, dtype=D)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, _ = stack(x)  # no state: no warning (eval mode: no LeakWarning either)
        y1, s1 = stack(x[:3])
    with pytest.warns(rk.routing.CarriedStateWarning, match="not causal") as record:
        y2, _ = stack(x[3:], s1)
    assert record[0].filename == __file__  # points at the user's line
    assert issubclass(rk.routing.CarriedStateWarning, rk.routing.LeakWarning)
    assert (torch.cat([y1, y2]) - y).abs().max() > 1e-3  # differs by construction
    for policy in CAUSAL:
        causal = _stack("gru", policy, "auto")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            causal(x[3:], causal(x[:3])[1])
