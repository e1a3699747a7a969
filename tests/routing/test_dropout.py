"""Inter-layer dropout: training only, never the top layer, on y^l before anything uses it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import recurrentkit as rk
from recurrentkit.executors.reference import ReferenceExecutor

D = torch.float64
T, B, H = 4, 2, 3
POLICIES = ["independent", "shared", "residual", "cross_layer", "handoff"]
pytestmark = pytest.mark.filterwarnings("ignore::recurrentkit.routing.LeakWarning")


class ScaledLayers(ReferenceExecutor):
    """A deterministic stand-in for dropout: layer k's output times 10 + k (not the top)."""

    def drop(self, layer: int, y: Tensor) -> Tensor:
        return y * (10.0 + layer) if layer < len(self.cells) - 1 else y


class ScaledOutput(nn.Module):
    """A cell whose *output* (not its state) is scaled: what dropout on y^l must equal."""

    def __init__(self, cell: nn.Module, scale: float) -> None:
        super().__init__()
        self.cell, self.scale = cell, scale
        self.input_size, self.output_size = cell.input_size, cell.output_size

    def initial_state(self, batch_size: int, **kw: Any) -> Any:
        return self.cell.initial_state(batch_size, **kw)

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        y, s = self.cell(x, state)
        return y * self.scale, s


@pytest.mark.parametrize("routing", POLICIES)
def test_drop_acts_on_each_lower_layer_output_before_use(routing: str) -> None:
    """policy.run with drop(y^l) = c_l y^l  ==  no dropout over cells that output c_l y^l.

    For residual this pins dropout *before* the add: c (y + u) would differ from c y + u.
    """
    torch.manual_seed(0)
    cells = [rk.GRUCell(H, H, dtype=D) for _ in range(3)]
    stack = rk.Stack(cells, routing)
    x = torch.randn(T, B, H, dtype=D)
    s0 = tuple(torch.randn(B, H, dtype=D) for _ in range(3))
    y, s = stack.routing.run(ScaledLayers(stack.cells, 0.5, True), x, s0)

    wrapped = [ScaledOutput(c, 10.0 + k) for k, c in enumerate(cells[:-1])] + [cells[-1]]
    ref = rk.Stack(wrapped, routing).eval()
    if routing == "cross_layer":
        ref.routing.load_state_dict(stack.routing.state_dict())
    y_ref, s_ref = ref(x, s0)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    for a, b in zip(s, s_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # ... and it matters: without the scaling the result is different.
    y_plain, _ = stack.routing.run(ReferenceExecutor(stack.cells, 0.0, False), x, s0)
    assert not torch.allclose(y, y_plain)


def test_reference_drop_hook() -> None:
    cells = [rk.GRUCell(H, H) for _ in range(3)]
    y = torch.randn(5, H) + 3
    train = ReferenceExecutor(cells, 1.0, True)
    assert torch.equal(train.drop(0, y), torch.zeros_like(y))
    assert torch.equal(train.drop(1, y), torch.zeros_like(y))
    assert train.drop(2, y) is y  # never the top layer
    evaluating = ReferenceExecutor(cells, 1.0, False)
    assert all(evaluating.drop(k, y) is y for k in range(3))
    half = ReferenceExecutor(cells, 0.5, True).drop(0, torch.ones(2000))
    assert set(half.unique().tolist()) == {0.0, 2.0}  # inverted dropout, torch's scaling


@pytest.mark.parametrize("routing", POLICIES)
def test_stack_dropout_is_training_only(routing: str) -> None:
    torch.manual_seed(1)
    cells = [rk.GRUCell(H, H, dtype=D) for _ in range(3)]
    with_dropout = rk.Stack(cells, routing, dropout=0.5)
    without = rk.Stack(cells, rk.routing.POLICIES[routing]())
    if routing == "cross_layer":
        without.routing.load_state_dict(with_dropout.routing.state_dict())
    x = torch.randn(T, B, H, dtype=D)
    assert torch.equal(with_dropout.eval()(x)[0], without.eval()(x)[0])
    torch.manual_seed(2)
    y_train, _ = with_dropout.train()(x)
    assert not torch.allclose(y_train, without(x)[0])
    torch.manual_seed(2)
    assert torch.equal(with_dropout(x)[0], y_train)  # seeded: reproducible


def test_stack_dropout_one_zeroes_lower_outputs_but_not_the_top() -> None:
    torch.manual_seed(3)
    cells = [rk.GRUCell(H, H, dtype=D) for _ in range(3)]
    x = torch.randn(T, B, H, dtype=D)
    y, _ = rk.Stack(cells, "independent", dropout=1.0).train()(x)
    top_on_zeros, _ = rk.Stack([cells[2]], "independent")(torch.zeros(T, B, H, dtype=D))
    torch.testing.assert_close(y, top_on_zeros, rtol=0, atol=1e-12)
    assert y.abs().sum() > 0  # the top layer's output itself is not dropped

    y, _ = rk.Stack(cells, "residual", dropout=1.0).train()(x)
    # u2 = drop(y1) = 0, u3 = drop(y2) + u2 = 0, output = y3(0) + u3
    torch.testing.assert_close(y, top_on_zeros, rtol=0, atol=1e-12)


def test_one_layer_stack_never_drops() -> None:
    torch.manual_seed(4)
    cell = rk.GRUCell(H, H, dtype=D)
    x = torch.randn(T, B, H, dtype=D)
    y, _ = rk.Stack([cell], dropout=1.0).train()(x)
    torch.testing.assert_close(y, rk.Stack([cell])(x)[0], rtol=0, atol=1e-12)
