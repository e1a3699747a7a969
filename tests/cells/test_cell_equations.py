"""Each cell's step equals the formula in its docstring, written out by hand (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import recurrentkit as rk

B, I, H = 3, 4, 5
D = torch.float64


def sig(t: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-t))


def lin(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x @ w.T + b, written as a product (not F.linear) so the reference is independent."""
    out = x @ w.T
    return out if b is None else out + b


def rows(t: Tensor, k: int) -> list[Tensor]:
    """Split the first axis of a weight/bias into k equal row blocks."""
    n = t.shape[0] // k
    return [t[j * n : (j + 1) * n] for j in range(k)]


def params(cell: torch.nn.Module) -> dict[str, Tensor | None]:
    return {
        "w_ih": cell.weight_ih,
        "w_hh": cell.weight_hh,
        "b_ih": cell.bias_ih,
        "b_hh": cell.bias_hh,
    }


def split4(p: dict[str, Tensor | None]) -> dict[str, list]:
    """Per-gate blocks i, f, g, o of every parameter (None biases stay None)."""
    return {k: (rows(v, 4) if v is not None else [None] * 4) for k, v in p.items()}


def ref_rnn(cell: rk.RNNCell, x: Tensor, h: Tensor) -> Tensor:
    p = params(cell)
    pre = lin(x, p["w_ih"], p["b_ih"]) + lin(h, p["w_hh"], p["b_hh"])
    return torch.tanh(pre) if cell.nonlinearity == "tanh" else torch.clamp(pre, min=0)


def ref_gru(cell: rk.GRUCell, x: Tensor, h: Tensor) -> Tensor:
    p = {k: (rows(v, 3) if v is not None else [None] * 3) for k, v in params(cell).items()}
    (W_ir, W_iz, W_in), (W_hr, W_hz, W_hn) = p["w_ih"], p["w_hh"]
    (b_ir, b_iz, b_in), (b_hr, b_hz, b_hn) = p["b_ih"], p["b_hh"]
    r = sig(lin(x, W_ir, b_ir) + lin(h, W_hr, b_hr))
    z = sig(lin(x, W_iz, b_iz) + lin(h, W_hz, b_hz))
    if cell.reset == "after":
        n = torch.tanh(lin(x, W_in, b_in) + r * lin(h, W_hn, b_hn))
    else:
        n = torch.tanh(lin(x, W_in, b_in) + lin(r * h, W_hn, b_hn))
    return (1 - z) * n + z * h


def lstm_gates(p: dict[str, list], x: Tensor, h: Tensor) -> list[Tensor]:
    return [
        lin(x, p["w_ih"][j], p["b_ih"][j]) + lin(h, p["w_hh"][j], p["b_hh"][j]) for j in range(4)
    ]


def ref_lstm(cell: rk.LSTMCell, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    i, f, g, o = lstm_gates(split4(params(cell)), x, h)
    c = sig(f) * c + sig(i) * torch.tanh(g)
    h = sig(o) * torch.tanh(c)
    if cell.proj_size:
        h = h @ cell.weight_hr.T
    return h, c


def ref_nested(cell: torch.nn.Module, x: Tensor, state: tuple) -> tuple[Tensor, tuple]:
    """Moniz & Krueger's nested LSTM, recursively: returns (h', state')."""
    if isinstance(cell, rk.LSTMCell):
        h, c = ref_lstm(cell, x, state[0], state[1])
        return h, (h, c)
    h, c, inner = state
    i, f, g, o = lstm_gates(split4(params(cell)), x, h)
    inner_x = sig(i) * g  # identity on g at the outer level
    inner_h = sig(f) * c
    c_new, inner_new = ref_nested(cell.inner, inner_x, (inner_h, *inner[1:]))
    h_new = sig(o) * torch.tanh(c_new)
    return h_new, (h_new, c_new, inner_new)


def random_like_state(state: object) -> object:
    if isinstance(state, Tensor):
        return torch.randn_like(state)
    items = [random_like_state(s) for s in state]  # type: ignore[union-attr]
    return type(state)(*items) if hasattr(state, "_fields") else tuple(items)


def assert_states_equal(a: object, b: object) -> None:
    if isinstance(a, Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        return
    assert len(a) == len(b)  # type: ignore[arg-type]
    for x, y in zip(a, b):  # type: ignore[call-overload]
        assert_states_equal(x, y)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_rnn_cell_equation(nonlinearity: str, bias: bool) -> None:
    torch.manual_seed(0)
    cell = rk.RNNCell(I, H, bias=bias, nonlinearity=nonlinearity, dtype=D)
    x, h = torch.randn(B, I, dtype=D), torch.randn(B, H, dtype=D)
    y, h_new = cell(x, h)
    torch.testing.assert_close(y, ref_rnn(cell, x, h), rtol=0, atol=1e-12)
    assert torch.equal(y, h_new)
    if nonlinearity == "relu":
        assert bool((y >= 0).all()) and bool((y == 0).any())


@pytest.mark.parametrize("reset", ["after", "before"])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_cell_equation(reset: str, bias: bool) -> None:
    torch.manual_seed(1)
    cell = rk.GRUCell(I, H, bias=bias, reset=reset, dtype=D)
    x, h = torch.randn(B, I, dtype=D), torch.randn(B, H, dtype=D)
    y, h_new = cell(x, h)
    torch.testing.assert_close(y, ref_gru(cell, x, h), rtol=0, atol=1e-12)
    assert torch.equal(y, h_new)


def test_gru_reset_forms_differ() -> None:
    """The two forms are different functions of the same parameters (with a non-zero h)."""
    torch.manual_seed(2)
    after = rk.GRUCell(I, H, dtype=D)
    before = rk.GRUCell(I, H, reset="before", dtype=D)
    before.load_state_dict(after.state_dict())
    x, h = torch.randn(B, I, dtype=D), torch.randn(B, H, dtype=D)
    assert (after(x, h)[0] - before(x, h)[0]).abs().max() > 1e-3
    # With h = 0 the forms agree only when b_hn = 0: r * b_hn vs b_hn.
    with torch.no_grad():
        after.bias_hh[2 * H :] = 0
        before.bias_hh[2 * H :] = 0
    zero = torch.zeros(B, H, dtype=D)
    torch.testing.assert_close(after(x, zero)[0], before(x, zero)[0], rtol=0, atol=1e-15)


@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cell_equation(proj_size: int, bias: bool) -> None:
    torch.manual_seed(3)
    cell = rk.LSTMCell(I, H, bias=bias, proj_size=proj_size, dtype=D)
    P = proj_size or H
    h, c = torch.randn(B, P, dtype=D), torch.randn(B, H, dtype=D)
    x = torch.randn(B, I, dtype=D)
    y, state = cell(x, rk.LSTMState(h, c))
    h_ref, c_ref = ref_lstm(cell, x, h, c)
    assert isinstance(state, rk.LSTMState)
    assert state.h.shape == (B, P) and state.c.shape == (B, H)
    torch.testing.assert_close(state.h, h_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(state.c, c_ref, rtol=0, atol=1e-12)
    assert torch.equal(y, state.h)
    assert cell.output_size == P


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_nested_lstm_cell_equation(depth: int, bias: bool) -> None:
    torch.manual_seed(4)
    cell = rk.NestedLSTMCell(I, H, depth=depth, bias=bias, dtype=D)
    state = random_like_state(cell.initial_state(B))
    x = torch.randn(B, I, dtype=D)
    y, new = cell(x, state)
    y_ref, new_ref = ref_nested(cell, x, state)  # type: ignore[arg-type]
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    assert_states_equal(new, new_ref)


@pytest.mark.parametrize(
    "make",
    [
        lambda: rk.RNNCell(I, H, dtype=D),
        lambda: rk.GRUCell(I, H, reset="before", dtype=D),
        lambda: rk.LSTMCell(I, H, proj_size=2, dtype=D),
        lambda: rk.NestedLSTMCell(I, H, depth=3, dtype=D),
    ],
)
def test_several_steps_follow_the_formula(make) -> None:
    """Feeding the state back for a few steps keeps matching the reference."""
    torch.manual_seed(5)
    cell = make()
    state = cell.initial_state(B)
    ref_state = state
    for _ in range(4):
        x = torch.randn(B, I, dtype=D)
        y, state = cell(x, state)
        if isinstance(cell, rk.RNNCell):
            y_ref = ref_state = ref_rnn(cell, x, ref_state)
        elif isinstance(cell, rk.GRUCell):
            y_ref = ref_state = ref_gru(cell, x, ref_state)
        elif isinstance(cell, rk.LSTMCell):
            y_ref, c = ref_lstm(cell, x, *ref_state)
            ref_state = (y_ref, c)
        else:
            y_ref, ref_state = ref_nested(cell, x, ref_state)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    assert_states_equal(state, ref_state)
