"""``Stack.forward(..., resets=)`` and ``Stack.step(..., reset=)``: a reset before step
``t`` of row ``b`` makes the rest of that row run as a new sequence from the initial
state. The proof: a batch with resets equals running each segment on its own from the
initial state and concatenating (float64, outputs, final states, every gradient)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import recurrentkit as rk
from recurrentkit import state as rs

pytestmark = pytest.mark.filterwarnings("ignore::recurrentkit.routing.LeakWarning")

D = torch.float64
TOL = 1e-10
POLICIES = ["independent", "shared", "residual", "cross_layer", "handoff"]
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


def _stack(cell: str, policy: str, executor: str, learned: bool = False) -> rk.Stack:
    torch.manual_seed(11)
    cells = [CELLS[cell](I if k == 0 else H, H) for k in range(2)]
    stack = rk.Stack(
        cells, policy, executor=executor, initial_state="learned" if learned else "zeros"
    )
    with torch.no_grad():  # learned initial states away from zero, so that using them shows
        for p in stack.initial_states.values():
            p.copy_(torch.randn_like(p))
    return stack


def _segments(resets: Tensor, lengths: list[int]) -> list[list[tuple[int, int]]]:
    """Per row, its segments ``(start, end)``: cut at every reset at ``1 <= t < length``."""
    out = []
    for b, n in enumerate(lengths):
        cuts = [t for t in range(1, n) if bool(resets[t, b])]
        bounds = [0, *cuts, n]
        out.append(list(zip(bounds[:-1], bounds[1:])))
    return out


def _by_segments(
    stack: rk.Stack, x: Tensor, state: Any, resets: Tensor, lengths: list[int]
) -> tuple[Tensor, Any]:
    """The definition: each segment run on its own (a batch of one, no lengths) from
    the initial state (a row's first segment: from its given state unless it resets at
    ``t = 0``), outputs concatenated in place (zeros past each length)."""
    T, B = x.shape[:2]
    rows, finals = [], []
    for b, segs in enumerate(_segments(resets, lengths)):
        ys = []
        s_b = None
        for i, (t0, t1) in enumerate(segs):
            start = None
            if i == 0 and not bool(resets[0, b]) and state is not None:
                start = tuple(rs.index(s, slice(b, b + 1)) for s in state)
            y, s_b = stack(x[t0:t1, b : b + 1], start)
            ys.append(y)
        y_b = torch.cat(ys)
        pad = y_b.new_zeros(T - y_b.shape[0], 1, y_b.shape[2])
        rows.append(torch.cat([y_b, pad]))
        finals.append(s_b)
    final = tuple(rs.cat([f[k] for f in finals]) for k in range(stack.num_layers))
    return torch.cat(rows, dim=1), final


def _grads(stack: rk.Stack, run: Any, x: Tensor, state: Any) -> tuple[Tensor, Any, list[Tensor]]:
    """Outputs, final state and every gradient (parameters, x, given state) of a fixed
    random linear loss of ``run(x, state)``."""
    x = x.detach().clone().requires_grad_()
    state = None if state is None else rs.map(lambda t: t.detach().clone().requires_grad_(), state)
    y, final = run(x, state)
    g = torch.Generator().manual_seed(3)
    loss = (y * torch.randn(y.shape, generator=g, dtype=D)).sum()
    for t in rs.leaves(final):
        loss = loss + (t * torch.randn(t.shape, generator=g, dtype=D)).sum()
    leaves = [*stack.parameters(), x, *rs.leaves(state)]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return y, final, [torch.zeros_like(p) if gr is None else gr for p, gr in zip(leaves, grads)]


def _close(a: Any, b: Any) -> None:
    for u, v in zip(rs.leaves(a), rs.leaves(b), strict=True):
        assert u.shape == v.shape
        assert (u - v).abs().max().item() <= TOL if u.numel() else True


@st.composite
def _layouts(draw: Any) -> tuple[int, int, list[bool], list[int] | None, bool]:
    T = draw(st.integers(1, 6))
    B = draw(st.integers(1, 3))
    bits = draw(st.lists(st.booleans(), min_size=T * B, max_size=T * B))
    lengths = draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B))
    return T, B, bits, lengths, draw(st.booleans())


def _check_layout(stack: rk.Stack, layout: tuple[int, int, list[bool], list[int] | None, bool]):
    T, B, bits, lengths, with_state = layout
    torch.manual_seed(T * 10 + B)
    x = torch.randn(T, B, I, dtype=D)
    resets = torch.tensor(bits, dtype=torch.bool).view(T, B)
    state = None
    if with_state:
        state = tuple(rs.map(torch.randn_like, s) for s in stack.initial_state(B, dtype=D))
    lens = lengths if lengths is not None else [T] * B
    len_t = None if lengths is None else torch.tensor(lengths)

    def batched(x: Tensor, s: Any) -> tuple[Tensor, Any]:
        return stack(x, s, lengths=len_t, resets=resets)

    def segmented(x: Tensor, s: Any) -> tuple[Tensor, Any]:
        return _by_segments(stack, x, s, resets, lens)

    y1, s1, g1 = _grads(stack, batched, x, state)
    y2, s2, g2 = _grads(stack, segmented, x, state)
    _close(y1, y2)
    _close(s1, s2)
    _close(g1, g2)


# reset at t = 0 and at the last step, a row with none, lengths cutting off a reset
_F, _T = False, True
_EDGES = (4, 3, [_T, _F, _F, _F, _F, _T, _F, _F, _F, _T, _T, _T], [4, 2, 4], True)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=3)
@given(layout=_layouts())
@example(layout=_EDGES)
@example(layout=(3, 2, [False, False, False, True, True, False], None, False))
def test_resets_equal_segments_run_apart(
    policy: str, cell: str, executor: str, layout: Any
) -> None:
    _check_layout(_stack(cell, policy, executor), layout)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("executor", ["auto", "reference"])
@settings(max_examples=4)
@given(layout=_layouts())
@example(layout=_EDGES)
def test_learned_initial_states_restart(policy: str, executor: str, layout: Any) -> None:
    """After a reset, a learned stack starts from its learned states (gradients reach them)."""
    _check_layout(_stack("lstm", policy, executor, learned=True), layout)


def test_the_edges_layout_has_what_it_claims() -> None:
    T, B, bits, lengths, _ = _EDGES
    r = torch.tensor(bits).view(T, B)
    assert bool(r[0].any()) and bool(r[T - 1].any())  # a reset at t = 0 and at the last step
    assert _segments(r, lengths) == [[(0, 3), (3, 4)], [(0, 2)], [(0, 1), (1, 3), (3, 4)]]


def test_a_reset_changes_the_run() -> None:
    """(The proof above is not vacuous: a reset changes outputs after it, not before.)"""
    stack = _stack("gru", "independent", "auto")
    x = torch.randn(5, 2, I, dtype=D)
    r = torch.zeros(5, 2, dtype=torch.bool)
    r[3, 0] = True
    y0, _ = stack(x)
    y1, _ = stack(x, resets=r)
    _close((y0[:3], y0[:, 1]), (y1[:3], y1[:, 1]))
    assert (y0[3:, 0] - y1[3:, 0]).abs().max() > 1e-3
    y2, _ = stack(x, resets=torch.zeros_like(r))
    assert torch.equal(y0, y2)


@pytest.mark.parametrize("policy", CAUSAL)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_step_reset_equals_forward_resets(policy: str, executor: str) -> None:
    stack = _stack("lstm", policy, executor, learned=True)
    T, B = 5, 3
    x = torch.randn(T, B, I, dtype=D)
    r = torch.rand(T, B) < 0.4
    r[2, 1] = r[0, 0] = True
    state0 = tuple(rs.map(torch.randn_like, s) for s in stack.initial_state(B, dtype=D))
    y, final = stack(x, state0, resets=r)
    s: Any = state0
    for t in range(T):
        y_t, s = stack.step(x[t], s, reset=r[t])
        _close(y_t, y[t])
    _close(s, final)
    # unbatched: a () mask
    y_u, s_u = stack.step(x[0, 0], tuple(rs.index(q, 0) for q in state0), reset=torch.tensor(True))
    y_i, s_i = stack.step(x[0, 0])
    _close((y_u, s_u), (y_i, s_i))


def test_packed_and_batch_first_and_unbatched_layouts() -> None:
    stack = _stack("gru", "residual", "auto")
    T, B = 6, 3
    x = torch.randn(T, B, I, dtype=D)
    r = torch.rand(T, B) < 0.3
    r[3, 0] = True
    lengths = torch.tensor([6, 2, 4])
    y, s = stack(x, lengths=lengths, resets=r)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    yp, sp = stack(packed, resets=r)
    yp_pad, _ = pad_packed_sequence(yp, total_length=T)
    _close((yp_pad, sp), (y, s))
    stack.batch_first = True
    yb, sb = stack(x.transpose(0, 1), lengths=lengths, resets=r.t())
    _close((yb.transpose(0, 1), sb), (y, s))
    stack.batch_first = False
    yu, su = stack(x[:, 0], resets=r[:, 0])
    _close((yu, su), (y[:, 0], tuple(rs.index(q, 0) for q in s)))


def test_explain_reports_segments() -> None:
    stack = _stack("gru", "independent", "auto")
    x = torch.randn(6, 2, I, dtype=D)
    r = torch.zeros(6, 2, dtype=torch.bool)
    assert stack.explain(x, resets=r).plan == stack.explain(x).plan  # nothing cut
    r[0, 1] = True  # a reset at t = 0 cuts nothing either
    assert stack.explain(x, resets=r).plan == stack.explain(x).plan
    r[3, 0] = True
    e = stack.explain(x, resets=r)
    assert e.plan == "segments" and e.inner == "torch_multilayer"
    assert "3 segments" in e.why and "segments -> torch_multilayer" in str(e)
    stack.executor = "handbuilt"
    e = stack.explain(x, resets=r)
    plain = stack.explain(torch.randn(6, 3, I, dtype=D), torch.tensor([3, 3, 6]))  # the segments
    assert e.plan == "segments" and (e.inner, e.layers) == (plain.plan, plain.layers)
    stack.executor = "reference"
    assert stack.explain(x, resets=r).inner == "reference"
    # packed input with resets is padded and runs with lengths, cut or not
    stack.executor = "auto"
    packed = pack_padded_sequence(x, torch.tensor([6, 4]), enforce_sorted=False)
    padded = stack.explain(x, torch.tensor([6, 4]))
    assert stack.explain(packed).plan != padded.plan  # (a plan on the packed rows)
    assert stack.explain(packed, resets=torch.zeros_like(r)).plan == padded.plan
    assert stack.explain(packed, resets=r).plan == "segments"


def test_bad_masks() -> None:
    stack = _stack("gru", "independent", "auto")
    x = torch.randn(4, 2, I, dtype=D)
    good = torch.zeros(4, 2, dtype=torch.bool)
    with pytest.raises(
        rk.InputTypeError, match=r"resets: expected a bool tensor of shape \(4, 2\)"
    ):
        stack(x, resets=good.float())
    with pytest.raises(rk.InputTypeError, match="resets"):
        stack(x, resets=[[True, False]] * 4)
    with pytest.raises(rk.ShapeError, match=r"resets: expected shape \(4, 2\), got \(2, 4\)"):
        stack(x, resets=good.t())
    with pytest.raises(rk.DeviceError, match="resets"):
        stack(x, resets=good.to("meta"))
    with pytest.raises(rk.ShapeError, match="reset"):
        stack.step(x[0], reset=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(rk.InputTypeError, match="reset"):
        stack.step(x[0], reset=torch.zeros(2))
    with pytest.raises(rk.ConfigError, match="resets"):
        stack.explain(x[0], step=True, resets=good[0])
    stack.batch_first = True
    with pytest.raises(rk.ShapeError, match=r"resets: expected shape \(2, 4\)"):
        stack(x.transpose(0, 1), resets=good)


def test_empty_batch_takes_an_empty_mask() -> None:
    stack = _stack("gru", "independent", "auto")
    y, s = stack(torch.randn(4, 0, I, dtype=D), resets=torch.zeros(4, 0, dtype=torch.bool))
    assert y.shape == (4, 0, H) and s[0].shape == (0, H)


# -- the drop-ins: resets= beyond torch's signature ---------------------------------------


def _torch_by_segments(m: torch.nn.Module, x: Tensor, r: Tensor, lens: list[int]) -> Any:
    """``torch.nn``'s module run on each segment apart, from zeros; outputs in place."""
    ys, hs = [], []
    for b, segs in enumerate(_segments(r, lens)):
        parts = [m(x[t0:t1, b : b + 1]) for t0, t1 in segs]
        y_b = torch.cat([p[0] for p in parts])
        ys.append(torch.cat([y_b, y_b.new_zeros(x.shape[0] - y_b.shape[0], *y_b.shape[1:])]))
        hs.append(parts[-1][1])
    h = (
        tuple(torch.cat([q[i] for q in hs], 1) for i in range(2))
        if isinstance(hs[0], tuple)
        else torch.cat(hs, 1)
    )
    return torch.cat(ys, 1), h


@pytest.mark.parametrize("kind", ["GRU", "LSTM", "RNN"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "packed"])
def test_dropins_take_resets(kind: str, bidirectional: bool, layout: str) -> None:
    torch.manual_seed(2)
    m = getattr(rk, kind)(I, H, num_layers=2, bidirectional=bidirectional, dtype=D)
    ref = m.to_torch()
    T, B = 6, 3
    x = torch.randn(T, B, I, dtype=D)
    r = torch.rand(T, B) < 0.3
    r[3, 0] = r[T - 1, 2] = True
    lens = [6, 4, 6] if layout == "packed" else [T] * B
    want_y, want_h = _torch_by_segments(ref, x, r, lens)
    if layout == "packed":
        y, h = m(pack_padded_sequence(x, torch.tensor(lens), enforce_sorted=False), resets=r)
        y = pad_packed_sequence(y, total_length=T)[0]
    elif layout == "batch_first":
        m.batch_first = True
        y, h = m(x.transpose(0, 1), resets=r.t())
        y = y.transpose(0, 1)
    else:
        y, h = m(x, resets=r)
    _close((y, h), (want_y, want_h))
    # gradients reach every parameter as torch's per-segment runs give them
    g = torch.autograd.grad(y.sum() + sum(t.sum() for t in rs.leaves(h)), list(m.parameters()))
    g_ref = torch.autograd.grad(
        want_y.sum() + sum(t.sum() for t in rs.leaves(want_h)), list(ref.parameters())
    )
    _close(list(g), list(g_ref))


def test_dropin_resets_with_hx_and_bad_masks() -> None:
    torch.manual_seed(4)
    m = rk.GRU(I, H, num_layers=2, dtype=D)
    x = torch.randn(5, 2, I, dtype=D)
    h0 = torch.randn(2, 2, H, dtype=D)
    r = torch.zeros(5, 2, dtype=torch.bool)
    y, h = m(x, h0, resets=r)  # no resets: what torch's op gives
    _close(m(x, h0), (y, h))
    r[0, 1] = True  # a reset at t = 0: that row ignores hx
    y, h = m(x, h0, resets=r)
    _close((y[:, 1], h[:, 1]), tuple(q[:, 0] for q in m(x[:, 1:2])))
    _close((y[:, 0], h[:, 0]), tuple(q[:, 0] for q in m(x[:, 0:1], h0[:, 0:1])))
    with pytest.raises(rk.ShapeError, match="resets"):
        m(x, resets=r[:4])
    with pytest.raises(rk.InputTypeError, match="resets"):
        m(x, resets=r.int())


@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_torch_lstm_segments_of_unequal_lengths_run_on_the_kernel(
    learned: bool, with_lengths: bool
) -> None:
    """Under 'auto' on the CPU, torch-exact LSTM layers run segments of unequal lengths
    on their kernel (torch's LSTM op would take its slow packed path): equal to the
    reference executor (outputs, final states, every gradient, float64)."""
    stack = _stack("lstm", "independent", "auto", learned=learned)
    T, B = 7, 3
    x = torch.randn(T, B, I, dtype=D)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[2, 0] = resets[5, 0] = resets[4, 2] = True
    lengths = torch.tensor([7, 3, 6]) if with_lengths else None
    state = tuple(rs.map(torch.randn_like, s) for s in stack.initial_state(B, dtype=D))
    e = stack.explain(x, lengths, resets=resets)
    assert e.plan == "segments" and e.inner == "layers_on_rows"
    assert e.layers == ("kernel", "kernel")
    assert stack.explain(x, lengths).layers != e.layers  # without resets: torch's op

    def run(x: Tensor, s: Any) -> tuple[Tensor, Any]:
        return stack(x, s, lengths=lengths, resets=resets)

    fast = _grads(stack, run, x, state)
    stack.executor = "reference"
    reference = _grads(stack, run, x, state)
    for a, b in zip(fast, reference):
        _close(a, b)
    # segments of one length keep torch's op (oneDNN's padded path on the CPU)
    stack.executor = "auto"
    even = torch.zeros(6, 2, dtype=torch.bool)
    even[3] = True
    assert stack.explain(torch.randn(6, 2, I, dtype=D), resets=even).inner == "torch_multilayer"
