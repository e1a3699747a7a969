"""``recurrentkit.state``: functions over any state (a tensor, or nested tuples and
NamedTuples of tensors) that keep its structure."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import recurrentkit as rk
from recurrentkit import state as rs

KINDS = ["tensor", "lstm", "nested", "stack"]


def _make(kind: str, B: int, W: int, seed: int) -> Any:
    g = torch.Generator().manual_seed(seed)

    def t(w: int = W) -> torch.Tensor:
        return torch.randn(B, w, generator=g, dtype=torch.float64)

    if kind == "tensor":
        return t()
    if kind == "lstm":
        return rk.LSTMState(t(), t())
    if kind == "nested":
        return rk.NestedLSTMState(t(), t(), rk.LSTMState(t(), t(W + 1)))
    return (t(), rk.LSTMState(t(), t()), (t(2),))  # a stack's tuple of per-layer states


def _structure(s: Any) -> Any:
    if isinstance(s, torch.Tensor):
        return ("T", tuple(s.shape[1:]), s.dtype)
    return (type(s), tuple(_structure(x) for x in s))


states = st.builds(
    _make, st.sampled_from(KINDS), st.integers(1, 4), st.integers(1, 3), st.integers(0, 99)
)


@given(s=states)
def test_map_keeps_the_structure_and_visits_every_tensor(s: Any) -> None:
    out = rs.map(lambda t: t * 2, s)
    assert _structure(out) == _structure(s)
    assert all(torch.equal(a, b * 2) for a, b in zip(rs.leaves(out), rs.leaves(s)))
    assert len(rs.leaves(s)) == str(_structure(s)).count("'T'")


@given(s=states)
def test_zip_combines_states_of_one_structure(s: Any) -> None:
    total = rs.zip(torch.add, s, s)
    assert _structure(total) == _structure(s)
    assert all(torch.equal(a, b + b) for a, b in zip(rs.leaves(total), rs.leaves(s)))


def test_structures_that_differ_are_a_state_error() -> None:
    a = rk.LSTMState(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(rk.StateError, match="state"):
        rs.zip(torch.add, a, torch.zeros(2, 3))
    with pytest.raises(rk.StateError, match="got a tuple of 2 elements"):
        rs.zip(torch.add, (a,), (a, a))
    with pytest.raises(rk.InputTypeError, match="state"):
        rs.map(torch.neg, {"h": torch.zeros(1)})


@given(s=states)
def test_detach_cuts_the_graph_and_keeps_the_values(s: Any) -> None:
    s = rs.map(lambda t: t.clone().requires_grad_(), s)
    d = rs.detach(s)
    assert _structure(d) == _structure(s)
    for a, b in zip(rs.leaves(d), rs.leaves(s)):
        assert not a.requires_grad and a.grad_fn is None
        assert torch.equal(a, b) and a.data_ptr() == b.data_ptr()  # no copy


@given(s=states)
def test_zeros_like_and_to(s: Any) -> None:
    z = rs.zeros_like(s)
    assert _structure(z) == _structure(s)
    assert all(bool((t == 0).all()) for t in rs.leaves(z))
    f = rs.to(s, torch.float32)
    assert all(a.dtype == torch.float32 for a in rs.leaves(f))
    assert all(torch.equal(a, b.float()) for a, b in zip(rs.leaves(f), rs.leaves(s)))
    assert _structure(rs.to(f, dtype=torch.float64)) == _structure(s)


@given(s=states, data=st.data())
def test_index_picks_rows_and_cat_puts_them_back(s: Any, data: Any) -> None:
    B = rs.leaves(s)[0].shape[0]
    rows = data.draw(st.lists(st.integers(0, B - 1), max_size=6))
    picked = rs.index(s, torch.tensor(rows, dtype=torch.long))
    assert _structure(picked) == _structure(s)
    for a, b in zip(rs.leaves(picked), rs.leaves(s)):
        assert torch.equal(a, b[rows])
    cut = data.draw(st.integers(0, B))
    again = rs.cat([rs.index(s, slice(0, cut)), rs.index(s, slice(cut, B))])
    assert all(torch.equal(a, b) for a, b in zip(rs.leaves(again), rs.leaves(s)))
    one = rs.index(s, 0)  # an int drops the batch axis
    assert all(a.dim() == b.dim() - 1 for a, b in zip(rs.leaves(one), rs.leaves(s)))


@given(s=states, data=st.data())
def test_reset_replaces_exactly_the_masked_rows(s: Any, data: Any) -> None:
    B = rs.leaves(s)[0].shape[0]
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=B, max_size=B)))
    to_zero = rs.reset(s, mask)
    init = rs.map(lambda t: torch.full_like(t[:1], 7.0), s)  # (1, ·): broadcast
    to_init = rs.reset(s, mask, init)
    assert _structure(to_zero) == _structure(s) == _structure(to_init)
    for z, i, orig in zip(rs.leaves(to_zero), rs.leaves(to_init), rs.leaves(s)):
        assert torch.equal(z[~mask], orig[~mask]) and torch.equal(i[~mask], orig[~mask])
        assert bool((z[mask] == 0).all()) and bool((i[mask] == 7).all())


def test_reset_gradients_and_bad_masks() -> None:
    h = torch.randn(3, 2, requires_grad=True)
    init = torch.randn(1, 2, requires_grad=True)
    out = rs.reset(h, torch.tensor([True, False, True]), init)
    out.sum().backward()
    assert h.grad is not None and h.grad[:, 0].tolist() == [0.0, 1.0, 0.0]
    assert init.grad is not None and init.grad.tolist() == [[2.0, 2.0]]
    with pytest.raises(rk.InputTypeError, match="mask: expected a bool tensor"):
        rs.reset(h, torch.tensor([1, 0, 1]))
    with pytest.raises(rk.ShapeError, match=r"mask: expected shape \(3,\)"):
        rs.reset(h, torch.tensor([True, False]))
    with pytest.raises(rk.ShapeError, match="mask"):
        rs.reset(h, torch.ones(3, 2, dtype=torch.bool))
    unbatched = rs.reset(torch.ones(4), torch.tensor(True))  # () mask, unbatched state
    assert torch.equal(unbatched, torch.zeros(4))


def test_none_parts_stay_none() -> None:
    s = (torch.ones(2, 1), None)
    assert rs.map(torch.neg, s)[1] is None
    assert rs.leaves(s) == [s[0]]
