r"""``cross_layer`` over reset-after GRU layers: a whole sequence as one op.

The step loop of :mod:`.cross_mix` pays, at every step and layer, for three autograd
ops (the mixing, the layer's input projection, the GRU step) and for the autograd
engine between them. Here the whole run is one op, as the sequence kernels of
:mod:`.kernels` are for one layer:

- **forward**, per step: the previous step's ``[h^1 | … | h^L]`` is a block of the one
  ``(B + N, ΣH)`` buffer that holds every layer's initial state and outputs side by
  side (no copy); per layer the scalar gates (the first layer's input part is one
  product for all steps), the gated states, :math:`\tilde h = h^l + U^l\,\text{gated}`
  (one ``addmm``), the layer's input projection (layers above the first; the first
  layer's is hoisted out of the loop by the caller), the recurrent product and the GRU
  gates in place; when a gradient will be needed, also the backward's factors
  (``(1-z)(1-n²)``, ``(h̃-n) z(1-z)``, ``W_n h̃ r(1-r)``) while the step's values are in
  cache;
- **backward**, written by hand: per step and layer, four multiplies for the GRU's
  pre-activation gradients, one ``addmm`` for :math:`\partial\tilde h`, one product
  for the gated states' gradient, the gradient of all layers' previous states gathered
  in one ``(B, ΣH)`` buffer, and two ``addmm`` into the layer below's output gradient.
  The weight gradients are added up over runs of steps of at least
  :data:`CHUNK_ROWS` rows (one matmul per weight and run), so the backward's buffers
  hold one run's rows (peak training memory measured at 1.27 / 1.38 × ``nn.GRU``'s at
  the benchmark's β / γ sizes; 1.96 / 2.34 with whole-sequence buffers). The gradients
  are laid out in the weights' own row order (no reordered copies of the weights).

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
from recurrentkit.executors.kernels.base import split_steps as _split
from recurrentkit.executors.layout import transposed
from recurrentkit.executors.packing import Schedule
from recurrentkit.routing.cross_layer import CrossLayer

__all__ = ["CHUNK_ROWS", "applies", "cross_gru"]

_POLICY_WEIGHTS = ("feedback_weight", "gate_input_weight", "gate_state_weight")
_PER_LAYER = 7  # w_ih, b_ih, w_hh, b_hh, and the policy's U, w_gate_in, w_gate_state
CHUNK_ROWS = 256
"""The backward adds up the weight gradients over runs of steps of at least this many
rows, so its buffers hold one run's rows, not the whole sequence's."""


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


def _per(bufs: Sequence[Tensor], sizes: tuple[int, ...]) -> list[tuple[Tensor, ...]]:
    """Each buffer's per-step views of packed rows."""
    return [_split(b, sizes) for b in bufs]


def _rows(buf: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    """A scratch buffer ``(B, ·)``'s first ``sizes[t]`` rows for each step ``t`` (one view
    per distinct size)."""
    views = {bs: buf[:bs] for bs in set(sizes)}
    return [views[bs] for bs in sizes]


def _previous(cols: Tensor, B: int, sizes: tuple[int, ...]) -> list[Tensor]:
    """For each step ``t``, the rows of ``cols`` (columns of the ``(B + N, ·)`` buffer of
    initial states and outputs) that hold step ``t``'s previous states: the first
    ``sizes[t]`` rows of the block before step ``t``'s."""
    blocks = _split(cols, (B, *sizes))[:-1]
    return [blk if blk.shape[0] == bs else blk[:bs] for blk, bs in zip(blocks, sizes)]


def _chunks(sizes: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """The steps grouped into consecutive runs of at least :data:`CHUNK_ROWS` rows (the
    last may be shorter): ``(first step, end step, first row, end row)`` each."""
    out, t0, r0, r = [], 0, 0, 0
    for t, bs in enumerate(sizes):
        r += bs
        if r - r0 >= CHUNK_ROWS or t == len(sizes) - 1:
            out.append((t0, t + 1, r0, r))
            t0, r0 = t + 1, r
    return out


class _CrossGRU(Function):
    r"""``cross_layer`` over reset-after GRU layers: ``x (N, I)``, ``gi (N, 3H_1)``,
    ``h0_l (B, H_l)`` and each layer's seven parameters → each layer's outputs
    ``(N, H_l)``.

    $$ g^l = \sigma(u^l W_g^{l\top} + h_{all} V^{l\top}), \quad
       \tilde h^l = h^l + U^l [g^l_1 h^{j_1} | \dots], \quad
       h'^l = \mathrm{GRU}^l(u^l, \tilde h^l) $$

    Every layer's outputs live side by side in one ``(B + N, ΣH)`` buffer after the
    initial states, so a step's ``[h^1 | … | h^L]`` of the previous step is a block of it
    (no copy); the returned outputs are column views of it.
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
        offs = [sum(widths[:k]) for k in range(L)]
        grad = any(ctx.needs_input_grad)
        ALL = x.new_empty(B + N, sum(widths))  # [h0 | step 1's h | step 2's h | …]
        torch.cat(h0, 1, out=ALL[:B])
        cols = [ALL[:, o : o + w] for o, w in zip(offs, widths)]
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
        HA_v = _previous(ALL, B, sizes)  # (bs, ΣH): the previous step's [h^1 | … | h^L]
        own_v = [_previous(c, B, sizes) for c in cols]  # layer k's previous h
        out_s = [_split(c[B:], sizes) for c in cols]
        HT_s, GT_s = _per(HT, sizes), _per(GT, sizes)
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
                    own_v[j],
                    _split(GT[k][:, i : i + 1], sizes),
                    _rows(gated[k][:, dst : dst + widths[j]], sizes),
                )
                for i, (j, dst) in enumerate(_sources(widths, k))
            ]
            for k in range(L)
        ]
        a0_s = _split(torch.mm(x, g_in_t[0]), sizes)  # the first layer's gates' input part
        for t in range(len(sizes)):
            ha = HA_v[t]
            u = ha  # (unused by the first layer, whose projections are given)
            for k in range(L):
                if k == 0:  # the input's products are given (gi) or made for all steps (a0)
                    a_u = a0_s[t]
                else:
                    _affine(b_ih[k], u, w_ih_t[k], GI_up_s[k][t])  # type: ignore[arg-type]
                    a_u = torch.mm(u, g_in_t[k])
                torch.addmm(a_u, ha, g_st_t[k], out=GT_s[k][t]).sigmoid_()  # the gates
                for h_j, g_j, dst in mixing[k]:
                    torch.mul(h_j[t], g_j[t], out=dst[t])
                ht = torch.addmm(own_v[k][t], mix_s[k][t], U_t[k], out=HT_s[k][t])
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
        ctx.save_for_backward(x, ALL, *p, *HT, *GG, *P1, *GT)
        ctx.sched, ctx.L, ctx.widths = sched, L, widths
        ctx.set_materialize_grads(False)
        return tuple(c[B:] for c in cols)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *douts: Tensor | None) -> tuple[Tensor | None, ...]:
        L, widths, sched = ctx.L, ctx.widths, ctx.sched
        sizes, B, a, S = sched.sizes, sched.sizes[0], L - 1, sum(ctx.widths)
        offs = [sum(widths[:k]) for k in range(L)]
        saved = ctx.saved_tensors
        x, ALL = saved[0], saved[1]
        p = saved[2 : 2 + _PER_LAYER * L]
        w_ih, b_ih, w_hh, b_hh, U, g_in, g_st = (p[j::_PER_LAYER] for j in range(_PER_LAYER))
        HT, GG, P1, GT = (
            saved[2 + _PER_LAYER * L + i * L : 2 + _PER_LAYER * L + (i + 1) * L] for i in range(4)
        )
        need = ctx.needs_input_grad
        cols = [ALL[:, o : o + w] for o, w in zip(offs, widths)]
        outs = [c[B:] for c in cols]
        HA_v = _previous(ALL, B, sizes)
        own_prev = [_previous(c, B, sizes) for c in cols]
        chunks = _chunks(sizes)
        M = max(r1 - r0 for _, _, r0, r1 in chunks)
        # per layer, for the rows of one chunk of steps: [da | dn | dr | dz | dgn] (da: the
        # scalar gates' pre-activation; [dr | dz | dgn] is the recurrent product's
        # gradient, in W_hh's row order) and the gradient of h̃; each chunk's weight
        # gradients are added up as soon as it is done, so these stay chunk-sized
        D = [x.new_empty(M, a + 4 * H) for H in widths]
        DHT = [x.new_empty(M, H) for H in widths]
        step_rows = [(t0, sizes[t0:t1]) for t0, t1, _, _ in chunks]

        def per_step(bufs: Sequence[Tensor]) -> list[list[Tensor]]:
            """Each chunk-sized buffer's views for every step."""
            out: list[list[Tensor]] = []
            for buf in bufs:
                views: list[Tensor] = []
                for _, sz in step_rows:
                    views += _split(buf[: sum(sz)], sz)
                out.append(views)
            return out

        DH = list(zip(D, widths))
        DN_s = per_step([d[:, a : a + H] for d, H in DH])
        DR_s = per_step([d[:, a + H : a + 2 * H] for d, H in DH])
        DZ_s = per_step([d[:, a + 2 * H : a + 3 * H] for d, H in DH])
        DGN_s = per_step([d[:, a + 3 * H :] for d, H in DH])
        DG_s = per_step([d[:, a + H :] for d, H in DH])  # [dr | dz | dgn]
        DA_s = per_step([d[:, :a] for d, H in DH])
        DAN_s = per_step([d[:, : a + H] for d, H in DH])  # [da | dn]
        DRZ_s = per_step([d[:, a + H : a + 3 * H] for d, H in DH])  # [dr | dz]
        DHT_s = per_step(DHT)
        SG_s = _per([g - g * g for g in GT], sizes)  # the scalar gates' σ' = g(1 - g)
        P1a_s, P1b_s = (
            _per([q[:, i * H : (i + 1) * H] for q, H in zip(P1, widths)], sizes) for i in range(2)
        )
        R_s, Z_s, C_s = (
            _per([g[:, i * H : (i + 1) * H] for g, H in zip(GG, widths)], sizes) for i in range(3)
        )
        dout_s = [None if d is None else _split(d, sizes) for d in douts]
        # for the gradient into the layer below: [W_g; W_n] (rows for [da | dn]), W_rz
        w_an = [None] + [torch.cat([g_in[k], w_ih[k][2 * widths[k] :]]) for k in range(1, L)]
        # the gradient of every layer's output at the step being processed (from the next
        # step's use, then from the layer above and the caller), and of the previous
        # step's outputs: two buffers, swapped each step
        carry = [x.new_zeros(B, S), x.new_zeros(B, S)]
        dgated = [x.new_empty(B, S - H) for H in widths]
        dgated_s = [_rows(d, sizes) for d in dgated]
        own = [[_rows(c[:, o : o + H], sizes) for o, H in zip(offs, widths)] for c in carry]
        whole = [_rows(c, sizes) for c in carry]
        # per layer k and each j ≠ k: views for dg_j, the gate column, the gated state's
        # gradient, h^j's previous rows, and h^j's carried gradient (both buffers)
        mixing = [
            [
                (
                    per_step([D[k][:, i]])[0],
                    _split(GT[k][:, i : i + 1], sizes),
                    _rows(dgated[k][:, dst : dst + widths[j]], sizes),
                    own_prev[j],
                    [_rows(c[:, offs[j] : offs[j] + widths[j]], sizes) for c in carry],
                )
                for i, (j, dst) in enumerate(_sources(widths, k))
            ]
            for k in range(L)
        ]
        grads = _Grads(x, p, widths, need, 4 + L)
        cur = 0
        for t0, t1, r0, r1 in reversed(chunks):
            for t in range(t1 - 1, t0 - 1, -1):
                for k in range(L - 1, -1, -1):
                    dh = own[cur][k][t]
                    d_own = dout_s[k]
                    if d_own is not None:
                        dh.add_(d_own[t])
                    dn = torch.mul(dh, P1a_s[k][t], out=DN_s[k][t])
                    torch.mul(dh, P1b_s[k][t], out=DZ_s[k][t])
                    torch.mul(dn, C_s[k][t], out=DR_s[k][t])
                    torch.mul(dn, R_s[k][t], out=DGN_s[k][t])
                    dht = torch.addmm(dh * Z_s[k][t], DG_s[k][t], w_hh[k], out=DHT_s[k][t])
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
                        below = own[cur][k - 1][t]
                        below.addmm_(DAN_s[k][t], w_an[k])  # type: ignore[arg-type]
                        below.addmm_(DRZ_s[k][t], w_ih[k][: 2 * widths[k]])
                cur = 1 - cur
            rows, m = slice(r0, r1), r1 - r0
            # the chunk's previous states: a block of ALL when every step has all rows
            HA = ALL[r0:r1] if sched.uniform else torch.cat(HA_v[t0:t1])
            for k in range(L):
                u_k = x[rows] if k == 0 else outs[k - 1][rows]
                grads.add(k, D[k][:m], DHT[k][:m], HT[k][rows], u_k, HA, GT[k][rows])
            grads.add_input(D[0][:m], rows)
        dh0 = [carry[cur][:, o : o + H].clone() for o, H in zip(offs, widths)]
        return (None, None, grads.dx, grads.dgi, *dh0, *grads.params)


class _Grads:
    """The gradients of :class:`_CrossGRU`'s inputs, added up chunk by chunk."""

    def __init__(
        self, x: Tensor, p: Sequence[Tensor | None], widths: list[int], need: Any, base: int
    ) -> None:
        self.widths = widths
        self.a = len(widths) - 1
        N, H0 = x.shape[0], widths[0]
        self.dx = x.new_empty(N, x.shape[1]) if need[2] else None
        self.dgi = x.new_empty(N, 3 * H0) if need[3] else None
        self.g_in0 = p[5]
        self.params: list[Tensor | None] = [
            None if t is None or not need[base + i] else torch.zeros_like(t)
            for i, t in enumerate(p)
        ]

    def add(
        self, k: int, D: Tensor, DHT: Tensor, HT: Tensor, u: Tensor, HA: Tensor, GT: Tensor
    ) -> None:
        """Layer ``k``'s weight gradients from one chunk's rows."""
        a, H = self.a, self.widths[k]
        d_w_ih, d_b_ih, d_w_hh, d_b_hh, dU, d_g_in, d_g_st = self.params[
            _PER_LAYER * k : _PER_LAYER * (k + 1)
        ]
        dG = D[:, a + H :]  # [dr | dz | dgn]: W_hh's row order
        if d_w_hh is not None:
            d_w_hh.addmm_(dG.t(), HT)
        if d_b_hh is not None:
            d_b_hh.add_(dG.sum(0))
        if d_w_ih is not None:  # rows r | z from [dr | dz], rows n from dn
            d_w_ih[: 2 * H].addmm_(D[:, a + H : a + 3 * H].t(), u)
            d_w_ih[2 * H :].addmm_(D[:, a : a + H].t(), u)
        if d_b_ih is not None:
            d_b_ih[: 2 * H].add_(D[:, a + H : a + 3 * H].sum(0))
            d_b_ih[2 * H :].add_(D[:, a : a + H].sum(0))
        if dU is not None:  # the gated states, made again for these rows
            gated = HA.new_empty(HA.shape[0], HA.shape[1] - H)
            for i, (j, dst) in enumerate(_sources(self.widths, k)):
                src, w = sum(self.widths[:j]), self.widths[j]
                torch.mul(HA[:, src : src + w], GT[:, i : i + 1], out=gated[:, dst : dst + w])
            dU.addmm_(DHT.t(), gated)
        if d_g_in is not None:
            d_g_in.addmm_(D[:, :a].t(), u)
        if d_g_st is not None:
            d_g_st.addmm_(D[:, :a].t(), HA)

    def add_input(self, D0: Tensor, rows: slice) -> None:
        """The gradients of ``x`` (through the first layer's gates) and of ``gi`` (the
        first layer's input projection) for one chunk's rows."""
        a, H = self.a, self.widths[0]
        if self.dx is not None:
            torch.mm(D0[:, :a], self.g_in0, out=self.dx[rows])  # type: ignore[arg-type]
        if self.dgi is not None:  # [dr | dz | dn]
            self.dgi[rows, : 2 * H].copy_(D0[:, a + H : a + 3 * H])
            self.dgi[rows, 2 * H :].copy_(D0[:, a : a + H])


def _sources(widths: Sequence[int], k: int) -> list[tuple[int, int]]:
    """For each layer ``j ≠ k`` in order: ``(j, its offset in layer k's gated states)``."""
    out, dst = [], 0
    for j, w in enumerate(widths):
        if j != k:
            out.append((j, dst))
            dst += w
    return out
