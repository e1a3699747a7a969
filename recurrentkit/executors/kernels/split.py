"""The kernel of a user cell that splits its step (the cell protocol's optional part)."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn import functional as F

from recurrentkit.cells.protocol import takes_linear
from recurrentkit.executors.kernels.base import CellKernel, Linear

__all__ = ["SplitKernel"]


class SplitKernel(CellKernel):
    """A user cell's ``input_projection`` and ``step_projected`` as a kernel's
    :meth:`project` and :meth:`step` (see :func:`recurrentkit.cells.splits_step`).

    No whole-sequence op: the executor steps it in its own loops. ``linear`` (the
    executor's matmul, which may defer weight gradients) reaches a ``step_projected``
    that takes it (:func:`~recurrentkit.cells.protocol.takes_linear`); otherwise the
    cell's matmuls are its own. (``cell`` is ``Any``: the protocol's optional methods,
    which :func:`~recurrentkit.cells.splits_step` checked, are not ``nn.Module``'s.)
    """

    def project(self, cell: Any, x: Tensor, linear: Linear = F.linear) -> Tensor:
        return cell.input_projection(x)

    def step(
        self, cell: Any, gi: Tensor, state: Any, linear: Linear = F.linear
    ) -> tuple[Tensor, Any]:
        if takes_linear(cell):
            return cell.step_projected(gi, state, linear=linear)
        return cell.step_projected(gi, state)
