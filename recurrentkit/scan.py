"""Linear recurrences ``h_t = a_t ⊙ h_{t-1} + b_t`` over a whole sequence, with their backward.

One public function, :func:`linear`, and three ways to compute it:

- ``"sequential"``: a loop over time with one fused multiply-add per step, written
  into a preallocated output, in one autograd op whose backward is the reverse
  recurrence (it keeps ``a``, ``h_0`` and the states, nothing else). The fastest on a
  CPU, where the per-step work is memory-bound elementwise arithmetic.
- ``"parallel"``: an associative (Hillis–Steele) scan, ``ceil(log2 T)`` rounds of
  whole-sequence elementwise ops, forward and backward (the backward is the same scan
  run backwards in time). ``O(T log T)`` work, ``O(log T)`` depth: for GPUs.
- ``"log"``: the log-space cumulative scan (Heinsen 2023, *Efficient Parallelization
  of a Ubiquitous Sequential Computation*, arXiv 2311.06281) on plain autograd ops, as
  minGRU's public implementations run it; for comparison. It needs ``a > 0`` (real).

``"auto"`` is ``"sequential"`` on the CPU and ``"parallel"`` on other devices
(:func:`resolve_method`).

The backward of the recurrence is the recurrence run backwards: with ``g_t`` the
gradient reaching ``h_t`` (from the outputs and from ``h_{t+1}``),

$$
g_t = \\bar h_t + \\bar a_{t+1} \\odot g_{t+1}, \\qquad
\\bar b_t = g_t, \\qquad \\bar a_t = g_t \\odot \\overline{h_{t-1}}, \\qquad
\\bar h_0 = \\overline{a_1} \\odot g_1
$$

(complex conjugates only for complex tensors, torch's convention).

Not :mod:`recurrentkit._scan`, the private step loop of the reference executor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from recurrentkit._validation import check_choice, describe, shape_str
from recurrentkit.errors import ConfigError, DeviceError, InputTypeError, ShapeError

__all__ = ["METHODS", "linear", "resolve_method"]

METHODS = ("auto", "sequential", "parallel", "log")
"""The values of :func:`linear`'s ``method``."""


def resolve_method(method: str, device: torch.device | str) -> str:
    """What ``method`` runs as on ``device``: ``"auto"`` is ``"sequential"`` on the CPU
    (one fused multiply-add per step beats every whole-sequence scan there) and
    ``"parallel"`` elsewhere (GPUs); any other method is itself.

    Raises:
        ConfigError: an unknown ``method``.
    """
    check_choice("method", method, METHODS)
    if method != "auto":
        return method
    return "sequential" if torch.device(device).type == "cpu" else "parallel"


def linear(
    a: Tensor,
    b: Tensor,
    h0: Tensor,
    *,
    method: str = "auto",
    lengths: Tensor | None = None,
) -> Tensor:
    r"""The states of the linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t``, ``t = 1..T``.

    $$
    h_t = a_t \odot h_{t-1} + b_t, \qquad h_0 \text{ given}
    $$

    Differentiable in ``a``, ``b`` and ``h0``, real or complex. With ``lengths``, the
    state of sequence ``b`` stops at its end: ``h_t = h_{lengths[b]}`` for
    ``t > lengths[b]`` (as if ``a_t = 1`` and ``b_t = 0`` there), so the last row of the
    result, ``h[-1]``, holds every sequence's final state.

    Args:
        a: the decays, shape ``(T, B, N)`` or broadcastable to ``b`` (e.g. ``(N,)``
            for a decay that does not depend on time or row).
        b: the inputs, shape ``(T, B, N)``.
        h0: the initial state, shape ``(B, N)``.
        method: ``"auto"`` (``"sequential"`` on the CPU, ``"parallel"`` elsewhere),
            ``"sequential"``, ``"parallel"`` or ``"log"`` (needs ``a > 0``, real; ``b``
            and ``h0`` of any sign).
        lengths: optional ``(B,)`` integer tensor, each in ``0..T``.

    Returns:
        The states ``h_1 .. h_T``, shape ``(T, B, N)`` (``h0`` not included); ``h[-1]``
        is the final state (frozen at each sequence's end with ``lengths``).

    Raises:
        InputTypeError: a non-tensor, or integer tensors.
        ShapeError: ``b`` not rank 3, ``a`` not broadcastable to it, ``h0`` not
            ``(B, N)``, ``lengths`` not ``(B,)`` or out of range.
        DeviceError: ``a``, ``b``, ``h0`` of different dtypes or devices.
        ConfigError: an unknown ``method``; ``"log"`` with complex or non-positive ``a``.

    Shape:
        - a: ``(T, B, N)`` or broadcastable; b: ``(T, B, N)``; h0: ``(B, N)``.
        - output: ``(T, B, N)``.

    Example:
        >>> import torch
        >>> from recurrentkit import scan
        >>> a, b = torch.full((3, 1, 2), 0.5), torch.ones(3, 1, 2)
        >>> scan.linear(a, b, torch.zeros(1, 2))[:, 0, 0]
        tensor([1.0000, 1.5000, 1.7500])
    """
    a, b, h0 = _check(a, b, h0)
    how = resolve_method(method, b.device)
    if lengths is not None:
        alive = _alive(lengths, b)  # (T, B, 1)
        a = torch.where(alive, a, 1)
        b = torch.where(alive, b, 0)
    if how == "log":
        return _log_scan(a.expand_as(b), b, h0)
    if how == "sequential" and (a.dim() < 3 or a.shape[0] == 1):
        # one decay for every step: kept (B, N)-broadcastable, its gradient one sum
        return _ConstantScan.apply(a.reshape(a.shape[-2:] if a.dim() > 1 else a.shape), b, h0)
    out = _LinearScan.apply(a.expand_as(b), b, h0, how == "parallel")
    return out


# -- validation ---------------------------------------------------------------------------


def _check(a: object, b: object, h0: object) -> tuple[Tensor, Tensor, Tensor]:
    for name, t in (("a", a), ("b", b), ("h0", h0)):
        if not isinstance(t, Tensor):
            raise InputTypeError(name, "a tensor", describe(t))
        if not (t.is_floating_point() or t.is_complex()):
            raise InputTypeError(name, "a floating-point or complex tensor", t.dtype)
    assert isinstance(a, Tensor) and isinstance(b, Tensor) and isinstance(h0, Tensor)
    if b.dim() != 3:
        raise ShapeError("b", "shape (T, B, N)", shape_str(b.shape))
    try:
        joint: tuple[int, ...] | None = tuple(torch.broadcast_shapes(a.shape, b.shape))
    except RuntimeError:
        joint = None
    if joint != tuple(b.shape):
        raise ShapeError(
            "a", f"a shape broadcastable to b's {shape_str(b.shape)}", shape_str(a.shape)
        )
    if tuple(h0.shape) != tuple(b.shape[1:]):
        raise ShapeError("h0", f"shape {shape_str(b.shape[1:])} (B, N)", shape_str(h0.shape))
    for name, t in (("a", a), ("h0", h0)):
        if t.dtype != b.dtype:
            raise DeviceError(name, f"dtype {b.dtype} (b's)", t.dtype)
        if t.device != b.device:
            raise DeviceError(name, f"device {b.device} (b's)", t.device)
    return a, b, h0


def _alive(lengths: object, b: Tensor) -> Tensor:
    """``alive[t, b, 0] = t < lengths[b]``, ``(T, B, 1)``, on ``b``'s device."""
    T, B = b.shape[0], b.shape[1]
    if not isinstance(lengths, Tensor) or lengths.is_floating_point() or lengths.is_complex():
        raise InputTypeError("lengths", f"an integer tensor of shape ({B},)", describe(lengths))
    if tuple(lengths.shape) != (B,):
        raise ShapeError("lengths", f"shape ({B},)", shape_str(lengths.shape))
    if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ShapeError("lengths", f"values in 0..{T} (T)", lengths.tolist())
    steps = torch.arange(T, device=b.device)
    return (steps[:, None] < lengths.to(b.device)[None, :])[..., None]


# -- sequential and parallel: one autograd op, the backward the reverse recurrence --------


class _LinearScan(torch.autograd.Function):
    """``h = scan(a, b, h0)`` with ``a`` of ``b``'s shape; backward the reverse scan."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, h0: Tensor, parallel: bool) -> Tensor:
        h = _parallel(a, b, h0) if parallel else _sequential(a, b, h0)  # (T, B, N)
        ctx.parallel = parallel
        ctx.save_for_backward(a, h0, h)
        return h

    @staticmethod
    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor | None, ...]:
        a, h0, h = ctx.saved_tensors
        need_a, need_b, need_h0 = ctx.needs_input_grad[:3]
        # g_t = grad_h_t + conj(a_{t+1}) g_{t+1}: the same recurrence backwards in time,
        # its decays shifted one step (the last step's g is grad_h_T alone)
        g = _reverse(a[1:].conj().resolve_conj(), grad_h, ctx.parallel)  # (T, B, N)
        grad_a = grad_h0 = None
        if need_a:
            grad_a = _times_previous(g, h0, h)
        if need_h0:
            grad_h0 = g[0] * a[0].conj()  # (B, N)
        return grad_a, g if need_b else None, grad_h0, None


def _times_previous(g: Tensor, h0: Tensor, h: Tensor) -> Tensor:
    """``g_t ⊙ conj(h_{t-1})`` ``(T, B, N)``: written in two parts (no concatenation of
    the states), or on differentiable ops under ``create_graph``."""
    if torch.is_grad_enabled():
        return g * torch.cat([h0.unsqueeze(0), h[:-1]]).conj()
    out = torch.empty_like(g)
    torch.mul(g[0], h0.conj(), out=out[0])
    torch.mul(g[1:], h[:-1].conj(), out=out[1:])
    return out


class _ConstantScan(torch.autograd.Function):
    """The sequential scan with one decay ``a`` for every step (broadcastable to
    ``(B, N)``, e.g. the LRU's ``λ (N,)``): no ``(T, B, N)`` decay is made, and its
    gradient is one sum over steps."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        h = _sequential(a.expand(b.shape), b, h0)  # (T, B, N)
        ctx.save_for_backward(a, h0, h)
        return h

    @staticmethod
    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor | None, ...]:
        a, h0, h = ctx.saved_tensors
        need_a, need_b, need_h0 = ctx.needs_input_grad
        decay = a.conj().resolve_conj().expand(grad_h.shape[0] - 1, *grad_h.shape[1:])
        g = _reverse(decay, grad_h, False)  # (T, B, N)
        grad_a = grad_h0 = None
        if need_a:  # Σ_t g_t ⊙ conj(h_{t-1}), summed to a's shape
            total = (g[1:] * h[:-1].conj()).sum(0) + g[0] * h0.conj()  # (B, N)
            grad_a = total.sum_to_size(a.shape)
        if need_h0:
            grad_h0 = g[0] * a.conj()
        return grad_a, g if need_b else None, grad_h0


def _sequential(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """The forward loop: one ``addcmul`` per step into a preallocated ``(T, B, N)``."""
    out = torch.empty_like(b, memory_format=torch.contiguous_format)
    h = h0
    for t in range(b.shape[0]):
        h = torch.addcmul(b[t], a[t], h, out=out[t])
    return out


def _reverse(decay: Tensor, grad: Tensor, parallel: bool) -> Tensor:
    """``g_T = grad_T``, ``g_t = grad_t + decay_t ⊙ g_{t+1}`` (``decay (T-1, B, N)``).

    Under ``create_graph`` (a double backward) it is this op itself on time reversed,
    so it has a backward too; otherwise a loop in place (or the parallel scan).
    """
    T = grad.shape[0]
    if T == 1:
        return grad.clone()
    if torch.is_grad_enabled() or parallel:
        # the forward scan on time reversed: a'_1 = 0 (unused: a zero start), then decay
        flipped = torch.cat([torch.zeros_like(grad[:1]), decay.flip(0)])
        zero = torch.zeros_like(grad[0])
        if torch.is_grad_enabled():
            g = _LinearScan.apply(flipped, grad.flip(0), zero, parallel)
        else:
            g = _parallel(flipped, grad.flip(0), zero)
        return g.flip(0)
    g = grad.clone(memory_format=torch.contiguous_format)
    for t in range(grad.shape[0] - 2, -1, -1):
        g[t].addcmul_(decay[t], g[t + 1])
    return g


def _parallel(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """Hillis–Steele scan of the pairs ``(a_t, b_t)`` under
    ``(a, b) ∘ (a', b') = (a' a, a' b + b')``, ``ceil(log2 T)`` rounds; ``h0`` enters
    through the first step's ``b``."""
    b = b.clone(memory_format=torch.contiguous_format)
    b[0].addcmul_(a[0], h0)
    a = a.clone(memory_format=torch.contiguous_format)
    T, d = b.shape[0], 1
    while d < T:
        # every t >= d takes the prefix ending at t - d: b_t += a_t b_{t-d}, a_t *= a_{t-d}
        b_new = torch.addcmul(b[d:], a[d:], b[:-d])
        if 2 * d < T:
            a[d:] = a[d:] * a[:-d]
        b[d:] = b_new
        d *= 2
    return b


# -- log: Heinsen's log-space scan, on plain autograd ops ---------------------------------


def _log_scan(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    r"""``h_t = e^{A_t} h_0 + e^{A_t} \sum_{s \le t} e^{\log b_s - A_s}``,
    ``A_t = \sum_{s \le t} \log a_s``, the sum as a ``logcumsumexp`` (``log b`` complex
    where ``b < 0``). ``b`` exactly zero gives infinite gradients (``log 0``)."""
    if a.is_complex():
        raise ConfigError("a", "a real tensor for method 'log' (log-space needs a > 0)", a.dtype)
    if bool((a <= 0).any()):
        raise ConfigError(
            "a", "values > 0 for method 'log' (log-space needs a > 0)", f"min {float(a.min())}"
        )
    log_a = torch.cumsum(torch.log(a), dim=0)  # (T, B, N)
    log_b = torch.log(b.to(_complex(b.dtype)))  # log|b| + iπ where b < 0
    h = torch.exp(log_a + torch.logcumsumexp(log_b - log_a, dim=0)).real  # (T, B, N)
    return torch.addcmul(h, torch.exp(log_a), h0)


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64
