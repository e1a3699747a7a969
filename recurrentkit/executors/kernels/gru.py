r"""Fast GRU layers: reset-after (torch's form) and reset-before (Cho et al.'s form).

Forward, per step: one recurrent matmul written straight into a saved buffer, then
the gates in place (5–6 kernels). Backward (hand-written, whole sequence): per step
one broadcast multiply per gate pair and one matmul for :math:`\partial h_{t-1}`;
every factor that depends on forward values only is computed for many steps at once
before they are walked, and each weight gradient is one matmul over many rows. The
reset-after backward does this per run of at least
:data:`~recurrentkit.executors.packing.CHUNK_ROWS` rows, so its buffers hold one run's
rows (peak training memory of a hand-built GRU stack 1.16 / 0.98 / 0.89 × ``nn.GRU``'s
at the benchmark's α / β / γ, against 1.48 / 1.18 / 1.06 with whole-sequence buffers);
the reset-before backward, over the whole sequence at once.

In step-major loops (eager, ``linear`` a :class:`~recurrentkit.executors.deferred.DeferredLinear`)
a reset-after step is one op of the same kind (:class:`_GRUStepAfter`); reset-before
steps run on plain ops. A reset-after layer's part in ``cross_layer``'s whole-run op is
:class:`GRUPart`.

Every fast form of the GRU is in this file, and each form writes the gates once: on
autograd ops, :func:`~recurrentkit.cells.gru.gru_gates` (beside the cell's equations;
the reference cell calls it too); in place without autograd, ``_gates_after`` (the
fused step op, sampling, the reset-after sequence forward, :class:`GRUPart`); the
factors of a hand-written backward, ``_backward_factors`` (both sequence backwards,
:class:`GRUPart`). The reset-before sequence forward keeps its gates inline (the
product of ``r ⊙ h`` sits between them) and the one-step op's backward multiplies the
incoming gradient in as it builds its factors (nothing to amortise buffers over).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.nn import functional as F

from recurrentkit.cells.gru import GRUCell, gru_gates
from recurrentkit.executors.cross_layer.parts import CellPart, PerStep, rows_per_step, step_views
from recurrentkit.executors.deferred import Slot, weight_grads
from recurrentkit.executors.first_order import first_order_backward
from recurrentkit.executors.kernels import ops
from recurrentkit.executors.kernels.base import CellKernel, Linear, prev_mm, rows
from recurrentkit.executors.kernels.base import split_steps as _split
from recurrentkit.executors.kernels.base import zeros_bias as _zeros_bias
from recurrentkit.executors.packing import Schedule, chunk_steps
from recurrentkit.executors.products import affine, transposed

__all__ = ["GRUKernel", "GRUPart"]


class GRUKernel(CellKernel):
    """:class:`~recurrentkit.GRUCell`, either reset form."""

    def step(
        self, cell: GRUCell, gi: Tensor, state: Tensor, linear: Linear = F.linear
    ) -> tuple[Tensor, Tensor]:
        H = cell.hidden_size
        operands = getattr(linear, "operands", None)
        if cell.reset == "after" and operands is not None:  # eager step loop: one fused op
            p = cell._parameters  # (read every step: no attribute lookups)
            slot, w, b, w_t = operands(p["weight_hh"], p["bias_hh"], state.shape[0])
            if torch.is_grad_enabled():
                h = _GRUStepAfter.apply(gi, state, w, b, slot, w_t)
            else:  # sampling: the same arithmetic without the autograd op's overhead
                h = _step_after(gi, state, w_t, b)[0]
            return h, h
        i_rz, i_n = gi[:, : 2 * H], gi[:, 2 * H :]
        if cell.reset == "after":
            h_rz, h_n = linear(state, cell.weight_hh, cell.bias_hh).split([2 * H, H], dim=1)
            h = gru_gates(i_rz + h_rz, i_n, state, h_n)
            return h, h
        w, b = cell.weight_hh, cell.bias_hh
        b_rz = None if b is None else rows(linear, b, 0, 2 * H)
        h_rz = linear(state, rows(linear, w, 0, 2 * H), b_rz)
        b_n = None if b is None else rows(linear, b, 2 * H, 3 * H)
        h = gru_gates(i_rz + h_rz, i_n, state, None, rows(linear, w, 2 * H, 3 * H), b_n, linear)
        return h, h

    def tied_weights(self, cell: GRUCell) -> tuple[Tensor, Tensor | None] | None:
        """``[W_ir + W_hr; W_iz + W_hz; W_in; (W_hn)]``: ``(4H, H)`` reset-after, ``(3H, H)``
        reset-before (there ``W_hn`` reads ``r ⊙ h``, a matmul of its own)."""
        if cell.weight_ih.shape != cell.weight_hh.shape:
            return None
        H = cell.hidden_size

        def tie(a: Tensor, b: Tensor) -> Tensor:
            parts = [a[: 2 * H] + b[: 2 * H], a[2 * H :]]
            return torch.cat(parts + [b[2 * H :]] if cell.reset == "after" else parts)

        bias = None if cell.bias_ih is None else tie(cell.bias_ih, cell.bias_hh)
        return tie(cell.weight_ih, cell.weight_hh), bias

    def step_tied(
        self, cell: GRUCell, gates: Tensor, state: Tensor, linear: Linear = F.linear
    ) -> tuple[Tensor, Tensor]:
        H = cell.hidden_size
        a_rz, i_n = gates[:, : 2 * H], gates[:, 2 * H : 3 * H]
        if cell.reset == "after":
            h = gru_gates(a_rz, i_n, state, gates[:, 3 * H :])
        else:  # reset-before: W_hn (r ⊙ h) + b_hn, a product of its own
            w, b = cell.weight_hh, cell.bias_hh
            b_n = None if b is None else rows(linear, b, 2 * H, 3 * H)
            h = gru_gates(a_rz, i_n, state, None, rows(linear, w, 2 * H, 3 * H), b_n, linear)
        return h, h

    def sequence(
        self, cell: GRUCell, gi: Tensor, state: Tensor, sched: Schedule
    ) -> tuple[Tensor, Tensor]:
        op = _AFTER_OP if cell.reset == "after" else _BEFORE_OP
        out = op.apply(gi, state, cell.weight_hh, cell.bias_hh, sched)  # (N, H)
        return out, out


# -- the gates, one helper per form ------------------------------------------------------
#
# On autograd ops (the reference cell, GRUKernel.step and .step_tied): gru_gates in
# recurrentkit.cells.gru, beside the equations. In place, without autograd (the
# hand-written ops' forwards and the whole-run op's part): _gates_after. The factors of a
# hand-written backward: _backward_factors. The last two live here: they write into
# buffers the hand-written ops own, which an autograd graph must not see.


def _gates_after(
    rz: Tensor,
    r: Tensor,
    z: Tensor,
    gn: Tensor,
    i_rz: Tensor,
    i_n: Tensor,
    h: Tensor,
    n: Tensor | None,
    out: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """A reset-after step's gates in place, no autograd, on views the caller makes (once,
    before its time loop, where it has one): ``[rz | gn] = W_hh h + b_hh (B, 3H)``
    becomes ``[r | z | W_n h + b_n]`` (``r``, ``z``: ``rz``'s halves), ``i_rz``,
    ``i_n`` the projected input's columns. Returns ``(h' = n + z (h - n), n)``, both
    ``(B, H)``, written into ``out`` and ``n`` where given (``None``: new tensors).

    Used by :func:`_step_after` (the fused step op, sampling), :class:`_GRUAfter`'s
    forward and :class:`GRUPart`'s step."""
    rz.add_(i_rz).sigmoid_()
    n = torch.addcmul(i_n, r, gn, out=n).tanh_()
    return torch.lerp(n, h, z, out=out), n


def _backward_factors(
    n: Tensor,
    h_new: Tensor,
    z_pair: Tensor,
    ones: Tensor,
    p_n: Tensor,
    p_z: Tensor,
    pair: Tensor,
    x: Tensor,
    r: Tensor,
    c: Tensor,
) -> None:
    r"""The factors of a GRU step's backward that depend on forward values only, in place
    (either reset form): ``[p_n | p_z] = [(1-z)(1-n²) | (1-z)(h'-n)]``, the
    pre-activation gradients of ``n`` and ``z`` per unit of :math:`\partial h'`
    (``h' - n = z (h - n)``), and ``c = x r(1-r)``, the reset gate's per unit of
    :math:`\partial n` times ``W_hn h + b_hn`` (reset-after: ``x`` is that) or of
    :math:`\partial (r \odot h)` (reset-before: ``x = h``).

    ``pair`` is ``[p_n | p_z]`` as ``(B, 2, H)`` and ``z_pair`` is ``z`` as ``(B, 1, H)``
    (one multiply by ``1 - z`` for both), ``ones`` ``(B, H)`` of ones (may be expanded);
    ``c`` may be ``x`` itself. Used per step by :class:`GRUPart` (in its forward, while
    the step's values are in cache) and per run of rows by the sequence backwards of
    :class:`_GRUAfter` and :class:`_GRUBefore`. :class:`_GRUStepAfter` multiplies the
    incoming gradient in as it builds its factors instead (one step: no buffers to
    amortise)."""
    torch.addcmul(ones, n, n, value=-1, out=p_n)  # 1 - n²
    torch.sub(h_new, n, out=p_z)  # z (h - n)
    pair.addcmul_(pair, z_pair, value=-1)  # both times (1 - z)
    torch.mul(x, r, out=c).addcmul_(c, r, value=-1)  # x r (1 - r)


def _step_after(
    gi: Tensor, h: Tensor, w_t: Tensor, b_hh: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """One reset-after step, no autograd, ``w_t`` the recurrent weight transposed
    ``(H, 3H)``: ``(h' (B, H), [r | z | W_n h + b_n] (B, 3H), n (B, H))``."""
    G = affine(b_hh, h, w_t)  # (B, 3H)
    H = h.shape[1]
    G_rz, G_n = G.split_with_sizes((2 * H, H), 1)  # (one call for both views: a step
    i_rz, i_n = gi.split_with_sizes((2 * H, H), 1)  # of a few rows is mostly calls)
    r, z = G_rz.chunk(2, dim=1)
    out, n = _gates_after(G_rz, r, z, G_n, i_rz, i_n, h, None, None)
    return out, G, n


class _GRUStepAfter(Function):
    r"""One reset-after GRU step: ``gi (B, 3H)``, ``h (B, H)`` → ``h' (B, H)``; ``w_t``:
    the recurrent weight transposed for the forward product (see :mod:`..products`).

    The equations of :class:`_GRUAfter` for one step, for step-major loops: one
    ``addmm`` and four gate kernels forward, a hand-written backward; the weight
    gradients go to ``slot`` (the run's tap, :mod:`..deferred`) or, without one, are
    computed here. Saved: ``h``, ``[r | z | W_n h + b_n]`` and ``n``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        gi: Tensor,
        h: Tensor,
        w_hh: Tensor,
        b_hh: Tensor | None,
        slot: Slot | None,
        w_t: Tensor,
    ) -> Tensor:
        out, G, n = _step_after(gi, h, w_t, b_hh)
        ctx.save_for_backward(h, w_hh, G, n)
        ctx.slot = slot
        ctx.has_bias = b_hh is not None
        return out

    @staticmethod
    @first_order_backward
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        h, w_hh, G, n = ctx.saved_tensors
        (B, H), need = h.shape, ctx.needs_input_grad
        r, z, gn = G[:, :H], G[:, H : 2 * H], G[:, 2 * H :]
        dgi = dout.new_empty(B, 3 * H)  # [dr | dz | dn], pre-activation
        dG = dout.new_empty(B, 3 * H)  # [dr | dz | r dn], the recurrent matmul's gradient
        one_z = torch.rsub(z, 1)
        dn = torch.mul(n, n, out=dgi[:, 2 * H :]).neg_().add_(1).mul_(one_z).mul_(dout)
        torch.sub(h, n, out=dgi[:, H : 2 * H]).mul_(z).mul_(one_z).mul_(dout)
        dr = torch.mul(dn, gn, out=dgi[:, :H]).mul_(r)
        dr.addcmul_(dr, r, value=-1)  # dn gn r (1 - r)
        torch.mul(dn, r, out=dG[:, 2 * H :])
        dG[:, : 2 * H].copy_(dgi[:, : 2 * H])
        dh = torch.addmm(torch.mul(dout, z), dG, w_hh) if need[1] else None
        dw, db = weight_grads(ctx.slot, dG, h, need[2], ctx.has_bias and need[3])
        return dgi if need[0] else None, dh, dw, db, None, None


class _GRUAfter(Function):
    r"""Reset-after GRU over packed rows: ``gi (N, 3H)``, ``h0 (B, H)`` → ``h (N, H)``.

    $$ r, z = \sigma(g^i_{rz} + W_{rz} h + b_{rz}), \quad
       n = \tanh(g^i_n + r \odot (W_n h + b_n)), \quad h' = n + z \odot (h - n) $$
    """

    @staticmethod
    def forward(
        ctx: Any, gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, sched: Schedule
    ) -> Tensor:
        sizes = sched.sizes
        N, H = gi.shape[0], h0.shape[1]
        bias = b_hh if b_hh is not None else _zeros_bias(w_hh)
        out = gi.new_empty(N, H)
        G = gi.new_empty(N, 3 * H)  # W_hh h + b_hh, then [r | z | W_n h + b_n]
        n = gi.new_empty(N, H)
        w_t = transposed(w_hh, sizes[0])
        G_s, n_s, out_s = (_split(v, sizes) for v in (G, n, out))
        RZ_s, R_s, Z_s, GN_s = (
            _split(G[:, a * H : b * H], sizes) for a, b in ((0, 2), (0, 1), (1, 2), (2, 3))
        )
        IRZ_s, IN_s = _split(gi[:, : 2 * H], sizes), _split(gi[:, 2 * H :], sizes)
        h = h0
        for t, bs in enumerate(sizes):
            if h.shape[0] != bs:
                h = h[:bs]
            torch.addmm(bias, h, w_t, out=G_s[t])
            h = _gates_after(
                RZ_s[t], R_s[t], Z_s[t], GN_s[t], IRZ_s[t], IN_s[t], h, n_s[t], out_s[t]
            )[0]
        ctx.save_for_backward(h0, w_hh, out, G, n)
        ctx.sched = sched
        ctx.has_bias = b_hh is not None
        return out

    @staticmethod
    @first_order_backward
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        h0, w_hh, out, G, n = ctx.saved_tensors
        sched: Schedule = ctx.sched
        sizes, need = sched.sizes, ctx.needs_input_grad
        (N, H), B = out.shape, h0.shape[0]
        r, z, gn = G[:, :H], G[:, H : 2 * H], G[:, 2 * H :]
        previous = sched.previous_rows(h0, out)
        w_zrn = _swap_rz(w_hh, H)  # rows z | r | n
        # the steps in runs of >= CHUNK_ROWS rows, last first; the factors and gradient
        # rows below hold one run's rows, its weight gradients added up when it is done
        chunks = chunk_steps(sizes)
        M = max(r1 - r0 for _, _, r0, r1 in chunks)
        # [dn | dz] = dh ⊗ P1, P1 = [(1-z)(1-n²) | (h-n) z(1-z)];  [dr | dgn] = dn ⊗ P2,
        # P2 = [gn r(1-r) | r]  (dn: the gradient of n's pre-activation). Built in place.
        P1b, P2b = out.new_empty(M, 2 * H), out.new_empty(M, 2 * H)
        ones = out.new_ones(1, 1).expand(M, H)
        Db = out.new_empty(M, 4 * H)  # [dn | dz | dr | dgn]
        dgi = out.new_empty(N, 3 * H) if need[0] else None
        dw_zrn = out.new_zeros(3 * H, H) if need[2] else None  # rows z | r | n
        db_zrn = out.new_zeros(3 * H) if ctx.has_bias and need[3] else None
        Z_s, dout_s = _split(z, sizes), _split(dout, sizes)
        dh_buf = out.new_zeros(B, H)
        dh_tmp = out.new_empty(B, H)
        for t0, t1, r0, r1 in reversed(chunks):
            rows, m, sz = slice(r0, r1), r1 - r0, sizes[t0:t1]
            P1, P2, D, prev = P1b[:m], P2b[:m], Db[:m], previous(r0, r1)
            r_c, P1v = r[rows], P1.view(m, 2, H)
            _backward_factors(
                n[rows],
                out[rows],
                z[rows].unsqueeze(1),
                ones[:m],
                P1[:, :H],
                P1[:, H:],
                P1v,
                gn[rows],
                r_c,
                P2[:, :H],
            )
            P2[:, H:].copy_(r_c)
            P1_s = [p.view(-1, 2, H) for p in _split(P1, sz)]
            P2_s = [p.view(-1, 2, H) for p in _split(P2, sz)]
            D1_s = [d.view(-1, 2, H) for d in _split(D[:, : 2 * H], sz)]
            D2_s = [d.view(-1, 2, H) for d in _split(D[:, 2 * H :], sz)]
            DN_s, DG_s = _split(D[:, :H], sz), _split(D[:, H:], sz)
            for t in range(t1 - 1, t0 - 1, -1):
                i, bs = t - t0, sizes[t]
                dh = torch.add(dout_s[t], dh_buf[:bs], out=dh_tmp[:bs])
                torch.mul(dh.unsqueeze(1), P1_s[i], out=D1_s[i])
                torch.mul(DN_s[i].unsqueeze(1), P2_s[i], out=D2_s[i])
                torch.addmm(dh * Z_s[t], DG_s[i], w_zrn, out=dh_buf[:bs])
            if dgi is not None:  # [dr | dz | dn]
                torch.cat([D[:, 2 * H : 3 * H], D[:, H : 2 * H], D[:, :H]], 1, out=dgi[rows])
            if dw_zrn is not None:
                dw_zrn.addmm_(D[:, H:].t(), prev)
            if db_zrn is not None:
                db_zrn.add_(D[:, H:].sum(0))
        dw = None if dw_zrn is None else _swap_rz(dw_zrn, H)
        db = None if db_zrn is None else _swap_rz(db_zrn, H)
        return dgi, dh_buf, dw, db, None


def _rows(args: Any, *widths: int) -> list[ops.Saved]:
    """Buffers of the packed rows ``gi (N, ·)``, ``widths`` in units of ``H``."""
    H = args[1].shape[1]
    return ops.new_rows(args[0], *(w * H for w in widths))


def _has_bias(ctx: Any, args: Any) -> None:
    ctx.has_bias = args[3] is not None


def _one_output(args: Any) -> int:
    return 1


def _h_rows(args: Any) -> list[Tensor]:
    """``[h (N, H)]``: rows of ``gi``, width of ``h0``."""
    return [args[0].new_empty(args[0].shape[0], args[1].shape[1])]


# the whole-sequence ops as torch.library custom ops under torch.compile (.ops): shapes
_AFTER_OP = ops.register(
    ops.Spec(
        _GRUAfter,
        _one_output,
        _h_rows,
        lambda a: [(ops.IN, 1), (ops.IN, 2), (ops.OUT, 0), *_rows(a, 3, 1)],  # h0 w out G n
        _has_bias,
    )
)


def _swap_rz(t: Tensor, H: int) -> Tensor:
    """``t``'s gate rows ``r | z | n`` as ``z | r | n`` (a copy), or back: the order in
    which the reset-after backward lays out its gradient rows."""
    return torch.cat([t[H : 2 * H], t[:H], t[2 * H :]])


class _GRUBefore(Function):
    r"""Reset-before GRU over packed rows: ``gi (N, 3H)``, ``h0 (B, H)`` → ``h (N, H)``.

    $$ r, z = \sigma(g^i_{rz} + W_{rz} h + b_{rz}), \quad
       n = \tanh(g^i_n + W_n (r \odot h) + b_n), \quad h' = n + z \odot (h - n) $$
    """

    @staticmethod
    def forward(
        ctx: Any, gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, sched: Schedule
    ) -> Tensor:
        sizes = sched.sizes
        N, H = gi.shape[0], h0.shape[1]
        bias = b_hh if b_hh is not None else _zeros_bias(w_hh)
        out = gi.new_empty(N, H)
        RZ = gi.new_empty(N, 2 * H)  # [r | z]
        Q = gi.new_empty(N, H)  # r ⊙ h
        n = gi.new_empty(N, H)
        w_rz_t, w_n_t = (transposed(w, sizes[0]) for w in (w_hh[: 2 * H], w_hh[2 * H :]))
        gin = gi[:, 2 * H :] + bias[2 * H :]  # (N, H)
        RZ_s, R_s, Z_s = _split(RZ, sizes), _split(RZ[:, :H], sizes), _split(RZ[:, H:], sizes)
        IRZ_s, IN_s = _split(gi[:, : 2 * H], sizes), _split(gin, sizes)
        Q_s, n_s, out_s = _split(Q, sizes), _split(n, sizes), _split(out, sizes)
        b_rz = bias[: 2 * H]
        h = h0
        for t, bs in enumerate(sizes):
            if h.shape[0] != bs:
                h = h[:bs]
            torch.addmm(b_rz, h, w_rz_t, out=RZ_s[t]).add_(IRZ_s[t]).sigmoid_()
            torch.mul(R_s[t], h, out=Q_s[t])
            torch.addmm(IN_s[t], Q_s[t], w_n_t, out=n_s[t]).tanh_()
            h = torch.lerp(n_s[t], h, Z_s[t], out=out_s[t])
        ctx.save_for_backward(h0, w_hh, out, RZ, Q, n)
        ctx.sched = sched
        ctx.has_bias = b_hh is not None
        return out

    @staticmethod
    @first_order_backward
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        h0, w_hh, out, RZ, Q, n = ctx.saved_tensors
        sched: Schedule = ctx.sched
        sizes = sched.sizes
        (N, H), B = out.shape, h0.shape[0]
        r, z = RZ[:, :H], RZ[:, H:]
        hprev = sched.previous_blocks(h0, out)  # the previous h of each row, in blocks
        # [da | dz] = dh ⊗ [(1-z)(1-n²) | (h-n) z(1-z)]; dr = (da W_n) ⊙ h r(1-r). In place.
        P1, Cr = out.new_empty(N, 2 * H), out.new_empty(N, H)
        P1v, ones = P1.view(N, 2, H), out.new_ones(1, 1).expand(N, H)
        for rows_, prev in hprev:
            _backward_factors(
                n[rows_],
                out[rows_],
                z[rows_].unsqueeze(1),
                ones[rows_],
                P1[rows_, :H],
                P1[rows_, H:],
                P1v[rows_],
                prev,
                r[rows_],
                Cr[rows_],
            )
        D = out.new_empty(N, 3 * H)  # [da | dz | dr]
        w_n, w_zr = w_hh[2 * H :], torch.cat([w_hh[H : 2 * H], w_hh[:H]])  # rows z | r
        P1_s = [p.view(-1, 2, H) for p in _split(P1, sizes)]
        D1_s = [d.view(-1, 2, H) for d in _split(D[:, : 2 * H], sizes)]
        DA_s, DR_s, DZR_s = (
            _split(D[:, a:b], sizes) for a, b in ((0, H), (2 * H, 3 * H), (H, 3 * H))
        )
        Cr_s, R_s, Z_s, dout_s = (_split(v, sizes) for v in (Cr, r, z, dout))
        dh_buf = out.new_zeros(B, H)
        dh_tmp = out.new_empty(B, H)
        dq_buf = out.new_empty(B, H)
        for t in range(len(sizes) - 1, -1, -1):
            bs = sizes[t]
            dh = torch.add(dout_s[t], dh_buf[:bs], out=dh_tmp[:bs])
            torch.mul(dh.unsqueeze(1), P1_s[t], out=D1_s[t])
            dq = torch.mm(DA_s[t], w_n, out=dq_buf[:bs])
            torch.mul(dq, Cr_s[t], out=DR_s[t])
            acc = torch.mul(dh, Z_s[t]).addcmul_(dq, R_s[t])
            torch.addmm(acc, DZR_s[t], w_zr, out=dh_buf[:bs])
        del P1, P1v, Cr, P1_s, D1_s, Cr_s  # free before the gradients are built
        da, dz, dr = D[:, :H], D[:, H : 2 * H], D[:, 2 * H :]
        dgi = torch.cat([dr, dz, da], 1) if ctx.needs_input_grad[0] else None
        dw = db = None
        if ctx.needs_input_grad[2]:
            dw_zr = prev_mm(D[:, H:], hprev)  # (2H, H), rows z | r
            dw = torch.cat([dw_zr[H:], dw_zr[:H], da.t() @ Q])
        if ctx.has_bias and ctx.needs_input_grad[3]:
            db = torch.cat([dr.sum(0), dz.sum(0), da.sum(0)])
        return dgi, dh_buf, dw, db, None


_BEFORE_OP = ops.register(
    ops.Spec(
        _GRUBefore,
        _one_output,
        _h_rows,
        lambda a: [(ops.IN, 1), (ops.IN, 2), (ops.OUT, 0), *_rows(a, 2, 1, 1)],  # … RZ Q n
        _has_bias,
    )
)


class GRUPart(CellPart):
    r"""A reset-after GRU layer in :mod:`~recurrentkit.executors.cross_layer.run`'s
    whole-run op: ``G = W_hh h̃ + b_hh``, ``r, z = σ(gi_{rz} + G_{rz})``,
    ``n = tanh(gi_n + r G_n)``, ``h' = n + z (h̃ - n)``.

    Its columns of the op's gradient rows ``D``: ``[dn | dr | dz | dgn]`` (``[dr | dz |
    dgn]`` is the recurrent product's gradient in ``W_hh``'s row order)."""

    gates = 3

    def start(self, gi: Tensor | None, weights: Sequence[Tensor | None], c0: Tensor | None) -> None:
        H, B, N, sizes, like = self.H, self.B, self.N, self.sizes, self.like
        w_ih, b_ih, w_hh, b_hh = weights
        assert w_hh is not None  # (every layer's; w_ih is None for the bottom layer)
        # the biases, or zeros: each product one addmm called directly (no per-step branch)
        self.b_hh = _zeros_bias(w_hh) if b_hh is None else b_hh
        # W_hh h̃ + b_hh → [r | z | W_n h̃ + b_n] → (for the backward) [r | z | c], c = gn r(1-r)
        self.GG = like.new_empty(N if self.grad else B, 3 * H)  # (a scratch without grad)
        # for the backward: [(1-z)(1-n²) | (h̃-n) z(1-z)]
        self.P1 = like.new_empty(N if self.grad else 0, 2 * H)
        self.w_hh_t = transposed(w_hh, B)
        self.GG_s, self.R_s, self.Z_s, self.RZ_s, self.GN_s = (
            step_views(self.GG[:, lo * H : hi * H], sizes, self.grad)
            for lo, hi in ((0, 3), (0, 1), (1, 2), (0, 2), (2, 3))
        )
        self.Zu_s = step_views(self.GG[:, H : 2 * H].unsqueeze(1), sizes, self.grad)
        if self.first:
            assert gi is not None
            self.GI_s = None
            self.GI_RZ_s, self.GI_N_s = _split(gi[:, : 2 * H], sizes), _split(gi[:, 2 * H :], sizes)
        else:
            assert w_ih is not None  # (a layer above the bottom)
            up = like.new_empty(B, 3 * H)  # W_ih u + b_ih
            self.w_ih_t = transposed(w_ih, B)
            self.b_ih = _zeros_bias(w_ih) if b_ih is None else b_ih
            self.GI_s = rows_per_step(up, sizes)
            self.GI_RZ_s = rows_per_step(up[:, : 2 * H], sizes)
            self.GI_N_s = rows_per_step(up[:, 2 * H :], sizes)
        self.n_s = rows_per_step(like.new_empty(B, H), sizes)
        if self.grad:
            self.P1a_s, self.P1b_s = (
                _split(self.P1[:, i * H : (i + 1) * H], sizes) for i in (0, 1)
            )
            self.P1v_s = _split(self.P1.view(N, 2, H), sizes)
            self.ones_s = rows_per_step(like.new_ones(B, H), sizes)

    def step(self, t: int, u: Tensor, ht: Tensor, out: Tensor) -> Tensor:
        if self.GI_s is not None:
            torch.addmm(self.b_ih, u, self.w_ih_t, out=self.GI_s[t])
        torch.addmm(self.b_hh, ht, self.w_hh_t, out=self.GG_s[t])
        r, gn = self.R_s[t], self.GN_s[t]
        h, n = _gates_after(
            self.RZ_s[t], r, self.Z_s[t], gn, self.GI_RZ_s[t], self.GI_N_s[t], ht, self.n_s[t], out
        )
        if self.grad:  # the backward's factors, in place: c = gn r(1-r) over gn
            P1a, P1b, P1v = self.P1a_s[t], self.P1b_s[t], self.P1v_s[t]
            _backward_factors(n, h, self.Zu_s[t], self.ones_s[t], P1a, P1b, P1v, gn, r, gn)
        return h

    def saved(self) -> list[Tensor]:
        return [self.GG, self.P1]

    def restore(
        self,
        saved: Sequence[Tensor],
        weights: Sequence[Tensor | None],
        D: Tensor,
        per_step: PerStep,
        dc_out: Tensor | None,
    ) -> None:
        H, sizes = self.H, self.sizes
        GG, P1 = saved
        w_ih, _, w_hh, _ = weights
        assert w_hh is not None  # (every layer's)
        self.w_hh = w_hh
        self.R_s, self.Z_s, self.C_s = (_split(GG[:, i * H : (i + 1) * H], sizes) for i in range(3))
        self.P1a_s, self.P1b_s = (_split(P1[:, i * H : (i + 1) * H], sizes) for i in range(2))
        # D's columns [dn | dr | dz | dgn]
        self.DN_s, self.DR_s, self.DZ_s, self.DGN_s = (
            per_step(D[:, i * H : (i + 1) * H]) for i in range(4)
        )
        self.DG_s = per_step(D[:, H:])  # [dr | dz | dgn]
        self.DRZ_s = per_step(D[:, H : 3 * H])  # [dr | dz]
        if w_ih is not None:  # a layer above the bottom (only such a layer's down() runs)
            self.w_n, self.w_rz = w_ih[2 * H :], w_ih[: 2 * H]

    def back(self, t: int, dh: Tensor, dht: Tensor) -> None:
        dn = torch.mul(dh, self.P1a_s[t], out=self.DN_s[t])
        torch.mul(dh, self.P1b_s[t], out=self.DZ_s[t])
        torch.mul(dn, self.C_s[t], out=self.DR_s[t])
        torch.mul(dn, self.R_s[t], out=self.DGN_s[t])
        torch.addmm(dh * self.Z_s[t], self.DG_s[t], self.w_hh, out=dht)

    def down(self, t: int, below: Tensor) -> None:
        below.addmm_(self.DN_s[t], self.w_n)
        below.addmm_(self.DRZ_s[t], self.w_rz)

    def add_grads(self, D: Tensor, ht: Tensor, u: Tensor | None, grads: list[Any]) -> None:
        H = self.H
        d_w_ih, d_b_ih, d_w_hh, d_b_hh = grads
        dG = D[:, H:]  # [dr | dz | dgn]: W_hh's row order
        if d_w_hh is not None:
            d_w_hh.addmm_(dG.t(), ht)
        if d_b_hh is not None:
            d_b_hh.add_(dG.sum(0))
        if d_w_ih is not None:  # rows r | z from [dr | dz], rows n from dn
            d_w_ih[: 2 * H].addmm_(D[:, H : 3 * H].t(), u)
            d_w_ih[2 * H :].addmm_(D[:, :H].t(), u)
        if d_b_ih is not None:
            d_b_ih[: 2 * H].add_(D[:, H : 3 * H].sum(0))
            d_b_ih[2 * H :].add_(D[:, :H].sum(0))

    def input_grad(self, D: Tensor, out: Tensor) -> None:
        H = self.H
        out[:, : 2 * H].copy_(D[:, H : 3 * H])  # [dr | dz]
        out[:, 2 * H :].copy_(D[:, :H])  # dn
