r"""One recurrent layer (one or both directions) as an op that exporters keep whole.

The torch.nn drop-ins (:mod:`recurrentkit.nn`) run through :func:`run_layer` while an
exporter traces them:

- under ``torch.export`` (strict or not): the ``torch.library`` custom ops
  ``recurrentkit::rnn_tanh_layer``, ``recurrentkit::rnn_relu_layer``,
  ``recurrentkit::gru_layer`` and ``recurrentkit::lstm_layer``. Each has a fake
  implementation that gives the output shapes from the input's, so the time axis ``T``
  and the batch ``B`` stay symbolic (torch's own ``aten.gru`` is unrolled over the
  example's ``T`` instead: "Constraints violated (T)"). Run eagerly (an
  ``ExportedProgram``'s ``module()``), each calls torch's fused op for one layer
  (``torch._VF.gru`` & co.); their gradient runs that op again under autograd.
- under ``torch.onnx.export(..., dynamo=True)``: ONNX's own ``RNN``/``GRU``/``LSTM``
  operator, through ``torch.onnx.ops.symbolic_multi_out``, with torch's semantics
  (``linear_before_reset=1`` for the GRU; gate rows reordered, torch GRU ``r | z | n``
  to ONNX ``z | r | h``, torch LSTM ``i | f | g | o`` to ONNX ``i | o | f | c``; the two
  biases concatenated, ``[W_b; R_b]``; ``Relu`` as the activation of
  ``nonlinearity="relu"``). ONNX's LSTM has no projection: ``proj_size`` is refused.

Layouts (time-major, as torch's ops): ``x (T, B, I)``, ``h0 (D, B, H_out)``,
``c0 (D, B, H)``; the output ``(T, B, D H_out)`` and the final states ``(D, B, ·)``.
``weights`` is torch's flat list for this layer: per direction ``w_ih, w_hh`` then
``b_ih, b_hh`` with biases, then ``w_hr`` with a projection.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from recurrentkit.errors import UnsupportedError

__all__ = ["exporting", "for_onnx", "onnx_exporting", "run_layer"]

# torch's mode -> the custom op's name
_OP_NAMES = {
    "RNN_TANH": "rnn_tanh_layer",
    "RNN_RELU": "rnn_relu_layer",
    "GRU": "gru_layer",
    "LSTM": "lstm_layer",
}
# ONNX's gate order, as indices into torch's row blocks
_ONNX_GATES = {"GRU": (1, 0, 2), "LSTM": (0, 3, 1, 2)}


_for_onnx = [0]  # how many for_onnx() blocks are open (a global TorchDynamo can read)


@contextmanager
def for_onnx() -> Iterator[None]:
    """Within: trace the layers as ONNX operators (:func:`recurrentkit.export.onnx` runs
    ``torch.export.export`` itself, before handing the program to the ONNX exporter)."""
    _for_onnx[0] += 1
    try:
        yield
    finally:
        _for_onnx[0] -= 1


def onnx_exporting() -> bool:
    """Whether ``torch.onnx.export(..., dynamo=True)`` is tracing (not the TorchScript
    exporter, which traces with ``torch.jit`` and converts torch's own ops itself), or
    :func:`for_onnx` is on."""
    if not hasattr(torch.onnx, "ops") or torch.jit.is_tracing():
        return False
    return _for_onnx[0] > 0 or torch.onnx.is_in_onnx_export()


def exporting() -> bool:
    """Whether ``torch.export`` (alone or under the ONNX exporter, which runs it) is
    tracing. Cheap (a flag read): every drop-in forward asks."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return is_exporting is not None and is_exporting()


def _fused(
    mode: str,
    x: Tensor,
    h0: Tensor | None,
    c0: Tensor | None,
    weights: Sequence[Tensor],
    has_biases: bool,
    bidirectional: bool,
) -> tuple[Tensor, ...]:
    """torch's fused op, one layer, no dropout: ``(y, h_n)`` or ``(y, h_n, c_n)``."""
    D = 2 if bidirectional else 1
    B, h_out = x.shape[1], weights[1].shape[1]
    if h0 is None:
        h0 = x.new_zeros(D, B, h_out)
    args = (list(weights), has_biases, 1, 0.0, False, bidirectional, False)
    if mode == "LSTM":
        if c0 is None:
            c0 = x.new_zeros(D, B, weights[1].shape[0] // 4)
        y, h, c = torch._VF.lstm(x, (h0, c0), *args)
        return y, h, c
    op = torch._VF.gru if mode == "GRU" else getattr(torch._VF, mode.lower())
    y, h = op(x, h0, *args)
    return y, h


def _fake(
    mode: str, x: Tensor, weights: Sequence[Tensor], bidirectional: bool
) -> tuple[Tensor, ...]:
    D = 2 if bidirectional else 1
    T, B, h_out = x.shape[0], x.shape[1], weights[1].shape[1]
    y = x.new_empty(T, B, D * h_out)  # (T, B, D H_out)
    h = x.new_empty(D, B, h_out)
    if mode == "LSTM":
        return y, h, x.new_empty(D, B, weights[1].shape[0] // 4)
    return y, h


def _define(mode: str) -> Any:
    """The custom op of ``mode``: ``(x, h0, [c0,] weights, has_biases, bidirectional)
    -> (y, h_n[, c_n])``, torch's fused op eagerly, :func:`_fake` when traced."""
    lstm = mode == "LSTM"
    states = "Tensor? h0, Tensor? c0" if lstm else "Tensor? h0"
    outputs = "(Tensor, Tensor, Tensor)" if lstm else "(Tensor, Tensor)"
    schema = f"(Tensor x, {states}, Tensor[] weights, bool has_biases, bool bidirectional)"

    def parts(args: tuple[Any, ...]) -> tuple[Any, ...]:
        return args if lstm else (*args[:2], None, *args[2:])  # (x, h0, c0, w, bias, bi)

    def real(*args: Any) -> tuple[Tensor, ...]:
        return _fused(mode, *parts(args))

    def fake(*args: Any) -> tuple[Tensor, ...]:
        x, _, _, weights, _, bidirectional = parts(args)
        return _fake(mode, x, weights, bidirectional)

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, h0, c0, weights, has_biases, bidirectional = parts(inputs)
        ctx.config = (h0 is not None, c0 is not None, has_biases, bidirectional)
        ctx.save_for_backward(x, *(s for s in (h0, c0) if s is not None), *weights)

    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Any, ...]:
        """torch's op run again under autograd, differentiated (a second forward: these
        ops serve exported programs, rarely trained)."""
        has_h, has_c, has_biases, bidirectional = ctx.config
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in ctx.saved_tensors]
        x, rest = leaves[0], leaves[1:]
        h0 = rest.pop(0) if has_h else None
        c0 = rest.pop(0) if has_c else None
        with torch.enable_grad():
            outs = _fused(mode, x, h0, c0, rest, has_biases, bidirectional)
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
            found = torch.autograd.grad(
                [o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True
            )
        found_x, found_rest = found[0], list(found[1:])
        g_h = found_rest.pop(0) if has_h else None
        g_c = found_rest.pop(0) if has_c else None
        states = (g_h, g_c) if lstm else (g_h,)
        return (found_x, *states, found_rest, None, None)

    name = f"recurrentkit::{_OP_NAMES[mode]}"
    op = torch.library.custom_op(name, real, mutates_args=(), schema=f"{schema} -> {outputs}")
    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup_context)
    return op


_OPS: dict[str, Any] = {}
if hasattr(torch.library, "custom_op"):  # torch >= 2.4
    _OPS = {mode: _define(mode) for mode in _OP_NAMES}


def run_layer(
    mode: str,
    x: Tensor,
    hx: Tensor | tuple[Tensor, Tensor] | None,
    weights: Sequence[Tensor],
    has_biases: bool,
    bidirectional: bool,
) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
    """One layer of a drop-in as the exporter in progress wants it.

    Args:
        mode: torch's mode, ``"RNN_TANH"``, ``"RNN_RELU"``, ``"GRU"`` or ``"LSTM"``.
        x: ``(T, B, I)``.
        hx: ``(D, B, H_out)`` (``(h0, c0)`` for LSTM) or ``None`` for zeros.
        weights: this layer's torch flat weights (every direction).
        has_biases: whether ``weights`` hold ``b_ih, b_hh``.
        bidirectional: ``D = 2``.

    Returns:
        ``(y (T, B, D H_out), h_n)``, ``h_n`` being ``(D, B, H_out)`` or, for LSTM,
        ``(h_n, c_n)``.

    Raises:
        UnsupportedError: an LSTM with ``proj_size`` under the ONNX exporter; an
            exporter without custom ops (torch < 2.4).
    """
    lstm = mode == "LSTM"
    h0: Tensor | None = None
    c0: Tensor | None = None
    if isinstance(hx, tuple):
        h0, c0 = hx
    elif hx is not None:
        h0 = hx
    if onnx_exporting():
        return _onnx_layer(mode, x, (h0, c0), weights, has_biases, bidirectional)
    if mode not in _OPS:
        raise UnsupportedError(
            "torch version",
            "torch >= 2.4 (torch.library.custom_op) to export a recurrentkit drop-in",
            torch.__version__,
        )
    op = _OPS[mode]
    if lstm:
        y, h, c = op(x, h0, c0, list(weights), has_biases, bidirectional)
        return y, (h, c)
    y, h = op(x, h0, list(weights), has_biases, bidirectional)
    return y, h


def _onnx_gates(mode: str, t: Tensor) -> Tensor:
    """``t``'s row blocks (first axis) from torch's gate order into ONNX's."""
    order = _ONNX_GATES.get(mode)
    if order is None:
        return t
    n = t.shape[0] // len(order)  # slices, not chunk: ONNX's optimizer folds Slice, not Split
    return torch.cat([t[i * n : (i + 1) * n] for i in order], 0)


def _onnx_layer(
    mode: str,
    x: Tensor,
    states: tuple[Tensor | None, Tensor | None],
    weights: Sequence[Tensor],
    has_biases: bool,
    bidirectional: bool,
) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
    """The layer as ONNX's ``RNN``/``GRU``/``LSTM`` node (torch.onnx.ops.symbolic);
    ``states`` is ``(h0, c0)``, ``c0`` being ``None`` but for LSTM."""
    h0, c0 = states
    D = 2 if bidirectional else 1
    per = len(weights) // D
    if mode == "LSTM" and per in (3, 5):
        raise UnsupportedError(
            "proj_size",
            "0 to export an LSTM to ONNX (ONNX's LSTM operator has no projection; "
            "torch.export.export keeps it, as the recurrentkit::lstm_layer op)",
            f"an LSTM with proj_size={weights[per - 1].shape[0]}",
        )
    dirs = [weights[d * per : (d + 1) * per] for d in range(D)]
    W = torch.stack([_onnx_gates(mode, w[0]) for w in dirs])  # (D, G H, I)
    R = torch.stack([_onnx_gates(mode, w[1]) for w in dirs])  # (D, G H, H)
    bias = None
    if has_biases:
        bias = torch.stack(
            [torch.cat([_onnx_gates(mode, w[2]), _onnx_gates(mode, w[3])]) for w in dirs]
        )  # (D, 2 G H)
    H = int(dirs[0][1].shape[1])
    T, B = x.shape[0], x.shape[1]
    attrs: dict[str, Any] = {
        "hidden_size": H,
        "direction": "bidirectional" if bidirectional else "forward",
    }
    if mode == "GRU":
        attrs["linear_before_reset"] = 1
    elif mode.startswith("RNN"):
        attrs["activations"] = ["Relu" if mode == "RNN_RELU" else "Tanh"] * D
    inputs: list[Tensor | None] = [x, W, R, bias, None, h0]
    n_out = 2
    if mode == "LSTM":
        inputs.append(c0)
        n_out = 3
    outs = torch.onnx.ops.symbolic_multi_out(
        mode.split("_")[0],
        inputs,
        attrs,
        dtypes=[x.dtype] * n_out,
        shapes=[[T, D, B, H]] + [[D, B, H]] * (n_out - 1),
    )
    y = outs[0].permute(0, 2, 1, 3).flatten(2)  # (T, D, B, H) -> (T, B, D H)
    if mode == "LSTM":
        return y, (outs[1], outs[2])
    return y, outs[1]
