"""Cells equal torch.nn's cells: outputs, states and every gradient, after load_state_dict."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import recurrentkit as rk

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")


def cotangent_loss(outputs: list[Tensor], seed: int) -> Tensor:
    """A random linear function of every output: its gradient reaches all of them."""
    gen = torch.Generator().manual_seed(seed)
    return sum(  # type: ignore[return-value]
        (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs
    )


def assert_same(ours: list[Tensor], theirs: list[Tensor], tol: float) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)


def leaf(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    return torch.randn(shape, dtype=dtype).requires_grad_()


def run_both(
    ours: nn.Module,
    theirs: nn.Module,
    xs: list[Tensor],
    state: list[Tensor],
    step_theirs,  # (module, x, state list) -> (outputs to compare, new state list)
    step_ours,
    dtype: torch.dtype,
    rename=lambda name: name,  # torch's parameter name -> ours
) -> None:
    """Step both cells over ``xs``; compare outputs, states and all gradients."""
    outs_o, outs_t = [], []
    s_o, s_t = state, state
    for x in xs:
        y_o, s_o = step_ours(ours, x, s_o)
        y_t, s_t = step_theirs(theirs, x, s_t)
        outs_o += [y_o, *s_o]
        outs_t += [y_t, *s_t]
    tol = TOL[dtype]
    assert_same(outs_o, outs_t, tol)
    names = [n for n, _ in theirs.named_parameters()]
    p_o = dict(ours.named_parameters())
    p_t = dict(theirs.named_parameters())
    wrt_o = [*xs, *state, *(p_o[rename(n)] for n in names)]
    wrt_t = [*xs, *state, *(p_t[n] for n in names)]
    g_o = torch.autograd.grad(cotangent_loss(outs_o, 0), wrt_o)
    g_t = torch.autograd.grad(cotangent_loss(outs_t, 0), wrt_t)
    assert_same(list(g_o), list(g_t), tol)


sizes = st.integers(1, 6)
batches = st.integers(1, 4)
steps = st.integers(1, 3)
dtypes = st.sampled_from([torch.float64, torch.float64, torch.float32])


def xs_for(T: int, B: int, I: int, unbatched: bool, dtype: torch.dtype) -> list[Tensor]:
    return [leaf((I,) if unbatched else (B, I), dtype) for _ in range(T)]


def _step_torch_h(m, x, s):
    """One step of a torch cell whose state is one tensor ``h``."""
    h = m(x, s[0])
    return h, [h]


def _step_ours_h(m, x, s):
    """One step of a recurrentkit cell whose state is one tensor ``h``."""
    y, h = m(x, s[0])
    return y, [h]


@given(
    I=sizes,
    H=sizes,
    B=batches,
    T=steps,
    bias=st.booleans(),
    nonlinearity=st.sampled_from(["tanh", "relu"]),
    unbatched=st.booleans(),
    dtype=dtypes,
)
def test_rnn_cell_equals_torch(I, H, B, T, bias, nonlinearity, unbatched, dtype) -> None:
    theirs = nn.RNNCell(I, H, bias, nonlinearity, dtype=dtype)
    ours = rk.RNNCell(I, H, bias, nonlinearity, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    h0 = leaf((H,) if unbatched else (B, H), dtype)
    run_both(
        ours, theirs, xs_for(T, B, I, unbatched, dtype), [h0], _step_torch_h, _step_ours_h, dtype
    )


@given(I=sizes, H=sizes, B=batches, T=steps, bias=st.booleans(), unbatched=st.booleans(),
       dtype=dtypes)  # fmt: skip
def test_gru_cell_equals_torch(I, H, B, T, bias, unbatched, dtype) -> None:
    theirs = nn.GRUCell(I, H, bias, dtype=dtype)
    ours = rk.GRUCell(I, H, bias, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    h0 = leaf((H,) if unbatched else (B, H), dtype)
    run_both(
        ours, theirs, xs_for(T, B, I, unbatched, dtype), [h0], _step_torch_h, _step_ours_h, dtype
    )


@given(I=sizes, H=sizes, B=batches, T=steps, bias=st.booleans(), unbatched=st.booleans(),
       dtype=dtypes)  # fmt: skip
def test_lstm_cell_equals_torch(I, H, B, T, bias, unbatched, dtype) -> None:
    theirs = nn.LSTMCell(I, H, bias, dtype=dtype)
    ours = rk.LSTMCell(I, H, bias, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    shape = (H,) if unbatched else (B, H)
    h0, c0 = leaf(shape, dtype), leaf(shape, dtype)

    def step_t(m, x, s):
        h, c = m(x, tuple(s))
        return h, [h, c]

    def step_o(m, x, s):
        y, state = m(x, rk.LSTMState(*s))
        return y, list(state)

    run_both(ours, theirs, xs_for(T, B, I, unbatched, dtype), [h0, c0], step_t, step_o, dtype)


@st.composite
def projected(draw):
    H = draw(st.integers(2, 6))
    return H, draw(st.integers(1, H - 1))


@given(I=sizes, HP=projected(), B=batches, T=steps, bias=st.booleans(), dtype=dtypes)
def test_projected_lstm_cell_equals_one_step_of_torch_lstm(I, HP, B, T, bias, dtype) -> None:
    # torch.nn.LSTMCell has no proj_size: one step of nn.LSTM(proj_size=P) is the reference.
    H, P = HP
    theirs = nn.LSTM(I, H, bias=bias, proj_size=P, dtype=dtype)
    ours = rk.LSTMCell(I, H, bias, proj_size=P, dtype=dtype)
    ours.load_state_dict({k.removesuffix("_l0"): v for k, v in theirs.state_dict().items()})
    h0, c0 = leaf((B, P), dtype), leaf((B, H), dtype)

    def step_t(m, x, s):
        y, (h, c) = m(x[None], (s[0][None], s[1][None]))
        return y[0], [h[0], c[0]]

    def step_o(m, x, s):
        y, state = m(x, rk.LSTMState(*s))
        return y, list(state)

    xs = xs_for(T, B, I, False, dtype)
    rename = lambda name: name.removesuffix("_l0")  # noqa: E731
    run_both(ours, theirs, xs, [h0, c0], step_t, step_o, dtype, rename)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda: rk.RNNCell(3, 4, nonlinearity="relu"), lambda: nn.RNNCell(3, 4, True, "relu")),
        (lambda: rk.GRUCell(3, 4, bias=False), lambda: nn.GRUCell(3, 4, bias=False)),
        (lambda: rk.LSTMCell(3, 4), lambda: nn.LSTMCell(3, 4)),
    ],
)
def test_state_dicts_load_both_ways(ours, theirs) -> None:
    a, b = ours(), theirs()
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    a.load_state_dict(b.state_dict())  # strict: same keys, same shapes
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    with torch.no_grad():
        for p in a.parameters():
            p.mul_(-2.0)
    b.load_state_dict(a.state_dict())
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
