r"""``cross_layer`` over reset-after GRU layers: a whole sequence as one op.

The step loop of :mod:`.cross_mix` pays, at every step and layer, for three autograd
ops (the mixing, the layer's input projection, the GRU step) and for the autograd
engine between them. Here the whole run is one op, as the sequence kernels of
:mod:`.kernels` are for one layer:

- **forward**, per step: ``[h^1 | … | h^L]`` of the previous step written side by side
  into one saved buffer, then per layer the scalar gates (the first layer's input part
  is one product for all steps), the gated states, :math:`\tilde h = h^l +
  U^l\,\text{gated}` (one ``addmm``), the layer's input projection (layers above the
  first; the first layer's is hoisted out of the loop by the caller), the recurrent
  product and the GRU gates in place; when a gradient will be needed, also the
  backward's factors (``(1-z)(1-n²)``, ``(h̃-n) z(1-z)``, ``W_n h̃ r(1-r)``) while the
  step's values are in cache;
- **backward**, written by hand: per step and layer, three multiplies for the GRU's
  pre-activation gradients, one ``addmm`` for :math:`\partial\tilde h`, one product
  for the gated states' gradient, the gradient of all layers' previous states gathered
  in one ``(B, ΣH)`` buffer, and one ``addmm`` into the layer below's output gradient;
  each weight gradient is one matmul over all rows after the loop, as is the gradient
  of the input through the first layer's gates.

Every view a step uses is made before the time loop: at these sizes the cost left per
step is mostly the Python call of each small op, so the loops call nothing else.

Equal to :meth:`CrossLayer.step <recurrentkit.routing.CrossLayer.step>` looped over
time to rounding. The executor runs it in eager mode for a ``cross_layer`` stack of two
or more :class:`~recurrentkit.GRUCell` s in torch's (reset-after) form without active
inter-layer dropout; other stacks keep the step loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from recurrentkit.cells.gru import GRUCell
from recurrentkit.executors.cross_mix import _blocks
from recurrentkit.executors.kernels.base import split_steps as _split
from recurrentkit.executors.layout import transposed
from recurrentkit.executors.packing import Schedule
from recurrentkit.routing.cross_layer import CrossLayer

__all__ = ["applies", "cross_gru"]

_POLICY_WEIGHTS = ("feedback_weight", "gate_input_weight", "gate_state_weight")
_PER_LAYER = 7  # w_ih, b_ih, w_hh, b_hh, and the policy's U, w_gate_in, w_gate_state


def applies(policy: object, cells: Sequence[nn.Module]) -> bool:
    """Whether :func:`cross_gru` runs ``policy`` over ``cells``: ``cross_layer`` itself
    (not a subclass) over two or more reset-after :class:`~recurrentkit.GRUCell` s."""
    return (
        type(policy) is CrossLayer
        and len(cells) > 1
        and all(type(c) is GRUCell and c.reset == "after" for c in cells)
    )


def cross_gru(
    policy: CrossLayer,
    cells: Sequence[GRUCell],
    x: Tensor,
    gi: Tensor,
    states: Sequence[Tensor],
    sched: Schedule,
) -> tuple[Tensor, ...]:
    """``cross_layer`` over reset-after GRU ``cells``, no dropout, as one op.

    Args:
        policy: the stack's bound policy.
        cells: the stack's cells, bottom first (see :func:`applies`).
        x: the input as packed rows ``(N, I)``.
        gi: the first layer's input projection of ``x``, ``(N, 3 H_1)``.
        states: each layer's initial ``h``, ``(B, H_l)``, in ``sched``'s sorted order.
        sched: the packed layout (see :mod:`.packing`).

    Returns:
        Each layer's outputs as packed rows ``(N, H_l)``, bottom first.
    """
    params: list[Tensor | None] = []
    for k, cell in enumerate(cells):
        params += [
            cell.weight_ih if k else None,
            cell.bias_ih if k else None,
            cell.weight_hh,
            cell.bias_hh,
            *(getattr(policy, f"{name}_l{k}") for name in _POLICY_WEIGHTS),
        ]
    return _CrossGRU.apply(sched, len(cells), x, gi, *states, *params)  # type: ignore[no-any-return]


def _affine(bias: Tensor | None, a: Tensor, w_t: Tensor, out: Tensor) -> Tensor:
    """``a @ w_t + bias`` into ``out``."""
    if bias is None:
        return torch.mm(a, w_t, out=out)
    return torch.addmm(bias, a, w_t, out=out)


def _gate_order(t: Tensor, H: int, order: tuple[int, int, int]) -> Tensor:
    """``t``'s three ``H``-row blocks in ``order`` (a copy)."""
    return torch.cat([t[i * H : (i + 1) * H] for i in order])


def _per(bufs: Sequence[Tensor], sizes: tuple[int, ...]) -> list[tuple[Tensor, ...]]:
    """Each buffer's per-step views of packed rows."""
    return [_split(b, sizes) for b in bufs]


def _rows(buf: Tensor, sizes: tuple[int, ...]) -> list[Tensor]:
    """A scratch buffer ``(B, ·)``'s first ``sizes[t]`` rows for each step ``t`` (one view
    per distinct size)."""
    views = {bs: buf[:bs] for bs in set(sizes)}
    return [views[bs] for bs in sizes]


class _CrossGRU(Function):
    r"""``cross_layer`` over reset-after GRU layers: ``x (N, I)``, ``gi (N, 3H_1)``,
    ``h0_l (B, H_l)`` and each layer's seven parameters → each layer's outputs
    ``(N, H_l)``.

    $$ g^l = \sigma(u^l W_g^{l\top} + h_{all} V^{l\top}), \quad
       \tilde h^l = h^l + U^l [g^l_1 h^{j_1} | \dots], \quad
       h'^l = \mathrm{GRU}^l(u^l, \tilde h^l) $$
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, sched: Schedule, L: int, x: Tensor, gi: Tensor, *rest: Any
    ) -> tuple[Tensor, ...]:
        h0: tuple[Tensor, ...] = rest[:L]
        p = rest[L:]
        w_ih, b_ih, w_hh, b_hh, _, g_in, g_st = (p[j::_PER_LAYER] for j in range(_PER_LAYER))
        sizes, B, N, a = sched.sizes, sched.sizes[0], x.shape[0], L - 1
        widths = [h.shape[1] for h in h0]
        grad = any(ctx.needs_input_grad)
        HA = x.new_empty(N, sum(widths))  # each row's previous [h^1 | … | h^L]
        outs = [x.new_empty(N, w) for w in widths]
        HT = [x.new_empty(N, w) for w in widths]  # h̃, the mixed previous state
        # W_hh h̃ + b_hh → [r | z | W_n h̃ + b_n] → (for the backward) [r | z | c], c = gn r(1-r)
        GG = [x.new_empty(N, 3 * w) for w in widths]
        # for the backward: [(1-z)(1-n²) | (h̃-n) z(1-z)], made while the step's values are hot
        P1 = [x.new_empty(N if grad else 0, 2 * w) for w in widths]
        GT = [x.new_empty(N, a) for _ in widths]  # the scalar gates
        gi_up = [x.new_empty(B, 3 * w) for w in widths]  # layers above the first: W_ih u + b_ih
        w_ih_t = [None] + [transposed(w, B) for w in w_ih[1:]]
        w_hh_t = [transposed(w, B) for w in w_hh]
        U_t = [transposed(U, B) for U in p[4::_PER_LAYER]]
        g_in_t, g_st_t = [w.t() for w in g_in], [w.t() for w in g_st]
        # every view a step uses, made before the loop (one split per buffer, not slices
        # per step)
        HA_s, out_s, HT_s, GT_s = _split(HA, sizes), *(_per(bufs, sizes) for bufs in (outs, HT, GT))
        GG_s, R_s, Z_s, RZ_s, GN_s = (
            _per([g[:, lo * w : hi * w] for g, w in zip(GG, widths)], sizes)
            for lo, hi in ((0, 3), (0, 1), (1, 2), (0, 2), (2, 3))
        )
        Zu_s = [_split(g[:, w : 2 * w].unsqueeze(1), sizes) for g, w in zip(GG, widths)]
        GI_RZ_s = [_split(gi[:, : 2 * widths[0]], sizes)]
        GI_RZ_s += [_rows(g[:, : 2 * w], sizes) for g, w in zip(gi_up[1:], widths[1:])]
        GI_N_s = [_split(gi[:, 2 * widths[0] :], sizes)]
        GI_N_s += [_rows(g[:, 2 * w :], sizes) for g, w in zip(gi_up[1:], widths[1:])]
        GI_up_s = [_rows(g, sizes) for g in gi_up]
        n_s = [_rows(x.new_empty(B, w), sizes) for w in widths]
        if grad:
            P1a_s, P1b_s = (
                _per([q[:, i * w : (i + 1) * w] for q, w in zip(P1, widths)], sizes)
                for i in range(2)
            )
            P1v_s = [_split(q.view(N, 2, w), sizes) for q, w in zip(P1, widths)]
            ones_s = [_rows(x.new_ones(B, w), sizes) for w in widths]
        # layer k's gated states: (previous h of layer j, gate column, destination) per j ≠ k
        gated = [x.new_empty(B, sum(widths) - w) for w in widths]
        mix_s = [_rows(m, sizes) for m in gated]
        mixing = [
            [
                (
                    _split(HA[:, src : src + w], sizes),
                    _split(GT[k][:, i : i + 1], sizes),
                    _rows(gated[k][:, dst : dst + w], sizes),
                )
                for i, (src, dst, w) in enumerate(_blocks(widths, k))
            ]
            for k in range(L)
        ]
        a0_s = _split(torch.mm(x, g_in_t[0]), sizes)  # the first layer's gates' input part
        prev = list(h0)
        for t, bs in enumerate(sizes):
            prev = [h if h.shape[0] == bs else h[:bs] for h in prev]
            ha = torch.cat(prev, 1, out=HA_s[t])  # (bs, ΣH)
            u = prev[0]  # (unused by the first layer, whose projections are given)
            for k in range(L):
                if k == 0:  # the input's products are given (gi) or made for all steps (a0)
                    a_u = a0_s[t]
                else:
                    _affine(b_ih[k], u, w_ih_t[k], GI_up_s[k][t])  # type: ignore[arg-type]
                    a_u = torch.mm(u, g_in_t[k])
                torch.addmm(a_u, ha, g_st_t[k], out=GT_s[k][t]).sigmoid_()  # the gates
                for h_j, g_j, dst in mixing[k]:
                    torch.mul(h_j[t], g_j[t], out=dst[t])
                ht = torch.addmm(prev[k], mix_s[k][t], U_t[k], out=HT_s[k][t])  # (bs, H_k)
                _affine(b_hh[k], ht, w_hh_t[k], GG_s[k][t])
                # the GRU's gates (as kernels.gru._gates_after, on views made before the loop)
                r = R_s[k][t]
                RZ_s[k][t].add_(GI_RZ_s[k][t]).sigmoid_()
                n = torch.addcmul(GI_N_s[k][t], r, GN_s[k][t], out=n_s[k][t]).tanh_()
                u = torch.lerp(n, ht, Z_s[k][t], out=out_s[k][t])
                if grad:  # the backward's factors, in place: c = gn r(1-r) over gn
                    torch.addcmul(ones_s[k][t], n, n, value=-1, out=P1a_s[k][t])
                    torch.sub(u, n, out=P1b_s[k][t])  # z (h̃ - n)
                    pairs = P1v_s[k][t]
                    pairs.addcmul_(pairs, Zu_s[k][t], value=-1)  # both times (1 - z)
                    c = GN_s[k][t]
                    c.mul_(r)
                    c.addcmul_(c, r, value=-1)
            prev = [out_s[k][t] for k in range(L)]
        ctx.save_for_backward(x, HA, *p, *outs, *HT, *GG, *P1, *GT)
        ctx.sched, ctx.L, ctx.widths = sched, L, widths
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *douts: Tensor | None) -> tuple[Tensor | None, ...]:
        L, widths, sched = ctx.L, ctx.widths, ctx.sched
        sizes, B, a = sched.sizes, sched.sizes[0], L - 1
        offs = [sum(widths[:k]) for k in range(L)]
        saved = ctx.saved_tensors
        x, HA = saved[0], saved[1]
        p = saved[2 : 2 + _PER_LAYER * L]
        w_ih, b_ih, w_hh, b_hh, U, g_in, g_st = (p[j::_PER_LAYER] for j in range(_PER_LAYER))
        outs, HT, GG, P1, GT = (
            saved[2 + _PER_LAYER * L + i * L : 2 + _PER_LAYER * L + (i + 1) * L] for i in range(5)
        )
        need = ctx.needs_input_grad
        N = x.shape[0]
        blocks = [_blocks(widths, k) for k in range(L)]
        # per layer and row: [da | dn | dz | dr | dgn] (da: the scalar gates' pre-activation)
        D = [x.new_empty(N, a + 4 * H) for H in widths]
        DHT = [x.new_empty(N, H) for H in widths]  # the gradient of h̃
        # the recurrent weight with rows z | r | n (D's order from dz on); for layers above
        # the first, [W_g; W_ih] with W_ih's rows n | z | r (D's order up to dr)
        w_zrn = [_gate_order(w, H, (1, 0, 2)) for w, H in zip(w_hh, widths)]
        w_down = [None] + [
            torch.cat([g_in[k], _gate_order(w_ih[k], widths[k], (2, 1, 0))]) for k in range(1, L)
        ]
        # the gradient of every layer's output at the step being processed (from the next
        # step's use, then from the layer above and the caller), and of the previous
        # step's outputs: two buffers, swapped each step
        carry = [x.new_zeros(B, sum(widths)), x.new_zeros(B, sum(widths))]
        # every view a step uses, made before the loop
        SG_s = _per([g - g * g for g in GT], sizes)  # the scalar gates' σ' = g(1 - g)
        P1_s = [_split(q.view(N, 2, H), sizes) for q, H in zip(P1, widths)]
        R_s, Z_s, C_s = (
            _per([g[:, i * H : (i + 1) * H] for g, H in zip(GG, widths)], sizes) for i in range(3)
        )
        D1_s = [_split(d[:, a : a + 2 * H].view(N, 2, H), sizes) for d, H in zip(D, widths)]
        DH = list(zip(D, widths))
        DN_s = _per([d[:, a : a + H] for d, H in DH], sizes)  # dn
        DR_s = _per([d[:, a + 2 * H : a + 3 * H] for d, H in DH], sizes)  # dr
        DGN_s = _per([d[:, a + 3 * H :] for d, H in DH], sizes)  # dgn
        DG_s = _per([d[:, a + H :] for d, H in DH], sizes)  # [dz | dr | dgn]
        DA_s = _per([d[:, :a] for d, H in DH], sizes)  # da
        DOWN_s = _per([d[:, : a + 3 * H] for d, H in DH], sizes)  # [da | dn | dz | dr]
        DHT_s = _per(DHT, sizes)
        dout_s = [None if d is None else _split(d, sizes) for d in douts]
        dgated = [x.new_empty(B, sum(widths) - H) for H in widths]
        dgated_s = [_rows(d, sizes) for d in dgated]
        own = [[_rows(c[:, o : o + H], sizes) for o, H in zip(offs, widths)] for c in carry]
        whole = [_rows(c, sizes) for c in carry]
        # per layer k and each j ≠ k: views for dg_j, the gate column, the gated state's
        # gradient, h^j's previous rows, and h^j's carried gradient (both buffers)
        mixing = [
            [
                (
                    _split(D[k][:, i], sizes),
                    _split(GT[k][:, i : i + 1], sizes),
                    _rows(dgated[k][:, dst : dst + w], sizes),
                    _split(HA[:, src : src + w], sizes),
                    [_rows(c[:, src : src + w], sizes) for c in carry],
                )
                for i, (src, dst, w) in enumerate(blocks[k])
            ]
            for k in range(L)
        ]
        cur = 0
        for t in range(len(sizes) - 1, -1, -1):
            for k in range(L - 1, -1, -1):
                dh = own[cur][k][t]
                d_own = dout_s[k]
                if d_own is not None:
                    dh.add_(d_own[t])
                dn = DN_s[k][t]
                torch.mul(dh.unsqueeze(1), P1_s[k][t], out=D1_s[k][t])  # [dn | dz]
                torch.mul(dn, C_s[k][t], out=DR_s[k][t])
                torch.mul(dn, R_s[k][t], out=DGN_s[k][t])
                dht = torch.addmm(dh * Z_s[k][t], DG_s[k][t], w_zrn[k], out=DHT_s[k][t])
                torch.mm(dht, U[k], out=dgated_s[k][t])
                for dg_j, _, dgated_j, h_j, _ in mixing[k]:
                    torch.linalg.vecdot(dgated_j[t], h_j[t], out=dg_j[t])
                da = DA_s[k][t].mul_(SG_s[k][t])  # dg σ'(a)
                c_out = whole[1 - cur][t]
                if k == L - 1:
                    torch.mm(da, g_st[k], out=c_out)
                else:
                    c_out.addmm_(da, g_st[k])
                for _, g_j, dgated_j, _, dh_j in mixing[k]:
                    dh_j[1 - cur][t].addcmul_(dgated_j[t], g_j[t])
                own[1 - cur][k][t].add_(dht)
                if k > 0:  # into the layer below's output at this step
                    own[cur][k - 1][t].addmm_(DOWN_s[k][t], w_down[k])  # type: ignore[arg-type]
            cur = 1 - cur
        dh0 = [carry[cur][:, o : o + H].clone() for o, H in zip(offs, widths)]
        grads: list[Tensor | None] = [None, None, None, None, *dh0]
        if need[2]:  # the input reaches the first layer's gates
            grads[2] = D[0][:, :a] @ g_in[0]
        if need[3]:
            H = widths[0]
            grads[3] = torch.cat([D[0][:, a + i * H : a + (i + 1) * H] for i in (2, 1, 0)], 1)
        base = 4 + L
        for k, H in enumerate(widths):
            i0, Dk = base + _PER_LAYER * k, D[k]
            u_k = x if k == 0 else outs[k - 1]
            w: list[Tensor | None] = [None] * _PER_LAYER
            if k > 0 and need[i0]:
                w[0] = _gate_order(Dk[:, a : a + 3 * H].t() @ u_k, H, (2, 1, 0))
            if k > 0 and b_ih[k] is not None and need[i0 + 1]:
                w[1] = _gate_order(Dk[:, a : a + 3 * H].sum(0), H, (2, 1, 0))
            if need[i0 + 2]:
                w[2] = _gate_order(Dk[:, a + H :].t() @ HT[k], H, (1, 0, 2))
            if b_hh[k] is not None and need[i0 + 3]:
                w[3] = _gate_order(Dk[:, a + H :].sum(0), H, (1, 0, 2))
            if need[i0 + 4]:
                mix = x.new_empty(N, sum(widths) - H)
                for i, (src, dst, ww) in enumerate(blocks[k]):
                    g_i = GT[k][:, i : i + 1]
                    torch.mul(HA[:, src : src + ww], g_i, out=mix[:, dst : dst + ww])
                w[4] = DHT[k].t() @ mix
            if need[i0 + 5]:
                w[5] = Dk[:, :a].t() @ u_k
            if need[i0 + 6]:
                w[6] = Dk[:, :a].t() @ HA
            grads += w
        return tuple(grads)
