r"""Fast LSTM layers (with or without ``proj_size``).

Both biases are added to the projected input rows, so a step's gates are one ``addmm``
of those rows and the recurrent matmul. Backward is hand-written
over the whole sequence: per step, one broadcast multiply for the ``i | f | g`` gate
gradients, one for ``o``, one matmul for :math:`\partial h_{t-1}` (plus one for the
projection); weight gradients are one matmul each over all rows.

In step-major loops (eager, ``linear`` a :class:`~recurrentkit.executors.deferred.DeferredLinear`)
a step without projection is one op of the same kind (:class:`_LSTMStep`); with a
projection, plain ops. A layer's part in ``cross_layer``'s whole-run op (no projection)
is :class:`LSTMPart`.

Every fast form of the LSTM is in this file, and each form writes the gates once: on
autograd ops, :func:`~recurrentkit.cells.lstm.lstm_gates` (beside the cell's equations;
the reference cell calls it too); in place without autograd, ``_gates`` (the fused step
op, sampling, the sequence forward, :class:`LSTMPart`); the factors of a hand-written
backward, ``_backward_factors`` (the sequence backward, :class:`LSTMPart`). The one-step
op's backward multiplies the incoming gradients in as it builds its factors (nothing to
amortise buffers over).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.nn import functional as F

from recurrentkit.cells.lstm import LSTMCell, LSTMState, lstm_gates
from recurrentkit.executors.cross_layer.parts import (
    CellPart,
    PerStep,
    previous_per_step,
    rows_per_step,
    step_views,
)
from recurrentkit.executors.deferred import Slot, weight_grads
from recurrentkit.executors.first_order import first_order_backward
from recurrentkit.executors.kernels import ops
from recurrentkit.executors.kernels.base import (
    AdditiveKernel,
    Linear,
    prev_mm,
    split_steps,
    zeros_bias,
)
from recurrentkit.executors.packing import Schedule
from recurrentkit.executors.products import transposed

__all__ = ["LSTMKernel", "LSTMPart"]


class LSTMKernel(AdditiveKernel):
    """:class:`~recurrentkit.LSTMCell`."""

    def step(
        self, cell: LSTMCell, gi: Tensor, state: Any, linear: Linear = F.linear
    ) -> tuple[Tensor, LSTMState]:
        operands = getattr(linear, "operands", None)
        if operands is None or cell.weight_hr is not None:
            return super().step(cell, gi, state, linear)
        # eager step loop without projection: one fused op
        slot, w, b, w_t = operands(cell.weight_hh, cell.bias_hh, gi.shape[0])
        if torch.is_grad_enabled():
            h, c = _LSTMStep.apply(gi, state[0], state[1], w, b, slot, w_t)
        else:  # sampling: the same arithmetic without the autograd op's overhead
            h, c = _step(gi, state[0], state[1], w_t, b)[:2]
        return h, LSTMState(h, c)

    def step_tied(
        self, cell: LSTMCell, gates: Tensor, state: Any, linear: Linear = F.linear
    ) -> tuple[Tensor, LSTMState]:
        h, c = lstm_gates(gates, state[1])  # (B, H) each
        if cell.weight_hr is not None:
            h = linear(h, cell.weight_hr)  # (B, P)
        return h, LSTMState(h, c)

    def sequence(
        self, cell: LSTMCell, gi: Tensor, state: Any, sched: Schedule
    ) -> tuple[Tensor, LSTMState]:
        h0, c0 = state
        gi = gi if cell.bias_hh is None else gi + cell.bias_hh  # (N, 4H), both biases
        out, C = _LSTM_OP.apply(gi, h0, c0, cell.weight_hh, cell.weight_hr, sched)
        return out, LSTMState(out, C)


# -- the gates, one helper per form ------------------------------------------------------
#
# On autograd ops (the reference cell, LSTMKernel.step_tied and the step loops):
# lstm_gates in recurrentkit.cells.lstm, beside the equations. In place, without autograd
# (the hand-written ops' forwards and the whole-run op's part): _gates. The factors of a
# hand-written backward: _backward_factors. The last two live here: they write into
# buffers the hand-written ops own, which an autograd graph must not see.


def _gates(
    IF: Tensor,
    i: Tensor,
    f: Tensor,
    g: Tensor,
    o: Tensor,
    c: Tensor,
    c_out: Tensor | None,
    tc_out: Tensor | None,
    h_out: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """An LSTM step's gates in place, no autograd, on views the caller makes (once,
    before its time loop, where it has one) of the pre-activations ``[i | f | g | o]
    (B, 4H)``, ``IF`` being ``[i | f]`` (one sigmoid for both): activated in place to
    ``[σi | σf | tanh g | σo]``, then ``c' = σf c + σi tanh g`` into ``c_out``,
    ``tanh c'`` into ``tc_out`` and ``h' = σo tanh c'`` into ``h_out`` (``None``: new
    tensors; ``h_out`` ``None`` writes ``h'`` over ``tanh c'``). Returns ``(h', c')``.

    Used by :func:`_step` (the fused step op, sampling), :class:`_LSTM`'s forward and
    :class:`LSTMPart`'s step."""
    IF.sigmoid_()
    g.tanh_()
    o.sigmoid_()
    c = torch.mul(f, c, out=c_out).addcmul_(i, g)
    tc = torch.tanh(c, out=tc_out)
    return torch.mul(o, tc, out=tc if h_out is None else h_out), c


def _backward_factors(
    i: Tensor,
    f: Tensor,
    g: Tensor,
    o: Tensor,
    c: Tensor,
    tc: Tensor,
    p_i: Tensor,
    p_f: Tensor,
    p_g: Tensor,
    p_o: Tensor,
    p_c: Tensor,
) -> None:
    r"""The factors of an LSTM step's backward that depend on forward values only, in
    place, from the activated gates ``σi, σf, tanh g, σo``, the previous ``c`` and
    ``tanh c'``: each gate's pre-activation gradient per unit of :math:`\partial c'`
    (``p_i = g σ'(i)``, ``p_f = c σ'(f)``, ``p_g = σ(i) tanh'(g)``) or of
    :math:`\partial h'` (``p_o = tanh(c') σ'(o)``), and ``p_c = σ(o) tanh'(c')``, the
    part of :math:`\partial c'` that comes from :math:`\partial h'`.

    Used per step by :class:`LSTMPart` (in its forward, while the step's values are in
    cache) and per block of rows by :class:`_LSTM`'s backward. :class:`_LSTMStep`
    multiplies the incoming gradients in as it builds its factors instead (one step: no
    buffers to amortise)."""
    pi = torch.mul(g, i, out=p_i)
    pi.addcmul_(pi, i, value=-1)  # g σ'(i)
    pf = torch.mul(c, f, out=p_f)
    pf.addcmul_(pf, f, value=-1)  # c σ'(f)
    pg = torch.mul(g, g, out=p_g)
    torch.addcmul(i, i, pg, value=-1, out=pg)  # σ(i) (1 - tanh²g)
    po = torch.mul(tc, o, out=p_o)
    po.addcmul_(po, o, value=-1)  # tanh(c') σ'(o)
    pc = torch.mul(tc, tc, out=p_c)
    torch.addcmul(o, o, pc, value=-1, out=pc)  # σ(o) (1 - tanh²c')


def _step(
    gi: Tensor, h: Tensor, c: Tensor, w_t: Tensor, b_hh: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM step without projection, no autograd, ``w_t`` the recurrent weight
    transposed ``(H, 4H)``: ``(h', c', activated gates [σi | σf | tanh g | σo] (B, 4H))``."""
    G = torch.addmm(gi, h, w_t)  # (B, 4H): [i | f | g | o]
    if b_hh is not None:
        G.add_(b_hh)
    i, f, g, o = G.chunk(4, dim=1)
    h_new, c_new = _gates(G[:, : 2 * c.shape[1]], i, f, g, o, c, None, None, None)
    return h_new, c_new, G


class _LSTMStep(Function):
    r"""One LSTM step without projection: ``gi (B, 4H)`` (``W_ih x + b_ih``), ``h``,
    ``c (B, H)`` → ``(h', c')``; ``w_t``: the recurrent weight transposed for the
    forward product (see :mod:`..products`).

    The equations of :class:`_LSTM` for one step, for step-major loops: one ``addmm``
    and six gate kernels forward, a hand-written backward; the weight gradients go to
    ``slot`` (the run's tap, :mod:`..deferred`) or, without one, are computed here. Saved:
    ``h``, ``c``, the activated gates and ``c'`` (``tanh c'`` is recomputed).
    """

    @staticmethod
    def forward(
        ctx: Any,
        gi: Tensor,
        h: Tensor,
        c: Tensor,
        w_hh: Tensor,
        b_hh: Tensor | None,
        slot: Slot | None,
        w_t: Tensor,
    ) -> tuple[Tensor, Tensor]:
        h_new, c_new, G = _step(gi, h, c, w_t, b_hh)
        ctx.save_for_backward(h, c, w_hh, G, c_new)
        ctx.slot = slot
        ctx.has_bias = b_hh is not None
        return h_new, c_new

    @staticmethod
    @first_order_backward
    def backward(ctx: Any, dh_new: Tensor, dc_new: Tensor) -> tuple[Tensor | None, ...]:
        h, c, w_hh, G, c_new = ctx.saved_tensors
        H, need = c.shape[1], ctx.needs_input_grad
        i, f, g, o = G.chunk(4, dim=1)
        tc = torch.tanh(c_new)
        dG = torch.empty_like(G)  # pre-activation gradients [di | df | dg | do]
        do = torch.mul(dh_new, tc, out=dG[:, 3 * H :]).mul_(o)
        do.addcmul_(do, o, value=-1)  # dh tanh(c') σ'(o)
        dc = torch.mul(tc, tc).neg_().add_(1).mul_(o).mul_(dh_new).add_(dc_new)
        di = torch.mul(dc, g, out=dG[:, :H]).mul_(i)
        di.addcmul_(di, i, value=-1)  # dc g σ'(i)
        df = torch.mul(dc, c, out=dG[:, H : 2 * H]).mul_(f)
        df.addcmul_(df, f, value=-1)  # dc c σ'(f)
        torch.mul(g, g, out=dG[:, 2 * H : 3 * H]).neg_().add_(1).mul_(i).mul_(dc)
        dh = torch.mm(dG, w_hh) if need[1] else None
        dw, db = weight_grads(ctx.slot, dG, h, need[3], ctx.has_bias and need[4])
        return dG if need[0] else None, dh, dc.mul_(f), dw, db, None, None


class _LSTM(Function):
    r"""LSTM over packed rows: ``gi (N, 4H)`` (both biases in), ``h0``, ``c0`` →
    ``(h (N, P or H), c (N, H))``.

    $$ i, f, g, o = \text{split}(g^i + W_{hh} h), \quad
       c' = \sigma(f) c + \sigma(i) \tanh(g), \quad
       h' = [W_{hr}]\,(\sigma(o) \tanh(c')) $$
    """

    @staticmethod
    def forward(
        ctx: Any,
        gi: Tensor,
        h0: Tensor,
        c0: Tensor,
        w_hh: Tensor,
        w_hr: Tensor | None,
        sched: Schedule,
    ) -> tuple[Tensor, Tensor]:
        sizes = sched.sizes
        N, H, P = gi.shape[0], c0.shape[1], h0.shape[1]
        G = gi.new_empty(N, 4 * H)  # gates, activated in place: [σi | σf | tanh g | σo]
        C = gi.new_empty(N, H)
        TC = gi.new_empty(N, H)  # tanh(c)
        M = gi.new_empty(N, H) if w_hr is not None else None  # σo ⊙ tanh(c) before projection
        out = gi.new_empty(N, P)
        w_t = transposed(w_hh, sizes[0])
        w_hr_t = transposed(w_hr, sizes[0]) if w_hr is not None else None
        G_s, IF_s = split_steps(G, sizes), split_steps(G[:, : 2 * H], sizes)
        I_s, F_s, Gg_s, O_s = (split_steps(G[:, k * H : (k + 1) * H], sizes) for k in range(4))
        gi_s, C_s, TC_s, out_s = (split_steps(v, sizes) for v in (gi, C, TC, out))
        M_s = split_steps(M, sizes) if M is not None else out_s
        h, c, rows = h0, c0, sizes[0]
        for t, bs in enumerate(sizes):
            if bs != rows:  # (an int, not h.shape: this pays for the call of _gates)
                h, c, rows = h[:bs], c[:bs], bs
            torch.addmm(gi_s[t], h, w_t, out=G_s[t])
            h, c = _gates(IF_s[t], I_s[t], F_s[t], Gg_s[t], O_s[t], c, C_s[t], TC_s[t], M_s[t])
            if w_hr_t is not None:
                h = torch.mm(h, w_hr_t, out=out_s[t])
        ctx.save_for_backward(h0, c0, w_hh, w_hr, G, C, TC, M, out)
        ctx.sched = sched
        return out, C

    @staticmethod
    @first_order_backward
    def backward(ctx: Any, dout: Tensor, dC: Tensor) -> tuple[Tensor | None, ...]:
        h0, c0, w_hh, w_hr, G, C, TC, M, out = ctx.saved_tensors
        sched: Schedule = ctx.sched
        sizes = sched.sizes
        (N, H), (B, P) = C.shape, h0.shape
        i, f, g, o = G.chunk(4, dim=1)
        # [di | df | dg] = dc ⊗ P3;  do = dm ⊙ Po;  dc += dm ⊙ K   (m = σo tanh c). In place,
        # per block of rows whose previous c is one tensor.
        P3, Po, K = C.new_empty(N, 3 * H), C.new_empty(N, H), C.new_empty(N, H)
        Pi, Pf, Pg = P3.chunk(3, dim=1)
        for b, prev in sched.previous_blocks(c0, C):
            _backward_factors(i[b], f[b], g[b], o[b], prev, TC[b], Pi[b], Pf[b], Pg[b], Po[b], K[b])
        dG = C.new_empty(N, 4 * H)
        DH = C.new_empty(N, P) if w_hr is not None else None  # dL/dh per row (for dW_hr)
        P3_s = [p.view(-1, 3, H) for p in split_steps(P3, sizes)]
        dG3_s = [d.view(-1, 3, H) for d in split_steps(dG[:, : 3 * H], sizes)]
        dGo_s, dG_s = split_steps(dG[:, 3 * H :], sizes), split_steps(dG, sizes)
        Po_s, K_s, F_s, dout_s, dC_s = (split_steps(v, sizes) for v in (Po, K, f, dout, dC))
        DH_s = split_steps(DH, sizes) if DH is not None else None
        dh_buf, dc_buf = C.new_zeros(B, P), C.new_zeros(B, H)
        dh_tmp, dc_tmp = C.new_empty(B, P), C.new_empty(B, H)
        dm_tmp = C.new_empty(B, H) if w_hr is not None else None
        for t in range(len(sizes) - 1, -1, -1):
            bs = sizes[t]
            target = DH_s[t] if DH_s is not None else dh_tmp[:bs]
            dm = dh = torch.add(dout_s[t], dh_buf[:bs], out=target)
            if dm_tmp is not None:
                dm = torch.mm(dh, w_hr, out=dm_tmp[:bs])
            dc = torch.add(dC_s[t], dc_buf[:bs], out=dc_tmp[:bs]).addcmul_(dm, K_s[t])
            torch.mul(dc.unsqueeze(1), P3_s[t], out=dG3_s[t])
            torch.mul(dm, Po_s[t], out=dGo_s[t])
            torch.mul(dc, F_s[t], out=dc_buf[:bs])
            torch.mm(dG_s[t], w_hh, out=dh_buf[:bs])
        need = ctx.needs_input_grad
        dw = prev_mm(dG, sched.previous_blocks(h0, out)) if need[3] else None
        dw_hr = DH.t() @ M if (DH is not None and M is not None and need[4]) else None
        return dG if need[0] else None, dh_buf, dc_buf, dw, dw_hr, None


def _lstm_saved(a: Any) -> list[ops.Saved]:
    """``_LSTM``'s saved tensors: ``h0, c0, w_hh, w_hr, G, C, tanh C, M, out``."""
    gi, projected = a[0], a[4] is not None
    H = a[2].shape[1]
    m = ops.new_rows(gi, H) if projected else [(ops.NONE, None)]
    return [
        *((ops.IN, i) for i in range(1, 5)),
        *ops.new_rows(gi, 4 * H),
        (ops.OUT, 1),
        *ops.new_rows(gi, H),
        *m,
        (ops.OUT, 0),
    ]


# the whole-sequence op as torch.library custom ops under torch.compile (.ops): shapes
_LSTM_OP = ops.register(
    ops.Spec(
        _LSTM,
        lambda a: 2,
        lambda a: [
            a[0].new_empty(a[0].shape[0], a[1].shape[1]),  # h (N, P)
            a[0].new_empty(a[0].shape[0], a[2].shape[1]),  # C (N, H)
        ],
        _lstm_saved,
    )
)


class LSTMPart(CellPart):
    r"""An LSTM layer without projection in
    :mod:`~recurrentkit.executors.cross_layer.run`'s whole-run op: ``[i | f | g | o] =
    gi + W_hh h̃ + b_hh``, ``c' = σ(f) c + σ(i) tanh(g)``, ``h' = σ(o) tanh(c')``. The
    bottom layer's ``gi`` carries both biases.

    Its columns of the op's gradient rows ``D``: ``[di | df | dg | do]``, both the
    input's and the recurrent product's gradient."""

    gates = 4
    states = 2

    def start(self, gi: Tensor | None, weights: Sequence[Tensor | None], c0: Tensor | None) -> None:
        H, B, N, sizes, like = self.H, self.B, self.N, self.sizes, self.like
        w_ih, b_ih, w_hh, b_hh = weights
        assert c0 is not None and w_hh is not None  # (w_ih is None for the bottom layer)
        # the gates, activated in place (a scratch without grad)
        self.G = like.new_empty(N if self.grad else B, 4 * H)
        self.CC = like.new_empty(B + N, H)  # [c0 | c after step 1 | …]
        self.CC[:B].copy_(c0)
        self.c_prev = previous_per_step(self.CC, B, sizes)
        self.c_s = split_steps(self.CC[B:], sizes)
        self.tc_s = rows_per_step(like.new_empty(B, H), sizes)  # tanh(c')
        self.w_hh_t = transposed(w_hh, B)
        self.G_s, self.IF_s, self.Gg_s, self.O_s, self.I_s, self.F_s = (
            step_views(self.G[:, lo * H : hi * H], sizes, self.grad)
            for lo, hi in ((0, 4), (0, 2), (2, 3), (3, 4), (0, 1), (1, 2))
        )
        if self.first:  # gi carries both biases
            assert gi is not None and b_hh is None
            self.gi_s: Sequence[Tensor] = split_steps(gi, sizes)
        else:
            assert w_ih is not None  # (a layer above the bottom)
            self.w_ih_t = transposed(w_ih, B)
            # both biases (a built-in cell has both or none), or zeros: one addmm, called directly
            self.bias = zeros_bias(w_ih) if b_ih is None or b_hh is None else b_ih + b_hh
        # for the backward: [g σ'(i) | c σ'(f) | σ(i) tanh'(g) | tanh(c') σ'(o)] and
        # σ(o) tanh'(c'), i.e. each gate's pre-activation gradient per unit of dc' (dh)
        self.P = like.new_empty(N if self.grad else 0, 4 * H)
        self.Pc = like.new_empty(N if self.grad else 0, H)
        if self.grad:  # each step's views of them, in _backward_factors' order
            self.P_s = list(
                zip(*(split_steps(v, sizes) for v in (*self.P.chunk(4, dim=1), self.Pc)))
            )

    def step(self, t: int, u: Tensor, ht: Tensor, out: Tensor) -> Tensor:
        G = self.G_s[t]
        if self.first:
            torch.addmm(self.gi_s[t], ht, self.w_hh_t, out=G)
        else:
            torch.addmm(self.bias, u, self.w_ih_t, out=G).addmm_(ht, self.w_hh_t)
        i, f, g, o = self.I_s[t], self.F_s[t], self.Gg_s[t], self.O_s[t]
        c_prev, tc = self.c_prev[t], self.tc_s[t]
        h, _ = _gates(self.IF_s[t], i, f, g, o, c_prev, self.c_s[t], tc, out)
        if self.grad:
            _backward_factors(i, f, g, o, c_prev, tc, *self.P_s[t])
        return h

    def saved(self) -> list[Tensor]:
        return [self.G, self.P, self.Pc]  # (the c sequence is an output, not needed here)

    def outputs(self) -> list[Tensor]:
        return [self.CC[self.B :]]

    def restore(
        self,
        saved: Sequence[Tensor],
        weights: Sequence[Tensor | None],
        D: Tensor,
        per_step: PerStep,
        dc_out: Tensor | None,
    ) -> None:
        H, B, sizes = self.H, self.B, self.sizes
        G, P, Pc = saved
        w_ih, _, w_hh, _ = weights
        assert w_hh is not None  # (every layer's)
        self.w_hh = w_hh
        if w_ih is not None:  # a layer above the bottom (only such a layer's down() runs)
            self.w_ih = w_ih
        self.F_s = split_steps(G[:, H : 2 * H], sizes)
        self.Pifg_s = split_steps(P[:, : 3 * H].view(-1, 3, H), sizes)
        self.Po_s, self.Pc_s = split_steps(P[:, 3 * H :], sizes), split_steps(Pc, sizes)
        self.Difg_s = per_step(D[:, : 3 * H].view(-1, 3, H))
        self.Do_s, self.DG_s = per_step(D[:, 3 * H :]), per_step(D)
        # the gradient of c after the step being processed, and before it: swapped
        self.dc = [self.like.new_zeros(B, H), self.like.new_zeros(B, H)]
        self.dc_s = [rows_per_step(d, sizes) for d in self.dc]
        self.dc_out = None if dc_out is None else split_steps(dc_out, sizes)
        self.cur = 0

    def back(self, t: int, dh: Tensor, dht: Tensor) -> None:
        dc = self.dc_s[self.cur][t]
        if self.dc_out is not None:
            dc.add_(self.dc_out[t])
        dc.addcmul_(dh, self.Pc_s[t])  # dc' in full
        torch.mul(dc.unsqueeze(1), self.Pifg_s[t], out=self.Difg_s[t])  # [di | df | dg]
        torch.mul(dh, self.Po_s[t], out=self.Do_s[t])
        torch.mul(dc, self.F_s[t], out=self.dc_s[1 - self.cur][t])
        torch.mm(self.DG_s[t], self.w_hh, out=dht)
        self.cur = 1 - self.cur

    def down(self, t: int, below: Tensor) -> None:
        below.addmm_(self.DG_s[t], self.w_ih)

    def add_grads(self, D: Tensor, ht: Tensor, u: Tensor | None, grads: list[Any]) -> None:
        d_w_ih, d_b_ih, d_w_hh, d_b_hh = grads
        if d_w_hh is not None:
            d_w_hh.addmm_(D.t(), ht)
        if d_w_ih is not None:
            d_w_ih.addmm_(D.t(), u)
        if d_b_ih is not None or d_b_hh is not None:
            db = D.sum(0)
            for d in (d_b_ih, d_b_hh):
                if d is not None:
                    d.add_(db)

    def input_grad(self, D: Tensor, out: Tensor) -> None:
        out.copy_(D)

    def c0_grad(self) -> Tensor | None:
        return self.dc[self.cur].clone()
