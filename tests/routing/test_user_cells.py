"""User-written cells (plain nn.Modules following the protocol) and stacks used as cells."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor, nn

import recurrentkit as rk

D = torch.float64
T, B, H = 5, 2, 3
POLICIES = list(rk.routing.POLICIES)
CAUSAL = [p for p, cls in rk.routing.POLICIES.items() if cls.causal]


class LeakyIntegrator(nn.Module):
    """h' = (1 - a) h + a tanh(W x): no input_size/output_size declared."""

    def __init__(self, input_size: int, hidden_size: int, leak: float = 0.3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(hidden_size, input_size, dtype=D) * 0.5)
        self.leak, self.hidden = leak, hidden_size

    def initial_state(self, batch_size: int, *, device: Any = None, dtype: Any = None) -> Tensor:
        return torch.zeros(
            batch_size,
            self.hidden,
            device=device or self.weight.device,
            dtype=dtype or self.weight.dtype,
        )

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if state is None:
            state = self.initial_state(x.shape[0], dtype=x.dtype)
        h = (1 - self.leak) * state + self.leak * torch.tanh(x @ self.weight.T)
        return h, h


class SizedLeakyIntegrator(LeakyIntegrator):
    """The same, declaring its widths (so Stack checks them, and cross_layer can gate)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.input_size, self.output_size = input_size, hidden_size


class MinimalState(NamedTuple):
    h: Tensor
    m: Tensor  # a slow running memory


class MinimalRNN(nn.Module):
    """A cell with a NamedTuple state: h' = tanh(W x + h + m), m' = (m + h') / 2."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.output_size = input_size, hidden_size
        self.w = nn.Linear(input_size, hidden_size, dtype=D)

    def initial_state(self, batch_size: int, *, device: Any = None, dtype: Any = None) -> Any:
        z = torch.zeros(
            batch_size,
            self.output_size,
            device=device or self.w.weight.device,
            dtype=dtype or self.w.weight.dtype,
        )
        return MinimalState(z, z)

    def forward(self, x: Tensor, state: MinimalState | None = None) -> tuple[Tensor, Any]:
        h, m = state if state is not None else self.initial_state(x.shape[0])
        h = torch.tanh(self.w(x) + h + m)
        return h, MinimalState(h, (m + h) / 2)


USER_CELLS = {"leaky": LeakyIntegrator, "sized": SizedLeakyIntegrator, "minimal": MinimalRNN}


def make(kind: str, routing: str) -> rk.Stack:
    torch.manual_seed(0)
    cls = USER_CELLS[kind]
    return rk.Stack([cls(2, H), cls(H, H), cls(H, H)], routing)


@pytest.mark.filterwarnings("ignore::recurrentkit.routing.LeakWarning")
@pytest.mark.parametrize("routing", POLICIES)
@pytest.mark.parametrize("kind", list(USER_CELLS))
def test_user_cell_in_a_stack_under_every_policy(kind: str, routing: str) -> None:
    if kind == "leaky" and routing == "cross_layer":
        # cross_layer's gates read each layer's input width: a clear error, not a crash.
        with pytest.raises(rk.ConfigError, match=r"cells\[0\]\.input_size"):
            make(kind, routing)
        return
    stack = make(kind, routing)
    x = torch.randn(T, B, 2, dtype=D)
    y, state = stack(x)
    assert y.shape == (T, B, H) and len(state) == 3
    y.sum().backward()
    assert all(p.grad is not None for p in stack.parameters())
    if routing in CAUSAL:
        st, ys = None, []
        for t in range(T):
            y_t, st = stack.step(x[t], st)
            ys.append(y_t)
        torch.testing.assert_close(torch.stack(ys), y.detach(), rtol=0, atol=1e-12)
        assert rk.check_causal(stack, x)


@pytest.mark.parametrize("kind", list(USER_CELLS))
def test_user_cells_independent_equals_hand_loop(kind: str) -> None:
    stack = make(kind, "independent")
    x = torch.randn(T, B, 2, dtype=D)
    y, _ = stack(x)
    states = [c.initial_state(B) for c in stack.cells]
    outs = []
    for t in range(T):
        u = x[t]
        for k, c in enumerate(stack.cells):
            u, states[k] = c(u, states[k])
        outs.append(u)
    torch.testing.assert_close(y, torch.stack(outs), rtol=0, atol=1e-12)


def test_sized_user_cells_have_their_widths_checked() -> None:
    with pytest.raises(rk.ConfigError, match=r"cells\[1\]\.input_size: expected 3"):
        rk.Stack([SizedLeakyIntegrator(2, 3), SizedLeakyIntegrator(4, 3)])
    # undeclared widths are not checked at construction (and not guessed)
    stack = rk.Stack([LeakyIntegrator(2, 3), LeakyIntegrator(3, 3)])
    assert stack.input_size is None and stack.output_size is None


def test_user_cell_state_is_checked_at_the_stack_boundary() -> None:
    stack = make("minimal", "independent")
    x = torch.randn(T, B, 2, dtype=D)
    good = stack.initial_state(B)
    with pytest.raises(rk.StateError, match=r"state\[1\]\.m: expected shape \(2, 3\)"):
        stack(x, (good[0], MinimalState(good[1].h, torch.zeros(B, 4, dtype=D)), good[2]))
    with pytest.raises(rk.InputTypeError, match=r"state\[0\]: expected a MinimalState"):
        stack(x, (good[0].h, good[1], good[2]))


# -- a stack as a cell ------------------------------------------------------------------


@pytest.mark.parametrize("inner_routing", CAUSAL)
def test_causal_stack_as_a_layer_of_another_stack(inner_routing: str) -> None:
    torch.manual_seed(1)
    second = rk.GRUCell(H, H, dtype=D) if inner_routing == "shared" else rk.LSTMCell(H, H, dtype=D)
    inner = rk.Stack([rk.GRUCell(2, H, dtype=D), second], inner_routing)
    top = rk.GRUCell(H, 4, dtype=D)
    cell = inner.as_cell()
    assert (cell.input_size, cell.output_size) == (2, H)
    assert isinstance(cell, rk.Cell)
    outer = rk.Stack([cell, top], "independent")
    assert {id(p) for p in inner.parameters()} <= {id(p) for p in outer.parameters()}

    x = torch.randn(T, B, 2, dtype=D)
    y, (s_inner, s_top) = outer(x)
    y_inner, s_inner_ref = inner(x)
    y_ref, s_top_ref = rk.Stack([top])(y_inner)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(s_top, s_top_ref[0], rtol=0, atol=1e-12)
    assert isinstance(s_inner, tuple) and len(s_inner) == 2

    st, ys = None, []
    for t in range(T):
        y_t, st = outer.step(x[t], st)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys), y, rtol=0, atol=1e-12)


def test_stack_cells_under_shared_routing() -> None:
    """Two stacks as cells share one (tuple) state under shared routing."""
    torch.manual_seed(2)
    a = rk.Stack([rk.GRUCell(2, H, dtype=D), rk.GRUCell(H, H, dtype=D)])
    b = rk.Stack([rk.GRUCell(H, H, dtype=D), rk.GRUCell(H, H, dtype=D)])
    outer = rk.Stack([a.as_cell(), b.as_cell()], "shared")
    x = torch.randn(T, B, 2, dtype=D)
    y, _ = outer(x)
    s, outs = None, []
    for t in range(T):
        h1, s = a.step(x[t], s)
        h2, s2 = b.step(h1, s)
        outs.append(h2)
    torch.testing.assert_close(y, torch.stack(outs), rtol=0, atol=1e-12)
