r"""Fast Nested LSTM layers, any depth.

Level 0 is the outer cell (its input projection hoisted out of the time loop); level
``j >= 1`` reads ``[x̃_j | h̃_j]`` from the level above through one matmul with
``[W_ih | W_hh]`` side by side; the innermost level is an LSTM. Backward is written
by hand over the whole sequence: inward through the output gates, then outward
through the memory updates, one matmul per level per step; weight gradients are one
matmul each over all rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.nn import functional as F

from recurrentkit.cells.lstm import LSTMState
from recurrentkit.cells.nested_lstm import NestedLSTMCell, NestedLSTMState
from recurrentkit.executors.kernels.base import (
    AdditiveKernel,
    Linear,
    folded_bias,
    prev_mm,
    split_steps,
)
from recurrentkit.executors.kernels.lstm import LSTMKernel
from recurrentkit.executors.layout import transposed
from recurrentkit.executors.once import once_differentiable
from recurrentkit.executors.packing import Schedule

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

    def step_tied(  # type: ignore[override]
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

    def sequence(  # type: ignore[override]
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
        out, *C = _Nested.apply(sched, d, gi, state.h, cell.weight_hh, *wcats, *bcats, *c0s)
        seq: Any = LSTMState(C[d - 2], C[d - 1])
        for j in range(d - 2, 0, -1):
            seq = NestedLSTMState(C[j - 1], C[j], seq)
        return out, NestedLSTMState(out, C[0], seq)


class _Nested(Function):
    """Nested LSTM of depth ``d`` over packed rows → ``(h (N, H), c_0, ..., c_{d-1})``."""

    @staticmethod
    def forward(  # type: ignore[override]
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
                    b = bcats[j - 1]
                    if b is None:
                        torch.mm(XH_s[j - 1][t], wcat_t[j - 1], out=G_s[j][t])
                    else:
                        torch.addmm(b, XH_s[j - 1][t], wcat_t[j - 1], out=G_s[j][t])
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
    @once_differentiable
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
        sizes = sched.sizes
        N, H = out.shape
        B = h0.shape[0]
        Ks, Pos, Ps, Fs, Is = [], [], [], [], []
        for j in range(d):  # the factors of each level's gradients, built in place
            i, f, g, o = Gs[j].chunk(4, dim=1)
            tc = torch.tanh(Cs[j])  # recomputed: saving it costs more memory than time
            Po = torch.mul(tc, o)
            Pos.append(Po.addcmul_(Po, o, value=-1))  # tanh(c) σ'(o)
            Ks.append(tc.mul_(tc).neg_().add_(1).mul_(o))  # σ(o) (1 - tanh²c), in place
            # [di | df] = [dx̃ | dh̃] ⊙ [g σ'(i) | c σ'(f)]; innermost: [di | df | dg] = dc ⊗ [...]
            P = out.new_empty(N, (2 if j < d - 1 else 3) * H)
            gi_ = torch.mul(g, i, out=P[:, :H])
            gi_.addcmul_(gi_, i, value=-1)
            cf = P[:, H : 2 * H]
            for rows_, prev in sched.previous_blocks(c0s[j], Cs[j]):
                torch.mul(prev, f[rows_], out=cf[rows_])
            cf.addcmul_(cf, f, value=-1)
            if j == d - 1:
                torch.mul(g, g, out=P[:, 2 * H :]).neg_().add_(1).mul_(i)
            Ps.append(P)
            Fs.append(f)
            Is.append(i)
        dGs = [out.new_empty(N, 4 * H) for _ in range(d)]
        dG_s = [split_steps(G, sizes) for G in dGs]
        dGo_s = [split_steps(G[:, 3 * H :], sizes) for G in dGs]
        dGif_s = [split_steps(G[:, : 2 * H], sizes) for G in dGs]
        dGg_s = [split_steps(G[:, 2 * H : 3 * H], sizes) for G in dGs]
        dG3_inner = [v.view(-1, 3, H) for v in split_steps(dGs[-1][:, : 3 * H], sizes)]
        P3_inner = [v.view(-1, 3, H) for v in split_steps(Ps[-1], sizes)]
        K_s, Po_s, P_s, F_s, I_s = (
            [split_steps(v, sizes) for v in vs] for vs in (Ks, Pos, Ps, Fs, Is)
        )
        dC_s = [split_steps(v, sizes) for v in dCs]
        dout_s = split_steps(dout, sizes)
        dh_buf, dh_tmp = out.new_zeros(B, H), out.new_empty(B, H)
        dc_bufs = [out.new_zeros(B, H) for _ in range(d)]
        dc_tmps = [out.new_empty(B, H) for _ in range(d)]
        dxh_tmp = out.new_empty(B, 2 * H)
        for t in range(len(sizes) - 1, -1, -1):
            bs = sizes[t]
            dy = torch.add(dout_s[t], dh_buf[:bs], out=dh_tmp[:bs])
            dcs = []
            for j in range(d):  # inward: h_j = σ(o_j) tanh(c_j), and c_{j-1} = h_j
                torch.mul(dy, Po_s[j][t], out=dGo_s[j][t])
                dc = torch.add(dC_s[j][t], dc_bufs[j][:bs], out=dc_tmps[j][:bs])
                dy = dc.addcmul_(dy, K_s[j][t])
                dcs.append(dy)
            torch.mul(dcs[-1].unsqueeze(1), P3_inner[t], out=dG3_inner[t])
            torch.mul(dcs[-1], F_s[-1][t], out=dc_bufs[-1][:bs])
            for j in range(d - 2, -1, -1):  # outward: level j+1 read [x̃ | h̃] from level j
                dxh = torch.mm(dG_s[j + 1][t], wcats[j], out=dxh_tmp[:bs])  # (bs, 2H)
                torch.mul(dxh, P_s[j][t], out=dGif_s[j][t])
                torch.mul(dxh[:, :H], I_s[j][t], out=dGg_s[j][t])
                torch.mul(dxh[:, H:], F_s[j][t], out=dc_bufs[j][:bs])
            torch.mm(dG_s[0][t], w_hh, out=dh_buf[:bs])
        need = ctx.needs_input_grad
        dw = prev_mm(dGs[0], sched.previous_blocks(h0, out)) if need[4] else None
        dwcats = [dGs[j + 1].t() @ XHs[j] if need[5 + j] else None for j in range(d - 1)]
        dbcats = [dGs[j + 1].sum(0) if ctx.has_bias[j] else None for j in range(d - 1)]
        return (None, None, dGs[0], dh_buf, dw, *dwcats, *dbcats, *dc_bufs)
