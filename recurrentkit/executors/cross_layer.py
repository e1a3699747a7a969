r"""Fast ``cross_layer`` routing: the whole stack over the whole sequence as one op.

:class:`~recurrentkit.routing.CrossLayer` couples every layer to every other at each
step, so no layer can run ahead of the others: the stack is one recurrence. For stacks
of built-in GRU (either reset form), LSTM (with or without ``proj_size``) and RNN cells
this module runs it as one custom autograd op on the packed layout
(:mod:`.packing`), equal to the policy's :meth:`~recurrentkit.routing.CrossLayer.step`
loop to rounding:

- **forward**, per step: one small matmul for every layer's gate-state term
  (:math:`[v^{k \to l}]` of all layers stacked, read from all layers' previous
  :math:`h` side by side in one buffer); per layer the input projection and the
  gate-input term (layer 1's for the whole sequence before the loop, as one matmul with
  the weights side by side), one broadcast multiply for the gated states, one ``addmm``
  for :math:`\tilde h = h + U\,\text{gated}`, then the cell's recurrent matmul and its
  gates in place;
- **backward**, written by hand, step by step in reverse and layer by layer downward:
  the same matmuls transposed, gradients accumulated in place into one buffer for all
  layers' previous :math:`h`; every weight gradient is one matmul over all rows after
  the loop (:math:`U`'s one per gated block). Kept between forward and backward: the
  outputs, the gates and each layer's :math:`\tilde h` and cell gates, which the first
  backward pass turns into its factors in place (GRU).

Inter-layer dropout draws its masks before the op, in the order the reference loop
draws them (step by step, layer by layer), so one seed gives the same masks.

Everything else (Nested LSTM, user cells, ``torch.compile`` tracing and torch.func,
where only plain autograd ops may run) goes back to the executor's step loop over
the policy's own ``step``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, overload

import torch
from torch import Tensor, nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from recurrentkit.cells.gru import GRUCell
from recurrentkit.cells.lstm import LSTMCell, LSTMState
from recurrentkit.cells.rnn import RNNCell
from recurrentkit.executors.kernels.base import prev_mm
from recurrentkit.executors.packing import Schedule, schedule
from recurrentkit.routing.base import state_h
from recurrentkit.routing.cross_layer import CrossLayer

if TYPE_CHECKING:
    from recurrentkit.executors.fast import FastLayers

__all__ = ["run_cross_layer"]


def run_cross_layer(
    layers: FastLayers,
    policy: CrossLayer,
    x: Tensor,
    states: tuple[Any, ...],
    lengths: Tensor | None,
) -> tuple[Tensor, tuple[Any, ...]] | None:
    """``policy`` over ``x`` as one op, or ``None`` where it does not apply.

    Applies to stacks of two or more built-in GRU, LSTM and RNN cells (exact types),
    outside ``torch.compile`` tracing and torch.func transforms.

    Args:
        layers: the executor (its cells, dropout and training mode).
        policy: the stack's bound :class:`~recurrentkit.routing.CrossLayer`.
        x: the input sequence.
        states: one cell state per layer.
        lengths: each sequence's length, or ``None``.

    Returns:
        ``(outputs, final states)`` as :meth:`CrossLayer.run` returns them, or ``None``.

    Shape:
        ``x (T, B, I)``, ``lengths (B,)`` → outputs ``(T, B, O)``.
    """
    cells = layers.cells
    if layers._plain or len(cells) < 2:
        return None
    ops = [_ops_for(c) for c in cells]
    if any(o is None for o in ops):
        return None
    return _run(layers, policy, [o for o in ops if o is not None], x, states, lengths)


# -- the plan around the op --------------------------------------------------------------


def _run(
    layers: FastLayers,
    policy: CrossLayer,
    ops: list[_CellOps],
    x: Tensor,
    states: tuple[Any, ...],
    lengths: Tensor | None,
) -> tuple[Tensor, tuple[Any, ...]]:
    cells: Sequence[Any] = layers.cells
    L, L1 = len(cells), len(cells) - 1
    sched = schedule(x, lengths)
    xp = sched.pack(x)  # (N, I)
    # Layer 1's input projection and gate-input term: one matmul for both over the whole
    # sequence (above layer 1 the op does the same per step).
    o0, c0 = ops[0], cells[0]
    w_gi0: Tensor = policy.gate_input_weight_l0  # type: ignore[assignment]
    w_in0 = torch.cat([c0.weight_ih, w_gi0])  # (G + L-1, I)
    b0 = o0.projection_bias(c0.bias_ih, c0.bias_hh)
    b_in0 = None if b0 is None else torch.cat([b0, b0.new_zeros(L1)])
    p0 = F.linear(xp, w_in0, b_in0)  # (N, G_0 + L-1)
    v_all = torch.cat([getattr(policy, f"gate_state_weight_l{k}") for k in range(L)])
    noise = _dropout_noise(layers, [o.P for o in ops], sched, xp)
    flat: list[Tensor | None] = []
    for k, (o, cell, s) in enumerate(zip(ops, cells, sched.sort_state(states))):
        above = k > 0
        flat += [
            state_h(s),
            s.c if o.has_c else None,
            cell.weight_ih if above else None,
            cell.bias_ih if above else None,
            cell.weight_hh,
            cell.bias_hh if above or o.needs_b_hh else None,
            cell.weight_hr if o.has_c else None,
            getattr(policy, f"feedback_weight_l{k}"),
            getattr(policy, f"gate_input_weight_l{k}") if above else None,
        ]
    plan = _Plan(sched, ops, noise)
    outs = _CrossLayerOp.apply(plan, p0, v_all, *flat)
    h_all, cs = outs[0], list(outs[1:])  # (N, ΣP), one (N, H_k) per LSTM layer
    finals = []  # contiguous, as every other path returns them
    for k, o in enumerate(ops):
        h_k = h_all[:, plan.offs[k] : plan.offs[k + 1]]
        h_last = sched.last(h_k).contiguous()  # (B, P_k), sorted
        finals.append(LSTMState(h_last, sched.last(cs.pop(0))) if o.has_c else h_last)
    y = h_all[:, plan.offs[L1] :].contiguous()  # (N, O)
    y = y.view(sched.steps, sched.batch, -1) if sched.uniform else sched.unpack(y)  # (T, B, O)
    return y, sched.unsort_state(tuple(finals))


def _dropout_noise(
    layers: FastLayers, widths: list[int], sched: Schedule, like: Tensor
) -> list[Tensor | None]:
    """Inter-layer dropout's scaled masks ``(N, P_k)`` for layers below the top, drawn
    step by step and layer by layer, as the reference loop draws them."""
    L = len(widths)
    if not layers.training or layers.dropout <= 0:
        return [None] * L
    parts: list[list[Tensor]] = [[] for _ in range(L)]
    for bs in sched.sizes:
        for k in range(L - 1):
            ones = like.new_ones(bs, widths[k])
            parts[k].append(layers.drop(k, ones))  # (bs, P_k): 1 · mask / (1 - p)
    return [torch.cat(p) if p else None for p in parts]


class _Plan:
    """What the op needs besides tensors: layout, per-layer cell ops, dropout masks."""

    def __init__(self, sched: Schedule, ops: list[_CellOps], noise: list[Tensor | None]) -> None:
        self.sched = sched
        self.ops = ops
        self.noise = noise
        self.L = len(ops)
        self.L1 = self.L - 1
        widths = [o.P for o in ops]
        self.offs = [0]
        for w in widths:
            self.offs.append(self.offs[-1] + w)
        # For layer k: the other layers' columns of h_all as runs of equal widths, each
        # (src column slice, gated column slice, gate slice, count, width).
        self.runs: list[list[tuple[slice, slice, slice, int, int]]] = []
        for k in range(self.L):
            others = [j for j in range(self.L) if j != k]
            runs: list[tuple[slice, slice, slice, int, int]] = []
            dst, i = 0, 0
            while i < len(others):
                j0, m = others[i], 1
                while (
                    i + m < len(others)
                    and others[i + m] == j0 + m
                    and widths[others[i + m]] == widths[j0]
                ):
                    m += 1
                w = widths[j0]
                runs.append(
                    (
                        slice(self.offs[j0], self.offs[j0] + m * w),
                        slice(dst, dst + m * w),
                        slice(i, i + m),
                        m,
                        w,
                    )
                )
                dst += m * w
                i += m
            self.runs.append(runs)
        self.gate_cols = [[r[2] for r in runs] for runs in self.runs]

    def run_views(
        self, h_all: Tensor, h0_all: Tensor, gates: Tensor, gated: list[Tensor]
    ) -> list[list[tuple[tuple[Tensor, ...], Tensor, tuple[Tensor, ...], Tensor]]]:
        """Per layer, per run of equal widths: the source ``h`` ``(·, m, w)`` per step and
        at the start, the gates ``(·, m, 1)`` per step, the gated columns of a step
        (``gated``: one step's rows)."""
        sizes, L1 = self.sched.sizes, self.L1
        out = []
        for k, runs in enumerate(self.runs):
            views = []
            for src, dst, gsl, m, w in runs:
                cols = slice(k * L1 + gsl.start, k * L1 + gsl.stop)
                views.append(
                    (
                        h_all[:, src].view(-1, m, w).split(sizes),
                        h0_all[:, src].view(-1, m, w),
                        gates[:, cols].unsqueeze(2).split(sizes),
                        gated[k][:, dst].view(-1, m, w),
                    )
                )
            out.append(views)
        return out

    def grad_run_views(
        self, dgated: list[Tensor], prods: list[Tensor], dcar: Tensor
    ) -> list[list[tuple[Tensor, Tensor, Tensor]]]:
        """Per layer, per run: the gated columns' gradient, a product buffer and the
        gradient of the source ``h``, each ``(B, m, w)``."""
        return [
            [
                (
                    dgated[k][:, dst].view(-1, m, w),
                    prods[k][:, dst].view(-1, m, w),
                    dcar[:, src].view(-1, m, w),
                )
                for src, dst, _, m, w in runs
            ]
            for k, runs in enumerate(self.runs)
        ]


def _empty(like: Tensor, *shape: int) -> Tensor:
    """An uninitialised ``like``-typed tensor of ``shape`` (the op's work buffers)."""
    return like.new_empty(shape)


# -- the op ---------------------------------------------------------------------------------

_SLOTS = 9  # per layer: h0, c0, w_ih, b_ih, w_hh, b_hh, w_hr, feedback, gate-input weight


class _CrossLayerOp(Function):
    r"""Cross-layer routing over packed rows.

    Inputs: ``plan``; ``p0 (N, G_1 + L-1)``, layer 1's input projection (both biases in
    for cells that fold them) and gate-input term; ``v_all (L(L-1), ΣP)``, every
    layer's gate-state weight stacked; then per layer (:data:`_SLOTS`) ``h0 (B, P_k)``,
    ``c0`` (LSTM), ``W_ih``, ``b_ih`` (above layer 1), ``W_hh``, ``b_hh`` (above layer 1,
    or reset-after GRU), ``W_hr`` (LSTM), ``U_k (P_k, ΣP - P_k)``, the gate-input
    weight ``(L-1, I_k)`` (above layer 1). Outputs: ``h_all (N, ΣP)``, every layer's
    output side by side, then ``c (N, H_k)`` per LSTM layer.

    Layer ``k``'s gradient buffer is ``(N, E_k + G_k + L-1)``: the cell's own columns
    (``E_k``: reset-after GRU only), the input projection's, the gate pre-activations'.
    Per-step views of every buffer are made once (``split``), not in the loops.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, plan: _Plan, p0: Tensor, v_all: Tensor, *flat: Tensor | None
    ) -> tuple[Tensor, ...]:
        ctx.set_materialize_grads(False)
        sched, ops, L, L1, offs = plan.sched, plan.ops, plan.L, plan.L1, plan.offs
        sizes, (N, B, S) = sched.sizes, (sched.total, sched.batch, offs[-1])
        args = [flat[k * _SLOTS : (k + 1) * _SLOTS] for k in range(L)]
        take = _empty
        h0_all = torch.cat([_t(a[0]) for a in args], 1)  # (B, ΣP)
        h_all = p0.new_empty(N, S)  # every layer's h, side by side (an output)
        gates = take(p0, N, L * L1)  # σ(gate pre-activations), layer by layer (saved)
        hm = [take(p0, N, o.P) for o in ops]  # h̃: each layer's mixed previous h (saved)
        gs = take(p0, B, L * L1)  # per step: every layer's gate-state terms
        gated = [take(p0, B, S - o.P) for o in ops]  # per step: the gated other layers' h
        pi = [take(p0, B, o.G) for o in ops]  # per step (above layer 1): input projection
        pg = [take(p0, B, L1) for o in ops]  # ... and gate-input term
        u_in: list[Tensor | None] = [None]  # layer k's input rows (k-1's h, after dropout)
        b_in: list[Tensor | None] = [None]
        for k in range(1, L):
            o, a = ops[k], args[k]
            b_in.append(o.projection_bias(a[3], a[5]))
            below = h_all[:, offs[k - 1] : offs[k]]
            u_in.append(below if plan.noise[k - 1] is None else take(p0, *below.shape))
        for o, a in zip(ops, args):
            o.setup(N, a, sched, take)
        Ut = [_t(a[7]).t() for a in args]
        w_ih_t = [p0] + [_t(a[2]).t() for a in args[1:]]  # (layer 1: unused)
        w_gi_t = [p0] + [_t(a[8]).t() for a in args[1:]]
        v_t = v_all.t()
        # per-step views
        H_s = h_all.split(sizes)
        HK_s = [_cols(h_all, offs[k], offs[k + 1], sizes) for k in range(L)]
        H0K = [h0_all[:, offs[k] : offs[k + 1]] for k in range(L)]
        HM_s = [x.split(sizes) for x in hm]
        P0I_s, P0G_s = _cols(p0, 0, ops[0].G, sizes), _cols(p0, ops[0].G, ops[0].G + L1, sizes)
        G_s = [_cols(gates, k * L1, (k + 1) * L1, sizes) for k in range(L)]
        GSK = [gs[:, k * L1 : (k + 1) * L1] for k in range(L)]
        U_s = [x.split(sizes) if x is not None else () for x in u_in]
        N_s = [x.split(sizes) if x is not None else None for x in plan.noise]
        runs = plan.run_views(h_all, h0_all, gates, gated)
        for t, bs in enumerate(sizes):
            hp = h0_all[:bs] if t == 0 else _rows(H_s[t - 1], bs)  # (bs, ΣP)
            torch.mm(hp, v_t, out=_rows(gs, bs))  # (bs, L(L-1)): every layer's gate-state terms
            for k, o in enumerate(ops):
                if k == 0:
                    p_i, p_g = P0I_s[t], P0G_s[t]
                else:
                    u = U_s[k][t]
                    noise = N_s[k - 1]
                    if noise is not None:
                        torch.mul(HK_s[k - 1][t], noise[t], out=u)
                    p_i, p_g, bk = _rows(pi[k], bs), _rows(pg[k], bs), b_in[k]
                    if bk is None:
                        torch.mm(u, w_ih_t[k], out=p_i)
                    else:
                        torch.addmm(bk, u, w_ih_t[k], out=p_i)
                    torch.mm(u, w_gi_t[k], out=p_g)
                torch.add(p_g, _rows(GSK[k], bs), out=G_s[k][t]).sigmoid_()  # gates (bs, L-1)
                for src, src0, gcol, dst in runs[k]:
                    h_j = src0[:bs] if t == 0 else _rows(src[t - 1], bs)  # (bs, m, P_j)
                    torch.mul(h_j, gcol[t], out=_rows(dst, bs))
                h_k = H0K[k][:bs] if t == 0 else _rows(HK_s[k][t - 1], bs)
                h_mix = torch.addmm(h_k, _rows(gated[k], bs), Ut[k], out=HM_s[k][t])  # (bs, P_k)
                o.forward_step(t, bs, p_i, h_mix, HK_s[k][t])
        outs = [h_all] + [o.release_output() for o in ops if o.has_c]
        # ctx keeps no output (nor a view of one) outside save_for_backward: that would
        # be a reference cycle through the autograd graph, never freed
        own_u = [u if k and plan.noise[k - 1] is not None else None for k, u in enumerate(u_in)]
        ctx.plan = plan
        ctx.bufs = (h0_all, gates, hm, own_u)
        ctx.save_for_backward(v_all, *flat, *outs)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dh_all: Tensor | None, *dcs: Tensor | None) -> tuple[Any, ...]:
        plan: _Plan = ctx.plan
        sched, ops, L, L1, offs = plan.sched, plan.ops, plan.L, plan.L1, plan.offs
        sizes, (N, B, S) = sched.sizes, (sched.total, sched.batch, offs[-1])
        v_all, *rest = ctx.saved_tensors
        flat, outs = rest[: L * _SLOTS], rest[L * _SLOTS :]
        h_all = outs[0]
        args = [flat[k * _SLOTS : (k + 1) * _SLOTS] for k in range(L)]
        h0_all, gates, hm, own_u = ctx.bufs
        u_in = [
            u if u is not None or not k else _cols(h_all, offs[k - 1], offs[k])
            for k, u in enumerate(own_u)
        ]
        take = _empty
        c_outs, dc_iter = iter(outs[1:]), iter(dcs)
        for k, o in enumerate(ops):
            c, dc = (next(c_outs), next(dc_iter)) if o.has_c else (None, None)
            o.prepare_backward(hm[k], _cols(h_all, offs[k], offs[k + 1]), c, dc, take)
        dsig = torch.mul(gates, gates, out=take(gates, N, L * L1)).neg_().add_(gates)  # σ'
        # layer 1's gradient buffer holds p0's gradient: not kept
        D = [h_all.new_empty(N, ops[0].E + ops[0].G + L1)]
        D += [take(h_all, N, o.E + o.G + L1) for o in ops[1:]]
        dhm = [take(h_all, N, o.P) for o in ops]
        dgated = [take(h_all, B, S - o.P) for o in ops]
        prods = [take(h_all, B, S - o.P) for o in ops]
        dcur = take(h_all, B, S)  # d h_all(t), complete once the layer above is done
        dcar = h_all.new_zeros(B, S)  # d h_all(t-1), being accumulated
        du_buf = take(h_all, B, max(offs[k + 1] - offs[k] for k in range(L1)))
        v_rows = [v_all[k * L1 : (k + 1) * L1] for k in range(L)]  # (L-1, ΣP)
        Us = [_t(a[7]) for a in args]
        w_ih = [None] + [_t(a[2]) for a in args[1:]]
        w_gi = [None] + [_t(a[8]) for a in args[1:]]
        # per-step views
        dH_s = dh_all.split(sizes) if dh_all is not None else None
        DC_s = [_cols(x, 0, o.E + o.G, sizes) for x, o in zip(D, ops)]
        DI_s = [_cols(x, o.E, o.E + o.G, sizes) for x, o in zip(D, ops)]
        DP_s = [_cols(x, o.E + o.G, o.E + o.G + L1, sizes) for x, o in zip(D, ops)]
        DHM_s = [x.split(sizes) for x in dhm]
        DS_s = [_cols(dsig, k * L1, (k + 1) * L1, sizes) for k in range(L)]
        N_s = [x.split(sizes) if x is not None else None for x in plan.noise]
        runs = plan.run_views(h_all, h0_all, gates, dgated)
        druns = plan.grad_run_views(dgated, prods, dcar)
        dcur_k = [dcur[:, offs[k] : offs[k + 1]] for k in range(L)]
        dcar_k = [dcar[:, offs[k] : offs[k + 1]] for k in range(L)]
        for t in range(len(sizes) - 1, -1, -1):
            bs = sizes[t]
            dH, car = _rows(dcur, bs), _rows(dcar, bs)
            if dH_s is not None:
                torch.add(dH_s[t], car, out=dH)
            else:
                dH.copy_(car)
            car.zero_()
            for k in range(L - 1, -1, -1):
                o = ops[k]
                dm = DHM_s[k][t]
                o.backward_step(t, bs, _rows(dcur_k[k], bs), DC_s[k][t], dm)
                _rows(dcar_k[k], bs).add_(dm)  # h̃ = h + U gated
                torch.mm(dm, Us[k], out=_rows(dgated[k], bs))  # d gated (bs, ΣP - P_k)
                dgp = DP_s[k][t]  # (bs, L-1)
                for (src, src0, gcol, _), (dgd, prod, dcar_j), gi in zip(
                    runs[k], druns[k], plan.gate_cols[k]
                ):
                    h_j = src0[:bs] if t == 0 else _rows(src[t - 1], bs)  # (bs, m, P_j)
                    dgd, prod = _rows(dgd, bs), _rows(prod, bs)
                    torch.sum(torch.mul(dgd, h_j, out=prod), 2, out=dgp[:, gi])  # <dgd, h_j>
                    _rows(dcar_j, bs).addcmul_(dgd, gcol[t])
                dgp.mul_(DS_s[k][t])
                car.addmm_(dgp, v_rows[k])
                if k:
                    below = _rows(dcur_k[k - 1], bs)
                    wi, wg = _t(w_ih[k]), _t(w_gi[k])
                    noise = N_s[k - 1]
                    if noise is None:
                        below.addmm_(DI_s[k][t], wi).addmm_(dgp, wg)
                    else:  # through the dropout mask
                        du = torch.mm(DI_s[k][t], wi, out=du_buf[:bs, : below.shape[1]])
                        below.addcmul_(du.addmm_(dgp, wg), noise[t])
        # weight gradients: one matmul each over all rows
        need = ctx.needs_input_grad  # (plan, p0, v_all, *flat)
        prev = sched.previous_blocks(h0_all, h_all)  # each row's previous h_all
        dv = None
        if need[2]:
            dv = torch.cat([prev_mm(D[k][:, -L1:], prev) for k in range(L)])  # (L(L-1), ΣP)
        scaled = take(h_all, N, max(o.P for o in ops))
        grads: list[Tensor | None] = []
        for k, o in enumerate(ops):
            nk = need[3 + k * _SLOTS : 3 + (k + 1) * _SLOTS]
            dh0 = dcar_k[k] if nk[0] else None
            dc0 = o.dc0() if nk[1] else None
            dw_hh, db_hh, dw_hr = o.weight_grads(hm[k], D[k][:, : o.E + o.G], nk[4:7])
            dU = _feedback_grad(plan, k, dhm[k], gates, prev, scaled) if nk[7] else None
            dw_ih = db_ih = dw_gi = None
            if k:
                u, dgi = _t(u_in[k]), D[k][:, o.E : o.E + o.G]  # (N, G)
                dw_ih = dgi.t() @ u if nk[2] else None
                dw_gi = D[k][:, -L1:].t() @ u if nk[8] else None
                if nk[3] or nk[5]:
                    db_ih, db_fold = o.bias_grads(dgi.sum(0))
                    db_hh = db_hh if db_hh is not None else db_fold
            grads += [dh0, dc0, dw_ih, db_ih, dw_hh, db_hh, dw_hr, dU, dw_gi]
        dp0 = D[0][:, ops[0].E :] if need[1] else None
        return (None, dp0, dv, *grads)


def _feedback_grad(
    plan: _Plan,
    k: int,
    dhm: Tensor,
    gates: Tensor,
    prev: list[tuple[slice, Tensor]],
    scaled: Tensor,
) -> Tensor:
    r"""Layer ``k``'s :math:`\partial U`, block by block: :math:`\partial U^{j \to k} =
    \sum_t (g^{j \to k}_t \odot \partial \tilde h_t)^\top h^j_{t-1}` (the gated states
    are not kept)."""
    L1, P = plan.L1, dhm.shape[1]
    out = dhm.new_empty(P, plan.offs[-1] - P)
    for src, dst, gsl, m, w in plan.runs[k]:
        for i in range(m):
            g = k * L1 + gsl.start + i
            sc = torch.mul(dhm, gates[:, g : g + 1], out=scaled[:, :P])  # (N, P_k)
            cols = slice(src.start + i * w, src.start + (i + 1) * w)
            blocks = [(rows, h[:, cols]) for rows, h in prev]
            out[:, dst.start + i * w : dst.start + (i + 1) * w] = prev_mm(sc, blocks)
    return out


def _t(x: Tensor | None) -> Tensor:
    """``x``, known to be a tensor here."""
    assert x is not None
    return x


def _rows(x: Tensor, n: int) -> Tensor:
    """The first ``n`` rows of ``x`` (``x`` itself when it has ``n``)."""
    return x if x.shape[0] == n else x[:n]


@overload
def _cols(x: Tensor, a: int, b: int) -> Tensor: ...
@overload
def _cols(x: Tensor, a: int, b: int, sizes: tuple[int, ...]) -> tuple[Tensor, ...]: ...
def _cols(
    x: Tensor, a: int, b: int, sizes: tuple[int, ...] | None = None
) -> Tensor | tuple[Tensor, ...]:
    """Columns ``a:b`` of ``x``; with ``sizes``, split into each step's rows."""
    c = x[:, a:b]
    return c if sizes is None else c.split(sizes)


# -- the cells' steps ----------------------------------------------------------------------


Take = Callable[..., Tensor]


class _CellOps:
    """One layer's cell inside :class:`_CrossLayerOp`: its step forward and backward on
    the op's buffers. ``G``: the input projection's width (torch's row order), ``P``:
    the output's, ``E``: gradient columns of the cell's own before the projection's."""

    has_c = False  # an LSTM cell memory: a second state field, an output of the op
    needs_b_hh = False  # b_hh stays in the step (else it is folded into the projection)

    def __init__(self, cell: Any, G: int, P: int, E: int = 0) -> None:
        self.cell = cell
        self.H = cell.hidden_size
        self.G, self.P, self.E = G, P, E
        self.factored = False  # saved forward values turned into backward factors

    def projection_bias(self, b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
        """The input projection's bias: ``b_ih + b_hh``, folded."""
        return None if b_ih is None or b_hh is None else b_ih + b_hh

    def bias_grads(self, db: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(d b_ih, d b_hh)`` from the projection bias's gradient ``db``."""
        return db, db

    def setup(self, N: int, args: Sequence[Tensor | None], sched: Schedule, take: Take) -> None:
        """Forward buffers for ``N`` rows; ``args``: this layer's op inputs."""
        raise NotImplementedError

    def forward_step(self, t: int, bs: int, gi: Tensor, h_mix: Tensor, out: Tensor) -> None:
        """Step ``t`` (``bs`` rows): projected input ``gi (bs, G)`` and mixed state
        ``h_mix (bs, P)``; writes the new ``h`` into ``out (bs, P)``."""
        raise NotImplementedError

    def release_output(self) -> Tensor:
        """The op's ``c`` output (LSTM), no longer referenced here."""
        raise NotImplementedError

    def prepare_backward(
        self, h_mix: Tensor, h: Tensor, c: Tensor | None, dc: Tensor | None, take: Take
    ) -> None:
        """Factors of all rows that depend on forward values only; ``h_mix``, ``h``:
        ``(N, P)``; ``c``, ``dc``: the op's ``c`` output and its gradient (LSTM). Called
        by every backward pass through the run's graph: whatever it changes in place
        happens once (:attr:`factored`)."""

    def backward_step(self, t: int, bs: int, dh: Tensor, dg: Tensor, dhm: Tensor) -> None:
        """From ``dh (bs, P)``, the whole gradient of step ``t``'s ``h``: writes the
        gradient columns ``dg (bs, E + G)`` (the input projection's last) and the mixed
        state's gradient ``dhm (bs, P)``."""
        raise NotImplementedError

    def dc0(self) -> Tensor | None:
        """The gradient of the initial cell memory (LSTM), after the last backward step."""
        return None

    def weight_grads(
        self, h_mix: Tensor, dg: Tensor, need: Sequence[bool]
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """``(dW_hh, db_hh, dW_hr)`` from all rows' ``h_mix`` and gradient columns
        ``dg (N, E + G)``; ``need``: which. ``db_hh`` is ``None`` where it is folded
        into the projection bias."""
        return (dg.t() @ h_mix if need[0] else None), None, None


def _ops_for(cell: nn.Module) -> _CellOps | None:
    """The step of a built-in cell's exact type (GRU, LSTM, RNN), or ``None``."""
    kind = type(cell)
    if kind is GRUCell:
        return _GRUAfter(cell) if cell.reset == "after" else _GRUBefore(cell)
    if kind is LSTMCell:
        return _LSTM(cell)
    if kind is RNNCell:
        return _RNN(cell)
    return None


def _update_factors(P1: Tensor, z: Tensor, h_mix: Tensor) -> Tensor:
    r"""``P1 = [· | n]`` ``(N, 2H)`` in place → ``[(h̃-n) z(1-z) | (1-z)(1-n²)]``, viewed
    ``(N, 2, H)``: ``[dz | dn] = dh ⊗`` it, for :math:`h' = n + z (\tilde h - n)` (``dn``:
    the candidate's pre-activation)."""
    N, H = z.shape
    a, n = P1[:, :H], P1[:, H:]
    torch.sub(h_mix, n, out=a).mul_(z)
    a.addcmul_(a, z, value=-1)  # (h̃-n) z (1-z)
    n.mul_(n).neg_().add_(1)
    n.addcmul_(n, z, value=-1)  # (1-n²)(1-z)
    return P1.view(N, 2, H)


class _GRUAfter(_CellOps):
    r"""Reset-after GRU. Gradient columns ``[dg_n | dr | dz | dn]`` (``g_n = W_n h̃ +
    b_n``; ``[dr | dz | dn]`` the input projection's): ``[dz | dn]`` and ``[dg_n | dr]``
    are one broadcast multiply each, ``dh̃`` two matmuls with row blocks of
    :math:`W_{hh}`. The saved gates become the backward's factors in place."""

    needs_b_hh = True

    def __init__(self, cell: Any) -> None:
        H = cell.hidden_size
        super().__init__(cell, 3 * H, H, E=H)

    def projection_bias(self, b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
        return b_ih

    def bias_grads(self, db: Tensor) -> tuple[Tensor, Tensor | None]:
        return db, None

    def setup(self, N: int, args: Sequence[Tensor | None], sched: Schedule, take: Take) -> None:
        H, w, b = self.H, _t(args[4]), args[5]
        self.sizes = sizes = sched.sizes
        self.w_hh, self.w_hh_t, self.has_bias = w, w.t(), b is not None
        self.b_hh = b if b is not None else w.new_zeros(3 * H)
        self.Gb = take(w, N, 3 * H)  # [r | z | W_n h̃ + b_n]
        self.P1 = take(w, N, 2 * H)  # [(backward's) | n]
        self.G_s, self.RZ_s = self.Gb.split(sizes), _cols(self.Gb, 0, 2 * H, sizes)
        self.R_s, self.Z_s, self.GN_s = (
            _cols(self.Gb, j * H, (j + 1) * H, sizes) for j in range(3)
        )
        self.n_s = _cols(self.P1, H, 2 * H, sizes)

    def forward_step(self, t: int, bs: int, gi: Tensor, h_mix: Tensor, out: Tensor) -> None:
        H = self.H
        torch.addmm(self.b_hh, h_mix, self.w_hh_t, out=self.G_s[t])
        self.RZ_s[t].add_(gi[:, : 2 * H]).sigmoid_()
        n = torch.addcmul(gi[:, 2 * H :], self.R_s[t], self.GN_s[t], out=self.n_s[t]).tanh_()
        torch.lerp(n, h_mix, self.Z_s[t], out=out)

    def prepare_backward(
        self, h_mix: Tensor, h: Tensor, c: Tensor | None, dc: Tensor | None, take: Take
    ) -> None:
        if self.factored:  # a second backward pass through the same graph
            return
        self.factored = True
        H, Gb, sizes = self.H, self.Gb, self.sizes
        N = Gb.shape[0]
        r, z, gn = Gb[:, :H], Gb[:, H : 2 * H], Gb[:, 2 * H :]
        self.P1_s = _update_factors(self.P1, z, h_mix).split(sizes)
        gn.mul_(r)
        gn.addcmul_(gn, r, value=-1)  # g_n r(1-r), in place
        # [dg_n | dr] = dn ⊗ [r | g_n r(1-r)]: Gb's first and last blocks as one view
        self.P2_s = Gb.as_strided((N, 2, H), (3 * H, 2 * H, 1)).split(sizes)
        w = self.w_hh
        self.w_rz, self.w_n = w[: 2 * H], w[2 * H :]

    def backward_step(self, t: int, bs: int, dh: Tensor, dg: Tensor, dhm: Tensor) -> None:
        H = self.H
        torch.mul(dh.unsqueeze(1), self.P1_s[t], out=dg[:, 2 * H :].view(bs, 2, H))  # dz | dn
        dn = dg[:, 3 * H :].unsqueeze(1)
        torch.mul(dn, self.P2_s[t], out=dg[:, : 2 * H].view(bs, 2, H))  # dg_n | dr
        torch.mul(dh, self.Z_s[t], out=dhm)
        dhm.addmm_(dg[:, H : 3 * H], self.w_rz).addmm_(dg[:, :H], self.w_n)

    def weight_grads(
        self, h_mix: Tensor, dg: Tensor, need: Sequence[bool]
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        H = self.H
        dw = db = None
        if need[0]:
            dw = h_mix.new_empty(3 * H, H)
            torch.mm(dg[:, H : 3 * H].t(), h_mix, out=dw[: 2 * H])  # r | z
            torch.mm(dg[:, :H].t(), h_mix, out=dw[2 * H :])  # n
        if need[1] and self.has_bias:
            s = dg[:, : 3 * H].sum(0)  # n | r | z
            db = torch.cat([s[H:], s[:H]])
        return dw, db, None


class _GRUBefore(_CellOps):
    """Reset-before GRU (both biases folded into the input projection). Gradient columns
    ``[dr | dz | da]`` (``a``: the candidate's pre-activation), torch's row order."""

    def __init__(self, cell: Any) -> None:
        super().__init__(cell, 3 * cell.hidden_size, cell.hidden_size)

    def setup(self, N: int, args: Sequence[Tensor | None], sched: Schedule, take: Take) -> None:
        H, w = self.H, _t(args[4])
        self.sizes = sizes = sched.sizes
        self.w_rz, self.w_n = w[: 2 * H], w[2 * H :]
        self.w_rz_t, self.w_n_t = self.w_rz.t(), self.w_n.t()
        self.RZ = take(w, N, 2 * H)  # [r | z]
        self.Q = take(w, N, H)  # r ⊙ h̃
        self.P1 = take(w, N, 2 * H)  # [(backward's) | n]
        self.RZ_s, self.Q_s = self.RZ.split(sizes), self.Q.split(sizes)
        self.R_s, self.Z_s = _cols(self.RZ, 0, H, sizes), _cols(self.RZ, H, 2 * H, sizes)
        self.n_s = _cols(self.P1, H, 2 * H, sizes)

    def forward_step(self, t: int, bs: int, gi: Tensor, h_mix: Tensor, out: Tensor) -> None:
        H = self.H
        torch.addmm(gi[:, : 2 * H], h_mix, self.w_rz_t, out=self.RZ_s[t]).sigmoid_()
        q = torch.mul(self.R_s[t], h_mix, out=self.Q_s[t])
        n = torch.addmm(gi[:, 2 * H :], q, self.w_n_t, out=self.n_s[t]).tanh_()
        torch.lerp(n, h_mix, self.Z_s[t], out=out)

    def prepare_backward(
        self, h_mix: Tensor, h: Tensor, c: Tensor | None, dc: Tensor | None, take: Take
    ) -> None:
        H, sizes = self.H, self.sizes
        N = h_mix.shape[0]
        r, z = self.RZ[:, :H], self.RZ[:, H:]
        if not self.factored:  # (a second backward pass finds them made)
            self.factored = True
            self.P1_s = _update_factors(self.P1, z, h_mix).split(sizes)
        Cr = torch.mul(h_mix, r, out=take(r, N, H))  # dr = (da W_n) ⊙ h̃ r(1-r)
        self.Cr_s = Cr.addcmul_(Cr, r, value=-1).split(sizes)
        self.dq = take(r, self.sizes[0], H)

    def backward_step(self, t: int, bs: int, dh: Tensor, dg: Tensor, dhm: Tensor) -> None:
        H = self.H
        torch.mul(dh.unsqueeze(1), self.P1_s[t], out=dg[:, H:].view(bs, 2, H))  # dz | da
        dq = torch.mm(dg[:, 2 * H :], self.w_n, out=_rows(self.dq, bs))
        torch.mul(dq, self.Cr_s[t], out=dg[:, :H])  # dr
        torch.mul(dh, self.Z_s[t], out=dhm)
        dhm.addcmul_(dq, self.R_s[t])
        dhm.addmm_(dg[:, : 2 * H], self.w_rz)

    def weight_grads(
        self, h_mix: Tensor, dg: Tensor, need: Sequence[bool]
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        if not need[0]:
            return None, None, None
        H = self.H
        dw = h_mix.new_empty(3 * H, H)
        torch.mm(dg[:, : 2 * H].t(), h_mix, out=dw[: 2 * H])  # r | z
        torch.mm(dg[:, 2 * H :].t(), self.Q, out=dw[2 * H :])  # n
        return dw, None, None


class _LSTM(_CellOps):
    """LSTM, with or without projection (both biases folded into the input projection).
    Gradient columns ``[di | df | dg | do]``, torch's gate order."""

    has_c = True

    def __init__(self, cell: Any) -> None:
        super().__init__(cell, 4 * cell.hidden_size, cell.proj_size or cell.hidden_size)

    def setup(self, N: int, args: Sequence[Tensor | None], sched: Schedule, take: Take) -> None:
        H = self.H
        c0, w, w_hr = _t(args[1]), _t(args[4]), args[6]
        self.sched, self.sizes, self.c0, self.w_hh, self.w_hr = sched, sched.sizes, c0, w, w_hr
        self.w_hh_t = w.t()
        self.w_hr_t = w_hr.t() if w_hr is not None else None
        self.Gb = take(w, N, 4 * H)  # [σi | σf | tanh g | σo]
        self.c_out = w.new_empty(N, H)  # an output
        self.TC = take(w, N, H)  # tanh c
        self.M = take(w, N, H) if w_hr is not None else None  # σo tanh c
        sizes = self.sizes
        self.G_s, self.C_s, self.TC_s = (x.split(sizes) for x in (self.Gb, self.c_out, self.TC))
        self.IF_s = _cols(self.Gb, 0, 2 * H, sizes)
        self.I_s, self.F_s, self.Gg_s, self.O_s = (
            _cols(self.Gb, j * H, (j + 1) * H, sizes) for j in range(4)
        )
        self.M_s = self.M.split(sizes) if self.M is not None else None
        self.c = c0

    def forward_step(self, t: int, bs: int, gi: Tensor, h_mix: Tensor, out: Tensor) -> None:
        torch.addmm(gi, h_mix, self.w_hh_t, out=self.G_s[t])
        self.IF_s[t].sigmoid_()
        self.Gg_s[t].tanh_()
        self.O_s[t].sigmoid_()
        c = torch.mul(self.F_s[t], _rows(self.c, bs), out=self.C_s[t])
        c.addcmul_(self.I_s[t], self.Gg_s[t])
        tc = torch.tanh(c, out=self.TC_s[t])
        if self.M_s is None:
            torch.mul(self.O_s[t], tc, out=out)
        else:
            assert self.w_hr_t is not None
            torch.mm(torch.mul(self.O_s[t], tc, out=self.M_s[t]), self.w_hr_t, out=out)
        self.c = c

    def release_output(self) -> Tensor:
        out = self.c_out
        del self.c_out, self.c, self.C_s
        return out

    def prepare_backward(
        self, h_mix: Tensor, h: Tensor, c: Tensor | None, dc: Tensor | None, take: Take
    ) -> None:
        H, C, TC, sizes = self.H, _t(c), self.TC, self.sizes
        N, B = C.shape[0], self.c0.shape[0]
        i, f, g, o = self.Gb.chunk(4, dim=1)
        # [di | df | dg] = dc ⊗ P3;  do = dm ⊙ Po;  dc += dm ⊙ K   (m = σo tanh c)
        P3 = take(C, N, 3 * H)
        gi_ = torch.mul(g, i, out=P3[:, :H])
        gi_.addcmul_(gi_, i, value=-1)  # g σ'(i)
        cf = P3[:, H : 2 * H]
        for rows_, prev in self.sched.previous_blocks(self.c0, C):
            torch.mul(prev, f[rows_], out=cf[rows_])
        cf.addcmul_(cf, f, value=-1)  # c σ'(f)
        torch.mul(g, g, out=P3[:, 2 * H :]).neg_().add_(1).mul_(i)  # σ(i) (1 - tanh²)
        Po = torch.mul(TC, o, out=take(C, N, H))
        Po.addcmul_(Po, o, value=-1)  # tanh(c) σ'(o)
        K = torch.mul(TC, TC, out=take(C, N, H)).neg_().add_(1).mul_(o)  # σ(o)(1-tanh²c)
        self.P3_s, self.Po_s, self.K_s = (
            P3.view(N, 3, H).split(sizes),
            Po.split(sizes),
            K.split(sizes),
        )
        self.dC_s = dc.split(sizes) if dc is not None else None
        self.dc_buf, self.dc_tmp = C.new_zeros(B, H), take(C, B, H)
        proj = self.w_hr is not None
        self.DH = take(C, N, self.P) if proj else None  # dL/dh per row, for dW_hr
        self.DH_s = self.DH.split(sizes) if self.DH is not None else None
        self.dm_tmp = take(C, B, H) if proj else None

    def backward_step(self, t: int, bs: int, dh: Tensor, dg: Tensor, dhm: Tensor) -> None:
        H = self.H
        dm = dh
        if self.DH_s is not None:
            assert self.w_hr is not None and self.dm_tmp is not None
            self.DH_s[t].copy_(dh)
            dm = torch.mm(dh, self.w_hr, out=_rows(self.dm_tmp, bs))
        dc, dc_buf = _rows(self.dc_tmp, bs), _rows(self.dc_buf, bs)
        if self.dC_s is not None:
            torch.add(self.dC_s[t], dc_buf, out=dc)
        else:
            dc.copy_(dc_buf)
        dc.addcmul_(dm, self.K_s[t])
        torch.mul(dc.unsqueeze(1), self.P3_s[t], out=dg[:, : 3 * H].view(bs, 3, H))
        torch.mul(dm, self.Po_s[t], out=dg[:, 3 * H :])
        torch.mul(dc, self.F_s[t], out=dc_buf)
        torch.mm(dg, self.w_hh, out=dhm)

    def dc0(self) -> Tensor | None:
        return self.dc_buf

    def weight_grads(
        self, h_mix: Tensor, dg: Tensor, need: Sequence[bool]
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        dw = dg.t() @ h_mix if need[0] else None
        dw_hr = None
        if need[2] and self.DH is not None and self.M is not None:
            dw_hr = self.DH.t() @ self.M
        return dw, None, dw_hr


class _RNN(_CellOps):
    """Elman RNN, tanh or relu (both biases folded into the input projection)."""

    def __init__(self, cell: Any) -> None:
        super().__init__(cell, cell.hidden_size, cell.hidden_size)

    def setup(self, N: int, args: Sequence[Tensor | None], sched: Schedule, take: Take) -> None:
        w = _t(args[4])
        self.sizes = sched.sizes
        self.w_hh, self.w_hh_t = w, w.t()
        self.relu = self.cell.nonlinearity == "relu"

    def forward_step(self, t: int, bs: int, gi: Tensor, h_mix: Tensor, out: Tensor) -> None:
        torch.addmm(gi, h_mix, self.w_hh_t, out=out)
        if self.relu:
            out.relu_()
        else:
            out.tanh_()

    def prepare_backward(
        self, h_mix: Tensor, h: Tensor, c: Tensor | None, dc: Tensor | None, take: Take
    ) -> None:
        d = take(h, *h.shape)
        if self.relu:
            d.copy_(h > 0)
        else:
            torch.mul(h, h, out=d).neg_().add_(1)  # 1 - tanh²
        self.dpre_s = d.split(self.sizes)

    def backward_step(self, t: int, bs: int, dh: Tensor, dg: Tensor, dhm: Tensor) -> None:
        torch.mul(dh, self.dpre_s[t], out=dg)
        torch.mm(dg, self.w_hh, out=dhm)
