"""Small functions over any recurrent state: a tensor, or (nested) tuples and NamedTuples
of tensors — a cell's state (``LSTMState(h, c)``), a stack's tuple of per-layer states,
a drop-in's ``(h_n, c_n)``.

Every function keeps the structure: tuples come back as tuples, NamedTuples as their own
type. The batch axis is the first axis of every tensor (as in cells' and stacks' states;
a drop-in's ``(L, B, H)`` states put it second: use :func:`map` there).

Example:
    >>> import torch, recurrentkit as rk
    >>> from recurrentkit import state as rs
    >>> s = rk.LSTMState(torch.ones(3, 4), torch.ones(3, 4))
    >>> s = rs.reset(s, torch.tensor([True, False, True]))  # rows 0 and 2 start again
    >>> s.h[:, 0].tolist()
    [0.0, 1.0, 0.0]
    >>> rs.index(s, torch.tensor([1])).c.shape
    torch.Size([1, 4])
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from recurrentkit.errors import InputTypeError, ShapeError, StateError

__all__ = ["cat", "detach", "index", "leaves", "map", "reset", "to", "zeros_like", "zip"]


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} elements"
    return f"a {type(value).__name__}"


def _rebuild(like: Any, items: list[Any]) -> Any:
    """``items`` in ``like``'s container type (a NamedTuple, a tuple, a list)."""
    if hasattr(like, "_fields"):
        return type(like)(*items)
    return list(items) if isinstance(like, list) else tuple(items)


def map(fn: Callable[..., Tensor], state: Any, *others: Any) -> Any:  # noqa: A001
    """``fn`` applied to every tensor of ``state`` (and the tensors at the same place in
    ``others``, states of the same structure), in the same structure.

    ``None`` leaves (a state part a cell does not keep) stay ``None``.

    Raises:
        StateError: ``others`` differ from ``state`` in structure.
    """
    if isinstance(state, Tensor):
        for o in others:
            if not isinstance(o, Tensor):
                raise StateError("state", "a tensor (the same structure)", _describe(o))
        return fn(state, *others)
    if state is None:
        return None
    if not isinstance(state, (tuple, list)):
        raise InputTypeError("state", "a tensor or a (nested) tuple of tensors", _describe(state))
    for o in others:
        if not isinstance(o, (tuple, list)) or len(o) != len(state):
            raise StateError(
                "state", f"a tuple of {len(state)} elements (the same structure)", _describe(o)
            )
    items = [map(fn, s, *parts) for s, *parts in builtins.zip(state, *others)]
    return _rebuild(state, items)


def zip(fn: Callable[..., Tensor], *states: Any) -> Any:  # noqa: A001
    """``fn`` over the tensors at the same place in each of ``states`` (one structure):
    ``zip(torch.add, a, b)`` adds two states. (:func:`map` with the states as
    arguments.)"""
    if not states:
        raise InputTypeError("states", "at least one state", "none")
    return map(fn, states[0], *states[1:])


def leaves(state: Any) -> list[Tensor]:
    """Every tensor of ``state``, depth first."""
    if isinstance(state, Tensor):
        return [state]
    if state is None:
        return []
    return [t for s in state for t in leaves(s)]


def detach(state: Any) -> Any:
    """``state`` cut from the autograd graph (truncated backpropagation through time:
    the values go on, the gradient stops here)."""
    return map(Tensor.detach, state)


def zeros_like(state: Any) -> Any:
    """A state of zeros with ``state``'s structure, shapes, dtypes and devices."""
    return map(torch.zeros_like, state)


def to(state: Any, *args: Any, **kwargs: Any) -> Any:
    """Every tensor moved or converted with ``Tensor.to(*args, **kwargs)``."""
    return map(lambda t: t.to(*args, **kwargs), state)


def index(state: Any, idx: Tensor | slice | int | Sequence[int]) -> Any:
    """The rows ``idx`` of every tensor (its first, batch, axis): ``t[idx]``.

    An integer tensor or list picks (and may repeat) rows, a bool tensor masks them, a
    slice cuts them; an int drops the batch axis.
    """
    return map(lambda t: t[idx], state)


def cat(states: Sequence[Any]) -> Any:
    """States of one structure concatenated along the batch axis."""
    if not states:
        raise InputTypeError("states", "at least one state", "none")
    return map(lambda *ts: torch.cat(ts), states[0], *states[1:])


def reset(state: Any, mask: Tensor, initial: Any = None) -> Any:
    """``state`` with the rows where ``mask`` is true replaced by ``initial``'s.

    Args:
        state: any state, every tensor ``(B, ...)``.
        mask: a bool tensor ``(B,)`` (``()`` for an unbatched state).
        initial: a state of the same structure whose tensors broadcast against
            ``state``'s (``(B, ...)``, ``(1, ...)`` or ``(...)``; what
            :meth:`~recurrentkit.Stack.initial_state` returns), or ``None``: zeros.

    Returns:
        The new state (``torch.where``: gradients reach ``state`` where the mask is false
        and ``initial`` where it is true).

    Raises:
        InputTypeError: ``mask`` is not a bool tensor.
        ShapeError: ``mask`` is not one value per row.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise InputTypeError("mask", "a bool tensor of shape (B,)", _describe(mask))
    for t in leaves(state):
        if mask.dim() > 1 or mask.shape != t.shape[: mask.dim()]:
            want = f"({t.shape[0]},)" if t.dim() and mask.dim() else "()"
            raise ShapeError("mask", f"shape {want} (one value per row)", tuple(mask.shape))

    def put(s: Tensor, init: Tensor | None = None) -> Tensor:
        m = mask.to(s.device).reshape(mask.shape + (1,) * (s.dim() - mask.dim()))
        return torch.where(m, s.new_zeros(()) if init is None else init.to(s), s)

    if initial is None:
        return map(put, state)
    return map(put, state, initial)
