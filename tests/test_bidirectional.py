"""Bidirectional: each sequence read backwards within its own length, outputs concatenated."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import recurrentkit as rk
from recurrentkit.bidirectional import Bidirectional, reverse_within_lengths


@given(data=st.data())
def test_reverse_within_lengths_flips_each_prefix_and_keeps_padding(data) -> None:
    T, B = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 4))
    lengths = torch.tensor(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    x = torch.randn(T, B, 3)
    out = reverse_within_lengths(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(out[:n, b], x[:n, b].flip(0))
        assert torch.equal(out[n:, b], x[n:, b])
    assert torch.equal(reverse_within_lengths(out, lengths), x)
    assert torch.equal(reverse_within_lengths(x), x.flip(0))


@given(data=st.data())
def test_backward_direction_is_the_backward_stack_on_each_reversed_sequence(data) -> None:
    # The definition, one sequence at a time: no padding, no masking involved.
    T, B = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    lengths = data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    torch.manual_seed(data.draw(st.integers(0, 100)))
    fwd = rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 2)]).double()
    bwd = rk.Stack([rk.LSTMCell(3, 5, proj_size=2)]).double()
    bi = Bidirectional(fwd, bwd)
    x = torch.randn(T, B, 3, dtype=torch.float64)
    y, (s_f, s_b) = bi(x, lengths=torch.tensor(lengths))
    assert y.shape == (T, B, 4)
    for b, n in enumerate(lengths):
        seq = x[:n, b]  # (n, I), unbatched
        y_f, sf_b = fwd(seq)
        y_r, sb_b = bwd(seq.flip(0))
        torch.testing.assert_close(y[:n, b], torch.cat([y_f, y_r.flip(0)], -1), rtol=0, atol=1e-12)
        assert torch.count_nonzero(y[n:, b]) == 0
        torch.testing.assert_close(s_f[1][b], sf_b[1], rtol=0, atol=1e-12)
        torch.testing.assert_close(s_b[0].c[b], sb_b[0].c, rtol=0, atol=1e-12)


def test_unbatched_and_explicit_state() -> None:
    bi = Bidirectional(rk.Stack([rk.RNNCell(3, 4)]), rk.Stack([rk.RNNCell(3, 4)]))
    x = torch.randn(5, 3)
    state = ((torch.randn(4),), (torch.randn(4),))
    y, (s_f, s_b) = bi(x, state)
    y_b, s_bb = bi(x[:, None], tuple(((s[0][None],)) for s in state))
    torch.testing.assert_close(y, y_b[:, 0])
    torch.testing.assert_close(s_b[0], s_bb[1][0][0])
    assert bi.input_size == 3 and bi.output_size == 8


def test_bad_parts_and_state_raise() -> None:
    gru = rk.Stack([rk.GRUCell(3, 4)])
    with pytest.raises(rk.InputTypeError, match="backward_stack"):
        Bidirectional(gru, rk.GRUCell(3, 4))
    with pytest.raises(rk.ConfigError, match=r"backward_stack.batch_first: expected True"):
        Bidirectional(rk.Stack([rk.GRUCell(3, 4)], batch_first=True), gru)
    with pytest.raises(rk.ConfigError, match="backward_stack.input_size"):
        Bidirectional(gru, rk.Stack([rk.GRUCell(2, 4)]))
    bi = Bidirectional(gru, rk.Stack([rk.GRUCell(3, 4)]))
    with pytest.raises(rk.StateError, match="state"):
        bi(torch.randn(5, 2, 3), torch.zeros(2, 4))
    with pytest.raises(rk.ShapeError, match="x"):
        bi(torch.randn(5, 2, 2))


@pytest.mark.parametrize("executor", ["auto", "handbuilt", "reference"])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_input_equals_padded_with_lengths(executor: str, enforce_sorted: bool) -> None:
    torch.manual_seed(3)
    fwd = rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 4)], executor=executor).double()
    bwd = rk.Stack([rk.LSTMCell(3, 5)], executor=executor).double()
    bi = Bidirectional(fwd, bwd)
    lengths = torch.tensor([5, 4, 2] if enforce_sorted else [2, 5, 4])
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    y_p, (s_f, s_b) = bi(packed)
    assert isinstance(y_p, torch.nn.utils.rnn.PackedSequence)
    assert torch.equal(y_p.batch_sizes, packed.batch_sizes)
    y_pad, _ = torch.nn.utils.rnn.pad_packed_sequence(y_p)  # original batch order
    y, (r_f, r_b) = bi(x, lengths=lengths)
    torch.testing.assert_close(y_pad, y, rtol=0, atol=0)
    for a, b in zip((s_f[1], s_b[0].h, s_b[0].c), (r_f[1], r_b[0].h, r_b[0].c)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    (g_packed,) = torch.autograd.grad(y_p.data.sum(), x)
    (g_padded,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g_packed, g_padded, rtol=0, atol=1e-12)
    with pytest.raises(rk.ConfigError, match="lengths"):
        bi(packed, lengths=lengths)


@pytest.mark.parametrize("packed", [False, True])
def test_batch_first_stacks_make_a_batch_first_module(packed: bool) -> None:
    torch.manual_seed(4)
    tm = Bidirectional(rk.Stack([rk.GRUCell(3, 4)]), rk.Stack([rk.LSTMCell(3, 2)])).double()
    bf = Bidirectional(
        rk.Stack([rk.GRUCell(3, 4)], batch_first=True),
        rk.Stack([rk.LSTMCell(3, 2)], batch_first=True),
    ).double()
    bf.load_state_dict(tm.state_dict())
    assert bf.batch_first and not tm.batch_first
    x = torch.randn(5, 3, 3, dtype=torch.float64)  # (T, B, I)
    lengths = torch.tensor([5, 2, 4])
    y, (s_f, s_b) = tm(x, lengths=lengths)
    if packed:
        y_bf, (f_bf, b_bf) = bf(
            torch.nn.utils.rnn.pack_padded_sequence(
                x.transpose(0, 1), lengths, batch_first=True, enforce_sorted=False
            )
        )
        y_bf, _ = torch.nn.utils.rnn.pad_packed_sequence(y_bf, batch_first=True)
    else:
        y_bf, (f_bf, b_bf) = bf(x.transpose(0, 1), lengths=lengths)  # (B, T, I)
    torch.testing.assert_close(y_bf, y.transpose(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(f_bf[0], s_f[0], rtol=0, atol=0)
    torch.testing.assert_close(b_bf[0].c, s_b[0].c, rtol=0, atol=0)
    y1, _ = bf(x[:, 0])  # unbatched input is (T, I) in either layout
    torch.testing.assert_close(y1, tm(x[:, 0])[0], rtol=0, atol=0)


# -- resets ------------------------------------------------------------------------------


def _bi(batch_first: bool = False) -> Bidirectional:
    fwd = rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 2)], batch_first=batch_first).double()
    bwd = rk.Stack(
        [rk.LSTMCell(3, 5, proj_size=2)], batch_first=batch_first, initial_state="learned"
    ).double()
    with torch.no_grad():  # learned initial states that are not zeros
        for p in bwd.initial_states.values():
            p.normal_()
    return Bidirectional(fwd, bwd)


def _grads_of(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors, allow_unused=True, materialize_grads=True))


@given(data=st.data())
def test_resets_equal_each_segment_run_apart(data) -> None:
    """The definition: each row cut at its resets, each segment through the module on its
    own (a row's first from the given state, later ones from the initial states), outputs
    in place, final states from each row's last segment; forward and every gradient."""
    T, B = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 3))
    lengths = data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    cuts = data.draw(st.lists(st.lists(st.integers(0, T - 1), max_size=3), min_size=B, max_size=B))
    with_lengths, with_state = data.draw(st.booleans()), data.draw(st.booleans())
    torch.manual_seed(data.draw(st.integers(0, 100)))
    bi = _bi()
    x = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True)
    resets = torch.zeros(T, B, dtype=torch.bool)
    for b, ts in enumerate(cuts):
        resets[ts, b] = True
    state = None
    if with_state:
        state = (
            (torch.randn(B, 4, dtype=torch.float64), torch.randn(B, 2, dtype=torch.float64)),
            (rk.LSTMState(torch.randn(B, 2).double(), torch.randn(B, 5).double()),),
        )
    lens = torch.tensor(lengths) if with_lengths else None
    y, (s_f, s_b) = bi(x, state, lengths=lens, resets=resets)
    params = [x, *bi.parameters()]
    w = torch.randn_like(y)
    got = _grads_of((y * w).sum() + s_f[1].sum() + s_b[0].c.sum(), params)
    # the segments, run apart
    outs, finals = [], []
    for b in range(B):
        end = lengths[b] if with_lengths else T
        starts = sorted({0, *(t for t in cuts[b] if 0 < t < end)})
        row = torch.zeros(T, 4, dtype=torch.float64)
        for i, t0 in enumerate(starts):
            t1 = starts[i + 1] if i + 1 < len(starts) else end
            given = state is not None and i == 0 and not resets[0, b]
            s0 = None
            if given:
                s0 = tuple(tuple(rk.state.index(s, b) for s in part) for part in state)
            y_seg, fin = bi(x[t0:t1, b], s0)  # unbatched: one segment
            row = row.index_put((torch.arange(t0, t1),), y_seg)
        outs.append(row)
        finals.append(fin)
    want_y = torch.stack(outs, 1)
    torch.testing.assert_close(y, want_y, rtol=0, atol=1e-10)
    want_f1 = torch.stack([f[0][1] for f in finals])
    want_c = torch.stack([f[1][0].c for f in finals])
    torch.testing.assert_close(s_f[1], want_f1, rtol=0, atol=1e-10)
    torch.testing.assert_close(s_b[0].c, want_c, rtol=0, atol=1e-10)
    want = _grads_of((want_y * w).sum() + want_f1.sum() + want_c.sum(), params)
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a, b_, rtol=0, atol=1e-10)


def test_handoff_with_resets_warns_only_of_a_state_the_caller_carried() -> None:
    """Resets run the segments with states the caller did not carry: no
    CarriedStateWarning for them; a given state warns once per handoff stack, as a call
    without resets does."""
    bi = Bidirectional(
        rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 4)], "handoff"),
        rk.Stack([rk.GRUCell(3, 4)]),
    ).eval()
    x = torch.randn(5, 2, 3)
    resets = torch.zeros(5, 2, dtype=torch.bool)
    resets[2, 0] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bi(x, resets=resets)
    assert not [w for w in caught if issubclass(w.category, rk.routing.CarriedStateWarning)]
    state = (bi.forward_stack.initial_state(2), bi.backward_stack.initial_state(2))
    for kw in ({}, {"resets": resets}):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bi(x, state, **kw)
        carried = [w for w in caught if issubclass(w.category, rk.routing.CarriedStateWarning)]
        assert len(carried) == 1, kw


@pytest.mark.parametrize("layout", ["batch_first", "packed", "unbatched"])
def test_resets_in_every_layout(layout: str) -> None:
    torch.manual_seed(0)
    bi = _bi(batch_first=layout == "batch_first")
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    resets = torch.zeros(6, 3, dtype=torch.bool)
    resets[2, 0] = resets[4, 1] = resets[1, 2] = True
    lengths = torch.tensor([6, 5, 3])
    want, (wf, wb) = _bi_copy(bi, False)(x, lengths=lengths, resets=resets)
    if layout == "batch_first":
        y, (f, b) = bi(x.transpose(0, 1), lengths=lengths, resets=resets.t())
        y = y.transpose(0, 1)
    elif layout == "packed":
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, (f, b) = bi(packed, resets=resets)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=6)
    else:
        y, (f, b) = bi(x[:, 0], resets=resets[:, 0])
        want, wf, wb = want[:, 0], rk.state.index(wf, 0), rk.state.index(wb, 0)
    torch.testing.assert_close(y, want, rtol=0, atol=1e-12)
    for a, c in zip(rk.state.leaves((f, b)), rk.state.leaves((wf, wb))):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)
    with pytest.raises(rk.ShapeError, match="resets"):
        bi(x if layout != "batch_first" else x.transpose(0, 1), resets=resets[:5])
    with pytest.raises(rk.InputTypeError, match="resets"):
        bi(x, resets=resets.int())
    if layout == "unbatched":  # a state checked as the stacks check it
        with pytest.raises(rk.StateError, match="state"):
            bi(x[:, 0], rk.state.map(lambda t: t[None], (wf, wb)), resets=resets[:, 0])


def _bi_copy(bi: Bidirectional, batch_first: bool) -> Bidirectional:
    """``bi`` with its stacks' layout set to ``batch_first`` (same parameters)."""
    other = _bi(batch_first)
    other.load_state_dict(bi.state_dict())
    return other
