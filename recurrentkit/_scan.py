"""The one time loop: apply a step function over a time-major sequence, with lengths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

from recurrentkit._validation import zip_state

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
) -> tuple[Tensor, S]:
    """Run ``step`` over ``x (T, B, F)`` from ``state``.

    Returns ``(outputs (T, B, O), final_state)``. With ``lengths (B,)``, sequence
    ``b``'s state stops changing after step ``lengths[b] - 1`` and its outputs past
    that are zero (torch's packed-sequence convention).
    """
    mask = None if lengths is None else length_mask(lengths, x.shape[0], x.device)
    outputs = []
    for t, x_t in enumerate(x.unbind(0)):  # unbind: one backward node, not T zero-filled
        y, new = step(x_t, state)
        if mask is not None:
            m = mask[t]  # (B, 1)
            new = _where(m, new, state)
            y = torch.where(m, y, torch.zeros((), dtype=y.dtype, device=y.device))
        state = new
        outputs.append(y)
    return torch.stack(outputs), state  # (T, B, O)


def _where(m: Tensor, new: Any, old: Any) -> Any:
    return zip_state(lambda a, b: torch.where(m, a, b), new, old)
