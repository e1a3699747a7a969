r"""``cross_layer`` over built-in GRU and LSTM layers: a whole sequence as one op.

The step loop of :mod:`.mix` pays, at every step and layer, for three autograd
ops (the mixing, the layer's input projection, the cell step) and for the autograd
engine between them. Here the whole run is one op with a hand-written backward, as
the sequence kernels of :mod:`~recurrentkit.executors.kernels` are for one layer. The
mixing is done here; each layer's cell arithmetic by its part (:mod:`.parts`; a
reset-after GRU or an LSTM without projection; a stack may mix both):

- **forward**, per step: the previous step's ``[h^1 | … | h^L]`` is a block of the one
  ``(B + N, ΣH)`` buffer that holds every layer's initial ``h`` and outputs side by
  side (no copy); per layer the scalar gates (the bottom layer's input part is one
  product for all steps), the gated states, :math:`\tilde h = h^l + U^l\,\text{gated}`
  (one ``addmm``), then the cell: its input projection (layers above the first; the
  first layer's is hoisted out of the loop), the recurrent product, the gates in
  place and, when a gradient will be needed, the factors its backward needs, made
  while the step's values are in cache;
- **backward**, written by hand: per step and layer, the cell's pre-activation
  gradients (a few multiplies by the saved factors) and one product for
  :math:`\partial\tilde h`, one product for the gated states' gradient, the gradient
  of all layers' previous ``h`` gathered in one ``(B, ΣH)`` buffer, and the gradient
  into the layer below. The weight gradients are added up over runs of steps of at
  least :data:`~recurrentkit.executors.packing.CHUNK_ROWS` rows (one matmul per weight
  and run), so the backward's buffers hold one run's rows (peak training memory for a
  GRU stack measured at 1.27 / 1.38 × ``nn.GRU``'s at the benchmark's β / γ sizes;
  1.96 / 2.34 with whole-sequence buffers). Gradients are laid out in the weights' own row order (no
  reordered copies of the weights).

Every view a step uses is made before the time loop: at these sizes the cost left per
step is mostly the Python call of each small op, so the loops call nothing else.
Without grad mode the same arithmetic runs directly (no autograd op, none of the
backward's factors), on one-step scratch buffers where nothing needs saving.

Equal to :meth:`CrossLayer.step <recurrentkit.routing.CrossLayer.step>` looped over
time to rounding. The executor runs it in eager mode, without active inter-layer
dropout, when :func:`applies`; other stacks keep the step loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.autograd import Function
from torch.nn import functional as F

from recurrentkit.cells.gru import GRUCell
from recurrentkit.cells.lstm import LSTMCell, LSTMState
from recurrentkit.executors.cross_layer.mix import _blocks
from recurrentkit.executors.cross_layer.parts import (
    CellPart,
    previous_per_step,
    rows_per_step,
    step_views,
)
from recurrentkit.executors.first_order import first_order_backward
from recurrentkit.executors.kernels import ops
from recurrentkit.executors.kernels.base import folded_bias
from recurrentkit.executors.kernels.base import split_steps as _split
from recurrentkit.executors.kernels.gru import GRUPart
from recurrentkit.executors.kernels.lstm import LSTMPart
from recurrentkit.executors.packing import Schedule, chunk_steps
from recurrentkit.executors.products import transposed
from recurrentkit.routing.cross_layer import CrossLayer

__all__ = ["applies", "cross_run"]

_PER_LAYER = 7  # w_ih, b_ih, w_hh, b_hh, and the policy's U, w_gate_in, w_gate_state

PARTS: dict[str, type[CellPart]] = {"gru": GRUPart, "lstm": LSTMPart}
"""Each cell kind's part (:func:`_kind`), in its kernel's file."""


def _kind(cell: nn.Module) -> str | None:
    """``"gru"``/``"lstm"`` for the cells the op runs, else ``None``."""
    if type(cell) is GRUCell and cell.reset == "after":
        return "gru"
    if type(cell) is LSTMCell and not cell.proj_size:
        return "lstm"
    return None


def applies(policy: object, cells: Sequence[nn.Module]) -> bool:
    """Whether :func:`cross_run` runs ``policy`` over ``cells``: a policy declaring
    ``cross_layer`` wiring (:class:`~recurrentkit.routing.CrossLayer`'s equations and
    ``layer_weights``) over two or more layers, each a reset-after
    :class:`~recurrentkit.GRUCell` or an :class:`~recurrentkit.LSTMCell` without
    projection."""
    return (
        getattr(policy, "wiring", None) == "cross_layer"
        and len(cells) > 1
        and all(_kind(c) is not None for c in cells)
    )


def cross_run(
    policy: CrossLayer,
    cells: Sequence[nn.Module],
    x: Tensor,
    states: Sequence[Any],
    sched: Schedule,
) -> tuple[Tensor, list[Any]]:
    """``cross_layer`` over ``cells`` (see :func:`applies`), no dropout, as one op.

    Args:
        policy: the stack's bound policy.
        cells: the stack's cells, bottom first.
        x: the input as packed rows ``(N, I)``.
        states: each layer's initial state (``h (B, H_l)``, or an
            :class:`~recurrentkit.LSTMState`), in ``sched``'s sorted order.
        sched: the packed layout (see :mod:`~recurrentkit.executors.packing`).

    Returns:
        ``(y, seqs)``: the top layer's outputs ``(N, H_L)`` and each layer's state
        sequence (the state after each row's step, fields ``(N, H_l)``), bottom first.
    """
    kinds = cast("tuple[str, ...]", tuple(_kind(c) for c in cells))  # (applies(): no None)
    first: Any = cells[0]
    # the hoisted projection; an LSTM's carries both biases
    bias = folded_bias(first) if kinds[0] == "lstm" else first.bias_ih
    gi = F.linear(x, first.weight_ih, bias)  # (N, G H_1)
    params: list[Tensor | None] = []
    cell: Any
    for k, cell in enumerate(cells):
        folded = k == 0 and kinds[k] == "lstm"
        params += [
            cell.weight_ih if k else None,
            cell.bias_ih if k else None,
            cell.weight_hh,
            None if folded else cell.bias_hh,
            *policy.layer_weights(k),
        ]
    h0 = [s if isinstance(s, Tensor) else s.h for s in states]
    c0 = [s.c for s, kind in zip(states, kinds) if kind == "lstm"]
    if torch.is_grad_enabled() or ops.active():  # (compiling: the op)
        outs = _CROSS_OP.apply(sched, kinds, x, gi, *h0, *c0, *params)
    else:  # inference: the same arithmetic without the autograd op or the backward's factors
        outs = _CrossRun.forward(_NoGrad(), sched, kinds, x, gi, *h0, *c0, *params)
    hs, cs = list(outs[: len(cells)]), iter(outs[len(cells) :])
    seqs = [LSTMState(h, next(cs)) if kind == "lstm" else h for h, kind in zip(hs, kinds)]
    return hs[-1], seqs


class _NoGrad:
    """Stands in for the autograd context when nothing will be differentiated."""

    needs_input_grad: tuple[bool, ...] = ()

    def save_for_backward(self, *tensors: Any) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        pass


def _per(bufs: Sequence[Tensor], sizes: tuple[int, ...]) -> list[Sequence[Tensor]]:
    """Each buffer's per-step views of packed rows."""
    return [_split(b, sizes) for b in bufs]


class _CrossRun(Function):
    r"""``cross_layer`` over GRU/LSTM layers: ``x (N, I)``, ``gi (N, G H_1)``, each
    layer's initial ``h (B, H_l)``, each LSTM layer's initial ``c``, and each layer's
    seven parameters → each layer's outputs ``h (N, H_l)``, then each LSTM layer's
    ``c (N, H_l)``.

    $$ g^l = \sigma(u^l W_g^{l\top} + h_{all} V^{l\top}), \quad
       \tilde h^l = h^l + U^l [g^l_1 h^{j_1} | \dots], \quad
       (h'^l, \dots) = \mathrm{cell}^l(u^l, \tilde h^l, \dots) $$

    The returned ``h`` are column views of one ``(B + N, ΣH)`` buffer (see the module
    docstring).
    """

    @staticmethod
    def forward(
        ctx: Any, sched: Schedule, kinds: tuple[str, ...], x: Tensor, gi: Tensor, *rest: Any
    ) -> tuple[Tensor, ...]:
        L = len(kinds)
        n_c = kinds.count("lstm")
        h0, c0, p = rest[:L], iter(rest[L : L + n_c]), rest[L + n_c :]
        g_in, g_st = p[5::_PER_LAYER], p[6::_PER_LAYER]
        sizes, B, N, a = sched.sizes, sched.sizes[0], x.shape[0], L - 1
        widths = [h.shape[1] for h in h0]
        offs = [sum(widths[:k]) for k in range(L)]
        grad = any(ctx.needs_input_grad)
        ALL = x.new_empty(B + N, sum(widths))  # [h0 | step 1's h | step 2's h | …]
        torch.cat(h0, 1, out=ALL[:B])
        cols = [ALL[:, o : o + w] for o, w in zip(offs, widths)]
        parts: list[CellPart] = []
        for k, (kind, H) in enumerate(zip(kinds, widths)):
            part = PARTS[kind](H, k == 0, sizes, x, grad)
            part.start(
                gi if k == 0 else None,
                p[_PER_LAYER * k : _PER_LAYER * k + 4],
                next(c0) if kind == "lstm" else None,
            )
            parts.append(part)
        HT = [x.new_empty(N if grad else B, w) for w in widths]  # h̃, the mixed previous h
        GT = [x.new_empty(N, a) for _ in widths]  # the scalar gates
        U_t = [transposed(U, B) for U in p[4::_PER_LAYER]]
        g_in_t, g_st_t = [w.t() for w in g_in], [w.t() for w in g_st]
        # every view a step uses, made before the loop
        HA_v = previous_per_step(ALL, B, sizes)  # (bs, ΣH): the previous step's [h^1 | … | h^L]
        own_v = [previous_per_step(c, B, sizes) for c in cols]  # layer k's previous h
        out_s = [_split(c[B:], sizes) for c in cols]
        HT_s, GT_s = [step_views(h, sizes, grad) for h in HT], _per(GT, sizes)
        # layer k's gated states: (previous h of layer j, gate column, destination) per j ≠ k
        gated = [x.new_empty(B, sum(widths) - w) for w in widths]
        mix_s = [rows_per_step(m, sizes) for m in gated]
        mixing = [
            [
                (
                    own_v[j],
                    _split(GT[k][:, i : i + 1], sizes),
                    rows_per_step(gated[k][:, dst : dst + widths[j]], sizes),
                )
                for i, (j, _, dst, _) in enumerate(_blocks(widths, k))
            ]
            for k in range(L)
        ]
        a0_s = _split(torch.mm(x, g_in_t[0]), sizes)  # the bottom layer's gates' input part
        for t in range(len(sizes)):
            ha = HA_v[t]
            u = x  # (unused by the bottom layer, whose input products are made)
            for k in range(L):
                a_u = a0_s[t] if k == 0 else torch.mm(u, g_in_t[k])
                torch.addmm(a_u, ha, g_st_t[k], out=GT_s[k][t]).sigmoid_()  # the gates
                for h_j, g_j, dst in mixing[k]:
                    torch.mul(h_j[t], g_j[t], out=dst[t])
                ht = torch.addmm(own_v[k][t], mix_s[k][t], U_t[k], out=HT_s[k][t])
                u = parts[k].step(t, u, ht, out_s[k][t])
        cell_saved = [t for part in parts for t in part.saved()]
        ctx.save_for_backward(x, ALL, *p, *HT, *GT, *cell_saved)
        ctx.sched, ctx.kinds, ctx.widths = sched, kinds, widths
        ctx.n_saved = [len(part.saved()) for part in parts]
        ctx.set_materialize_grads(False)
        extra = [t for part in parts for t in part.outputs()]
        return (*(c[B:] for c in cols), *extra)

    @staticmethod
    @first_order_backward
    def backward(ctx: Any, *douts: Tensor | None) -> tuple[Tensor | None, ...]:
        kinds, widths, sched = ctx.kinds, ctx.widths, ctx.sched
        L, n_c = len(kinds), kinds.count("lstm")
        sizes, B, a, S = sched.sizes, sched.sizes[0], L - 1, sum(widths)
        offs = [sum(widths[:k]) for k in range(L)]
        saved = ctx.saved_tensors
        x, ALL = saved[0], saved[1]
        p = saved[2 : 2 + _PER_LAYER * L]
        U, g_in, g_st = p[4::_PER_LAYER], p[5::_PER_LAYER], p[6::_PER_LAYER]
        i0 = 2 + _PER_LAYER * L
        HT, GT = saved[i0 : i0 + L], saved[i0 + L : i0 + 2 * L]
        cell_saved, at = [], i0 + 2 * L
        for n in ctx.n_saved:
            cell_saved.append(saved[at : at + n])
            at += n
        need = ctx.needs_input_grad
        cols = [ALL[:, o : o + w] for o, w in zip(offs, widths)]
        outs = [c[B:] for c in cols]
        HA_v = previous_per_step(ALL, B, sizes)
        own_prev = [previous_per_step(c, B, sizes) for c in cols]
        chunks = chunk_steps(sizes)
        M = max(r1 - r0 for _, _, r0, r1 in chunks)
        step_rows = [sizes[t0:t1] for t0, t1, _, _ in chunks]

        def per_step(buf: Tensor) -> list[Tensor]:
            """A chunk-sized buffer's views for every step."""
            views: list[Tensor] = []
            for sz in step_rows:
                views += _split(buf[: sum(sz)], sz)
            return views

        # per layer, for the rows of one chunk of steps: [da | the cell's pre-activation
        # gradients] (da: the scalar gates'), and the gradient of h̃; each chunk's weight
        # gradients are added up as soon as it is done, so these stay chunk-sized
        D = [x.new_empty(M, a + 4 * H) for H in widths]
        DHT = [x.new_empty(M, H) for H in widths]
        dc_outs = iter(douts[L:])
        parts: list[CellPart] = []
        for k, (kind, H) in enumerate(zip(kinds, widths)):
            part = PARTS[kind](H, k == 0, sizes, x, True)
            dc = next(dc_outs) if kind == "lstm" else None
            part.restore(
                cell_saved[k], p[_PER_LAYER * k : _PER_LAYER * k + 4], D[k][:, a:], per_step, dc
            )
            parts.append(part)
        DA_s, DHT_s = [per_step(d[:, :a]) for d in D], [per_step(d) for d in DHT]
        SG_s = _per([g - g * g for g in GT], sizes)  # the scalar gates' σ' = g(1 - g)
        dout_s = [None if d is None else _split(d, sizes) for d in douts[:L]]
        # the gradient of every layer's output at the step being processed (from the next
        # step's use, then from the layer above and the caller), and of the previous
        # step's outputs: two buffers, swapped each step
        carry = [x.new_zeros(B, S), x.new_zeros(B, S)]
        dgated = [x.new_empty(B, S - H) for H in widths]
        dgated_s = [rows_per_step(d, sizes) for d in dgated]
        own = [[rows_per_step(c[:, o : o + H], sizes) for o, H in zip(offs, widths)] for c in carry]
        whole = [rows_per_step(c, sizes) for c in carry]
        # per layer k and each j ≠ k: views for dg_j, the gate column, the gated state's
        # gradient, h^j's previous rows, and h^j's carried gradient (both buffers)
        mixing = [
            [
                (
                    per_step(D[k][:, i]),
                    _split(GT[k][:, i : i + 1], sizes),
                    rows_per_step(dgated[k][:, dst : dst + widths[j]], sizes),
                    own_prev[j],
                    [rows_per_step(c[:, offs[j] : offs[j] + widths[j]], sizes) for c in carry],
                )
                for i, (j, _, dst, _) in enumerate(_blocks(widths, k))
            ]
            for k in range(L)
        ]
        grads = _Grads(x, p, widths, parts[0], need, 4 + L + n_c)
        cur = 0
        for t0, t1, r0, r1 in reversed(chunks):
            for t in range(t1 - 1, t0 - 1, -1):
                for k in range(L - 1, -1, -1):
                    dh = own[cur][k][t]
                    d_own = dout_s[k]
                    if d_own is not None:
                        dh.add_(d_own[t])
                    dht = DHT_s[k][t]
                    parts[k].back(t, dh, dht)
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
                        below.addmm_(da, g_in[k])
                        parts[k].down(t, below)
                cur = 1 - cur
            rows, m = slice(r0, r1), r1 - r0
            # the chunk's previous h: a block of ALL when every step has all rows
            HA = ALL[r0:r1] if sched.uniform else torch.cat(HA_v[t0:t1])
            for k in range(L):
                u_k = x[rows] if k == 0 else outs[k - 1][rows]
                grads.add(k, parts[k], D[k][:m], DHT[k][:m], HT[k][rows], u_k, HA, GT[k][rows])
            grads.add_input(D[0][:m], rows)
        dh0 = [carry[cur][:, o : o + H].clone() for o, H in zip(offs, widths)]
        dc0 = [part.c0_grad() for part in parts if part.states == 2]
        return (None, None, grads.dx, grads.dgi, *dh0, *dc0, *grads.params)


class _Grads:
    """The gradients of :class:`_CrossRun`'s inputs, added up chunk by chunk."""

    def __init__(
        self,
        x: Tensor,
        p: Sequence[Tensor | None],
        widths: list[int],
        bottom: CellPart,
        need: Any,
        base: int,
    ) -> None:
        self.bottom, self.widths = bottom, widths
        self.a = len(widths) - 1
        N, H0 = x.shape[0], bottom.H
        self.dx = x.new_empty(N, x.shape[1]) if need[2] else None
        self.dgi = x.new_empty(N, bottom.gates * H0) if need[3] else None
        self.g_in0 = cast(Tensor, p[5])  # (the bottom layer's gate_input_weight: never None)
        self.params: list[Tensor | None] = [
            None if t is None or not need[base + i] else torch.zeros_like(t)
            for i, t in enumerate(p)
        ]

    def add(
        self,
        k: int,
        part: CellPart,
        D: Tensor,
        DHT: Tensor,
        HT: Tensor,
        u: Tensor,
        HA: Tensor,
        GT: Tensor,
    ) -> None:
        """Layer ``k``'s weight gradients from one chunk's rows: ``D``/``DHT`` its
        gradient rows, ``HT``/``u``/``HA``/``GT`` the saved rows of ``h̃``, the layer's
        input, every layer's previous ``h`` and the scalar gates."""
        a = self.a
        slots = self.params[_PER_LAYER * k : _PER_LAYER * (k + 1)]
        part.add_grads(D[:, a:], HT, u if k else None, slots[:4])
        dU, d_g_in, d_g_st = slots[4:]
        if dU is not None:  # the gated states, made again for these rows
            gated = HA.new_empty(HA.shape[0], dU.shape[1])
            for i, (_, src, dst, w) in enumerate(_blocks(self.widths, k)):
                torch.mul(HA[:, src : src + w], GT[:, i : i + 1], out=gated[:, dst : dst + w])
            dU.addmm_(DHT.t(), gated)
        if d_g_in is not None:
            d_g_in.addmm_(D[:, :a].t(), u)
        if d_g_st is not None:
            d_g_st.addmm_(D[:, :a].t(), HA)

    def add_input(self, D0: Tensor, rows: slice) -> None:
        """The gradients of ``x`` (through the bottom layer's gates) and of ``gi`` (its
        input projection) for one chunk's rows."""
        a = self.a
        if self.dx is not None:
            torch.mm(D0[:, :a], self.g_in0, out=self.dx[rows])
        if self.dgi is not None:
            self.bottom.input_grad(D0[:, a:], self.dgi[rows])


_PART_SAVED = {"gru": (3, 2), "lstm": (4, 4, 1)}  # each part's saved buffers' widths / H


def _cross_saved(a: Any) -> list[ops.Saved]:
    """``_CrossRun``'s saved tensors: ``x, ALL, the parameters, HT, GT`` and each part's
    buffers; the arguments are ``sched, kinds, x, gi, h0 (L), c0 (LSTM layers), the
    parameters (7 per layer)``."""
    kinds, x = a[1], a[2]
    L, n_c = len(kinds), kinds.count("lstm")
    h0 = a[4 : 4 + L]
    widths = [h.shape[1] for h in h0]
    p0 = 4 + L + n_c
    return [
        (ops.IN, 2),
        (ops.NEW, (h0[0].shape[0] + x.shape[0], sum(widths))),  # ALL (B + N, ΣH)
        *((ops.IN, p0 + i) for i in range(_PER_LAYER * L)),
        *ops.new_rows(x, *widths),  # HT
        *ops.new_rows(x, *[L - 1] * L),  # GT
        *(
            saved
            for kind, H in zip(kinds, widths)
            for saved in ops.new_rows(x, *(m * H for m in _PART_SAVED[kind]))
        ),
    ]


def _cross_outputs(a: Any) -> list[Tensor]:
    kinds, x = a[1], a[2]
    widths = [h.shape[1] for h in a[4 : 4 + len(kinds)]]
    lstm = [H for kind, H in zip(kinds, widths) if kind == "lstm"]
    return [x.new_empty(x.shape[0], H) for H in (*widths, *lstm)]  # h per layer, then c


def _cross_attrs(ctx: Any, a: Any) -> None:
    kinds = a[1]
    ctx.kinds = kinds
    ctx.widths = [h.shape[1] for h in a[4 : 4 + len(kinds)]]
    ctx.n_saved = [len(_PART_SAVED[kind]) for kind in kinds]


# the whole run as torch.library custom ops under torch.compile (kernels.ops): shapes
_CROSS_OP = ops.register(
    ops.Spec(
        _CrossRun,
        lambda a: len(a[1]) + a[1].count("lstm"),
        _cross_outputs,
        _cross_saved,
        _cross_attrs,
        rows=lambda a: (a[2], a[4]),  # x (N, I), layer 1's h0 (B, H)
    )
)
