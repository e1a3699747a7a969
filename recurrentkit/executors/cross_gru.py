r"""``cross_layer`` over reset-after GRU layers: a whole sequence as one op.

The step loop of :mod:`.cross_mix` pays, at every step and layer, for three autograd
ops (the mixing, the layer's input projection, the GRU step) and for the autograd
engine between them. Here the whole run is one op, as the sequence kernels of
:mod:`.kernels` are for one layer:

- **forward**, per step: ``[h^1; …; h^L]`` of the previous step written side by side
  into one saved buffer, then per layer the gates (two small products), the gated
  states, :math:`\tilde h = h^l + U^l\,\text{gated}` (one ``addmm``), the layer's input
  projection (layers above the first; the first layer's is hoisted out of the loop by
  the caller), the recurrent product and the GRU gates in place;
- **backward**, written by hand: every factor that depends on forward values only is
  computed for all steps before the loop; per step and layer, two broadcast multiplies
  for the GRU's pre-activation gradients, one ``addmm`` for
  :math:`\partial\tilde h`, one product for the gated states' gradient, and the
  gradient of all layers' previous states gathered in one ``(B, ΣH)`` buffer; each
  weight gradient is one matmul over all rows after the loop, as is the gradient of
  the input through the first layer's gates.

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
from recurrentkit.executors.kernels.gru import _gates_after
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


def _factors(G: Tensor, n: Tensor, h: Tensor, p1: Tensor) -> None:
    """A step's factors for the backward, in place: ``G = [r | z | gn]`` becomes
    ``[r | z | gn r(1-r)]`` and ``p1`` ``[(1-z)(1-n²) | (h-n) z(1-z)]``, all ``(B, ·)``."""
    H = n.shape[1]
    r, z, c = G[:, :H], G[:, H : 2 * H], G[:, 2 * H :]
    one_z = torch.rsub(z, 1)
    torch.addcmul(one_z, one_z, n.square(), value=-1, out=p1[:, :H])
    torch.sub(h, n, out=p1[:, H:]).mul_(z).mul_(one_z)
    c.mul_(r)
    c.addcmul_(c, r, value=-1)


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
        sizes, B, N = sched.sizes, sched.sizes[0], x.shape[0]
        widths = [h.shape[1] for h in h0]
        offs = [sum(widths[:k]) for k in range(L)]
        HA = x.new_empty(N, sum(widths))  # each row's previous [h^1 | … | h^L]
        outs = [x.new_empty(N, w) for w in widths]
        HT = [x.new_empty(N, w) for w in widths]  # h̃, the mixed previous state
        # W_hh h̃ + b_hh → [r | z | W_n h̃ + b_n] → (for the backward) [r | z | c], c = gn r(1-r)
        GG = [x.new_empty(N, 3 * w) for w in widths]
        grad = any(ctx.needs_input_grad)
        # for the backward: [(1-z)(1-n²) | (h̃-n) z(1-z)], made while the step's values are hot
        P1 = [x.new_empty(N if grad else 0, 2 * w) for w in widths]
        n_scr = [x.new_empty(B, w) for w in widths]
        GT = [x.new_empty(N, L - 1) for _ in widths]  # the scalar gates
        gated = [x.new_empty(B, sum(widths) - w) for w in widths]
        gi_up = [x.new_empty(B, 3 * w) for w in widths]  # layers above the first
        blocks = [_blocks(widths, k) for k in range(L)]
        w_ih_t = [None if k == 0 else transposed(p[_PER_LAYER * k], B) for k in range(L)]
        w_hh_t = [transposed(p[_PER_LAYER * k + 2], B) for k in range(L)]
        U_t = [transposed(p[_PER_LAYER * k + 4], B) for k in range(L)]
        g_in_t = [p[_PER_LAYER * k + 5].t() for k in range(L)]
        g_st_t = [p[_PER_LAYER * k + 6].t() for k in range(L)]
        HA_s, x_s, gi_s = _split(HA, sizes), _split(x, sizes), _split(gi, sizes)
        out_s, HT_s, GG_s, GT_s = ([_split(b, sizes) for b in bufs] for bufs in (outs, HT, GG, GT))
        P1_s = [_split(b, sizes) if grad else [] for b in P1]
        prev = list(h0)
        for t, bs in enumerate(sizes):
            prev = [h if h.shape[0] == bs else h[:bs] for h in prev]
            ha = torch.cat(prev, 1, out=HA_s[t])  # (bs, ΣH)
            u = x_s[t]
            for k in range(L):
                b_ih, b_hh = p[_PER_LAYER * k + 1], p[_PER_LAYER * k + 3]
                g = torch.addmm(torch.mm(u, g_in_t[k]), ha, g_st_t[k], out=GT_s[k][t]).sigmoid_()
                mix = gated[k][:bs]
                for i, (src, dst, w) in enumerate(blocks[k]):
                    torch.mul(ha[:, src : src + w], g[:, i : i + 1], out=mix[:, dst : dst + w])
                ht = torch.addmm(prev[k], mix, U_t[k], out=HT_s[k][t])  # (bs, H_k)
                if k == 0:
                    gi_k = gi_s[t]
                else:
                    gi_k = _affine(b_ih, u, w_ih_t[k], gi_up[k][:bs])  # type: ignore[arg-type]
                G = _affine(b_hh, ht, w_hh_t[k], GG_s[k][t])
                u, n = _gates_after(G, gi_k, ht, n_scr[k][:bs], out_s[k][t])
                if grad:
                    _factors(G, n, ht, P1_s[k][t])
            prev = [out_s[k][t] for k in range(L)]
        ctx.save_for_backward(x, HA, *p, *outs, *HT, *GG, *P1, *GT)
        ctx.sched, ctx.L, ctx.widths, ctx.offs = sched, L, widths, offs
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *douts: Tensor | None) -> tuple[Tensor | None, ...]:
        L, widths, offs, sched = ctx.L, ctx.widths, ctx.offs, ctx.sched
        sizes, B = sched.sizes, sched.sizes[0]
        saved = ctx.saved_tensors
        x, HA = saved[0], saved[1]
        p = saved[2 : 2 + _PER_LAYER * L]
        outs, HT, GG, P1, GT = (
            saved[2 + _PER_LAYER * L + i * L : 2 + _PER_LAYER * L + (i + 1) * L] for i in range(5)
        )
        need = ctx.needs_input_grad
        N = x.shape[0]
        blocks = [_blocks(widths, k) for k in range(L)]
        D = [x.new_empty(N, 4 * H) for H in widths]  # [dn | dz | dr | dgn]
        DHT = [x.new_empty(N, H) for H in widths]
        DA = [x.new_empty(N, L - 1) for _ in widths]
        SG = [_split(g - g * g, sizes) for g in GT]  # the scalar gates' σ' = g(1 - g)
        P1_s = [[q.view(-1, 2, H) for q in _split(p1, sizes)] for p1, H in zip(P1, widths)]
        R_s = [_split(GG[k][:, :H], sizes) for k, H in enumerate(widths)]
        C_s = [_split(GG[k][:, 2 * H :], sizes) for k, H in enumerate(widths)]
        D_s, DHT_s, DA_s = ([_split(b, sizes) for b in bufs] for bufs in (D, DHT, DA))
        Z_s = [_split(GG[k][:, H : 2 * H], sizes) for k, H in enumerate(widths)]
        GT_s, HA_s = [_split(g, sizes) for g in GT], _split(HA, sizes)
        dout_s = [None if d is None else _split(d, sizes) for d in douts]
        # the recurrent weight with rows z | r | n (D's order from column H on); the
        # input weight with rows n | z | r (D's first 3H columns)
        w_zrn = [_gate_order(p[_PER_LAYER * k + 2], H, (1, 0, 2)) for k, H in enumerate(widths)]
        w_nzr = [
            None if k == 0 else _gate_order(p[_PER_LAYER * k], H, (2, 1, 0))
            for k, H in enumerate(widths)
        ]
        U = [p[_PER_LAYER * k + 4] for k in range(L)]
        g_in = [p[_PER_LAYER * k + 5] for k in range(L)]
        g_st = [p[_PER_LAYER * k + 6] for k in range(L)]
        carry = [x.new_zeros(B, sum(widths)), x.new_zeros(B, sum(widths))]
        dh_buf = [x.new_empty(B, H) for H in widths]
        cur = 0
        for t in range(len(sizes) - 1, -1, -1):
            bs = sizes[t]
            c_in, c_out = carry[cur][:bs], carry[1 - cur][:bs]
            ha = HA_s[t]
            du: Tensor | None = None  # the gradient of this layer's output from the one above
            for k in range(L - 1, -1, -1):
                H, o = widths[k], offs[k]
                dh = dh_buf[k][:bs]
                d_own = dout_s[k]
                if d_own is not None:
                    torch.add(c_in[:, o : o + H], d_own[t], out=dh)
                else:
                    dh.copy_(c_in[:, o : o + H])
                if du is not None:
                    dh.add_(du)
                Dt = D_s[k][t]
                torch.mul(dh.unsqueeze(1), P1_s[k][t], out=Dt[:, : 2 * H].view(-1, 2, H))
                torch.mul(Dt[:, :H], C_s[k][t], out=Dt[:, 2 * H : 3 * H])  # dr
                torch.mul(Dt[:, :H], R_s[k][t], out=Dt[:, 3 * H :])  # dgn
                dht = torch.addmm(dh * Z_s[k][t], Dt[:, H:], w_zrn[k], out=DHT_s[k][t])
                dgated = torch.mm(dht, U[k])  # (bs, ΣH - H_k)
                g = GT_s[k][t]
                dg = DA_s[k][t]
                for i, (src, dst, w) in enumerate(blocks[k]):
                    dg[:, i] = torch.linalg.vecdot(dgated[:, dst : dst + w], ha[:, src : src + w])
                da = dg.mul_(SG[k][t])  # the gates' pre-activation gradient
                if k == L - 1:
                    torch.mm(da, g_st[k], out=c_out)
                else:
                    c_out.addmm_(da, g_st[k])
                for i, (src, dst, w) in enumerate(blocks[k]):
                    c_out[:, src : src + w].addcmul_(dgated[:, dst : dst + w], g[:, i : i + 1])
                c_out[:, o : o + H].add_(dht)
                if k > 0:
                    du = torch.mm(da, g_in[k]).addmm_(Dt[:, : 3 * H], w_nzr[k])  # type: ignore[arg-type]
            cur = 1 - cur
        dh0 = [carry[cur][:, o : o + H].clone() for o, H in zip(offs, widths)]
        grads: list[Tensor | None] = [None, None, None, None, *dh0]
        if need[2]:  # the input reaches the first layer's gates
            grads[2] = DA[0] @ g_in[0]
        if need[3]:
            H = widths[0]
            grads[3] = torch.cat([D[0][:, 2 * H : 3 * H], D[0][:, H : 2 * H], D[0][:, :H]], 1)
        base = 4 + L
        for k, H in enumerate(widths):
            i0 = base + _PER_LAYER * k
            u_k = x if k == 0 else outs[k - 1]
            w = [None] * _PER_LAYER
            if k > 0 and need[i0]:
                w[0] = _gate_order(D[k][:, : 3 * H].t() @ u_k, H, (2, 1, 0))
            if k > 0 and p[_PER_LAYER * k + 1] is not None and need[i0 + 1]:
                w[1] = _gate_order(D[k][:, : 3 * H].sum(0), H, (2, 1, 0))
            if need[i0 + 2]:
                w[2] = _gate_order(D[k][:, H:].t() @ HT[k], H, (1, 0, 2))
            if p[_PER_LAYER * k + 3] is not None and need[i0 + 3]:
                w[3] = _gate_order(D[k][:, H:].sum(0), H, (1, 0, 2))
            if need[i0 + 4]:
                mix = x.new_empty(N, sum(widths) - H)
                for i, (src, dst, ww) in enumerate(blocks[k]):
                    g_i = GT[k][:, i : i + 1]
                    torch.mul(HA[:, src : src + ww], g_i, out=mix[:, dst : dst + ww])
                w[4] = DHT[k].t() @ mix
            if need[i0 + 5]:
                w[5] = DA[k].t() @ u_k
            if need[i0 + 6]:
                w[6] = DA[k].t() @ HA
            grads += w
        return tuple(grads)
