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


def _positive_with_slope(v: Tensor) -> tuple[Tensor, Tensor]:
    """``g(v)`` and ``g'(v)`` (1 for ``v >= 0``, ``σ'(v)`` below: ``where``'s choice at 0)."""
    gh = positive(v)
    return gh, torch.where(v >= 0, 1.0, gh * (1 - gh))


class _MinGRUCoefficients(torch.autograd.Function):
    """``a = 1 - z``, ``b = z ⊙ g(h̃)``, ``z = σ(gi_z)``, ``h̃ = gi_h``."""

    @staticmethod
    def forward(ctx: Any, gi: Tensor) -> tuple[Tensor, Tensor]:
        i_z, i_h = gi.chunk(2, dim=-1)  # (..., H) each
        z = torch.sigmoid(i_z)
        gh, slope = _positive_with_slope(i_h)
        ctx.save_for_backward(z, gh, slope)
        return 1 - z, z * gh

    @staticmethod
    def backward(ctx: Any, grad_a: Tensor, grad_b: Tensor) -> Tensor:
        z, gh, slope = ctx.saved_tensors
        grad = torch.empty(*z.shape[:-1], 2 * z.shape[-1], dtype=z.dtype, device=z.device)
        d_z, d_h = grad.chunk(2, dim=-1)
        # ∂/∂z: b' gh - a'; through σ: z (1 - z)
        torch.mul(torch.addcmul(-grad_a, grad_b, gh), z * (1 - z), out=d_z)
        torch.mul(grad_b * z, slope, out=d_h)
        return grad


class _MinLSTMCoefficients(torch.autograd.Function):
    """``a = f / (f + i)``, ``b = i / (f + i) ⊙ g(h̃)``, ``f = σ(gi_f)``, ``i = σ(gi_i)``."""

    @staticmethod
    def forward(ctx: Any, gi: Tensor) -> tuple[Tensor, Tensor]:
        i_f, i_i, i_h = gi.chunk(3, dim=-1)  # (..., H) each
        f, i = torch.sigmoid(i_f), torch.sigmoid(i_i)
        total = f + i
        a, share = f / total, i / total  # f', i'
        gh, slope = _positive_with_slope(i_h)
        ctx.save_for_backward(f, i, total, gh, slope)
        return a, share * gh

    @staticmethod
    def backward(ctx: Any, grad_a: Tensor, grad_b: Tensor) -> Tensor:
        f, i, total, gh, slope = ctx.saved_tensors
        H = f.shape[-1]
        grad = torch.empty(*f.shape[:-1], 3 * H, dtype=f.dtype, device=f.device)
        d_f, d_i, d_h = grad.chunk(3, dim=-1)
        # a = f/s, b = (i/s) gh, s = f + i: ∂a/∂f = i/s², ∂a/∂i = -f/s², ∂b/∂f = -gh i/s²,
        # ∂b/∂i = gh f/s²; so with c = (a' - b' gh) / s²: ∂/∂f = c i, ∂/∂i = -c f
        c = torch.addcmul(grad_a, grad_b, gh, value=-1).div_(total * total)
        torch.mul(c * i, f * (1 - f), out=d_f)  # then through σ
        torch.mul(c * f, i * (i - 1), out=d_i)
        torch.mul(grad_b * (i / total), slope, out=d_h)
        return grad
