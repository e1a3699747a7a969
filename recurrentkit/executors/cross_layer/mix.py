r"""``cross_layer``'s step on the fast executor: each layer's mixing of the previous states
as one op with a hand-written backward.

:meth:`CrossLayer.step <recurrentkit.routing.CrossLayer.step>` builds layer ``l``'s
mixed state from its own previous ``h`` and every other layer's, through scalar gates
(see its equations) — about a dozen small autograd ops per layer and step. Here the
same arithmetic is one op per layer and step:

- **forward**: the gates as one ``addmm`` over ``[u | h^1; …; h^L]``'s two small
  products, the gated states written side by side into one buffer (one multiply per
  source layer), :math:`\tilde h = h^l + U^l\,\text{gated}` as one ``addmm``;
- **backward**, written by hand: one matmul for the gated states' gradient, one
  multiply and one dot product per source layer, the gates' pre-activation gradient,
  and the gradient of all layers' previous ``h`` built in one ``(B, ΣH)`` buffer; the
  feedback weight :math:`U^l` gets its gradient through the run's tap
  (:mod:`~recurrentkit.executors.deferred`: one matmul over all steps, or a running sum
  for small weights), the small gate weights step by step.

:func:`cross_step` is the policy's ``step`` on these ops and the executor's cells,
equal to it to rounding, with inter-layer dropout drawn in the same order. The
executor uses it in eager step loops only; under ``torch.compile`` tracing, torch.func
transforms and autocast it runs the policy's own ``step`` (plain autograd ops).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.nn import functional as F

from recurrentkit.executors.deferred import Slot, weight_grads
from recurrentkit.executors.first_order import first_order_backward
from recurrentkit.routing.base import state_h, with_state_h
from recurrentkit.routing.cross_layer import CrossLayer

if TYPE_CHECKING:
    from recurrentkit.executors.deferred import DeferredLinear
    from recurrentkit.routing.base import Executor

__all__ = ["cross_step"]


def cross_step(
    policy: CrossLayer,
    layers: Executor,
    linear: DeferredLinear,
    x: Tensor,
    states: tuple[Any, ...],
) -> tuple[Tensor, tuple[Any, ...]]:
    """:meth:`CrossLayer.step` with each layer's mixing as one op.

    Args:
        policy: the stack's bound policy (two or more layers).
        layers: the executor's layers (cells and dropout).
        linear: the run's deferred linear, which defers the feedback weights' gradients.
        x: this step's input.
        states: one cell state per layer.

    Returns:
        ``(y, new states)``, as :meth:`CrossLayer.step` returns them.

    Shape:
        ``x (B, I)`` → ``y (B, O)``.
    """
    hs = [state_h(s) for s in states]  # L × (B, H_k)
    h_all = torch.cat(hs, dim=1)  # (B, ΣH)
    grad = torch.is_grad_enabled()
    widths = tuple(h.shape[1] for h in hs) if grad else ()
    u, new, B = x, [], x.shape[0]
    for k in range(len(hs)):
        U, w_in, w_state = policy.layer_weights(k)
        if grad:
            slot, U_in, _, U_t = linear.operands(U, None, B)
            h_mixed = _Mix.apply(u, h_all, w_in, w_state, U_in, k, widths, slot, U_t)
        else:  # sampling: the same arithmetic on the states as they are, no autograd op
            U_t = linear.transposed(U, B)
            h_mixed = _mix_states(u, hs, h_all, w_in, w_state, U_t, k)  # (B, H_k)
        y, s = layers.cell(k, u, with_state_h(states[k], h_mixed))
        new.append(s)
        u = layers.drop(k, y)
    return u, tuple(new)


def _blocks(widths: Sequence[int], k: int) -> list[tuple[int, int, int, int]]:
    """For each layer ``j ≠ k`` in order: ``(j, its offset in [h^1 | … | h^L], its offset
    in layer ``k``'s gated states, its width)``."""
    out, src, dst = [], 0, 0
    for j, w in enumerate(widths):
        if j != k:
            out.append((j, src, dst, w))
            dst += w
        src += w
    return out


def _mix(
    u: Tensor,
    h_all: Tensor,
    w_gate_in: Tensor,
    w_gate_state: Tensor,
    U_t: Tensor,
    k: int,
    widths: tuple[int, ...],
) -> tuple[Tensor, Tensor, Tensor]:
    """Layer ``k``'s mixing, no autograd, ``U_t`` the feedback weight transposed
    ``(Σ_{j≠k} H_j, H_k)``: ``(h̃ (B, H_k), gates (B, L-1), gated states (B, Σ_{j≠k} H_j))``."""
    g = torch.addmm(torch.mm(u, w_gate_in.t()), h_all, w_gate_state.t()).sigmoid_()
    gated = u.new_empty(u.shape[0], U_t.shape[0])
    for i, (_, src, dst, w) in enumerate(_blocks(widths, k)):
        torch.mul(h_all[:, src : src + w], g[:, i : i + 1], out=gated[:, dst : dst + w])
    own = sum(widths[:k])
    return torch.addmm(h_all[:, own : own + widths[k]], gated, U_t), g, gated


def _mix_states(
    u: Tensor,
    hs: list[Tensor],
    h_all: Tensor,
    w_gate_in: Tensor,
    w_gate_state: Tensor,
    U_t: Tensor,
    k: int,
) -> Tensor:
    """:func:`_mix`'s ``h̃ (B, H_k)`` from the layers' states ``hs`` themselves (``h_all``
    is them side by side), for steps without autograd: no per-block views of ``h_all``,
    and with two layers no gathering at all. The same products, so the same values."""
    g = torch.addmm(F.linear(u, w_gate_in), h_all, w_gate_state.t()).sigmoid_()  # (B, L-1)
    others = hs[:k] + hs[k + 1 :]
    if len(others) == 1:
        gated = others[0] * g
    else:
        gates = g.split_with_sizes([1] * len(others), dim=1)  # (B, 1) each, one call
        gated = torch.cat([h * g_i for h, g_i in zip(others, gates)], dim=1)
    return torch.addmm(hs[k], gated, U_t)


class _Mix(Function):
    r"""Layer ``k``'s mixed state: ``u (B, I)``, ``h_all (B, ΣH)`` → ``h̃ (B, H_k)``
    (``U_t``: ``U`` transposed for the forward product, see
    :mod:`~recurrentkit.executors.products`).

    $$ g = \sigma(u W_g^\top + h_{all} V_g^\top), \quad
       \tilde h = h^k + U\,[g_1 h^{j_1} | \dots | g_{L-1} h^{j_{L-1}}] $$
    """

    @staticmethod
    def forward(
        ctx: Any,
        u: Tensor,
        h_all: Tensor,
        w_gate_in: Tensor,
        w_gate_state: Tensor,
        U: Tensor,
        k: int,
        widths: tuple[int, ...],
        slot: Slot | None,
        U_t: Tensor,
    ) -> Tensor:
        h_mixed, g, gated = _mix(u, h_all, w_gate_in, w_gate_state, U_t, k, widths)
        ctx.save_for_backward(u, h_all, g, gated, w_gate_in, w_gate_state, U)
        ctx.k, ctx.widths, ctx.slot = k, widths, slot
        return h_mixed

    @staticmethod
    @first_order_backward
    def backward(ctx: Any, dh_mixed: Tensor) -> tuple[Tensor | None, ...]:
        u, h_all, g, gated, w_gate_in, w_gate_state, U = ctx.saved_tensors
        k, widths, need = ctx.k, ctx.widths, ctx.needs_input_grad
        dgated = torch.mm(dh_mixed, U)  # (B, Σ_{j≠k} H_j)
        dg = g.new_empty(g.shape)  # (B, L-1)
        parts = []
        for i, (_, src, dst, w) in enumerate(_blocks(widths, k)):
            d = dgated[:, dst : dst + w]
            dg[:, i] = torch.linalg.vecdot(d, h_all[:, src : src + w])
            parts.append((src, w, d, g[:, i : i + 1]))
        da = dg.mul_(g)
        da.addcmul_(da, g, value=-1)  # dg σ'(a): the gates' pre-activation gradient
        dh_all = torch.mm(da, w_gate_state)  # (B, ΣH)
        for src, w, d, g_i in parts:
            dh_all[:, src : src + w].addcmul_(d, g_i)
        own = sum(widths[:k])
        dh_all[:, own : own + widths[k]].add_(dh_mixed)
        dU, _ = weight_grads(ctx.slot, dh_mixed, gated, need[4], False)
        return (
            torch.mm(da, w_gate_in) if need[0] else None,
            dh_all,
            da.t() @ u if need[2] else None,
            da.t() @ h_all if need[3] else None,
            dU,
            None,
            None,
            None,
            None,
        )
