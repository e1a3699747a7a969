"""The hand-written ops' backward is first-order only: asked for a differentiable
gradient, it says so and what to use instead (:func:`first_order_backward`).

The fast executor's ops with a backward of their own (:mod:`.kernels`, :mod:`.deferred`,
:mod:`.cross_layer`) write the first-order gradients only. torch's own
``once_differentiable`` raises its "differentiate twice" error only when the gradient
flowing in requires grad; when it does not (``torch.autograd.grad(loss, x,
create_graph=True)`` with a plain loss), the op's contribution to the gradient comes out
as a constant and a second differentiation silently misses it. So here a backward that
runs with ``create_graph=True`` (grad mode on inside the backward) raises a
:class:`~recurrentkit.errors.ConfigError` at once, naming the fix: ``executor="reference"``
or ``torch.func``, which run plain autograd ops.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

from recurrentkit.errors import ConfigError

__all__ = ["first_order_backward"]

F = TypeVar("F", bound=Callable[..., Any])


def first_order_backward(fn: F) -> F:
    """Decorate a custom Function's ``backward``: it runs as written when no graph of the
    gradient is being built, and raises :class:`~recurrentkit.errors.ConfigError` when
    one is (``create_graph=True``).

    Not torch's ``once_differentiable``, which lets such a backward through whenever the
    gradient flowing in does not require grad (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(ctx: Any, *args: Any) -> Any:
        if torch.is_grad_enabled():  # the engine runs backward in grad mode iff create_graph
            raise ConfigError(
                "executor",
                "executor='reference' (or torch.func: torch.func.grad of torch.func.grad) "
                "for gradients of gradients; the fast executor's hand-written ops "
                "(here " + fn.__qualname__.split(".")[0] + ") have a first-order backward "
                "only",
                "a backward with create_graph=True through one of them",
            )
        return fn(ctx, *args)

    return cast(F, wrapper)  # (wraps keeps fn's signature)
