"""Independent routing: one memory per layer — what ``nn.GRU(num_layers=L)`` does."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from recurrentkit.routing.base import Executor, RoutingPolicy

__all__ = ["Independent"]


class Independent(RoutingPolicy):
    r"""Each layer keeps its own state; a layer's output is the next layer's input.

    $$
    (y^l_t, s^l_t) = \text{cell}_l(u^l_t, s^l_{t-1}), \qquad
    u^1_t = x_t, \quad u^{l+1}_t = \text{drop}(y^l_t)
    $$

    The stack's output is :math:`y^L_t`. Causal and layer-major: each layer can run
    over the whole sequence before the next starts (torch.nn.GRU/LSTM/RNN's order).

    Example:
        >>> import torch, recurrentkit as rk
        >>> stack = rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 4)], rk.routing.Independent())
        >>> y, (s1, s2) = stack(torch.randn(5, 2, 3))
        >>> y.shape
        torch.Size([5, 2, 4])
    """

    name = "independent"
    causal = True
    layer_major = True
    reduces_to_cell = True
    rows_independent = True
    wiring = "independent"

    def step(self, executor: Executor, x: Tensor, states: tuple[Any, ...]) -> tuple[Tensor, tuple]:
        u, new = x, []
        for k in range(len(executor.cells)):
            y, s = executor.cell(k, u, states[k])
            new.append(s)
            u = executor.drop(k, y)
        return u, tuple(new)

    def run(
        self,
        executor: Executor,
        x: Tensor,
        states: tuple[Any, ...],
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Any, ...]]:
        u, finals = x, []
        for k in range(len(executor.cells)):
            y, s = executor.run_layer(k, u, states[k], lengths)  # (T, B, O_k)
            finals.append(s)
            u = executor.drop(k, y)
        return u, tuple(finals)
