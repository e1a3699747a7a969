"""A new routing policy is a small subclass; Stack does not change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

import recurrentkit as rk
from recurrentkit.routing import Executor, RoutingPolicy
from recurrentkit.routing.base import check_same_state_shapes

D = torch.float64
T, B, H = 5, 2, 3


class Skip(RoutingPolicy):
    """Layer l >= 3 takes, as its previous state, layer l-2's previous state."""

    name = "skip"

    def bind(self, cells: Sequence[nn.Module], probes: Sequence[Any]) -> None:
        super().bind(cells, probes)
        check_same_state_shapes("skip", probes)

    def step(self, executor: Executor, x: Tensor, states: tuple[Any, ...]) -> tuple[Tensor, tuple]:
        u, new = x, []
        for k in range(len(executor.cells)):
            y, s = executor.cell(k, u, states[k - 2] if k >= 2 else states[k])
            new.append(s)
            u = executor.drop(k, y)
        return u, tuple(new)


class GatedShared(RoutingPolicy):
    """Layer l >= 2 starts from a learned mix of its own previous state and layer l-1's new one.

    s_in^l = sigma(a_l) * s^{l-1}_t + (1 - sigma(a_l)) * s^l_{t-1}; ``a`` is a parameter.
    """

    name = "gated_shared"

    def bind(self, cells: Sequence[nn.Module], probes: Sequence[Any]) -> None:
        super().bind(cells, probes)
        check_same_state_shapes("gated_shared", probes)
        ref = probes[0]
        self.mix_logit = nn.Parameter(torch.zeros(len(cells), dtype=ref.dtype))

    def step(self, executor: Executor, x: Tensor, states: tuple[Any, ...]) -> tuple[Tensor, tuple]:
        u, new = x, []
        for k in range(len(executor.cells)):
            s = states[k]
            if k > 0:
                a = torch.sigmoid(self.mix_logit[k])
                s = a * new[k - 1] + (1 - a) * s
            y, s = executor.cell(k, u, s)
            new.append(s)
            u = executor.drop(k, y)
        return u, tuple(new)


def cells(n: int = 4) -> list[rk.GRUCell]:
    return [rk.GRUCell(2 if k == 0 else H, H, dtype=D) for k in range(n)]


def test_skip_policy_equals_its_loop_and_steps() -> None:
    torch.manual_seed(0)
    cs = cells(4)
    stack = rk.Stack(cs, Skip())
    x = torch.randn(T, B, 2, dtype=D)
    s0 = tuple(torch.randn(B, H, dtype=D) for _ in range(4))
    y, state = stack(x, s0)

    prev, outs = list(s0), []
    for t in range(T):
        u, new = x[t], []
        for k, c in enumerate(cs):
            u, s = c(u, prev[k - 2] if k >= 2 else prev[k])
            new.append(s)
        prev = new
        outs.append(u)
    torch.testing.assert_close(y, torch.stack(outs), rtol=0, atol=1e-12)
    for a, b in zip(state, prev):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)

    st, ys = s0, []
    for t in range(T):
        y_t, st = stack.step(x[t], st)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys), y, rtol=0, atol=1e-12)
    assert rk.check_causal(stack, x)
    assert "name='skip'" in repr(stack)


def test_policy_parameters_belong_to_the_stack() -> None:
    torch.manual_seed(1)
    stack = rk.Stack(cells(3), GatedShared())
    assert "routing.mix_logit" in dict(stack.named_parameters())
    assert "routing.mix_logit" in stack.state_dict()
    assert any(p is stack.routing.mix_logit for p in stack.parameters())

    x = torch.randn(T, B, 2, dtype=D)
    y, _ = stack(x)
    y.pow(2).sum().backward()
    grad = stack.routing.mix_logit.grad
    assert grad is not None and grad[1:].abs().min() > 0 and grad[0] == 0  # a_0 unused
    before = stack.routing.mix_logit.detach().clone()
    torch.optim.SGD(stack.parameters(), lr=0.1).step()
    assert not torch.equal(stack.routing.mix_logit, before)

    # A checkpoint restores it into a fresh stack.
    fresh = rk.Stack(cells(3), GatedShared())
    fresh.load_state_dict(stack.state_dict())
    assert torch.equal(fresh.routing.mix_logit, stack.routing.mix_logit)
    assert torch.equal(fresh(x)[0], stack(x)[0])
    # .to() converts it with the cells
    assert stack.float().routing.mix_logit.dtype == torch.float32


def test_gradcheck_custom_policy_parameter() -> None:
    torch.manual_seed(2)
    stack = rk.Stack(cells(2), GatedShared())
    with torch.no_grad():
        stack.routing.mix_logit.uniform_(-1, 1)
    names = [n for n, _ in stack.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in stack.parameters()]
    x = torch.randn(3, B, 2, dtype=D, requires_grad=True)

    def f(x: Tensor, *ps: Tensor) -> Tensor:
        return functional_call(stack, dict(zip(names, ps)), (x,))[0]

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7)
