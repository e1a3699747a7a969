"""Nested LSTM specifics: parameter names, biases at every depth, state layout, inner wiring."""

from __future__ import annotations

import pytest
import torch

import recurrentkit as rk

B, I, H = 2, 3, 4
D = torch.float64


def test_parameter_names_and_shapes_depth_2() -> None:
    cell = rk.NestedLSTMCell(I, H)
    shapes = {n: tuple(p.shape) for n, p in cell.named_parameters()}
    assert shapes == {
        "weight_ih": (4 * H, I),
        "weight_hh": (4 * H, H),
        "bias_ih": (4 * H,),
        "bias_hh": (4 * H,),
        "inner.weight_ih": (4 * H, H),
        "inner.weight_hh": (4 * H, H),
        "inner.bias_ih": (4 * H,),
        "inner.bias_hh": (4 * H,),
    }
    assert isinstance(cell.inner, rk.LSTMCell)
    assert list(cell.state_dict()) == list(shapes)


def test_parameter_names_depth_3() -> None:
    cell = rk.NestedLSTMCell(I, H, depth=3)
    names = [n for n, _ in cell.named_parameters()]
    assert names[:4] == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    assert [n for n in names if n.startswith("inner.inner.")] == [
        "inner.inner.weight_ih",
        "inner.inner.weight_hh",
        "inner.inner.bias_ih",
        "inner.inner.bias_hh",
    ]
    assert isinstance(cell.inner, rk.NestedLSTMCell) and cell.inner.depth == 2
    assert isinstance(cell.inner.inner, rk.LSTMCell)
    assert len(names) == 12


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_bias_false_leaves_no_bias_at_any_depth(depth: int) -> None:
    cell = rk.NestedLSTMCell(I, H, depth=depth, bias=False)
    names = [n for n, _ in cell.named_parameters()]
    assert len(names) == 2 * depth
    assert not [n for n in names if "bias" in n]
    assert all(getattr(m, "bias_ih", None) is None for m in cell.modules())


@pytest.mark.parametrize("depth", [2, 3])
def test_state_structure(depth: int) -> None:
    cell = rk.NestedLSTMCell(I, H, depth=depth)
    _, state = cell(torch.randn(B, I))
    assert type(state) is rk.NestedLSTMState
    assert state._fields == ("h", "c", "inner")
    inner = state.inner
    for _ in range(depth - 2):
        assert type(inner) is rk.NestedLSTMState
        inner = inner.inner
    assert type(inner) is rk.LSTMState
    # The outer memory is the inner cell's new hidden state, at every level.
    assert torch.equal(state.c, state.inner.h)
    if depth == 3:
        assert torch.equal(state.inner.c, state.inner.inner.h)


@pytest.mark.parametrize("depth", [2, 3])
def test_inner_receives_gated_input_and_gated_memory(
    depth: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inner(x = sigma(i) * g, state with h := sigma(f) * c): captured at the call."""
    torch.manual_seed(0)
    cell = rk.NestedLSTMCell(I, H, depth=depth, dtype=D)
    x = torch.randn(B, I, dtype=D)
    h, c = torch.randn(B, H, dtype=D), torch.randn(B, H, dtype=D)
    inner0 = _randomize(cell.inner.initial_state(B))
    seen = {}
    original = cell.inner._step

    def spy(x_in, s_in):
        seen["x"], seen["s"] = x_in, s_in
        out = original(x_in, s_in)
        seen["out"] = out
        return out

    monkeypatch.setattr(cell.inner, "_step", spy)
    y, state = cell(x, rk.NestedLSTMState(h, c, inner0))
    gates = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    i, f, g, o = gates.split(H, dim=1)
    torch.testing.assert_close(seen["x"], torch.sigmoid(i) * g, rtol=0, atol=1e-14)
    torch.testing.assert_close(seen["s"].h, torch.sigmoid(f) * c, rtol=0, atol=1e-14)
    # The other fields of the inner state pass through untouched.
    passed, given = _tensors(seen["s"][1:]), _tensors(inner0[1:])
    assert len(passed) == len(given) and all(a is b for a, b in zip(passed, given))
    inner_h, inner_state = seen["out"]
    assert torch.equal(state.c, inner_h) and state.inner is inner_state
    torch.testing.assert_close(y, torch.sigmoid(o) * torch.tanh(inner_h), rtol=0, atol=1e-14)


def test_incoming_inner_h_is_not_read() -> None:
    torch.manual_seed(1)
    cell = rk.NestedLSTMCell(I, H, dtype=D)
    state = rk.NestedLSTMState(*(torch.randn(B, H, dtype=D) for _ in range(2)), None)
    inner = rk.LSTMState(torch.randn(B, H, dtype=D), torch.randn(B, H, dtype=D))
    x = torch.randn(B, I, dtype=D)
    y1, s1 = cell(x, state._replace(inner=inner))
    y2, s2 = cell(x, state._replace(inner=inner._replace(h=torch.randn(B, H, dtype=D) * 9)))
    assert torch.equal(y1, y2) and torch.equal(s1.c, s2.c)
    # while the inner memory c is read.
    y3, _ = cell(x, state._replace(inner=inner._replace(c=inner.c + 1)))
    assert not torch.allclose(y1, y3)


def test_no_constant_forget_bias() -> None:
    """All parameters zero: every gate is sigma(0) = 1/2, g = 0, nothing else added."""
    cell = rk.NestedLSTMCell(I, H, dtype=D)
    for p in cell.parameters():
        torch.nn.init.zeros_(p)
    c, c_in = torch.randn(B, H, dtype=D), torch.randn(B, H, dtype=D)
    state = rk.NestedLSTMState(torch.zeros(B, H, dtype=D), c, rk.LSTMState(c_in * 0, c_in))
    y, new = cell(torch.randn(B, I, dtype=D), state)
    inner_c = 0.5 * c_in  # inner: f = 1/2, i * tanh(g) = 0
    inner_h = 0.5 * torch.tanh(inner_c)
    torch.testing.assert_close(new.inner.c, inner_c, rtol=0, atol=1e-15)
    torch.testing.assert_close(new.c, inner_h, rtol=0, atol=1e-15)
    torch.testing.assert_close(y, 0.5 * torch.tanh(inner_h), rtol=0, atol=1e-15)


def _tensors(state: object) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in _tensors(s)]  # type: ignore[union-attr]


def _randomize(state: object) -> object:
    if isinstance(state, torch.Tensor):
        return torch.randn_like(state)
    return type(state)(*(_randomize(s) for s in state))  # type: ignore[union-attr]
