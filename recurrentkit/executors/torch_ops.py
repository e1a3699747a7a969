"""Torch's fused recurrent ops for layers that are exactly torch layers.

A built-in :class:`~recurrentkit.RNNCell`, :class:`~recurrentkit.GRUCell` with
``reset="after"`` or :class:`~recurrentkit.LSTMCell` (with or without ``proj_size``)
computes what one layer of ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` computes, with the
same parameter names and gate order. Such a layer runs here on the op those modules
call (``torch._VF.gru`` & co.: ATen or oneDNN on CPU, cuDNN on GPU), with the cell's
own parameters — so gradients reach the cell exactly as through the hand-built path.
"""

from __future__ import annotations

from typing import Any

from torch import _VF, Tensor, nn

from recurrentkit.cells.gru import GRUCell
from recurrentkit.cells.lstm import LSTMCell, LSTMState
from recurrentkit.cells.rnn import RNNCell
from recurrentkit.executors.packing import schedule

__all__ = ["run_torch_layer", "torch_mode"]


def torch_mode(cell: nn.Module) -> str | None:
    """The torch RNN mode a cell is exactly equal to, or ``None``.

    Only the built-in classes themselves qualify (a subclass may change the
    equations): ``"RNN_TANH"``, ``"RNN_RELU"``, ``"GRU"`` (``reset="after"``),
    ``"LSTM"``.
    """
    kind = type(cell)
    if kind is RNNCell:
        return "RNN_TANH" if cell.nonlinearity == "tanh" else "RNN_RELU"
    if kind is GRUCell:
        return "GRU" if cell.reset == "after" else None
    if kind is LSTMCell:
        return "LSTM"
    return None


def _weights(cell: Any) -> list[Tensor]:
    weights = [cell.weight_ih, cell.weight_hh]
    if cell.bias_ih is not None:
        weights += [cell.bias_ih, cell.bias_hh]
    if getattr(cell, "weight_hr", None) is not None:
        weights.append(cell.weight_hr)
    return weights


_OPS = {"RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu, "GRU": _VF.gru}


def run_torch_layer(
    cell: nn.Module,
    mode: str,
    x: Tensor,
    state: Any,
    lengths: Tensor | None,
    training: bool,
) -> tuple[Tensor, Any]:
    """One layer over ``x (T, B, I)`` on torch's fused op.

    Returns ``(outputs (T, B, O), final state)`` with the reference path's meaning:
    with ``lengths``, outputs past a sequence's end are zero and its final state is
    the one after its last step (torch's packed-sequence op, sequences sorted by
    length and restored).
    """
    weights = _weights(cell)
    has_bias = cell.bias_ih is not None
    sched = schedule(x, lengths)
    lstm = mode == "LSTM"
    hx: Any = (state.h[None], state.c[None]) if lstm else state[None]  # (1, B, H)
    if sched.uniform:
        if lstm:
            y, h, c = _VF.lstm(x, hx, weights, has_bias, 1, 0.0, training, False, False)
            return y, LSTMState(h[0], c[0])
        y, h = _OPS[mode](x, hx, weights, has_bias, 1, 0.0, training, False, False)
        return y, h[0]
    assert sched.batch_sizes is not None
    data = sched.pack(x)  # (N, I)
    hx = tuple(sched.sort_state(s[0])[None] for s in hx) if lstm else sched.sort_state(hx[0])[None]
    if lstm:
        out, h, c = _VF.lstm(
            data, sched.batch_sizes, hx, weights, has_bias, 1, 0.0, training, False
        )
        final: Any = LSTMState(h[0], c[0])
    else:
        out, h = _OPS[mode](data, sched.batch_sizes, hx, weights, has_bias, 1, 0.0, training, False)
        final = h[0]
    return sched.unpack(out), sched.unsort_state(final)
