"""Residual routing: independent memory, each layer's input added to its output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from recurrentkit.errors import ConfigError
from recurrentkit.routing.base import Executor, RoutingPolicy

__all__ = ["Residual"]


class Residual(RoutingPolicy):
    r"""Independent memory per layer with residual connections from layer 2 up.

    $$
    \begin{aligned}
    (y^l_t, s^l_t) &= \text{cell}_l(u^l_t, s^l_{t-1}), \qquad u^1_t = x_t \\
    u^2_t &= \text{drop}(y^1_t) \\
    u^{l+1}_t &= \text{drop}(y^l_t) + u^l_t, \quad l \ge 2
    \end{aligned}
    $$

    The stack's output is :math:`u^{L+1}_t`. Dropout applies to :math:`y^l` before
    the add (never to the top layer). Layer 1 may change the width; layers 2..L
    must keep it (``input_size == output_size``). Causal and layer-major.

    Raises:
        ConfigError: a layer above the first whose input and output widths differ.
    """

    name = "residual"
    causal = True
    layer_major = True
    reduces_to_cell = True
    rows_independent = True
    wiring = None

    def bind(self, cells: Sequence[nn.Module], probes: Sequence[Any]) -> None:
        super().bind(cells, probes)
        for k in range(1, len(cells)):
            i = getattr(cells[k], "input_size", None)
            o = getattr(cells[k], "output_size", None)
            if i is not None and o is not None and i != o:
                raise ConfigError(
                    f"cells[{k}].output_size",
                    f"{i} (equal to its input_size: residual routing adds layer {k}'s input "
                    "to its output)",
                    o,
                )

    def step(self, executor: Executor, x: Tensor, states: tuple[Any, ...]) -> tuple[Tensor, tuple]:
        u, new = x, []
        for k in range(len(executor.cells)):
            y, s = executor.cell(k, u, states[k])
            new.append(s)
            y = executor.drop(k, y)
            u = y if k == 0 else y + u
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
            y = executor.drop(k, y)
            u = y if k == 0 else y + u
        return u, tuple(finals)
