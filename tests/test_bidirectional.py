"""Bidirectional: each sequence read backwards within its own length, outputs concatenated."""

from __future__ import annotations

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
