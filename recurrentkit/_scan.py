"""The one time loop: apply a step function over a time-major sequence, with lengths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from recurrentkit._validation import zip_state
from recurrentkit.errors import UnsupportedError

S = TypeVar("S")


def length_mask(lengths: Tensor, steps: int, device: torch.device) -> Tensor:
    """``mask[t, b, 0] = t < lengths[b]``, shape ``(T, B, 1)``."""
    t = torch.arange(steps, device=lengths.device)
    return (t[:, None] < lengths[None, :]).to(device)[..., None]


def scan(
    step: Callable[[Tensor, S], tuple[Tensor, S]],
    x: Tensor,
    state: S,
    lengths: Tensor | None = None,
    restart: Restart | None = None,
) -> tuple[Tensor, S]:
    """Run ``step`` over ``x (T, B, F)`` from ``state``.

    Returns ``(outputs (T, B, O), final_state)``. With ``lengths (B,)``, sequence
    ``b``'s state stops changing after step ``lengths[b] - 1`` and its outputs past
    that are zero (torch's packed-sequence convention). With ``restart``, a row's state
    is replaced by ``restart.state`` before each step where ``restart.mask`` holds
    (ignored past the row's length). While ``torch.compile`` or ``torch.export`` traces
    (:func:`traced`), the loop is torch's ``scan`` operator (:func:`scan_op`).
    """
    if traced():
        return scan_op(step, (x,), state, lengths, restart)
    mask = None if lengths is None else length_mask(lengths, x.shape[0], x.device)
    outputs = []
    for t, x_t in enumerate(x.unbind(0)):  # unbind: one backward node, not T zero-filled
        now = state
        if restart is not None:
            r_t = restart.mask[t].to(x.device).unsqueeze(-1)  # (B, 1)
            now = zip_state(lambda i, a: torch.where(r_t, i.to(a), a), restart.state, state)  # noqa: B023
        y, new = step(x_t, now)
        if mask is not None:
            m = mask[t]  # (B, 1)
            new = _where(m, new, state)
            y = torch.where(m, y, torch.zeros((), dtype=y.dtype, device=y.device))
        state = new
        outputs.append(y)
    return torch.stack(outputs), state  # (T, B, O)


def _where(m: Tensor, new: Any, old: Any) -> Any:
    return zip_state(lambda a, b: torch.where(m, a, b), new, old)


def traced() -> bool:
    """Whether ``torch.compile`` or ``torch.export`` is tracing (outside any torch.func
    transform): time loops then run as torch's ``scan`` operator (:func:`scan_op`)."""
    return (
        torch.compiler.is_compiling() or torch.compiler.is_exporting()
    ) and not torch._C._are_functorch_transforms_active()


class Restart(NamedTuple):
    """Where a traced time loop replaces states (``resets``).

    Attributes:
        mask: ``(T, B)`` bool: before step ``t``, row ``b``'s state is replaced.
        state: what replaces it: a state of batch 1 (broadcast over the rows); for a
            stack, a tuple with one such state per layer (:meth:`layer` picks one).
    """

    mask: Tensor
    state: Any

    def layer(self, k: int) -> Restart:
        """The restart of layer ``k`` alone (``state`` per layer, as a stack passes it)."""
        return Restart(self.mask, self.state[k])


def scan_op(
    step: Callable[..., tuple[Tensor, S]],
    xs: tuple[Tensor, ...],
    state: S,
    lengths: Tensor | None = None,
    restart: Restart | None = None,
) -> tuple[Tensor, S]:
    r""":func:`scan` as torch's ``scan`` higher-order operator: one traced step, any length.

    ``step(*xs_t, state) -> (y_t, state)`` over the sequences ``xs`` (each ``(T, B, ·)``),
    for ``torch.compile`` (no unrolling: the graph holds one step whatever ``T``) and
    ``torch.export`` (``T`` stays a dynamic dimension). The same semantics as
    :func:`scan`, per step and row:

    $$
    \begin{aligned}
    \tilde s_{t-1} &= r_t \,?\, s_0^{\text{restart}} : s_{t-1} \\
    (\hat y_t, \hat s_t) &= \text{step}(x_t, \tilde s_{t-1}) \\
    s_t &= t < \ell \,?\, \hat s_t : s_{t-1}, \qquad y_t = t < \ell \,?\, \hat y_t : 0
    \end{aligned}
    $$

    with :math:`r` the ``restart`` mask (a reset) and :math:`\ell` the row's length, so
    a reset past a row's length changes nothing. States may be NamedTuples (the operator
    carries flat tuples of tensors: they are flattened here and rebuilt for ``step``).

    Returns:
        ``(outputs (T, B, O), final_state)``.

    A complex state leaf (the LRU's) is carried as its real and imaginary parts (torch
    2.13's operator refuses complex carries).

    Raises:
        UnsupportedError: a complex state traced with gradients enabled (torch 2.13's
            ``scan`` cannot differentiate complex intermediates): under
            ``torch.no_grad()``, ``torch.compile`` and ``torch.export`` trace it (run the
            exported program under ``torch.no_grad()`` too).
    """
    from torch._higher_order_ops.scan import scan as hop_scan

    leaves, spec = tree_flatten(state)
    # torch 2.13's scan refuses complex carries: a complex leaf (the LRU's state) is
    # carried as its real and imaginary parts, (..., 2), and rebuilt for the step
    cplx = [leaf.is_complex() for leaf in leaves]
    if any(cplx) and torch.is_grad_enabled():
        raise UnsupportedError(
            "state",
            "a real state while torch.compile or torch.export traces with gradients (torch "
            "2.13's scan cannot differentiate complex intermediates): compile or "
            "torch.export under torch.no_grad()",
            "a complex state (e.g. LRUCell's)",
        )
    leaves = [_as_real(a) if c else a for a, c in zip(leaves, cplx)]
    steps = xs[0].shape[0]
    seq = list(xs)
    n = len(seq)
    if lengths is not None:
        seq.append(length_mask(lengths, steps, xs[0].device))  # (T, B, 1)
    init: list[Tensor] = []
    if restart is not None:
        seq.append(restart.mask.to(xs[0].device).unsqueeze(-1))  # (T, B, 1)
        init = tree_flatten(restart.state)[0]

    def body(carry: tuple[Tensor, ...], inputs: tuple[Tensor, ...]) -> Any:
        rest = list(inputs[n:])
        old = list(carry)
        now = old
        if restart is not None:
            r_t = rest.pop()
            now = [torch.where(r_t, i.to(a), a) for i, a in zip(init, old)]
        now = [_as_complex(a) if c else a for a, c in zip(now, cplx)]
        y, new = step(*inputs[:n], tree_unflatten(now, spec))
        new_leaves = [_as_real(a) if c else a for a, c in zip(tree_flatten(new)[0], cplx)]
        if lengths is not None:
            m_t = rest[0]
            new_leaves = [torch.where(m_t, a, b) for a, b in zip(new_leaves, old)]
            y = torch.where(m_t, y, y.new_zeros(()))
        return _unaliased(new_leaves, carry, y)

    final, ys = hop_scan(body, tuple(t.contiguous() for t in leaves), tuple(seq))
    out = [_as_complex(a) if c else a for a, c in zip(final, cplx)]
    return ys, tree_unflatten(out, spec)


def _as_real(t: Tensor) -> Tensor:
    """A complex tensor as its real and imaginary parts on a last axis of 2 (a copy:
    ``view_as_real`` would alias, and reads strides a symbolic shape may not have)."""
    return torch.stack((t.real, t.imag), dim=-1)


def _as_complex(t: Tensor) -> Tensor:
    """:func:`_as_real`'s inverse: ``(..., 2)`` real and imaginary parts as one complex
    tensor ``(...)``."""
    return torch.complex(t[..., 0], t[..., 1])


def _unaliased(
    new: list[Tensor], old: tuple[Tensor, ...], y: Tensor
) -> tuple[tuple[Tensor, ...], Tensor]:
    """A scan step's outputs as tensors of their own: the operator's rule is that its
    outputs alias neither its inputs nor each other, and its backward saves the step's
    intermediates beside them (a new state that is also an intermediate, as a layer's
    ``h`` that is the next layer's input, would be output twice), so each is a copy."""
    return tuple(t.clone() for t in new), y.clone()
