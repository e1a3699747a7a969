"""What a hand-built fast kernel provides for one cell type."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor
from torch.nn import functional as F

from recurrentkit.executors.packing import Schedule

__all__ = [
    "AdditiveKernel",
    "CellKernel",
    "Linear",
    "folded_bias",
    "prev_mm",
    "rows",
    "split_steps",
    "summed_weights",
    "zeros_bias",
]

Linear = Callable[..., Tensor]
"""``F.linear``'s signature: what the step-wise pieces use for every matmul with a weight
(the executor passes :class:`~recurrentkit.executors.deferred.DeferredLinear` in step
loops)."""


class CellKernel:
    """Fast execution of one built-in cell type, equal to the cell's ``_step``.

    Three pieces, all on time-major packed rows (see
    :mod:`recurrentkit.executors.packing`):

    - :meth:`project` — the input projection (one matmul over every row given);
    - :meth:`step` — one step from a projected input, plain autograd ops (used by
      step-major loops, single steps, and under ``torch.compile``);
    - :meth:`sequence` — a whole sequence as one custom autograd op: one recurrent
      matmul and a few fused gate kernels per step forward, a hand-written backward
      that saves the gates and computes each weight gradient as one matmul over all
      steps;
    - optionally :meth:`tied_weights` and :meth:`step_tied` — a step whose input *is*
      the state's ``h`` (shared routing without active dropout hands layer ``l`` the
      tensor layer ``l-1`` just wrote as both), as one matmul with summed weights.

    ``cell`` is typed ``Any`` here: each kernel serves one cell type and names it in its
    overrides (which may narrow it so), and
    :func:`~recurrentkit.executors.kernels.kernel_for` picks the kernel by the cell's
    exact type.
    """

    def project(self, cell: Any, x: Tensor, linear: Linear = F.linear) -> Tensor:
        """``x (M, I)`` → ``(M, G)``, the part of the gates that depends on ``x`` only
        (here ``W_ih x + b_ih``)."""
        p = cell._parameters  # (read every step: no attribute lookups)
        return linear(x, p["weight_ih"], p["bias_ih"])

    def step(
        self, cell: Any, gi: Tensor, state: Any, linear: Linear = F.linear
    ) -> tuple[Tensor, Any]:
        """One step from ``gi = project(cell, x_t)``: ``(y (B, O), new state)``."""
        raise NotImplementedError

    def sequence(self, cell: Any, gi: Tensor, state: Any, sched: Schedule) -> tuple[Tensor, Any]:
        """The whole sequence from projected rows ``gi (N, G)`` and sorted ``state``.

        Returns ``(outputs (N, O), states)``: the packed outputs and the packed
        state sequence (each field ``(N, ·)``: the state after each row's step).
        """
        raise NotImplementedError

    def tied_weights(self, cell: Any) -> tuple[Tensor, Tensor | None] | None:
        """For steps whose input is the state's ``h``: the weight ``(G', H)`` and bias
        ``(G',)`` of the one matmul that replaces the input projection and the recurrent
        matmul (the gates that read ``x`` and ``h`` alike get ``W_ih + W_hh``), or
        ``None`` where this cell has no such form. Built once per run."""
        return None

    def step_tied(
        self, cell: Any, gates: Tensor, state: Any, linear: Linear = F.linear
    ) -> tuple[Tensor, Any]:
        """One step from ``gates = linear(h, *tied_weights(cell))`` ``(B, G')``:
        ``(y (B, O), new state)``, equal to ``step(cell, project(cell, h), state)``."""
        raise NotImplementedError


class AdditiveKernel(CellKernel):
    """A cell whose gates are ``W_ih x + b_ih + W_hh h + b_hh`` before any nonlinearity
    (RNN, LSTM, Nested LSTM): :meth:`step` adds the recurrent matmul to the projected
    input and hands the sum to :meth:`step_tied`, which a subclass writes."""

    def step(self, cell: Any, gi: Tensor, state: Any, linear: Linear = F.linear) -> Any:
        h = state if isinstance(state, Tensor) else state.h
        return self.step_tied(cell, gi + linear(h, cell.weight_hh, cell.bias_hh), state, linear)

    def tied_weights(self, cell: Any) -> tuple[Tensor, Tensor | None] | None:
        return summed_weights(cell)


def summed_weights(cell: Any) -> tuple[Tensor, Tensor | None] | None:
    """``(W_ih + W_hh, b_ih + b_hh)`` for a cell whose gates are ``W_ih x + W_hh h + b``
    with ``x`` as wide as ``h``; ``None`` where the widths differ."""
    if cell.weight_ih.shape != cell.weight_hh.shape:
        return None
    return cell.weight_ih + cell.weight_hh, folded_bias(cell)


def folded_bias(cell: Any) -> Tensor | None:
    """``b_ih + b_hh`` (or ``None`` for a cell without biases)."""
    return None if cell.bias_ih is None else cell.bias_ih + cell.bias_hh


def split_steps(x: Tensor, sizes: tuple[int, ...]) -> Sequence[Tensor]:
    """Views of each step's block of packed rows ``x (N, ...)``."""
    return x.split(sizes)


def zeros_bias(weight: Tensor) -> Tensor:
    """A zero bias for ``weight``'s rows (for cells built with ``bias=False``)."""
    return weight.new_zeros(weight.shape[0])


def rows(linear: Linear, t: Tensor, start: int, stop: int) -> Tensor:
    """``t[start:stop]``, the same view object for every step of a run when ``linear``
    keeps views (so a deferred weight gradient sees one weight)."""
    keep = getattr(linear, "rows", None)
    return keep(t, start, stop) if keep is not None else t[start:stop]


def prev_mm(grad: Tensor, blocks: list[tuple[slice, Tensor]]) -> Tensor:
    """``grad.t() @ previous`` from :meth:`Schedule.previous_blocks` (a weight gradient)."""
    out = None
    for rows_, prev in blocks:
        part = grad[rows_].t() @ prev
        out = part if out is None else out.add_(part)
    assert out is not None
    return out
