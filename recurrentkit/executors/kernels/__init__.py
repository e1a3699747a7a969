"""Hand-built fast kernels for the built-in cells, chosen by exact cell type.

One file per cell holds all of that cell's fast forms — its step on projected input,
its whole-sequence op and backward, its fused step op, and (GRU, LSTM) its part in
``cross_layer``'s whole-run op (:mod:`recurrentkit.executors.cross_layer.run`) — and
they share one gate helper per form (on autograd ops, in place, backward factors), so
the cell's arithmetic is written once; the autograd form sits beside the reference
equations in :mod:`recurrentkit.cells`.

Under ``torch.compile`` each whole-sequence op runs as a ``torch.library`` custom op
(:mod:`.ops`): every kernel file registers its op's shapes there.

Only the built-in classes themselves get a kernel: a subclass may change the
equations, so it runs on the reference loop — unless it (or any user cell) declares
the protocol's split step, which :func:`split_kernel_for` adapts (:class:`.split.SplitKernel`).
"""

from __future__ import annotations

from torch import nn

from recurrentkit.cells.gru import GRUCell
from recurrentkit.cells.lstm import LSTMCell
from recurrentkit.cells.nested_lstm import NestedLSTMCell
from recurrentkit.cells.protocol import splits_step, takes_linear
from recurrentkit.cells.rnn import RNNCell
from recurrentkit.executors.kernels.base import CellKernel
from recurrentkit.executors.kernels.gru import GRUKernel
from recurrentkit.executors.kernels.lstm import LSTMKernel
from recurrentkit.executors.kernels.nested_lstm import NestedLSTMKernel, levels
from recurrentkit.executors.kernels.rnn import RNNKernel
from recurrentkit.executors.kernels.split import SplitKernel

__all__ = ["CellKernel", "kernel_for", "split_kernel_for"]

_KERNELS: dict[type, CellKernel] = {
    RNNCell: RNNKernel(),
    GRUCell: GRUKernel(),
    LSTMCell: LSTMKernel(),
    NestedLSTMCell: NestedLSTMKernel(),
}


def kernel_for(cell: nn.Module) -> CellKernel | None:
    """The kernel for ``cell``, or ``None`` (user cells, subclasses)."""
    if type(cell) is NestedLSTMCell:  # (narrows cell's type for mypy)
        chain = levels(cell)
        inner = chain[-1]
        if type(inner) is not LSTMCell or inner.proj_size:
            return None
        hidden = {lv.hidden_size for lv in chain}
        if len(hidden) != 1 or any(lv.bias != cell.bias for lv in chain):
            return None
    return _KERNELS.get(type(cell))


_SPLIT = SplitKernel()


def split_kernel_for(cell: nn.Module) -> CellKernel | None:
    """For a cell without a built-in kernel: the adapter of its split step, or ``None``
    (the cell's own call, on the reference loop). Asks :func:`takes_linear` once here,
    so that its cache is filled before any step runs (a cache write inside a step that
    ``torch.compile`` traces as a scan would be a side effect the scan refuses)."""
    if not splits_step(cell):
        return None
    takes_linear(cell)
    return _SPLIT
