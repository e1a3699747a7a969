"""Is a sequence model causal? A measurement by perturbation, for any model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from recurrentkit._validation import check_int, check_real, check_tensor, describe
from recurrentkit.errors import ConfigError, DeviceError, InputTypeError

__all__ = ["causality_violation", "check_causal"]


def _outputs(result: Any) -> Tensor:
    return result[0] if isinstance(result, tuple) else result


@torch.no_grad()
def causality_violation(
    model: Callable[[Tensor], Any],
    x: Tensor,
    *,
    time_dim: int | None = None,
    scale: float = 1.0,
    seed: int = 0,
) -> float:
    """How much outputs before ``t`` change when inputs at ``t`` and after change.

    For each ``t = 1..T-1``, the inputs at positions ``>= t`` are replaced by random
    values and the model re-run; the result is the largest absolute change seen in any
    output at a position ``< t``. A causal model gives exactly ``0.0`` (up to the
    arithmetic of a kernel that batches work differently).

    Args:
        model: maps ``x`` to outputs, or to a tuple whose first element is the outputs
            (as :class:`~recurrentkit.Stack` does). Run in its current mode: call
            ``model.eval()`` first if it has dropout.
        x: a floating input with a time axis of length ``T >= 2``.
        time_dim: the time axis of ``x`` and of the outputs; defaults to ``1`` if the
            model has ``batch_first=True``, else ``0``.
        scale: standard deviation of the replacement inputs.
        seed: seed of the replacement inputs (the check is deterministic).

    Returns:
        The largest change, a float ``>= 0``.

    Raises:
        ShapeError: ``x`` of rank below 2 or above 5.
        ConfigError: ``time_dim`` not an axis of ``x`` (negative axes count from the end),
            a time axis shorter than 2, a NaN or infinite value in ``x`` (it would spread
            into every perturbed output and hide the change), ``scale <= 0``.
        InputTypeError: an integer ``x``, a non-int ``time_dim`` or ``seed``, a ``model``
            that is not callable.
        DeviceError: ``x`` on the meta device (it has no values).

    Example:
        >>> import torch, recurrentkit as rk
        >>> cells = [rk.GRUCell(3, 4), rk.GRUCell(4, 4)]
        >>> causality_violation(rk.Stack(cells, "independent"), torch.randn(6, 2, 3))
        0.0
    """
    if not callable(model):
        raise InputTypeError("model", "a callable such as an nn.Module", describe(model))
    check_tensor("x", x, ranks=(2, 3, 4, 5))
    if x.is_meta:
        raise DeviceError("x", "a tensor with values (on any device but meta)", "meta")
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("x", "finite values", f"{int((~torch.isfinite(x)).sum())} NaN or inf")
    scale = check_real("scale", scale, strict=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputTypeError("seed", "an int", describe(seed))
    if time_dim is None:
        time_dim = 1 if getattr(model, "batch_first", False) else 0
    if isinstance(time_dim, bool) or not isinstance(time_dim, int):
        raise InputTypeError("time_dim", "an int (an axis of x) or None", describe(time_dim))
    if not -x.dim() <= time_dim < x.dim():
        raise ConfigError("time_dim", f"an axis of x, in {-x.dim()}..{x.dim() - 1}", time_dim)
    time_dim %= x.dim()
    T = x.shape[time_dim]
    check_int("x.shape[time_dim] (sequence length)", T, minimum=2)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    base = _outputs(model(x))
    worst = 0.0
    for t in range(1, T):
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device) * scale
        keep = (torch.arange(T, device=x.device) < t).to(x.dtype)
        keep = keep.reshape([T if d == time_dim else 1 for d in range(x.dim())])
        perturbed = x * keep + noise * (1 - keep)
        out = _outputs(model(perturbed))
        past = out.narrow(time_dim, 0, t) - base.narrow(time_dim, 0, t)
        worst = max(worst, float(past.abs().max()))
    return worst


def check_causal(
    model: Callable[[Tensor], Any],
    x: Tensor,
    *,
    time_dim: int | None = None,
    atol: float = 0.0,
) -> bool:
    """``True`` if :func:`causality_violation` is at most ``atol`` (a float ``>= 0``).

    Example:
        >>> import torch, recurrentkit as rk
        >>> cells = [rk.GRUCell(3, 3), rk.GRUCell(3, 3)]
        >>> check_causal(rk.Stack(cells, "handoff").eval(), torch.randn(6, 2, 3))
        False
    """
    atol = check_real("atol", atol)
    return causality_violation(model, x, time_dim=time_dim) <= atol
