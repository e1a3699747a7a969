"""Fused coefficients of the minGRU and minLSTM cells for the ``linear_scan`` plan.

The plan computes a layer's ``(a, b)`` for every step at once from the projected input
``gi (T, B, G)``. On autograd ops that chain (sigmoids, the positive activation's
``where``, products, the split of ``gi``) records about a dozen whole-sequence tensors
and their backward nodes; here each cell's is one op with a hand-written backward that
writes ``gi``'s gradient in place, by exact cell type (a subclass may change the
equations: it keeps its own ``linear_coefficients``). Eager mode only: the plan runs
only there.

The equations are the cells' (:mod:`recurrentkit.cells.linear`); the tests hold the
plan to the reference executor in float64.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from recurrentkit.cells.linear import MinGRUCell, MinLSTMCell, positive

__all__ = ["linear_coefficients"]


def linear_coefficients(cell: Any, gi: Tensor) -> tuple[Tensor, Tensor]:
    """``(a, b)`` of ``cell`` from ``gi (..., G)``: the fused op for a built-in minGRU or
    minLSTM, the cell's own ``linear_coefficients`` otherwise."""
    kind = type(cell)
    if kind is MinGRUCell:
        return _MinGRUCoefficients.apply(gi)
    if kind is MinLSTMCell:
        return _MinLSTMCoefficients.apply(gi)
    return cell.linear_coefficients(gi)


def _slope(gh: Tensor, upper: Tensor) -> Tensor:
    """``g'(v)`` from ``g(v)`` and the mask ``v >= 0``: 1 there (``where``'s choice at 0),
    ``σ'(v) = g (1 - g)`` below."""
    return torch.where(upper, 1.0, gh * (1 - gh))


class _MinGRUCoefficients(torch.autograd.Function):
    """``a = 1 - z``, ``b = z ⊙ g(h̃)``, ``z = σ(gi_z)``, ``h̃ = gi_h``; keeps ``a`` (the
    output the scan keeps too: one tensor), ``g(h̃)`` and the mask ``h̃ >= 0`` (one byte
    an entry) for its backward."""

    @staticmethod
    def forward(ctx: Any, gi: Tensor) -> tuple[Tensor, Tensor]:
        i_z, i_h = gi.chunk(2, dim=-1)  # (..., H) each
        z = torch.sigmoid(i_z)
        gh = positive(i_h)
        a = 1 - z
        ctx.save_for_backward(a, gh, i_h >= 0)
        return a, z * gh

    @staticmethod
    def backward(ctx: Any, grad_a: Tensor, grad_b: Tensor) -> Tensor:
        a, gh, upper = ctx.saved_tensors
        z = 1 - a
        grad = torch.empty(*z.shape[:-1], 2 * z.shape[-1], dtype=z.dtype, device=z.device)
        d_z, d_h = grad.chunk(2, dim=-1)
        # ∂/∂z: b' gh - a'; through σ: z (1 - z)
        torch.mul(torch.addcmul(-grad_a, grad_b, gh), z * a, out=d_z)
        torch.mul(grad_b * z, _slope(gh, upper), out=d_h)
        return grad


class _MinLSTMCoefficients(torch.autograd.Function):
    """``a = f / (f + i)``, ``b = i / (f + i) ⊙ g(h̃)``, ``f = σ(gi_f)``, ``i = σ(gi_i)``;
    keeps ``f``, ``i``, ``g(h̃)`` and the mask ``h̃ >= 0`` for its backward."""

    @staticmethod
    def forward(ctx: Any, gi: Tensor) -> tuple[Tensor, Tensor]:
        i_f, i_i, i_h = gi.chunk(3, dim=-1)  # (..., H) each
        f, i = torch.sigmoid(i_f), torch.sigmoid(i_i)
        total = f + i
        gh = positive(i_h)
        ctx.save_for_backward(f, i, gh, i_h >= 0)
        return f / total, i / total * gh  # f', i' g(h̃)

    @staticmethod
    def backward(ctx: Any, grad_a: Tensor, grad_b: Tensor) -> Tensor:
        f, i, gh, upper = ctx.saved_tensors
        H = f.shape[-1]
        total = f + i
        grad = torch.empty(*f.shape[:-1], 3 * H, dtype=f.dtype, device=f.device)
        d_f, d_i, d_h = grad.chunk(3, dim=-1)
        # a = f/s, b = (i/s) gh, s = f + i: ∂a/∂f = i/s², ∂a/∂i = -f/s², ∂b/∂f = -gh i/s²,
        # ∂b/∂i = gh f/s²; so with c = (a' - b' gh) / s²: ∂/∂f = c i, ∂/∂i = -c f
        c = torch.addcmul(grad_a, grad_b, gh, value=-1).div_(total * total)
        torch.mul(c * i, f * (1 - f), out=d_f)  # then through σ
        torch.mul(c * f, i * (i - 1), out=d_i)
        torch.mul(grad_b * (i / total), _slope(gh, upper), out=d_h)
        return grad
