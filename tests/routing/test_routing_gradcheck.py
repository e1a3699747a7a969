"""``gradcheck`` on every policy: inputs, initial states, cells' and the policy's parameters."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor
from torch.func import functional_call

import recurrentkit as rk

D = torch.float64
T, B = 3, 2


def flat(state: object) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    return [t for s in state for t in flat(s)]  # type: ignore[union-attr]


def unflat(template: object, it: Iterator[Tensor]) -> object:
    if isinstance(template, Tensor):
        return next(it)
    items = [unflat(s, it) for s in template]  # type: ignore[union-attr]
    return type(template)(*items) if hasattr(template, "_fields") else tuple(items)


def gradcheck_stack(stack: rk.Stack, x: Tensor) -> list[str]:
    """gradcheck outputs and final states; returns the names of inputs with a zero gradient."""
    names = [n for n, _ in stack.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in stack.parameters()]
    template = stack.initial_state(B)
    leaves = [torch.randn_like(t).requires_grad_() for t in flat(template)]
    x = x.detach().clone().requires_grad_()

    def f(x: Tensor, *args: Tensor) -> tuple[Tensor, ...]:
        p = dict(zip(names, args[: len(names)]))
        s = unflat(template, iter(args[len(names) :]))
        y, new = functional_call(stack, p, (x, s))
        return (y, *flat(new))

    inputs = (x, *params, *leaves)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)
    grads = torch.autograd.grad(sum(o.sum() for o in f(*inputs)), inputs, allow_unused=True)
    labels = ["x", *names, *(f"state{k}" for k in range(len(leaves)))]
    return [n for n, g in zip(labels, grads) if g is None or not g.abs().sum() > 0]


POLICIES: dict[str, Callable[[], rk.RoutingPolicy]] = {
    "independent": rk.routing.Independent,
    "shared-first": lambda: rk.routing.Shared("first"),
    "shared-last": lambda: rk.routing.Shared("last"),
    "residual": rk.routing.Residual,
    "cross_layer": rk.routing.CrossLayer,
    "handoff": rk.routing.Handoff,
}

# Initial states a policy does not read (documented): their gradient is zero.
UNREAD = {
    "shared-first": {"state1", "state2"},
    "shared-last": {"state0", "state1"},
    "handoff": {"state1", "state2"},
}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_gradcheck_policy_gru(policy: str) -> None:
    torch.manual_seed(0)
    cells = [rk.GRUCell(2, 3, dtype=D), rk.GRUCell(3, 3, dtype=D), rk.GRUCell(3, 3, dtype=D)]
    stack = rk.Stack(cells, POLICIES[policy]()).eval()
    zero = gradcheck_stack(stack, torch.randn(T, B, 2, dtype=D))
    assert set(zero) == UNREAD.get(policy, set())
    if policy == "cross_layer":
        assert any(n.startswith("routing.") for n, _ in stack.named_parameters())


def test_gradcheck_cross_layer_lstm_family_different_widths() -> None:
    torch.manual_seed(1)
    cells = [rk.LSTMCell(2, 3, proj_size=2, dtype=D), rk.NestedLSTMCell(2, 2, dtype=D)]
    stack = rk.Stack(cells, "cross_layer")
    zero = gradcheck_stack(stack, torch.randn(T, B, 2, dtype=D))
    # Only the nested cell's inner h (replaced by sigma(f) * c) is never read.
    assert zero == ["state4"]
