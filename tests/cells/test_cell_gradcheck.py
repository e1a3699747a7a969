"""``torch.autograd.gradcheck`` on every cell: input, state and every parameter (float64)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

import recurrentkit as rk

B, I, H = 2, 3, 3
D = torch.float64


def flat(state: object) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    return [t for s in state for t in flat(s)]  # type: ignore[union-attr]


def unflat(template: object, it: Iterator[Tensor]) -> object:
    if isinstance(template, Tensor):
        return next(it)
    items = [unflat(s, it) for s in template]  # type: ignore[union-attr]
    return type(template)(*items) if hasattr(template, "_fields") else tuple(items)


def gradcheck_module(module: nn.Module, x: Tensor, state: object, call: Callable) -> None:
    """gradcheck ``call(module, x, state) -> (y, state)`` w.r.t. x, state and parameters."""
    names = [n for n, _ in module.named_parameters()]
    assert names, "a module with parameters"
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    leaves = [t.detach().clone().requires_grad_() for t in flat(state)]
    x = x.detach().clone().requires_grad_()

    def f(x: Tensor, *args: Tensor) -> tuple[Tensor, ...]:
        p = dict(zip(names, args[: len(names)]))
        s = unflat(state, iter(args[len(names) :]))
        y, new = call(lambda *a: functional_call(module, p, a), x, s)
        return (y, *flat(new))

    assert torch.autograd.gradcheck(f, (x, *params, *leaves), eps=1e-6, atol=1e-7)
    # Every input reaches the outputs (a parameter the equations ignore would pass
    # gradcheck with a zero gradient) -- except the inner states' h of a nested LSTM,
    # which the docstring says is replaced by sigma(f) * c and never read.
    outs = f(x, *params, *leaves)
    grads = torch.autograd.grad(
        sum(o.sum() for o in outs), (x, *params, *leaves), allow_unused=True
    )
    for name, g in zip(["x", *names, *labels("state", state)], grads):
        if name.startswith("state.inner") and name.endswith(".h"):
            assert g is None, name
        else:
            assert g is not None and g.abs().sum() > 0, name


def labels(prefix: str, state: object) -> list[str]:
    """Dotted names of a state's tensors, in ``flat`` order."""
    if isinstance(state, Tensor):
        return [prefix]
    fields = getattr(state, "_fields", None) or [str(k) for k in range(len(state))]  # type: ignore[arg-type]
    return [n for f, s in zip(fields, state) for n in labels(f"{prefix}.{f}", s)]  # type: ignore[call-overload]


def step(fn: Callable, x: Tensor, s: object) -> tuple[Tensor, object]:
    return fn(x, s)


CELLS = {
    "rnn-tanh": lambda bias: rk.RNNCell(I, H, bias=bias, dtype=D),
    "rnn-relu": lambda bias: rk.RNNCell(I, H, bias=bias, nonlinearity="relu", dtype=D),
    "gru-after": lambda bias: rk.GRUCell(I, H, bias=bias, dtype=D),
    "gru-before": lambda bias: rk.GRUCell(I, H, bias=bias, reset="before", dtype=D),
    "lstm": lambda bias: rk.LSTMCell(I, H, bias=bias, dtype=D),
    "lstm-proj": lambda bias: rk.LSTMCell(I, H, bias=bias, proj_size=2, dtype=D),
    "nested-2": lambda bias: rk.NestedLSTMCell(I, H, depth=2, bias=bias, dtype=D),
    "nested-3": lambda bias: rk.NestedLSTMCell(I, H, depth=3, bias=bias, dtype=D),
}


def random_state(cell: nn.Module, batch: int = B) -> object:
    template = cell.initial_state(batch)
    return unflat(template, iter(torch.randn_like(t) for t in flat(template)))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", list(CELLS))
def test_gradcheck_cell(kind: str, bias: bool) -> None:
    torch.manual_seed(0)
    cell = CELLS[kind](bias)
    n_bias = sum("bias" in n for n, _ in cell.named_parameters())
    assert (n_bias > 0) == bias
    gradcheck_module(cell, torch.randn(B, I, dtype=D), random_state(cell), step)


@pytest.mark.parametrize("kind", ["gru-before", "lstm-proj", "nested-3"])
def test_gradcheck_cell_over_two_steps(kind: str) -> None:
    """Gradients through the state fed back into the next step."""
    torch.manual_seed(1)
    cell = CELLS[kind](True)

    def two_steps(fn: Callable, x: Tensor, s: object) -> tuple[Tensor, object]:
        y1, s = fn(x, s)
        y2, s = fn(torch.tanh(x) * 0.5, s)
        return y1 + y2, s

    gradcheck_module(cell, torch.randn(B, I, dtype=D), random_state(cell), two_steps)


def test_gradcheck_unbatched_cell() -> None:
    torch.manual_seed(2)
    cell = CELLS["lstm-proj"](True)
    state = rk.LSTMState(*(t[0] for t in random_state(cell, 1)))  # type: ignore[union-attr]
    gradcheck_module(cell, torch.randn(I, dtype=D), state, step)
