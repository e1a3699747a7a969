"""Truncated backpropagation through time: a long batch in chunks of ``k`` steps, the
state carried from chunk to chunk and detached between them.

Two levels:

- :func:`chunks` slices a batch (inputs, targets, resets) into chunks of ``k`` steps;
  you run the model, carry the state and call ``backward`` yourself.
- :func:`tbptt` does the whole loop for a model called as ``model(x, state)`` (a
  :class:`~recurrentkit.Stack`, a drop-in, ...): per chunk, forward from the carried
  state, ``loss_fn``, ``backward``, optionally an optimizer step, then the state
  detached (:func:`recurrentkit.state.detach`) for the next chunk.

With ``k >= T`` there is one chunk: the gradients are full BPTT's, exactly. A causal
stack's chunked forward equals its whole-sequence forward (streaming); a ``handoff``
stack is not causal and warns when given a carried state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from recurrentkit import state as rstate
from recurrentkit._validation import check_int, check_lengths, describe
from recurrentkit.errors import ConfigError, InputTypeError, ShapeError

__all__ = ["Chunk", "TBPTTResult", "chunks", "tbptt"]


class Chunk(NamedTuple):
    """One chunk of a batch: steps ``start:stop``.

    Attributes:
        start, stop: the steps it covers (``stop - start <= k``).
        x: the inputs of those steps (in the batch's layout).
        targets: the targets of those steps, or ``None``.
        resets: the resets of those steps (a reset at the chunk's first step replaces
            the carried state), or ``None``.
        lengths: ``(B,)`` each row's steps in this chunk (``clamp(lengths - start, 0,
            stop - start)``: ``0`` for a row that ended before it), or ``None``.
    """

    start: int
    stop: int
    x: Tensor
    targets: Tensor | None
    resets: Tensor | None
    lengths: Tensor | None = None


class TBPTTResult(NamedTuple):
    """What :func:`tbptt` returns.

    Attributes:
        loss: the chunks' losses summed (a detached scalar tensor).
        state: the final state, detached (to go on with the next batch of a stream).
        chunks: how many chunks ran.
    """

    loss: Tensor
    state: Any
    chunks: int


def chunks(
    x: Tensor,
    k: int,
    *,
    targets: Tensor | None = None,
    resets: Tensor | None = None,
    lengths: Tensor | None = None,
    batch_first: bool = False,
) -> Iterator[Chunk]:
    """The batch in chunks of ``k`` steps (the last may be shorter).

    Args:
        x: ``(T, B, ·)`` (``(B, T, ·)`` if ``batch_first``) or ``(T, ·)``.
        k: steps per chunk, ``>= 1``.
        targets: sliced along the same time axis (any trailing shape), or ``None``.
        resets: ``(T, B)`` (``(B, T)`` if ``batch_first``, ``(T,)`` unbatched) bool
            mask, sliced the same way, or ``None``.
        lengths: optional ``(B,)`` integer lengths of padded rows (each in ``1..T``; a
            batched ``x``): each chunk carries each row's steps in it
            (:attr:`Chunk.lengths`), and chunks past every row's end are not yielded.
        batch_first: the time axis is ``1`` (for rank-3 ``x``; rank 2 is unbatched,
            time first).

    Yields:
        :class:`Chunk` s, in order.

    Raises:
        InputTypeError: ``x`` (or ``targets``, ``resets``) is not a tensor, ``lengths``
            not an integer tensor.
        ShapeError: ``targets`` or ``resets`` has another number of steps; ``lengths``
            another number of rows or a value outside ``1..T``.
        ConfigError: ``k < 1``; ``lengths`` with unbatched ``x``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> stack = rk.Stack([rk.GRUCell(3, 8)])
        >>> x, state = torch.randn(10, 2, 3), None
        >>> for c in rk.tbptt_chunks(x, 4):
        ...     y, state = stack(c.x, state)
        ...     y.sum().backward()
        ...     state = rk.state.detach(state)
        >>> c.start, c.stop
        (8, 10)
    """
    k = check_int("k", k)
    if not isinstance(x, Tensor):
        raise InputTypeError("x", "a tensor", describe(x))
    axis = 1 if batch_first and x.dim() == 3 else 0
    if x.dim() < 2:
        raise ShapeError("x", "(T, B, F), (B, T, F) or (T, F)", tuple(x.shape))
    T = x.shape[axis]
    if T == 0:
        raise ShapeError("x", "a non-empty time dimension", tuple(x.shape))
    for name, other in (("targets", targets), ("resets", resets)):
        if other is None:
            continue
        if not isinstance(other, Tensor):
            raise InputTypeError(name, "a tensor or None", describe(other))
        if other.dim() <= axis or other.shape[axis] != T:
            raise ShapeError(name, f"{T} steps along axis {axis} (x's)", tuple(other.shape))
    end = T
    if lengths is not None:
        if x.dim() != 3:
            raise ConfigError("lengths", "None for unbatched x (T, F)", describe(lengths))
        lengths = check_lengths("lengths", lengths, T, x.shape[1 - axis]).cpu()
        end = int(lengths.max())
    for start in range(0, end, k):
        n = min(k, T - start)
        yield Chunk(
            start,
            start + n,
            x.narrow(axis, start, n),
            None if targets is None else targets.narrow(axis, start, n),
            None if resets is None else resets.narrow(axis, start, n),
            None if lengths is None else (lengths - start).clamp(0, n),
        )


def tbptt(
    model: nn.Module | Callable[..., Any],
    x: Tensor,
    k: int,
    loss_fn: Callable[..., Tensor],
    *,
    targets: Tensor | None = None,
    state: Any = None,
    resets: Tensor | None = None,
    lengths: Tensor | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    batch_first: bool = False,
) -> TBPTTResult:
    """Train over a long batch with truncated backpropagation through time.

    For each chunk of ``k`` steps (:func:`chunks`):
    ``output, state = model(chunk.x, state)`` (with ``resets=chunk.resets`` when
    ``resets`` is given), ``loss = loss_fn(output, chunk.targets)`` (``loss_fn(output)``
    without ``targets``), ``loss.backward()``, then ``optimizer.step()`` and
    ``optimizer.zero_grad()`` if an optimizer is given, and the state is detached for
    the next chunk. Without an optimizer the chunks' gradients add up in ``.grad``.

    Args:
        model: called as ``model(x, state)`` and returning ``(output, state)``: a
            :class:`~recurrentkit.Stack` (any causal routing), a drop-in
            (``rk.GRU``, ... with ``hx`` as the state), or your own module.
        x: the batch, ``(T, B, ·)`` (``(B, T, ·)`` if ``batch_first``) or ``(T, ·)``.
        k: steps per chunk (backpropagation reaches at most ``k`` steps back).
            ``k >= T``: one chunk, full BPTT.
        loss_fn: ``loss_fn(output, targets) -> scalar`` (``loss_fn(output)`` without
            ``targets``), on one chunk. Each chunk's loss is backpropagated as it is:
            a loss averaged over time weighs every chunk alike (scale it by the
            chunk's length over ``T`` for the whole sequence's mean).
        targets: sliced with ``x`` along time, or ``None``.
        state: the state to start from (``None``: the model's initial state), e.g.
            the previous batch's ``result.state`` in a stream.
        resets: an optional bool mask in the model's ``resets`` layout, sliced with
            ``x`` (passed as ``resets=``: :class:`~recurrentkit.Stack` and the
            drop-ins take it).
        lengths: optional ``(B,)`` integer lengths of padded rows (each in ``1..T``),
            for a model that takes ``lengths=`` and keeps the batch on its state's
            first axis (a :class:`~recurrentkit.Stack`): each chunk runs with each
            row's steps in it (``lengths=``), a row's state stops at its end and stays
            there through later chunks, and rows that ended before a chunk are left out
            of its call (their outputs zeros, their states kept as they were). Chunks
            past every row's end do not run. With ``k >= T`` this is the model's call
            with ``lengths``, exactly.
        optimizer: stepped (and its gradients zeroed) after each chunk; ``None``: the
            gradients add up over the chunks and nothing is stepped.
        batch_first: the time axis of rank-3 ``x`` is ``1`` (as the model's).

    Returns:
        :class:`TBPTTResult` ``(loss, state, chunks)``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> stack = rk.Stack([rk.LSTMCell(3, 8), rk.LSTMCell(8, 8)], "residual")
        >>> opt = torch.optim.SGD(stack.parameters(), lr=0.1)
        >>> x, y = torch.randn(50, 4, 3), torch.randn(50, 4, 8)
        >>> mse = torch.nn.functional.mse_loss
        >>> result = rk.tbptt(stack, x, 20, mse, targets=y, optimizer=opt)
        >>> result.chunks, result.state[0].h.requires_grad
        (3, False)
    """
    if not callable(model):
        raise InputTypeError("model", "a module called as model(x, state)", describe(model))
    total = None
    n = 0
    parts = chunks(x, k, targets=targets, resets=resets, lengths=lengths, batch_first=batch_first)
    for chunk in parts:
        if chunk.lengths is None:
            extra = {} if chunk.resets is None else {"resets": chunk.resets}
            output, state = model(chunk.x, state, **extra)
        else:
            output, state = _run_rows(model, chunk, state, batch_first)
        loss = loss_fn(output) if targets is None else loss_fn(output, chunk.targets)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad()
        state = rstate.detach(state)
        total = loss.detach() if total is None else total + loss.detach()
        n += 1
    assert total is not None  # (T >= 1: at least one chunk)
    return TBPTTResult(total, state, n)


def _run_rows(model: Any, chunk: Chunk, state: Any, batch_first: bool) -> tuple[Tensor, Any]:
    """``model`` over ``chunk`` with its lengths, only on the rows it has steps of: the
    others' outputs are zeros and their states (batch on the first axis) stay."""
    assert chunk.lengths is not None  # (a batched x, (T, B, F) or (B, T, F))
    axis = 0 if batch_first else 1  # the batch axis of x and resets
    live = chunk.lengths > 0
    if bool(live.all()):
        extra = {} if chunk.resets is None else {"resets": chunk.resets}
        return model(chunk.x, state, lengths=chunk.lengths, **extra)
    assert state is not None  # (the first chunk has a step of every row)
    rows = live.nonzero().squeeze(1).to(chunk.x.device)
    extra = (
        {}
        if chunk.resets is None
        else {"resets": chunk.resets.index_select(axis, rows.to(chunk.resets.device))}
    )
    out, new = model(
        chunk.x.index_select(axis, rows),
        rstate.index(state, rows),
        lengths=chunk.lengths[live],
        **extra,
    )
    shape = list(out.shape)
    shape[axis] = chunk.x.shape[axis]
    output = out.new_zeros(shape).index_copy(axis, rows, out)
    return output, rstate.map(lambda old, t: old.index_copy(0, rows, t), state, new)
