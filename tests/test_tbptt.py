"""``rk.tbptt`` and ``rk.tbptt_chunks``: truncated backpropagation through time."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.nn import functional as F

import recurrentkit as rk
from recurrentkit import state as rs

D = torch.float64


def _stack(policy: str = "residual") -> rk.Stack:
    torch.manual_seed(0)
    return rk.Stack([rk.LSTMCell(3, 5, dtype=D), rk.LSTMCell(5, 5, dtype=D)], policy)


def _grads(model: torch.nn.Module) -> list[Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _data(T: int = 9, B: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, 3, generator=g, dtype=D)
    y = torch.randn(T, B, 5, generator=g, dtype=D)
    r = torch.rand(T, B, generator=g) < 0.2
    r[4, 0] = True
    return x, y, r


@pytest.mark.parametrize("k", [9, 10, 100])
@pytest.mark.parametrize("with_resets", [False, True])
def test_k_at_least_T_is_full_bptt_exactly(k: int, with_resets: bool) -> None:
    stack = _stack()
    x, y, r = _data()
    resets = r if with_resets else None
    out, state = stack(x, resets=resets)
    full = F.mse_loss(out, y)
    full.backward()
    want = _grads(stack)
    stack.zero_grad()
    result = rk.tbptt(stack, x, k, F.mse_loss, targets=y, resets=resets)
    got = _grads(stack)
    assert len(got) == len(want) == len(list(stack.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert result.chunks == 1 and torch.equal(result.loss, full.detach())
    assert all(torch.equal(a, b) for a, b in zip(rs.leaves(result.state), rs.leaves(state)))
    assert not any(t.requires_grad for t in rs.leaves(result.state))


def _by_hand(model: Any, x: Tensor, y: Tensor, k: int, resets: Tensor | None, opt: Any = None):
    """The loop tbptt stands for, written out."""
    state, total = None, 0.0
    for t0 in range(0, x.shape[0], k):
        kw = {} if resets is None else {"resets": resets[t0 : t0 + k]}
        out, state = model(x[t0 : t0 + k], state, **kw)
        loss = F.mse_loss(out, y[t0 : t0 + k])
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad()
        state = rs.detach(state)
        total += loss.item()
    return total, state


@pytest.mark.parametrize("k", [1, 2, 4])
def test_short_chunks_truncate_the_gradient(k: int) -> None:
    stack = _stack()
    x, y, r = _data()
    total, _ = _by_hand(stack, x, y, k, r)
    want = _grads(stack)
    stack.zero_grad()
    result = rk.tbptt(stack, x, k, F.mse_loss, targets=y, resets=r)
    assert result.chunks == -(-9 // k)
    assert all(torch.equal(a, b) for a, b in zip(_grads(stack), want))
    assert abs(result.loss.item() - total) < 1e-12
    stack.zero_grad()
    F.mse_loss(stack(x, resets=r)[0], y).backward()  # full BPTT differs (not vacuous)
    assert any((a - b).abs().max() > 1e-6 for a, b in zip(_grads(stack), want))


def test_the_state_is_cut_between_chunks() -> None:
    """No gradient of a later chunk's loss reaches an earlier chunk's inputs."""
    stack = _stack()
    x, y, _ = _data()
    x = x.clone().requires_grad_()
    rk.tbptt(stack, x, 3, lambda out: out[-1].sum())  # a loss on each chunk's last step
    assert x.grad is not None
    x2 = x.detach()[:3].clone().requires_grad_()
    stack(x2)[0][-1].sum().backward()  # the first chunk alone
    assert torch.equal(x.grad[:3], x2.grad)


def test_an_optimizer_steps_after_every_chunk() -> None:
    a, b = _stack(), _stack()
    x, y, r = _data()
    _by_hand(a, x, y, 4, r, torch.optim.SGD(a.parameters(), lr=0.1))
    rk.tbptt(
        b, x, 4, F.mse_loss, targets=y, resets=r, optimizer=torch.optim.SGD(b.parameters(), lr=0.1)
    )
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(p.grad is None or not p.grad.any() for p in b.parameters())  # zeroed


def test_a_stream_of_batches_carries_the_state_and_dropins_work() -> None:
    gru = rk.GRU(3, 5, num_layers=2, batch_first=True, dtype=D)
    x, y, r = _data(T=8)
    xb, yb, rb = x.transpose(0, 1), y.transpose(0, 1), r.t()
    first = rk.tbptt(
        gru, xb[:, :4], 2, F.mse_loss, targets=yb[:, :4], resets=rb[:, :4], batch_first=True
    )
    second = rk.tbptt(
        gru, xb[:, 4:], 2, F.mse_loss, targets=yb[:, 4:], state=first.state, resets=rb[:, 4:],
        batch_first=True,
    )  # fmt: skip
    _, h = gru(xb, resets=rb)
    assert (second.state - h).abs().max() < 1e-12  # the stream's state is the whole run's


def test_chunks_slice_every_argument_along_time() -> None:
    x = torch.arange(2 * 7 * 1.0).view(2, 7, 1)  # (B, T, 1)
    r = torch.zeros(2, 7, dtype=torch.bool)
    cs = list(rk.tbptt_chunks(x, 3, targets=x * 2, resets=r, batch_first=True))
    assert [(c.start, c.stop) for c in cs] == [(0, 3), (3, 6), (6, 7)]
    assert torch.equal(torch.cat([c.x for c in cs], 1), x)
    assert torch.equal(cs[1].targets, x[:, 3:6] * 2) and cs[2].resets.shape == (2, 1)
    assert [c.x.shape[0] for c in rk.tbptt_chunks(torch.zeros(5, 3), 2)] == [2, 2, 1]
    with pytest.raises(rk.ConfigError, match="k"):
        list(rk.tbptt_chunks(x, 0))
    with pytest.raises(rk.ShapeError, match="resets"):
        list(rk.tbptt_chunks(x, 2, resets=r[:, :5], batch_first=True))
    with pytest.raises(rk.InputTypeError, match="x"):
        list(rk.tbptt_chunks([1.0, 2.0], 2))
    with pytest.raises(rk.ShapeError, match="non-empty"):
        list(rk.tbptt_chunks(torch.zeros(0, 2, 3), 2))


# -- lengths ------------------------------------------------------------------------------

LENGTHS = torch.tensor([9, 4, 1, 6])


@pytest.mark.parametrize("k", [9, 50])
@pytest.mark.parametrize("with_resets", [False, True])
def test_lengths_with_k_at_least_T_is_the_call_with_lengths_exactly(
    k: int, with_resets: bool
) -> None:
    stack = _stack()
    x, y, r = _data(B=4)
    resets = r if with_resets else None
    out, state = stack(x, lengths=LENGTHS, resets=resets)
    full = F.mse_loss(out, y)
    full.backward()
    want = _grads(stack)
    stack.zero_grad()
    result = rk.tbptt(stack, x, k, F.mse_loss, targets=y, resets=resets, lengths=LENGTHS)
    assert all(torch.equal(a, b) for a, b in zip(_grads(stack), want))
    assert result.chunks == 1 and torch.equal(result.loss, full.detach())
    assert all(torch.equal(a, b) for a, b in zip(rs.leaves(result.state), rs.leaves(state)))


@settings(max_examples=15)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    k=st.integers(1, 8),
    batch_first=st.booleans(),
    with_resets=st.booleans(),
)
def test_lengths_in_chunks_stop_each_row_at_its_end(
    lengths: list[int], k: int, batch_first: bool, with_resets: bool
) -> None:
    """Chunked with the state carried, each chunk's outputs are the whole call's (zeros
    past each row's end), the final state is the whole call's (a row's state stays at
    its end through later chunks), and chunks past every end do not run."""
    stack = _stack("independent")
    stack.batch_first = batch_first
    B = len(lengths)
    x, _, r = _data(B=B)
    lens = torch.tensor(lengths)
    resets = r if with_resets else None
    if batch_first:
        x, resets = x.transpose(0, 1), None if resets is None else resets.t()
    with torch.no_grad():
        want, final = stack(x, lengths=lens, resets=resets)
    pieces: list[Tensor] = []

    def keep(out: Tensor) -> Tensor:
        pieces.append(out.detach())
        return out.square().mean()

    result = rk.tbptt(stack, x, k, keep, resets=resets, lengths=lens, batch_first=batch_first)
    assert result.chunks == -(-max(lengths) // k)
    got = torch.cat(pieces, 1 if batch_first else 0)  # up to the longest row
    T_used = got.shape[1 if batch_first else 0]
    assert T_used == min(9, result.chunks * k)
    ref = want[:, :T_used] if batch_first else want[:T_used]
    assert (got - ref).abs().max() <= 1e-12
    for a, b in zip(rs.leaves(result.state), rs.leaves(final)):
        assert (a - b).abs().max() <= 1e-12


def test_chunks_carry_each_rows_steps_and_bad_lengths_are_refused() -> None:
    x = torch.zeros(7, 3, 1)
    cs = list(rk.tbptt_chunks(x, 3, lengths=torch.tensor([5, 1, 3])))
    assert [c.lengths.tolist() for c in cs] == [[3, 1, 3], [2, 0, 0]]  # none past step 5
    with pytest.raises(rk.ShapeError, match="lengths"):
        list(rk.tbptt_chunks(x, 3, lengths=torch.tensor([5, 0, 3])))
    with pytest.raises(rk.ShapeError, match="lengths"):
        list(rk.tbptt_chunks(x, 3, lengths=torch.tensor([5, 8, 3])))
    with pytest.raises(rk.ShapeError, match="lengths"):
        list(rk.tbptt_chunks(x, 3, lengths=torch.tensor([5, 3])))
    with pytest.raises(rk.InputTypeError, match="lengths"):
        list(rk.tbptt_chunks(x, 3, lengths=torch.tensor([5.0, 1.0, 3.0])))
    with pytest.raises(rk.ConfigError, match="lengths"):
        list(rk.tbptt_chunks(torch.zeros(7, 1), 3, lengths=torch.tensor([5])))
