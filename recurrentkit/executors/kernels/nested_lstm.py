r"""Fast Nested LSTM layers, any depth.

Level 0 is the outer cell (its input projection hoisted out of the time loop); level
``j >= 1`` reads ``[x̃_j | h̃_j]`` from the level above through one matmul with
``[W_ih | W_hh]`` side by side; the innermost level is an LSTM. Backward is written
by hand over the whole sequence: inward through the output gates, then outward
through the memory updates, one matmul per level per step. It goes over runs of at
least :data:`~recurrentkit.executors.packing.CHUNK_ROWS` rows: each run's factors and
inner gate gradients are made for its rows only, and its weight gradients are added as
it ends (peak training memory 1.08 / 0.93 / 0.95 × ``nn.LSTM``'s at the benchmark's
α / β / γ, against 1.46 / 1.13 / 1.11 with whole-sequence buffers).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.nn import functional as F

from recurrentkit.cells.lstm import LSTMState
from recurrentkit.cells.nested_lstm import NestedLSTMCell, NestedLSTMState
from recurrentkit.executors.first_order import first_order_backward
from recurrentkit.executors.kernels import ops
from recurrentkit.executors.kernels.base import AdditiveKernel, Linear, folded_bias, split_steps
from recurrentkit.executors.kernels.lstm import LSTMKernel
from recurrentkit.executors.packing import Schedule, chunk_steps
from recurrentkit.executors.products import affine, transposed

__all__ = ["NestedLSTMKernel", "levels"]

_LSTM_KERNEL = LSTMKernel()


def levels(cell: NestedLSTMCell) -> list[Any]:
    """The cell, its inner cell, ..., down to the innermost ``LSTMCell``."""
    chain: list[Any] = [cell]
    while type(chain[-1]) is NestedLSTMCell:
        chain.append(chain[-1].inner)
    return chain


class NestedLSTMKernel(AdditiveKernel):
    """:class:`~recurrentkit.NestedLSTMCell` (built-in inner cells, no projection)."""

    def step_tied(
        self, cell: NestedLSTMCell, gates: Tensor, state: Any, linear: Linear = F.linear
    ) -> tuple[Tensor, NestedLSTMState]:
        _, c, inner_state = state
        i, f, g, o = gates.chunk(4, dim=1)  # (B, H) each, before activation
        inner_x = torch.sigmoid(i) * g  # (B, H)
        inner_h = torch.sigmoid(f) * c  # (B, H)
        inner: Any = cell.inner
        inner_gi = linear(inner_x, inner.weight_ih, inner.bias_ih)  # (B, 4H)
        inner_kernel: Any = self if type(inner) is NestedLSTMCell else _LSTM_KERNEL
        c, inner_state = inner_kernel.step(inner, inner_gi, inner_state._replace(h=inner_h), linear)
        h = torch.sigmoid(o) * torch.tanh(c)  # (B, H)
        return h, NestedLSTMState(h, c, inner_state)

    def sequence(
        self, cell: NestedLSTMCell, gi: Tensor, state: Any, sched: Schedule
    ) -> tuple[Tensor, Any]:
        chain = levels(cell)
        d = len(chain)
        c0s, s = [], state
        for _ in range(d):
            c0s.append(s.c)
            s = getattr(s, "inner", None)
        wcats = [torch.cat([lv.weight_ih, lv.weight_hh], 1) for lv in chain[1:]]  # (4H, 2H)
        bcats = [folded_bias(lv) for lv in chain[1:]]
        gi = gi if cell.bias_hh is None else gi + cell.bias_hh  # (N, 4H), both biases
        out, *C = _NESTED_OP.apply(sched, d, gi, state.h, cell.weight_hh, *wcats, *bcats, *c0s)
        seq: Any = LSTMState(C[d - 2], C[d - 1])
        for j in range(d - 2, 0, -1):
            seq = NestedLSTMState(C[j - 1], C[j], seq)
        return out, NestedLSTMState(out, C[0], seq)


class _Nested(Function):
    """Nested LSTM of depth ``d`` over packed rows → ``(h (N, H), c_0, ..., c_{d-1})``."""

    @staticmethod
    def forward(
        ctx: Any, sched: Schedule, d: int, gi: Tensor, h0: Tensor, w_hh: Tensor, *rest: Any
    ) -> tuple[Tensor, ...]:
        wcats, bcats, c0s = rest[: d - 1], rest[d - 1 : 2 * (d - 1)], rest[2 * (d - 1) :]
        sizes = sched.sizes
        N, H = gi.shape[0], h0.shape[1]
        Gs = [gi.new_empty(N, 4 * H) for _ in range(d)]  # activated gates per level
        XHs = [gi.new_empty(N, 2 * H) for _ in range(d - 1)]  # [x̃ | h̃] read by level j+1
        Cs = [gi.new_empty(N, H) for _ in range(d)]
        tc = gi.new_empty(sizes[0], H)  # tanh(c) of one step (backward recomputes it)
        out = gi.new_empty(N, H)
        G_s = [split_steps(G, sizes) for G in Gs]
        IF_s = [split_steps(G[:, : 2 * H], sizes) for G in Gs]
        I_s, F_s, Gg_s, O_s = (
            [split_steps(G[:, k * H : (k + 1) * H], sizes) for G in Gs] for k in range(4)
        )
        XH_s = [split_steps(X, sizes) for X in XHs]
        X_s = [split_steps(X[:, :H], sizes) for X in XHs]
        Hh_s = [split_steps(X[:, H:], sizes) for X in XHs]
        C_s = [split_steps(C, sizes) for C in Cs]
        gi_s, out_s = split_steps(gi, sizes), split_steps(out, sizes)
        w_t = transposed(w_hh, sizes[0])
        wcat_t = [transposed(w, sizes[0]) for w in wcats]
        h, cs = h0, list(c0s)
        for t, bs in enumerate(sizes):
            if h.shape[0] != bs:
                h, cs = h[:bs], [c[:bs] for c in cs]
            torch.addmm(gi_s[t], h, w_t, out=G_s[0][t])
            for j in range(d):
                if j > 0:
                    affine(bcats[j - 1], XH_s[j - 1][t], wcat_t[j - 1], out=G_s[j][t])
                IF_s[j][t].sigmoid_()
                O_s[j][t].sigmoid_()
                if j < d - 1:  # x̃ = σ(i) ⊙ g, h̃ = σ(f) ⊙ c
                    torch.mul(I_s[j][t], Gg_s[j][t], out=X_s[j][t])
                    torch.mul(F_s[j][t], cs[j], out=Hh_s[j][t])
                else:  # innermost LSTM: c' = σ(f) c + σ(i) tanh(g)
                    Gg_s[j][t].tanh_()
                    torch.mul(F_s[j][t], cs[j], out=C_s[j][t]).addcmul_(I_s[j][t], Gg_s[j][t])
            for j in range(d - 1, -1, -1):  # h_j = σ(o_j) tanh(c_j) is c_{j-1} (out at j = 0)
                tanh_c = torch.tanh(C_s[j][t], out=tc[:bs])
                target = C_s[j - 1][t] if j > 0 else out_s[t]
                torch.mul(O_s[j][t], tanh_c, out=target)
            h, cs = out_s[t], [C_s[j][t] for j in range(d)]
        ctx.save_for_backward(h0, w_hh, out, *wcats, *c0s, *Gs, *XHs, *Cs)
        ctx.sched, ctx.d = sched, d
        ctx.has_bias = [b is not None for b in bcats]
        return (out, *Cs)

    @staticmethod
    @first_order_backward
    def backward(ctx: Any, dout: Tensor, *dCs: Tensor) -> tuple[Tensor | None, ...]:
        d, sched = ctx.d, ctx.sched
        saved = ctx.saved_tensors
        h0, w_hh, out = saved[:3]
        k = 3
        wcats, c0s = saved[k : k + d - 1], saved[k + d - 1 : k + 2 * d - 1]
        k += 2 * d - 1
        Gs, XHs = saved[k : k + d], saved[k + d : k + 2 * d - 1]
        k += 2 * d - 1
        Cs = saved[k : k + d]
        sizes, need = sched.sizes, ctx.needs_input_grad
        N, H = out.shape
        B = h0.shape[0]
        prev_h = sched.previous_rows(h0, out)
        prev_c = [sched.previous_rows(c0s[j], Cs[j]) for j in range(d)]
        # the steps in runs of >= CHUNK_ROWS rows, last first: the factors and the inner
        # levels' gradient rows hold one run's rows; weight gradients are added per run.
        # The outer level's gate gradients are gi's, so they cover every row.
        chunks = chunk_steps(sizes)
        M = max(r1 - r0 for _, _, r0, r1 in chunks)
        Kb = [out.new_empty(M, H) for _ in range(d)]  # σ(o) (1 - tanh²c)
        Pob = [out.new_empty(M, H) for _ in range(d)]  # tanh(c) σ'(o)
        # [di | df] = [dx̃ | dh̃] ⊙ [g σ'(i) | c σ'(f)]; innermost: [di | df | dg] = dc ⊗ [...]
        Pb = [out.new_empty(M, (2 if j < d - 1 else 3) * H) for j in range(d)]
        dG0 = out.new_empty(N, 4 * H)  # the outer level's: gi's gradient
        dGb = [out.new_empty(M, 4 * H) for _ in range(d - 1)]  # the inner levels'
        dw = out.new_zeros(4 * H, H) if need[4] else None
        dwcats = [torch.zeros_like(w) if need[5 + j] else None for j, w in enumerate(wcats)]
        dbcats = [out.new_zeros(4 * H) if ctx.has_bias[j] else None for j in range(d - 1)]
        dC_s = [split_steps(v, sizes) for v in dCs]
        dout_s = split_steps(dout, sizes)
        dh_buf, dh_tmp = out.new_zeros(B, H), out.new_empty(B, H)
        dc_bufs = [out.new_zeros(B, H) for _ in range(d)]
        dc_tmps = [out.new_empty(B, H) for _ in range(d)]
        dxh_tmp = out.new_empty(B, 2 * H)
        for t0, t1, r0, r1 in reversed(chunks):
            rows, m, sz = slice(r0, r1), r1 - r0, sizes[t0:t1]
            Fs, Is = [], []
            for j in range(d):  # the factors of each level's gradients, built in place
                i, f, g, o = Gs[j][rows].chunk(4, dim=1)
                tc = torch.tanh(Cs[j][rows], out=Kb[j][:m])  # recomputed: cheaper than saved
                Po = torch.mul(tc, o, out=Pob[j][:m])
                Po.addcmul_(Po, o, value=-1)  # tanh(c) σ'(o)
                tc.mul_(tc).neg_().add_(1).mul_(o)  # σ(o) (1 - tanh²c), in place
                P = Pb[j][:m]
                gi_ = torch.mul(g, i, out=P[:, :H])
                gi_.addcmul_(gi_, i, value=-1)
                cf = torch.mul(prev_c[j](r0, r1), f, out=P[:, H : 2 * H])
                cf.addcmul_(cf, f, value=-1)
                if j == d - 1:
                    torch.mul(g, g, out=P[:, 2 * H :]).neg_().add_(1).mul_(i)
                Fs.append(f)
                Is.append(i)
            dGr = [dG0[rows], *(b[:m] for b in dGb)]  # this run's gate gradients per level
            dG_s = [split_steps(G, sz) for G in dGr]
            dGo_s = [split_steps(G[:, 3 * H :], sz) for G in dGr]
            dGif_s = [split_steps(G[:, : 2 * H], sz) for G in dGr]
            dGg_s = [split_steps(G[:, 2 * H : 3 * H], sz) for G in dGr]
            dG3_inner = [v.view(-1, 3, H) for v in split_steps(dGr[-1][:, : 3 * H], sz)]
            P3_inner = [v.view(-1, 3, H) for v in split_steps(Pb[-1][:m], sz)]
            K_s, Po_s, P_s = ([split_steps(v[:m], sz) for v in vs] for vs in (Kb, Pob, Pb))
            F_s, I_s = [split_steps(v, sz) for v in Fs], [split_steps(v, sz) for v in Is]
            for t in range(t1 - 1, t0 - 1, -1):
                s, bs = t - t0, sizes[t]
                dy = torch.add(dout_s[t], dh_buf[:bs], out=dh_tmp[:bs])
                dcs = []
                for j in range(d):  # inward: h_j = σ(o_j) tanh(c_j), and c_{j-1} = h_j
                    torch.mul(dy, Po_s[j][s], out=dGo_s[j][s])
                    dc = torch.add(dC_s[j][t], dc_bufs[j][:bs], out=dc_tmps[j][:bs])
                    dy = dc.addcmul_(dy, K_s[j][s])
                    dcs.append(dy)
                torch.mul(dcs[-1].unsqueeze(1), P3_inner[s], out=dG3_inner[s])
                torch.mul(dcs[-1], F_s[-1][s], out=dc_bufs[-1][:bs])
                for j in range(d - 2, -1, -1):  # outward: level j+1 read [x̃ | h̃] from level j
                    dxh = torch.mm(dG_s[j + 1][s], wcats[j], out=dxh_tmp[:bs])  # (bs, 2H)
                    torch.mul(dxh, P_s[j][s], out=dGif_s[j][s])
                    torch.mul(dxh[:, :H], I_s[j][s], out=dGg_s[j][s])
                    torch.mul(dxh[:, H:], F_s[j][s], out=dc_bufs[j][:bs])
                torch.mm(dG_s[0][s], w_hh, out=dh_buf[:bs])
            if dw is not None:
                dw.addmm_(dGr[0].t(), prev_h(r0, r1))
            for j in range(d - 1):
                dwc, dbc = dwcats[j], dbcats[j]
                if dwc is not None:
                    dwc.addmm_(dGr[j + 1].t(), XHs[j][rows])
                if dbc is not None:
                    dbc.add_(dGr[j + 1].sum(0))
        return (None, None, dG0, dh_buf, dw, *dwcats, *dbcats, *dc_bufs)


def _nested_saved(a: Any) -> list[ops.Saved]:
    """``_Nested``'s saved tensors: ``h0, w_hh, out, wcats, c0s, Gs, XHs, Cs``; the
    arguments are ``sched, d, gi, h0, w_hh, wcats (d-1), bcats (d-1), c0s (d)``."""
    d, gi, H = a[1], a[2], a[3].shape[1]
    c0 = 5 + 2 * (d - 1)
    return [
        (ops.IN, 3),
        (ops.IN, 4),
        (ops.OUT, 0),
        *((ops.IN, 5 + j) for j in range(d - 1)),
        *((ops.IN, c0 + j) for j in range(d)),
        *ops.new_rows(gi, *[4 * H] * d, *[2 * H] * (d - 1)),
        *((ops.OUT, 1 + j) for j in range(d)),
    ]


def _nested_attrs(ctx: Any, args: Any) -> None:
    d = args[1]
    ctx.d = d
    ctx.has_bias = [b is not None for b in args[5 + d - 1 : 5 + 2 * (d - 1)]]


# the whole-sequence op as torch.library custom ops under torch.compile (.ops): shapes
_NESTED_OP = ops.register(
    ops.Spec(
        _Nested,
        lambda a: 1 + a[1],
        lambda a: [a[2].new_empty(a[2].shape[0], a[3].shape[1]) for _ in range(1 + a[1])],
        _nested_saved,
        _nested_attrs,
    )
)
