"""Torch's fused recurrent ops for layers that are exactly torch layers.

A built-in :class:`~recurrentkit.RNNCell`, :class:`~recurrentkit.GRUCell` with
``reset="after"`` or :class:`~recurrentkit.LSTMCell` (with or without ``proj_size``)
computes what one layer of ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` computes, with the
same parameter names and gate order. Such a layer runs here on the op those modules
call (``torch._VF.gru`` & co.: ATen or oneDNN on CPU, cuDNN on GPU), with the cell's
own parameters — so gradients reach the cell exactly as through the hand-built path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import _VF, Tensor, nn

from recurrentkit.cells.gru import GRUCell
from recurrentkit.cells.lstm import LSTMCell, LSTMState
from recurrentkit.cells.rnn import RNNCell
from recurrentkit.executors.packing import Schedule, schedule

__all__ = [
    "call_fused",
    "fusable",
    "run_torch_layer",
    "run_torch_layers",
    "run_torch_rows",
    "torch_mode",
]


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


def call_fused(mode: str, *args: Any) -> tuple[Tensor, Any]:
    """torch's fused sequence op of ``mode`` (what ``nn.GRU.forward`` & co. call).

    ``args`` are the op's own: ``(x, hx, weights, bias, num_layers, dropout, train,
    bidirectional, batch_first)``, or ``(data, batch_sizes, hx, weights, bias,
    num_layers, dropout, train, bidirectional)`` for packed rows; ``hx`` is ``(h, c)``
    for ``"LSTM"``. Returns ``(output, h_n)``, ``h_n`` being ``(h_n, c_n)`` for LSTM.
    """
    if mode == "LSTM":
        y, h, c = _VF.lstm(*args)
        return y, (h, c)
    y, h = _OPS[mode](*args)
    return y, h


def fusable(cells: Sequence[nn.Module], modes: Sequence[str | None]) -> str | None:
    """The mode if ``cells`` can run as one multi-layer torch module, else ``None``.

    That needs one torch mode for every layer and what ``nn.GRU(num_layers=L)`` &
    co. share across layers: the hidden size, whether biases exist, the projection.
    """
    mode = modes[0]
    if mode is None or any(m != mode for m in modes):
        return None
    first = cells[0]
    for cell in cells[1:]:
        if (
            cell.hidden_size != first.hidden_size
            or (cell.bias_ih is None) != (first.bias_ih is None)
            or getattr(cell, "proj_size", 0) != getattr(first, "proj_size", 0)
        ):
            return None
    return mode


def run_torch_layers(
    cells: Sequence[nn.Module],
    mode: str,
    x: Tensor,
    states: Sequence[Any],
    lengths: Tensor | None,
    dropout: float,
    training: bool,
) -> tuple[Tensor, tuple[Any, ...]]:
    """Independent layers over ``x (T, B, I)`` in one call of torch's fused op.

    ``cells`` must pass :func:`fusable`. Layer ``k + 1`` reads layer ``k``'s output,
    dropped out with probability ``dropout`` in training (torch draws the masks).

    Returns ``(outputs (T, B, O), final states)`` with the reference path's meaning:
    with ``lengths``, outputs past a sequence's end are zero and its final state is
    the one after its last step (torch's packed-sequence op, sequences sorted by
    length and restored).
    """
    sched = schedule(x, lengths)
    out, finals = run_torch_rows(cells, mode, sched.pack(x), sched, states, dropout, training)
    return sched.unpack(out), finals  # (T, B, O)


def run_torch_rows(
    cells: Sequence[nn.Module],
    mode: str,
    data: Tensor,
    sched: Schedule,
    states: Sequence[Any],
    dropout: float,
    training: bool,
) -> tuple[Tensor, tuple[Any, ...]]:
    """:func:`run_torch_layers` on packed rows ``data (N, I)`` laid out by ``sched``.

    ``states`` and the returned final states are in the original batch order; the
    outputs are packed rows ``(N, O)`` in ``sched``'s layout.
    """
    weights = [w for cell in cells for w in _weights(cell)]
    config = (cells[0].bias_ih is not None, len(cells), dropout, training, False)
    states = [sched.sort_state(s) for s in states]  # longest first (no-op if uniform)
    lstm = mode == "LSTM"
    if lstm:
        hx: Any = (torch.stack([s.h for s in states]), torch.stack([s.c for s in states]))
    else:
        hx = torch.stack(list(states))  # (L, B, H)
    if sched.uniform:
        x = data.view(sched.steps, sched.batch, data.shape[-1])  # (T, B, I)
        args: tuple[Any, ...] = (x, hx, weights, *config, False)
    else:
        assert sched.batch_sizes is not None
        args = (data, sched.batch_sizes, hx, weights, *config)
    y, h_n = call_fused(mode, *args)
    if lstm:
        finals: list[Any] = [LSTMState(h, c) for h, c in zip(h_n[0].unbind(0), h_n[1].unbind(0))]
    else:
        finals = list(h_n.unbind(0))
    out = y.reshape(-1, y.shape[-1])  # (N, O)
    return out, tuple(sched.unsort_state(f) for f in finals)


def run_torch_layer(
    cell: nn.Module,
    mode: str,
    x: Tensor,
    state: Any,
    lengths: Tensor | None,
    training: bool,
) -> tuple[Tensor, Any]:
    """One layer over ``x (T, B, I)`` on torch's fused op (see :func:`run_torch_layers`).

    Returns ``(outputs (T, B, O), final state)``.
    """
    y, (final,) = run_torch_layers([cell], mode, x, [state], lengths, 0.0, training)
    return y, final
