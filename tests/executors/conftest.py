"""Shared checks for the executor tests (handed out as the ``checks`` fixture).

``same_run`` runs two stacks with identical parameters on one input and initial state,
compares outputs and final states, then backpropagates one random cotangent through
both and compares the gradients of the input, every initial-state tensor and every
parameter — in float64, to 1e-10.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import recurrentkit as rk
from recurrentkit._validation import map_state

D = torch.float64
TOL = 1e-10

CELLS: dict[str, Callable[[int, int], nn.Module]] = {
    "rnn": lambda i, h: rk.RNNCell(i, h),
    "rnn_relu": lambda i, h: rk.RNNCell(i, h, nonlinearity="relu"),
    "gru": lambda i, h: rk.GRUCell(i, h),
    "gru_before": lambda i, h: rk.GRUCell(i, h, reset="before"),
    "gru_nobias": lambda i, h: rk.GRUCell(i, h, bias=False),
    "lstm": lambda i, h: rk.LSTMCell(i, h),
    "lstm_nobias": lambda i, h: rk.LSTMCell(i, h, bias=False),
    "lstm_proj": lambda i, h: rk.LSTMCell(i, h + 2, proj_size=h),
    "nested": lambda i, h: rk.NestedLSTMCell(i, h),
    "nested3": lambda i, h: rk.NestedLSTMCell(i, h, depth=3),
    "mgu": lambda i, h: rk.cells.MGUCell(i, h),
    "coupled": lambda i, h: rk.cells.CoupledLSTMCell(i, h),
    "indrnn": lambda i, h: rk.cells.IndRNNCell(i, h),
    "ln_gru": lambda i, h: rk.cells.LayerNormGRUCell(i, h),
    "ln_lstm": lambda i, h: rk.cells.LayerNormLSTMCell(i, h),
}


class LeakyCell(nn.Module):
    """A user cell on the protocol (not a CellBase): ``h' = 0.5 h + tanh(W x + U h)``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.w = nn.Linear(input_size, hidden_size)
        self.u = nn.Linear(hidden_size, hidden_size, bias=False)

    def initial_state(
        self, batch_size: int, *, device: Any = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        ref = self.w.weight
        return torch.zeros(
            batch_size, self.hidden_size, device=device or ref.device, dtype=dtype or ref.dtype
        )

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        state = self.initial_state(x.shape[0], dtype=x.dtype) if state is None else state
        h = 0.5 * state + torch.tanh(self.w(x) + self.u(state))
        return h, h


class SplitLeakyCell(LeakyCell):
    """LeakyCell with the protocol's split step (the reference still calls ``forward``)."""

    def input_projection(self, x: Tensor) -> Tensor:
        return self.w(x)  # (M, H)

    def step_projected(self, gi: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        h = 0.5 * state + torch.tanh(gi + self.u(state))
        return h, h


class GRUSubclass(rk.GRUCell):
    """A subclass that changes the equations: it must never run on a GRU fast path."""

    def _step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, h = super()._step(x, state)
        return 2 * y, 2 * h


class ScaledShared(rk.routing.RoutingPolicy):
    """A user policy (step only): shared routing with each layer's state halved first."""

    name = "scaled_shared"

    def step(self, layers: Any, x: Tensor, states: tuple[Any, ...]) -> tuple[Tensor, tuple]:
        s, u, new = states[0], x, []
        for k in range(len(layers.cells)):
            s = map_state(lambda t: 0.5 * t, s)
            y, s = layers.cell(k, u, s)
            new.append(s)
            u = layers.drop(k, y)
        return u, tuple(new)


CELLS["user"] = LeakyCell
CELLS["user_split"] = SplitLeakyCell
CELLS["gru_subclass"] = GRUSubclass


def flat(state: Any) -> list[Tensor]:
    """Every tensor of a (nested) state, in order."""
    if isinstance(state, Tensor):
        return [state]
    return [t for s in state for t in flat(s)]


def build(
    cell: str, routing: Any, executor: str, *, L: int = 3, I: int = 3, H: int = 5, **kw: Any
) -> rk.Stack:
    """A float64 stack of ``L`` cells of one kind, seeded so equal calls build equal stacks."""
    torch.manual_seed(1234)
    policy = routing() if callable(routing) else routing
    cells = [CELLS[cell](I if k == 0 else H, H) for k in range(L)]
    return rk.Stack(cells, policy, executor=executor, **kw).to(D)


def inputs(stack: rk.Stack, T: int = 6, B: int = 4, I: int = 3) -> tuple[Tensor, Any]:
    """A random input ``(T, B, I)`` and a random initial state, both requiring grad."""
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    state = map_state(lambda t: torch.randn_like(t).requires_grad_(), stack.initial_state(B))
    return x, state


def same_run(
    ref: nn.Module,
    fast: nn.Module,
    x: Tensor,
    state: Any,
    lengths: Tensor | None = None,
    tol: float = TOL,
    resets: Tensor | None = None,
) -> None:
    """``fast`` and ``ref`` agree: outputs, final states, and every gradient."""
    getattr(fast, "_orig_mod", fast).load_state_dict(ref.state_dict())  # (compiled: its module)
    kw: dict[str, Tensor] = {} if lengths is None else {"lengths": lengths}
    if resets is not None:
        kw["resets"] = resets
    y_ref, s_ref = ref(x, state, **kw)
    y_fast, s_fast = fast(x, state, **kw)
    outs_ref, outs_fast = [y_ref, *flat(s_ref)], [y_fast, *flat(s_fast)]
    assert len(outs_ref) == len(outs_fast)
    for a, b in zip(outs_ref, outs_fast):
        torch.testing.assert_close(b, a, rtol=0, atol=tol)
    if not torch.is_grad_enabled():
        return
    cot = [torch.randn_like(t) for t in outs_ref]
    wrt = [x, *flat(state)]
    g_ref = _grads(outs_ref, cot, wrt + list(ref.parameters()))
    g_fast = _grads(outs_fast, cot, wrt + list(fast.parameters()))
    names = ["x"] + [f"state[{i}]" for i in range(len(wrt) - 1)]
    names += [n for n, _ in ref.named_parameters()]
    assert len(g_ref) == len(g_fast) == len(names)
    for name, a, b in zip(names, g_ref, g_fast):
        torch.testing.assert_close(b, a, rtol=0, atol=tol, msg=lambda m, n=name: f"{n}: {m}")


def _grads(outs: list[Tensor], cot: list[Tensor], wrt: list[Tensor]) -> list[Tensor]:
    loss = sum((o * c).sum() for o, c in zip(outs, cot))
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)]


@pytest.fixture
def checks() -> SimpleNamespace:
    """The helpers above: ``CELLS``, ``LeakyCell``, ``GRUSubclass``, ``ScaledShared``,
    ``flat``, ``build``, ``inputs``, ``same_run``."""
    return SimpleNamespace(
        CELLS=CELLS,
        LeakyCell=LeakyCell,
        GRUSubclass=GRUSubclass,
        ScaledShared=ScaledShared,
        flat=flat,
        build=build,
        inputs=inputs,
        same_run=same_run,
    )


@pytest.fixture(autouse=True)
def _no_leak_warnings() -> Iterator[None]:
    """Handoff's LeakWarning is expected here (it is tested in tests/routing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rk.routing.LeakWarning)
        yield
