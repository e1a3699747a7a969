"""The hand-written ops' backward is first-order only: a backward with
``create_graph=True`` through one raises a recurrentkit error naming the fix, instead of
a gradient that silently lacks the op's second-order part."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.autograd import Function

import recurrentkit as rk
from recurrentkit.errors import ConfigError
from recurrentkit.executors.first_order import first_order_backward

D = torch.float64


class _Cube(Function):
    """``x³`` with a first-order backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    @first_order_backward
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 3 * x * x * g


def test_the_decorator_runs_first_order_and_refuses_create_graph() -> None:
    x = torch.tensor([1.0, 2.0], dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(_Cube.apply(x).sum(), x)
    torch.testing.assert_close(g, 3 * x.detach() ** 2)
    with pytest.raises(ConfigError, match=r"executor='reference'.*_Cube.*create_graph=True"):
        torch.autograd.grad(_Cube.apply(x).sum(), x, create_graph=True)


@pytest.mark.parametrize(
    "cell, routing",
    [
        ("gru", "independent"),  # the whole-sequence kernel
        ("lstm", "residual"),
        ("nested", "independent"),
        ("rnn", "handoff"),
        ("gru", "shared_last"),  # fused step ops and deferred weight gradients
        ("lstm", "cross_layer"),  # the whole-run op
    ],
)
def test_gradients_of_gradients_through_hand_written_ops_refuse(
    checks: SimpleNamespace, cell: str, routing: str
) -> None:
    policy: Any = (lambda: rk.routing.Shared(carry="last")) if routing == "shared_last" else routing
    fast = checks.build(cell, policy, "handbuilt", L=2)
    ref = checks.build(cell, policy, "reference", L=2)
    x = torch.randn(4, 3, 3, dtype=D, requires_grad=True)
    with pytest.raises(ConfigError, match="executor='reference'"):
        torch.autograd.grad(fast(x)[0].square().sum(), x, create_graph=True)
    # the fix the message names works
    (g,) = torch.autograd.grad(ref(x)[0].square().sum(), x, create_graph=True)
    g.square().sum().backward()
    assert all(p.grad is not None for p in ref.parameters())
