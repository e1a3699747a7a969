"""The reference executor: the plain loop every faster path is tested against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from recurrentkit._scan import Restart, scan
from recurrentkit.cells.protocol import CellBase

__all__ = ["ReferenceExecutor"]


class ReferenceExecutor:
    """:class:`~recurrentkit.routing.Executor` run one cell step at a time.

    Args:
        cells: the stack's cells, bottom first.
        dropout: inter-layer dropout probability.
        training: apply dropout (training mode) or not.
    """

    def __init__(self, cells: Sequence[nn.Module], dropout: float, training: bool) -> None:
        self.cells = cells
        self.dropout = dropout
        self.training = training
        # Built-in cells were checked at the Stack's boundary: call their equations.
        self._steps = [c._step if isinstance(c, CellBase) else c for c in cells]
        self.restart: Restart | None = None  # traced resets (set by the Stack)

    def cell_step(self, layer: int) -> Any:
        """Layer ``layer``'s step function ``(x, state) -> (y, state)``."""
        return self._steps[layer]

    def cell(self, layer: int, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        return self._steps[layer](x, state)

    def drop(self, layer: int, y: Tensor) -> Tensor:
        if self.training and self.dropout > 0 and layer < len(self.cells) - 1:
            return F.dropout(y, self.dropout, training=True)
        return y

    def run_layer(
        self, layer: int, x: Tensor, state: Any, lengths: Tensor | None
    ) -> tuple[Tensor, Any]:
        restart = None if self.restart is None else self.restart.layer(layer)
        return scan(self._steps[layer], x, state, lengths, restart)
