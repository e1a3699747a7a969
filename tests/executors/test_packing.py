"""The packed layout: in and out without loss, last rows, previous rows."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from recurrentkit.executors.packing import schedule


@st.composite
def batches(draw: st.DrawFn) -> tuple[int, list[int] | None]:
    T = draw(st.integers(1, 6))
    B = draw(st.integers(1, 5))
    if draw(st.booleans()):
        return T, [draw(st.integers(1, T)) for _ in range(B)]
    return T, None if draw(st.booleans()) else [T] * B


@given(batches())
def test_pack_unpack_keeps_real_tokens_and_zeros_the_rest(case: tuple) -> None:
    T, lengths = case
    B = len(lengths) if lengths is not None else 3
    x = torch.randn(T, B, 2, dtype=torch.float64)
    lens = None if lengths is None else torch.tensor(lengths)
    sched = schedule(x, lens)
    data = sched.pack(x)
    n_real = T * B if lens is None else int(lens.sum())
    assert data.shape == (n_real, 2) == (sched.total, 2)
    assert list(sched.sizes) == sorted(sched.sizes, reverse=True) and sched.sizes[0] == B
    back = sched.unpack(data)
    mask = torch.ones(T, B, 1) if lens is None else (torch.arange(T)[:, None] < lens)[..., None]
    torch.testing.assert_close(back, x * mask, rtol=0, atol=0)


@given(batches())
def test_last_and_previous_rows(case: tuple) -> None:
    T, lengths = case
    B = len(lengths) if lengths is not None else 3
    lens = torch.full((B,), T) if lengths is None else torch.tensor(lengths)
    x = torch.randn(T, B, 2, dtype=torch.float64)
    sched = schedule(x, None if lengths is None else lens)
    data = sched.pack(x)
    # last: each sequence's row at its last step (sorted order in, original order out)
    last = sched.unsort_state(sched.last(data))
    expected = torch.stack([x[int(lens[b]) - 1, b] for b in range(B)])
    torch.testing.assert_close(last, expected, rtol=0, atol=0)
    # previous: step t's rows read step t-1's rows of the same sequences (first at t = 0)
    first = torch.randn(B, 2, dtype=torch.float64)
    prev = sched.unpack(sched.previous(sched.sort_state(first), data))  # (T, B, 2)
    whole = sched.previous(sched.sort_state(first), data)  # (N, 2)
    blocks = sched.previous_blocks(sched.sort_state(first), data)
    torch.testing.assert_close(torch.cat([t for _, t in blocks]), whole, rtol=0, atol=0)
    for b in range(B):
        torch.testing.assert_close(prev[0, b], first[b], rtol=0, atol=0)
        for t in range(1, int(lens[b])):
            torch.testing.assert_close(prev[t, b], x[t - 1, b], rtol=0, atol=0)


def test_equal_lengths_use_the_plain_layout() -> None:
    x = torch.randn(4, 3, 2)
    sched = schedule(x, torch.tensor([4, 4, 4]))
    assert sched.uniform and sched.pack(x).data_ptr() == x.data_ptr()
