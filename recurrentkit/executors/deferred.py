r"""Linear layers whose weight gradient is made once per run, not by autograd per step.

In a step loop, autograd computes a weight's gradient at every step,
:math:`\partial W \mathrel{+}= \partial y_t^\top x_t` — ``T`` small matmuls reducing over
only ``B`` rows (slow on CPU) and ``T`` additions of a weight-sized tensor. Here each
step's backward computes only :math:`\partial x_t = \partial y_t W` and records the pair
:math:`(\partial y_t, x_t)`; once every step's backward has run, a *tap* on the weight
(an identity in the forward) computes :math:`\partial W = [\partial y_1; \dots]^\top
[x_1; \dots]` as one matmul over all ``T × B`` rows, and the bias gradient as one sum.

Weights below :data:`MIN_NUMEL` elements are not worth the gathering: their uses add
:math:`\partial y_t^\top x_t` into one running sum in place instead (one ``addmm_`` per
step, no separate addition), which the tap hands over.

Ops with a backward of their own (the fused steps of :mod:`.kernels`, the cross-layer
mixing of :mod:`.cross_layer.mix`) take part through :meth:`DeferredLinear.tap` and
:func:`weight_grads`: they take the tapped weight as an input and record their pairs.

Pairs and sums are kept per backward pass (graph task) and only when that pass will reach the
tap (``torch.autograd.grad`` of the inputs alone never does), so repeated or partial
backward passes through one graph stay exact. Eager mode only: the executor uses
plain ``F.linear`` under ``torch.compile`` tracing and torch.func transforms.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.nn import functional as F

from recurrentkit.executors.first_order import first_order_backward
from recurrentkit.executors.products import MIN_ROWS, affine, transposed

__all__ = ["MIN_NUMEL", "DeferredLinear", "Slot", "weight_grads"]

MIN_NUMEL = 1 << 19
"""Weights smaller than this get their gradient summed step by step instead (in place,
``dW += dy^T x``): measured on the 2-core CPU this was built on, gathering the pairs
costs more than one large matmul saves below about 2^19 elements (H = 256 GRU: slower;
H = 512: faster), and summing in place beats autograd's per-step products and
additions (cross_layer GRU at β: 1.47 → 1.41 × ``nn.GRU``, LSTM 1.55 → 1.45 × ``nn.LSTM``,
interleaved in one run)."""


class DeferredLinear:
    """``linear(x, weight, bias)`` for one run, weight gradients deferred to its end.

    Create one per run (forward call); call it like ``F.linear``. Weights that need no
    gradient and runs without grad mode use ``F.linear`` itself; weights smaller than
    :data:`MIN_NUMEL` have their gradient summed in place step by step.
    """

    def __init__(self) -> None:
        self._slots: dict[int, Slot] = {}
        self._views: dict[tuple[int, int, int], tuple[Tensor, Tensor]] = {}
        self._transposed: dict[int, tuple[Tensor, Tensor]] = {}
        self.whole_run = False
        """Set by a step loop: each weight serves every step, so a contiguous copy of its
        transpose (:func:`~recurrentkit.executors.products.transposed`) is made once and
        kept for the run."""

    def rows(self, t: Tensor, start: int, stop: int) -> Tensor:
        """``t[start:stop]`` as one view object for the whole run (one weight, one tap)."""
        key = (id(t), start, stop)
        hit = self._views.get(key)
        if hit is None or hit[0] is not t:
            hit = self._views[key] = (t, t[start:stop])
        return hit[1]

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        slot = self.tap(weight, bias)
        if slot is None:
            return F.linear(x, weight, bias)
        w_t = self.transposed(weight, x.shape[0])
        return _Linear.apply(x, slot.tapped_weight, slot.tapped_bias, slot, w_t)

    def operands(
        self, weight: Tensor, bias: Tensor | None, rows: int
    ) -> tuple[Slot | None, Tensor, Tensor | None, Tensor]:
        """For an op with a backward of its own that multiplies ``rows`` rows by
        ``weight.t()``: ``(slot, weight, bias, weight_t)`` — :meth:`tap`'s slot (or
        ``None``), the weight and bias to take as inputs (tapped where deferred), and
        the right operand for its forward product (:meth:`transposed`)."""
        slot = self.tap(weight, bias)
        w_t = self.transposed(weight, rows)
        if slot is None:
            return None, weight, bias, w_t
        return slot, slot.tapped_weight, slot.tapped_bias, w_t

    def transposed(self, weight: Tensor, rows: int) -> Tensor:
        """``weight.t()`` for a product over ``rows`` rows: in a whole run, the
        contiguous copy of :func:`~recurrentkit.executors.products.transposed`, made once
        per weight; otherwise the view. Not differentiable."""
        if not self.whole_run or rows < MIN_ROWS:
            return weight.t()
        hit = self._transposed.get(id(weight))
        if hit is None or hit[0] is not weight:
            hit = self._transposed[id(weight)] = (weight, transposed(weight, rows))
        return hit[1]

    def tap(self, weight: Tensor, bias: Tensor | None = None) -> Slot | None:
        """The slot deferring ``weight``'s (and ``bias``'s) gradient, for an op with a
        backward of its own: the op takes ``slot.tapped_weight`` and ``slot.tapped_bias``
        as inputs, returns no gradient for them, and calls ``slot.record(dy, x)`` in its
        backward (:func:`weight_grads`). ``None`` without grad mode or where neither
        needs a gradient (the op then computes any itself)."""
        if not torch.is_grad_enabled() or not (
            weight.requires_grad or (bias is not None and bias.requires_grad)
        ):
            return None
        slot = self._slots.get(id(weight))
        if slot is None or slot.weight is not weight or slot.bias is not bias:
            small = weight.numel() < MIN_NUMEL
            slot = self._slots[id(weight)] = Slot(weight, bias, accumulate=small)
        return slot


def weight_grads(
    slot: Slot | None, dy: Tensor, x: Tensor, need_weight: bool, need_bias: bool
) -> tuple[Tensor | None, Tensor | None]:
    """In an op's backward, the gradients of ``y = x W^T + b``'s weight and bias from
    ``dy (M, O)`` and ``x (M, I)``: recorded in ``slot`` for the tap at the end of the
    pass (returns ``(None, None)``), or, without a slot, ``(dy^T x, Σ dy)`` now."""
    if slot is not None:
        slot.record(dy, x)
        return None, None
    return (dy.t() @ x if need_weight else None), (dy.sum(0) if need_bias else None)


class Slot:
    """One weight's tap and what its uses recorded, per backward pass: the ``(dy, x)``
    pairs, or (``accumulate``) the running sums ``Σ dy^T x`` and ``Σ dy``."""

    def __init__(self, weight: Tensor, bias: Tensor | None, accumulate: bool = False) -> None:
        self.weight, self.bias = weight, bias
        self.accumulate = accumulate
        self.pairs: dict[int, list[tuple[Tensor, Tensor]]] = {}
        self.sums: dict[int, tuple[Tensor, Tensor | None]] = {}
        self.tapped_weight, self.tapped_bias = _Tap.apply(self, weight, bias)
        self.node = self.tapped_weight.grad_fn

    def record(self, dy: Tensor, x: Tensor) -> None:
        if not torch._C._will_engine_execute_node(self.node):
            return
        task = torch._C._current_graph_task_id()
        if not self.accumulate:
            self.pairs.setdefault(task, []).append((dy, x))
        elif task in self.sums:
            dw, db = self.sums[task]
            dw.addmm_(dy.t(), x)
            if db is not None:
                db.add_(dy.sum(0))
        else:
            self.sums[task] = (dy.t() @ x, dy.sum(0) if self.bias is not None else None)

    def gradients(self) -> tuple[Tensor, Tensor | None] | None:
        """This backward pass's ``(dW, db)``, or ``None`` where nothing was recorded."""
        task = torch._C._current_graph_task_id()
        if self.accumulate:
            return self.sums.pop(task, None)
        pairs = self.pairs.pop(task, [])
        if not pairs:
            return None
        dy = torch.cat([p[0] for p in pairs])  # (Σ rows, O)
        db = dy.sum(0) if self.bias is not None else None
        return dy.t() @ torch.cat([p[1] for p in pairs]), db


class _Tap(Function):
    """Identity on ``(weight, bias)`` forward; their gradients from what the slot
    recorded."""

    @staticmethod
    def forward(ctx: Any, slot: Slot, weight: Tensor, bias: Tensor | None) -> Any:
        ctx.set_materialize_grads(False)
        ctx.slot = slot
        ctx.has_bias = bias is not None
        return weight.view_as(weight), (bias.view_as(bias) if bias is not None else None)

    @staticmethod
    @first_order_backward
    def backward(ctx: Any, *_: Any) -> tuple[Tensor | None, ...]:
        got = ctx.slot.gradients()
        if got is None:
            return None, None, None
        dw, db = got
        need = ctx.needs_input_grad
        return None, dw if need[1] else None, db if ctx.has_bias and need[2] else None


class _Linear(Function):
    """``x W^T + b``; backward: ``dx`` now, ``(dy, x)`` recorded for the tap."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, slot: Slot, w_t: Tensor
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.slot = slot
        return affine(bias, x, w_t)

    @staticmethod
    @first_order_backward
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        ctx.slot.record(dy, x)
        dx = dy @ weight if ctx.needs_input_grad[0] else None
        return dx, None, None, None, None
