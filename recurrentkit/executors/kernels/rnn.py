"""Fast Elman RNN layers (tanh or relu): two kernels a step forward, three backward."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.nn import functional as F

from recurrentkit.cells.rnn import RNNCell
from recurrentkit.executors.first_order import first_order_backward
from recurrentkit.executors.kernels import ops
from recurrentkit.executors.kernels.base import AdditiveKernel, Linear, prev_mm, split_steps
from recurrentkit.executors.packing import Schedule
from recurrentkit.executors.products import transposed

__all__ = ["RNNKernel"]


class RNNKernel(AdditiveKernel):
    """:class:`~recurrentkit.RNNCell`."""

    def step_tied(
        self, cell: RNNCell, gates: Tensor, state: Tensor, linear: Linear = F.linear
    ) -> tuple[Tensor, Tensor]:
        h = torch.tanh(gates) if cell.nonlinearity == "tanh" else torch.relu(gates)
        return h, h

    def sequence(
        self, cell: RNNCell, gi: Tensor, state: Tensor, sched: Schedule
    ) -> tuple[Tensor, Tensor]:
        gi = gi if cell.bias_hh is None else gi + cell.bias_hh  # (N, H), both biases
        out = _RNN_OP.apply(gi, state, cell.weight_hh, cell.nonlinearity == "relu", sched)
        return out, out


class _RNN(Function):
    r"""Elman RNN over packed rows: ``gi (N, H)`` (both biases in), ``h0`` → ``h (N, H)``.

    $$ h' = \phi(g^i + W_{hh} h) $$
    """

    @staticmethod
    def forward(
        ctx: Any, gi: Tensor, h0: Tensor, w_hh: Tensor, relu: bool, sched: Schedule
    ) -> Tensor:
        sizes = sched.sizes
        out = torch.empty_like(gi)  # (N, H)
        w_t = transposed(w_hh, sizes[0])
        gi_s, out_s = split_steps(gi, sizes), split_steps(out, sizes)
        h = h0
        for t, bs in enumerate(sizes):
            if h.shape[0] != bs:
                h = h[:bs]
            h = torch.addmm(gi_s[t], h, w_t, out=out_s[t])
            h = h.relu_() if relu else h.tanh_()
        ctx.save_for_backward(h0, w_hh, out)
        ctx.sched, ctx.relu = sched, relu
        return out

    @staticmethod
    @first_order_backward
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        h0, w_hh, out = ctx.saved_tensors
        sched: Schedule = ctx.sched
        sizes = sched.sizes
        slope = (out > 0).to(out.dtype) if ctx.relu else 1 - out * out  # (N, H)
        dP = torch.empty_like(out)
        dP_s, S_s, dout_s = (split_steps(v, sizes) for v in (dP, slope, dout))
        dh_buf = out.new_zeros(h0.shape)
        dh_tmp = out.new_empty(h0.shape)
        for t in range(len(sizes) - 1, -1, -1):
            bs = sizes[t]
            dh = torch.add(dout_s[t], dh_buf[:bs], out=dh_tmp[:bs])
            torch.mul(dh, S_s[t], out=dP_s[t])
            torch.mm(dP_s[t], w_hh, out=dh_buf[:bs])
        dw = prev_mm(dP, sched.previous_blocks(h0, out)) if ctx.needs_input_grad[2] else None
        return dP, dh_buf, dw, None, None


def _relu(ctx: Any, args: Any) -> None:
    ctx.relu = bool(args[3])


# the whole-sequence op as torch.library custom ops under torch.compile (.ops): shapes
_RNN_OP = ops.register(
    ops.Spec(
        _RNN,
        lambda a: 1,
        lambda a: [torch.empty_like(a[0])],
        lambda a: [(ops.IN, 1), (ops.IN, 2), (ops.OUT, 0)],  # h0, w_hh, out
        _relu,
    )
)
