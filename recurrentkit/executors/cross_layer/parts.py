r"""The cell steps of :mod:`.run`'s whole-run op: a reset-after GRU layer and an
LSTM layer without projection.

Each part holds one layer's buffers and per-step views for one call of the op, and does
that layer's arithmetic between the mixing (which the op does): forward, from the
mixed previous state ``h̃`` to the layer's output, with the factors its backward needs
made while the step's values are in cache; backward, from the gradient of the output
(and of ``c``, LSTM) to the gradient of ``h̃``, the gradient into the layer below, and
its weight gradients added up over one run of steps.

The backward writes a layer's pre-activation gradients into the columns after the
op's ``a`` gate columns of one row buffer ``D``: ``[dn | dr | dz | dgn]`` (GRU; ``[dr |
dz | dgn]`` is the recurrent product's gradient in ``W_hh``'s row order) or ``[di | df |
dg | do]`` (LSTM, which is both the input's and the recurrent product's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from recurrentkit.executors.kernels.base import split_steps as _split
from recurrentkit.executors.products import affine, transposed

__all__ = ["CellPart", "GRUPart", "LSTMPart", "previous_per_step", "rows_per_step", "step_views"]

PerStep = Callable[[Tensor], list[Tensor]]
"""A chunk-sized buffer's views for every step (see :mod:`.run`'s backward)."""


def rows_per_step(buf: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    """A scratch buffer ``(B, ·)``'s first ``sizes[t]`` rows for each step ``t`` (one view
    per distinct size)."""
    views = {bs: buf[:bs] for bs in set(sizes)}
    return [views[bs] for bs in sizes]


def step_views(buf: Tensor, sizes: tuple[int, ...], every_step: bool) -> list[Tensor]:
    """Per-step views of a buffer that holds every step's rows (``every_step``: packed
    ``(N, ·)``, kept for the backward) or only the running step's (a ``(B, ·)`` scratch
    reused by every step, when no backward will run)."""
    return list(_split(buf, sizes)) if every_step else rows_per_step(buf, sizes)


class CellPart:
    """One layer's cell arithmetic inside the whole-run op (see the module docstring).

    Args:
        H: the layer's hidden size.
        first: the bottom layer (its input projection ``gi`` is given, made outside).
        sizes: the packed layout's rows per step.
        like: a tensor of the run's dtype and device.
        grad: whether a backward will run (the forward then makes its factors).
    """

    gates = 0  # gate columns per hidden unit
    states = 1  # 1: the state is h; 2: (h, c)

    def __init__(
        self, H: int, first: bool, sizes: tuple[int, ...], like: Tensor, grad: bool
    ) -> None:
        self.H, self.first, self.sizes, self.grad = H, first, sizes, grad
        self.B, self.N = sizes[0], sum(sizes)
        self.like = like

    # -- forward -------------------------------------------------------------------------

    def start(
        self,
        gi: Tensor | None,
        weights: Sequence[Tensor | None],
        c0: Tensor | None,
    ) -> None:
        """Buffers and views for a forward: ``gi (N, gates·H)`` the given projection
        (bottom layer), ``weights = (w_ih, b_ih, w_hh, b_hh)``, ``c0`` the initial ``c``
        (LSTM)."""
        raise NotImplementedError

    def step(self, t: int, u: Tensor, ht: Tensor, out: Tensor) -> Tensor:
        """Step ``t`` from the layer's input ``u`` (unused by the bottom layer) and mixed
        previous state ``ht``: writes the new ``h`` into ``out`` and returns it."""
        raise NotImplementedError

    def saved(self) -> list[Tensor]:
        """The buffers the backward needs (for ``save_for_backward``)."""
        raise NotImplementedError

    def outputs(self) -> list[Tensor]:
        """Outputs besides ``h``: the ``c`` sequence ``(N, H)`` (LSTM)."""
        return []

    # -- backward ------------------------------------------------------------------------

    def restore(
        self,
        saved: Sequence[Tensor],
        weights: Sequence[Tensor | None],
        D: Tensor,
        per_step: PerStep,
        dc_out: Tensor | None,
    ) -> None:
        """Views for a backward: ``saved`` as :meth:`saved` returned them, ``D`` the
        chunk-sized gradient rows (the cell's columns), ``dc_out`` the gradient of the
        ``c`` sequence output (LSTM; ``None`` if unused)."""
        raise NotImplementedError

    def back(self, t: int, dh: Tensor, dht: Tensor) -> None:
        """Step ``t``'s pre-activation gradients into ``D`` from ``dh`` (the gradient of
        the step's output) and the gradient of ``h̃`` into ``dht``."""
        raise NotImplementedError

    def down(self, t: int, below: Tensor) -> None:
        """Add step ``t``'s gradient of the layer's input (the layer below's output)."""
        raise NotImplementedError

    def add_grads(self, D: Tensor, ht: Tensor, u: Tensor | None, grads: list[Any]) -> None:
        """Add one chunk's weight gradients: ``D`` its cell columns, ``ht``/``u`` its rows
        of ``h̃`` and of the input (``None``: bottom layer), ``grads`` the four slots
        ``[d w_ih, d b_ih, d w_hh, d b_hh]`` (``None`` where not needed)."""
        raise NotImplementedError

    def input_grad(self, D: Tensor, out: Tensor) -> None:
        """The bottom layer's gradient of ``gi`` for one chunk's rows, into ``out``."""
        raise NotImplementedError

    def c0_grad(self) -> Tensor | None:
        """After the backward: the gradient of the initial ``c`` (LSTM)."""
        return None


class GRUPart(CellPart):
    r"""A reset-after GRU layer: ``G = W_hh h̃ + b_hh``, ``r, z = σ(gi_{rz} + G_{rz})``,
    ``n = tanh(gi_n + r G_n)``, ``h' = n + z (h̃ - n)``."""

    gates = 3

    def start(self, gi: Tensor | None, weights: Sequence[Tensor | None], c0: Tensor | None) -> None:
        H, B, N, sizes, like = self.H, self.B, self.N, self.sizes, self.like
        w_ih, self.b_ih, w_hh, self.b_hh = weights
        # W_hh h̃ + b_hh → [r | z | W_n h̃ + b_n] → (for the backward) [r | z | c], c = gn r(1-r)
        self.GG = like.new_empty(N if self.grad else B, 3 * H)  # (a scratch without grad)
        # for the backward: [(1-z)(1-n²) | (h̃-n) z(1-z)]
        self.P1 = like.new_empty(N if self.grad else 0, 2 * H)
        self.w_hh_t = transposed(w_hh, B)  # type: ignore[arg-type]
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
            up = like.new_empty(B, 3 * H)  # W_ih u + b_ih
            self.w_ih_t = transposed(w_ih, B)  # type: ignore[arg-type]
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
            affine(self.b_ih, u, self.w_ih_t, self.GI_s[t])
        affine(self.b_hh, ht, self.w_hh_t, self.GG_s[t])
        # the gates as kernels.gru._gates_after computes them, on views made before the loop
        r = self.R_s[t]
        self.RZ_s[t].add_(self.GI_RZ_s[t]).sigmoid_()
        n = torch.addcmul(self.GI_N_s[t], r, self.GN_s[t], out=self.n_s[t]).tanh_()
        h = torch.lerp(n, ht, self.Z_s[t], out=out)
        if self.grad:  # the backward's factors, in place: c = gn r(1-r) over gn
            torch.addcmul(self.ones_s[t], n, n, value=-1, out=self.P1a_s[t])
            torch.sub(h, n, out=self.P1b_s[t])  # z (h̃ - n)
            pairs = self.P1v_s[t]
            pairs.addcmul_(pairs, self.Zu_s[t], value=-1)  # both times (1 - z)
            c = self.GN_s[t]
            c.mul_(r)
            c.addcmul_(c, r, value=-1)
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
        w_ih, _, self.w_hh, _ = weights
        self.R_s, self.Z_s, self.C_s = (_split(GG[:, i * H : (i + 1) * H], sizes) for i in range(3))
        self.P1a_s, self.P1b_s = (_split(P1[:, i * H : (i + 1) * H], sizes) for i in range(2))
        # D's columns [dn | dr | dz | dgn]
        self.DN_s, self.DR_s, self.DZ_s, self.DGN_s = (
            per_step(D[:, i * H : (i + 1) * H]) for i in range(4)
        )
        self.DG_s = per_step(D[:, H:])  # [dr | dz | dgn]
        self.DRZ_s = per_step(D[:, H : 3 * H])  # [dr | dz]
        self.w_n = None if w_ih is None else w_ih[2 * H :]
        self.w_rz = None if w_ih is None else w_ih[: 2 * H]

    def back(self, t: int, dh: Tensor, dht: Tensor) -> None:
        dn = torch.mul(dh, self.P1a_s[t], out=self.DN_s[t])
        torch.mul(dh, self.P1b_s[t], out=self.DZ_s[t])
        torch.mul(dn, self.C_s[t], out=self.DR_s[t])
        torch.mul(dn, self.R_s[t], out=self.DGN_s[t])
        torch.addmm(dh * self.Z_s[t], self.DG_s[t], self.w_hh, out=dht)  # type: ignore[arg-type]

    def down(self, t: int, below: Tensor) -> None:
        below.addmm_(self.DN_s[t], self.w_n)  # type: ignore[arg-type]
        below.addmm_(self.DRZ_s[t], self.w_rz)  # type: ignore[arg-type]

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


class LSTMPart(CellPart):
    r"""An LSTM layer without projection: ``[i | f | g | o] = gi + W_hh h̃ + b_hh``,
    ``c' = σ(f) c + σ(i) tanh(g)``, ``h' = σ(o) tanh(c')``. The bottom layer's ``gi``
    carries both biases."""

    gates = 4
    states = 2

    def start(self, gi: Tensor | None, weights: Sequence[Tensor | None], c0: Tensor | None) -> None:
        H, B, N, sizes, like = self.H, self.B, self.N, self.sizes, self.like
        w_ih, b_ih, w_hh, b_hh = weights
        assert c0 is not None
        # the gates, activated in place (a scratch without grad)
        self.G = like.new_empty(N if self.grad else B, 4 * H)
        self.CC = like.new_empty(B + N, H)  # [c0 | c after step 1 | …]
        self.CC[:B].copy_(c0)
        self.c_prev = previous_per_step(self.CC, B, sizes)
        self.c_s = _split(self.CC[B:], sizes)
        self.tc_s = rows_per_step(like.new_empty(B, H), sizes)  # tanh(c')
        self.w_hh_t = transposed(w_hh, B)  # type: ignore[arg-type]
        self.G_s, self.IF_s, self.Gg_s, self.O_s, self.I_s, self.F_s = (
            step_views(self.G[:, lo * H : hi * H], sizes, self.grad)
            for lo, hi in ((0, 4), (0, 2), (2, 3), (3, 4), (0, 1), (1, 2))
        )
        if self.first:  # gi carries both biases
            assert gi is not None and b_hh is None
            self.gi_s: list[Tensor] | tuple[Tensor, ...] = _split(gi, sizes)
        else:
            self.w_ih_t = transposed(w_ih, B)  # type: ignore[arg-type]
            self.bias = None if b_ih is None else b_ih + b_hh  # (a built-in cell has both or none)
        # for the backward: [g σ'(i) | c σ'(f) | σ(i) tanh'(g) | tanh(c') σ'(o)] and
        # σ(o) tanh'(c'), i.e. each gate's pre-activation gradient per unit of dc' (dh)
        self.P = like.new_empty(N if self.grad else 0, 4 * H)
        self.Pc = like.new_empty(N if self.grad else 0, H)
        if self.grad:
            self.Pi_s, self.Pf_s, self.Pg_s, self.Po_s = (
                _split(self.P[:, i * H : (i + 1) * H], sizes) for i in range(4)
            )
            self.Pc_s = _split(self.Pc, sizes)

    def step(self, t: int, u: Tensor, ht: Tensor, out: Tensor) -> Tensor:
        G = self.G_s[t]
        if self.first:
            torch.addmm(self.gi_s[t], ht, self.w_hh_t, out=G)
        else:
            affine(self.bias, u, self.w_ih_t, G).addmm_(ht, self.w_hh_t)
        i, f, g, o = self.I_s[t], self.F_s[t], self.Gg_s[t], self.O_s[t]
        self.IF_s[t].sigmoid_()
        g.tanh_()
        o.sigmoid_()
        c_prev = self.c_prev[t]
        c = torch.mul(f, c_prev, out=self.c_s[t]).addcmul_(i, g)
        tc = torch.tanh(c, out=self.tc_s[t])
        h = torch.mul(o, tc, out=out)
        if self.grad:
            pi = torch.mul(g, i, out=self.Pi_s[t])
            pi.addcmul_(pi, i, value=-1)
            pf = torch.mul(c_prev, f, out=self.Pf_s[t])
            pf.addcmul_(pf, f, value=-1)
            pg = torch.mul(g, g, out=self.Pg_s[t])
            torch.addcmul(i, i, pg, value=-1, out=pg)
            po = torch.mul(tc, o, out=self.Po_s[t])
            po.addcmul_(po, o, value=-1)
            pc = torch.mul(tc, tc, out=self.Pc_s[t])
            torch.addcmul(o, o, pc, value=-1, out=pc)
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
        self.w_ih, _, self.w_hh, _ = weights
        self.F_s = _split(G[:, H : 2 * H], sizes)
        self.Pifg_s = _split(P[:, : 3 * H].view(-1, 3, H), sizes)
        self.Po_s, self.Pc_s = _split(P[:, 3 * H :], sizes), _split(Pc, sizes)
        self.Difg_s = per_step(D[:, : 3 * H].view(-1, 3, H))  # type: ignore[arg-type]
        self.Do_s, self.DG_s = per_step(D[:, 3 * H :]), per_step(D)
        # the gradient of c after the step being processed, and before it: swapped
        self.dc = [self.like.new_zeros(B, H), self.like.new_zeros(B, H)]
        self.dc_s = [rows_per_step(d, sizes) for d in self.dc]
        self.dc_out = None if dc_out is None else _split(dc_out, sizes)
        self.cur = 0

    def back(self, t: int, dh: Tensor, dht: Tensor) -> None:
        dc = self.dc_s[self.cur][t]
        if self.dc_out is not None:
            dc.add_(self.dc_out[t])
        dc.addcmul_(dh, self.Pc_s[t])  # dc' in full
        torch.mul(dc.unsqueeze(1), self.Pifg_s[t], out=self.Difg_s[t])  # [di | df | dg]
        torch.mul(dh, self.Po_s[t], out=self.Do_s[t])
        torch.mul(dc, self.F_s[t], out=self.dc_s[1 - self.cur][t])
        torch.mm(self.DG_s[t], self.w_hh, out=dht)  # type: ignore[arg-type]
        self.cur = 1 - self.cur

    def down(self, t: int, below: Tensor) -> None:
        below.addmm_(self.DG_s[t], self.w_ih)  # type: ignore[arg-type]

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


def previous_per_step(buf: Tensor, B: int, sizes: tuple[int, ...]) -> list[Tensor]:
    """For each step ``t``, the rows of ``buf`` (a ``(B + N, ·)`` buffer of initial
    states and outputs) that hold step ``t``'s previous states: the first ``sizes[t]``
    rows of the block before step ``t``'s."""
    blocks = _split(buf, (B, *sizes))[:-1]
    return [blk if blk.shape[0] == bs else blk[:bs] for blk, bs in zip(blocks, sizes)]


PARTS: dict[str, type[CellPart]] = {"gru": GRUPart, "lstm": LSTMPart}
