"""Torch's fused recurrent ops for layers that are exactly torch layers.

A built-in :class:`~recurrentkit.RNNCell`, :class:`~recurrentkit.GRUCell` with
``reset="after"`` or :class:`~recurrentkit.LSTMCell` (with or without ``proj_size``)
computes what one layer of ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` computes, with the
same parameter names and gate order. Such a layer runs here on the op those modules
call (``torch._VF.gru`` & co.: ATen or oneDNN on CPU, cuDNN on GPU), with the cell's
own parameters — so gradients reach the cell exactly as through the hand-built path.

Where torch's op *refuses* the input — oneDNN has no bfloat16 LSTM on CPUs without
AVX-512 (``could not create a primitive descriptor``), so ``nn.LSTM`` raises under
``torch.autocast("cpu", dtype=torch.bfloat16)`` there — the same layers run on plain
autograd ops instead, which autocast converts (:func:`try_fused`, :func:`torch_cell`):
the reference executor's loop over the cells' own steps, the same function with the same
inter-layer dropout. A refusal is remembered per op, device type, dtype, autocast dtype
and grad mode, so it is raised once; other runs (float32 ones included) keep the op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import _VF, Tensor, nn

from recurrentkit.cells.gru import GRUCell
from recurrentkit.cells.lstm import LSTMCell, LSTMState
from recurrentkit.cells.rnn import RNNCell
from recurrentkit.executors.packing import Schedule, schedule
from recurrentkit.executors.reference import ReferenceExecutor
from recurrentkit.routing.independent import Independent

__all__ = [
    "REFUSALS",
    "call_fused",
    "fusable",
    "plain_rows",
    "refused",
    "run_torch_layer",
    "run_torch_layers",
    "run_torch_rows",
    "torch_cell",
    "torch_mode",
    "try_fused",
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


_OPS: dict[str, Callable[..., Any]] = {
    "LSTM": _VF.lstm,
    "GRU": _VF.gru,
    "RNN_TANH": _VF.rnn_tanh,
    "RNN_RELU": _VF.rnn_relu,
}
"""torch's fused sequence op per mode (what ``nn.LSTM.forward`` & co. call)."""

_CELL_OPS: dict[str, Callable[..., Any]] = {
    "LSTM": _VF.lstm_cell,
    "GRU": _VF.gru_cell,
    "RNN_TANH": _VF.rnn_tanh_cell,
    "RNN_RELU": _VF.rnn_relu_cell,
}
"""torch's one-step cell op per mode (looked up once, not per step)."""

REFUSALS = (
    "could not create a primitive",  # oneDNN: no kernel for this dtype on this CPU
    "CUDNN_STATUS_NOT_SUPPORTED",  # cuDNN: no kernel for this configuration
    "not implemented for 'BFloat16'",  # no kernel registered for the dtype
    "not implemented for 'Half'",
)
"""What a fused op's ``RuntimeError`` says when it *refuses* an input that plain ops
run (a missing kernel for the dtype, not a wrong input). Only these are caught; any
other error (a wrong shape, out of memory) propagates unchanged."""

_refused: set[tuple[Any, ...]] = set()
"""The ``(op, device type, dtype, autocast dtype, grad mode)`` keys a fused op refused."""


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast casts to on ``device_type``, ``None`` where it is off."""
    try:
        on = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        return None
    except RuntimeError:  # a device type autocast does not know (e.g. meta)
        return None
    return torch.get_autocast_dtype(device_type) if on else None


def _key(op: str, x: Tensor) -> tuple[Any, ...]:
    """What a refusal of ``op`` on input ``x`` depends on (see :func:`refused`)."""
    kind = x.device.type
    return (op, kind, x.dtype, _autocast_dtype(kind), torch.is_grad_enabled())


def _is_refusal(error: RuntimeError) -> bool:
    text = str(error)
    return any(sign in text for sign in REFUSALS)


def refused(op: str, x: Tensor) -> bool:
    """Whether torch's ``op`` (a mode such as ``"LSTM"``, or ``"LSTM_cell"`` for the cell
    op) has refused an input like ``x`` in this process: same device type, dtype,
    autocast dtype (``None`` when autocast is off) and grad mode.

    A refusal under bfloat16 autocast says nothing about float32 runs, which keep the op.
    """
    return bool(_refused) and _key(op, x) in _refused


def call_fused(mode: str, *args: Any) -> tuple[Tensor, Any]:
    """torch's fused sequence op of ``mode`` (what ``nn.GRU.forward`` & co. call).

    ``args`` are the op's own: ``(x, hx, weights, bias, num_layers, dropout, train,
    bidirectional, batch_first)``, or ``(data, batch_sizes, hx, weights, bias,
    num_layers, dropout, train, bidirectional)`` for packed rows; ``hx`` is ``(h, c)``
    for ``"LSTM"``. Returns ``(output, h_n)``, ``h_n`` being ``(h_n, c_n)`` for LSTM.
    Raises whatever the op raises (see :func:`try_fused`).
    """
    if mode == "LSTM":
        y, h, c = _OPS[mode](*args)
        return y, (h, c)
    y, h = _OPS[mode](*args)
    return y, h


def try_fused(mode: str, *args: Any) -> tuple[Tensor, Any] | None:
    """:func:`call_fused`, or ``None`` where torch's op refuses the input.

    A refusal is a ``RuntimeError`` saying one of :data:`REFUSALS` — oneDNN's
    ``could not create a primitive descriptor for the LSTM forward propagation
    primitive`` for bfloat16 on a CPU without AVX-512, for instance. It is remembered
    (:func:`refused`), so later calls like this one return ``None`` without calling the
    op; the caller then runs the same layers on plain ops, which autocast converts.
    Any other error propagates unchanged.
    """
    x = args[0]
    if refused(mode, x):
        return None
    try:
        return call_fused(mode, *args)
    except RuntimeError as error:
        if not _is_refusal(error):
            raise
        _refused.add(_key(mode, x))
        return None


def torch_cell(cell: Any, mode: str, x: Tensor, state: Any) -> tuple[Tensor, Any]:
    """One step of a torch-form cell on torch's cell op (``torch._VF.lstm_cell`` & co.).

    Where the op refuses the input (see :func:`try_fused`; remembered as op
    ``f"{mode}_cell"``), the cell's own step on plain ops (the reference executor's).
    """
    if _refused and _key(f"{mode}_cell", x) in _refused:
        return cell._step(x, state)
    p = cell._parameters  # (read every step: no attribute lookups)
    w = (p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
    try:
        if mode == "LSTM":
            h, c = _CELL_OPS[mode](x, (state[0], state[1]), *w)
            return h, type(state)(h, c) if hasattr(state, "_fields") else (h, c)
        h = _CELL_OPS[mode](x, state, *w)
        return h, h
    except RuntimeError as error:
        if not _is_refusal(error):
            raise
        _refused.add(_key(f"{mode}_cell", x))
    return cell._step(x, state)


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
    length and restored). Where torch's op refuses the input (:func:`try_fused`), the
    reference executor runs the layers on plain ops instead.
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
    outputs are packed rows ``(N, O)`` in ``sched``'s layout. Where torch's op refuses
    the input (:func:`try_fused`), :func:`plain_rows` runs instead.
    """
    if refused(mode, data):
        return plain_rows(cells, data, sched, states, dropout, training)
    weights = [w for cell in cells for w in _weights(cell)]
    config = (cells[0].bias_ih is not None, len(cells), dropout, training, False)
    sorted_states = [sched.sort_state(s) for s in states]  # longest first (no-op if uniform)
    lstm = mode == "LSTM"
    if lstm:
        h0, c0 = [s.h for s in sorted_states], [s.c for s in sorted_states]
        hx: Any = (torch.stack(h0), torch.stack(c0))
    else:
        hx = torch.stack(sorted_states)  # (L, B, H)
    if sched.uniform:
        x = data.view(sched.steps, sched.batch, data.shape[-1])  # (T, B, I)
        args: tuple[Any, ...] = (x, hx, weights, *config, False)
    else:
        assert sched.batch_sizes is not None
        args = (data, sched.batch_sizes, hx, weights, *config)
    done = try_fused(mode, *args)
    if done is None:  # torch's op refused the input
        return plain_rows(cells, data, sched, states, dropout, training)
    y, h_n = done
    if lstm:
        finals: list[Any] = [LSTMState(h, c) for h, c in zip(h_n[0].unbind(0), h_n[1].unbind(0))]
    else:
        finals = list(h_n.unbind(0))
    out = y.reshape(-1, y.shape[-1])  # (N, O)
    return out, tuple(sched.unsort_state(f) for f in finals)


def plain_rows(
    cells: Sequence[nn.Module],
    data: Tensor,
    sched: Schedule,
    states: Sequence[Any],
    dropout: float,
    training: bool,
) -> tuple[Tensor, tuple[Any, ...]]:
    """What :func:`run_torch_rows` computes, on plain autograd ops (which autocast
    converts): the reference executor's independent layers over the padded sequence.

    Each layer is a loop over its cell's own step (torch's equations and gate order),
    layer ``k + 1`` reading layer ``k``'s output dropped out with probability
    ``dropout`` in training, as torch's op does; with mixed lengths, finished sequences
    keep their state and output zeros. Arguments and results as :func:`run_torch_rows`.
    """
    x = sched.unpack(data)  # (T, B, I), original order, zero past each end
    lengths = None
    if not sched.uniform:
        assert sched.unsorted_indices is not None
        order = sched.unsorted_indices.to("cpu")
        lengths = sched._lengths_cpu().index_select(0, order)  # (B,), original order
    layers = ReferenceExecutor(cells, dropout, training)
    out, finals = Independent().run(layers, x, tuple(states), lengths)  # (T, B, O)
    return sched.pack(out), finals


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
