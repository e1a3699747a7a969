"""A second direction for a :class:`~recurrentkit.Stack`: read each sequence backwards too.

A bidirectional layer is two stacks over the same input: one reads it forwards, the
other reads each sequence from its *own* last step back to its first (padding stays
where it is, so padded batches and packed sequences give what torch.nn gives), and
their outputs are concatenated feature-wise. Both directions run through
:meth:`Stack.forward <recurrentkit.Stack.forward>`, so whatever executor a stack uses
serves them. Shapes here are time-major, ``(T, B, F)``; a :class:`Bidirectional` over
``batch_first`` stacks takes and returns ``(B, T, F)``.
"""

from __future__ import annotations

import warnings
from typing import Any, overload

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from recurrentkit import state as rstate
from recurrentkit._validation import check_lengths, describe
from recurrentkit.cells.protocol import StackState
from recurrentkit.errors import ConfigError, InputTypeError, StateError
from recurrentkit.routing import CarriedStateWarning
from recurrentkit.stack import Stack, check_resets, repack, run_segments, warn_carried

__all__ = ["Bidirectional", "reverse_within_lengths"]


def reverse_within_lengths(x: Tensor, lengths: Tensor | None = None) -> Tensor:
    r"""Reverse each sequence of a time-major batch within its own length.

    $$
    \text{out}[t, b] = \begin{cases}
      x[\ell_b - 1 - t,\ b] & t < \ell_b \\
      x[t,\ b] & t \ge \ell_b \ \text{(padding stays in place)}
    \end{cases}
    $$

    With ``lengths=None`` every sequence has length ``T``: a plain flip of the time
    axis. Applying it twice gives ``x`` back.

    Args:
        x: ``(T, B, F)``, or ``(T, F)`` when ``lengths`` is ``None``.
        lengths: ``(B,)`` integer lengths in ``1..T``, or ``None``. Not checked here:
            :class:`Bidirectional` lets its stacks check them.

    Returns:
        A tensor shaped like ``x``; gradients flow through it.

    Example:
        >>> import torch
        >>> x = torch.arange(4.).reshape(4, 1, 1).repeat(1, 2, 1)  # (T=4, B=2, 1)
        >>> reverse_within_lengths(x, torch.tensor([4, 2]))[:, :, 0].T
        tensor([[3., 2., 1., 0.],
                [1., 0., 2., 3.]])
    """
    if lengths is None:
        return x.flip(0)
    t = torch.arange(x.shape[0], device=x.device)[:, None]  # (T, 1)
    ends = lengths.to(x.device)[None, :]  # (1, B)
    index = torch.where(t < ends, ends - 1 - t, t)  # (T, B)
    return torch.take_along_dim(x, index[..., None], dim=0)  # (T, B, F)


class Bidirectional(nn.Module):
    r"""Two stacks reading a sequence in opposite directions, outputs concatenated.

    $$
    \begin{aligned}
    (\overrightarrow{y}, \overrightarrow{s}) &= \text{forward\_stack}(x, \overrightarrow{s}_0) \\
    (\overleftarrow{y}', \overleftarrow{s}) &=
        \text{backward\_stack}(\text{rev}(x), \overleftarrow{s}_0), \qquad
        \overleftarrow{y} = \text{rev}(\overleftarrow{y}') \\
    y_t &= [\overrightarrow{y}_t;\ \overleftarrow{y}_t]
    \end{aligned}
    $$

    where :math:`\text{rev}` is :func:`reverse_within_lengths`: sequence ``b``'s steps
    ``0..\ell_b-1`` are read backwards, so :math:`\overleftarrow{s}` is the backward
    stack's state after it has read step 0. One ``Bidirectional`` over two one-layer
    stacks is one layer of ``nn.GRU(bidirectional=True)``; a deep bidirectional network
    feeds each layer's concatenated output to the next (as :class:`recurrentkit.GRU`
    does).

    Args:
        forward_stack: reads ``x`` forwards.
        backward_stack: reads each sequence backwards. Both stacks take the same input
            width and the same layout: time-major, or both ``batch_first`` (then so is
            this module).

    The module's state is ``(forward_stack_state, backward_stack_state)``, each a
    stack state (a tuple with one cell state per layer).

    Shape:
        - x: ``(T, B, I)`` (``(B, T, I)`` with ``batch_first`` stacks), or ``(T, I)``
          unbatched (then without ``lengths``), or a ``PackedSequence`` of ``(N, I)``
          rows (outputs then packed alike).
        - outputs: ``(T, B, O_f + O_b)`` (``(B, T, O_f + O_b)``); past a sequence's
          length, zeros.

    Raises:
        InputTypeError: a part is not a :class:`~recurrentkit.Stack`.
        ConfigError: the stacks' layouts (``batch_first``) or input widths differ.

    Example:
        >>> import torch, recurrentkit as rk
        >>> from recurrentkit.bidirectional import Bidirectional
        >>> bi = Bidirectional(rk.Stack([rk.GRUCell(3, 4)]), rk.Stack([rk.GRUCell(3, 5)]))
        >>> y, (fwd, bwd) = bi(torch.randn(6, 2, 3), lengths=torch.tensor([6, 3]))
        >>> y.shape, fwd[0].shape, bwd[0].shape
        (torch.Size([6, 2, 9]), torch.Size([2, 4]), torch.Size([2, 5]))
    """

    def __init__(self, forward_stack: Stack, backward_stack: Stack) -> None:
        super().__init__()
        for name, part in (("forward_stack", forward_stack), ("backward_stack", backward_stack)):
            if not isinstance(part, Stack):
                raise InputTypeError(name, "a recurrentkit.Stack", describe(part))
        if backward_stack.batch_first != forward_stack.batch_first:
            raise ConfigError(
                "backward_stack.batch_first",
                f"{forward_stack.batch_first} (forward_stack.batch_first: one layout)",
                backward_stack.batch_first,
            )
        fi, bi = forward_stack.input_size, backward_stack.input_size
        if fi is not None and bi is not None and fi != bi:
            raise ConfigError("backward_stack.input_size", f"{fi} (forward_stack.input_size)", bi)
        self.forward_stack = forward_stack
        self.backward_stack = backward_stack

    @property
    def batch_first(self) -> bool:
        """Whether batched input and outputs are ``(B, T, ·)`` (the stacks' layout)."""
        return self.forward_stack.batch_first

    @property
    def input_size(self) -> int | None:
        """Features of the input (``None`` if the stacks do not declare it)."""
        return self.forward_stack.input_size

    @property
    def output_size(self) -> int | None:
        """``O_f + O_b`` (``None`` if a stack does not declare its width)."""
        f, b = self.forward_stack.output_size, self.backward_stack.output_size
        return None if f is None or b is None else f + b

    @overload
    def forward(
        self,
        x: Tensor,
        state: tuple[StackState | None, StackState | None] | None = None,
        *,
        lengths: Tensor | None = None,
        resets: Tensor | None = None,
    ) -> tuple[Tensor, tuple[StackState, StackState]]: ...

    @overload
    def forward(
        self,
        x: PackedSequence,
        state: tuple[StackState | None, StackState | None] | None = None,
        *,
        lengths: None = None,
        resets: Tensor | None = None,
    ) -> tuple[PackedSequence, tuple[StackState, StackState]]: ...

    def forward(
        self,
        x: Tensor | PackedSequence,
        state: tuple[StackState | None, StackState | None] | None = None,
        *,
        lengths: Tensor | None = None,
        resets: Tensor | None = None,
    ) -> tuple[Tensor | PackedSequence, tuple[StackState, StackState]]:
        """Run both directions over the whole sequence.

        Args:
            x: ``(T, B, I)`` (``(B, T, I)`` if :attr:`batch_first`) or ``(T, I)``, or a
                ``PackedSequence``.
            state: ``(forward_state, backward_state)``, each a stack state, or ``None``
                (both stacks' initial states). Either element may be ``None``.
            lengths: optional ``(B,)`` integer lengths in ``1..T`` (not with a
                ``PackedSequence``, which carries its own).
            resets: optional bool mask, as :meth:`Stack.forward <recurrentkit.Stack.forward>`
                takes it (``(T, B)``, ``(B, T)`` if :attr:`batch_first`, ``(T,)``
                unbatched, ``(T, B)`` for a ``PackedSequence``): where ``resets[t, b]``
                is true, a new sequence starts at step ``t`` of row ``b``, in both
                directions. Each row is cut at its resets into segments, and the result
                is each segment run through this module apart: the forward stack reads a
                segment from its first step, the backward stack from its *last* step
                (its state restarts at each segment's end, not the row's), each from
                its initial state except a row's first segment, which starts from
                ``state`` (a reset at ``t = 0`` ignores ``state`` for that row in both
                directions); the final states are each row's last segment's.

        Returns:
            ``(outputs (T, B, O_f + O_b), (forward_state, backward_state))`` (outputs
            ``(B, T, ·)`` if :attr:`batch_first`); the outputs packed like ``x`` if it
            was packed (states in its original batch order).

        Raises:
            StateError: ``state`` is not a pair.
            ConfigError: ``lengths`` given with a ``PackedSequence``.
            ShapeError, InputTypeError, DeviceError: as :meth:`Stack.forward`.
        """
        if isinstance(x, PackedSequence):
            if lengths is not None:
                raise ConfigError("lengths", "None when x is a PackedSequence", "a tensor")
            padded, lengths = pad_packed_sequence(x, batch_first=self.batch_first)
            if resets is not None and self.batch_first and isinstance(resets, Tensor):
                resets = resets.transpose(0, 1)  # (T, B) for packed input, as Stack's
            # original batch order
            y, states = self.forward(padded, state, lengths=lengths, resets=resets)
            assert isinstance(y, Tensor)
            y_tm = y.transpose(0, 1) if self.batch_first else y  # (T, B, O)
            return repack(y_tm, lengths, x), states
        if state is None:
            s_f = s_b = None
        elif not isinstance(state, (tuple, list)) or len(state) != 2:
            raise StateError(
                "state", "a pair (forward_state, backward_state) or None", describe(state)
            )
        else:
            s_f, s_b = state
        if resets is not None and isinstance(x, Tensor):
            return self._run_resets(x, s_f, s_b, lengths, resets)
        return self._run(x, s_f, s_b, lengths)

    def _run(
        self, x: Tensor, s_f: StackState | None, s_b: StackState | None, lengths: Tensor | None
    ) -> tuple[Tensor, tuple[StackState, StackState]]:
        """Both directions over ``x`` (this module's layout), no resets."""
        y_f, s_f = self.forward_stack(x, s_f, lengths=lengths)  # (T, B, O_f)
        x_rev = self._reverse(x, lengths)  # (T, B, I)
        y_rev, s_b = self.backward_stack(x_rev, s_b, lengths=lengths)  # (T, B, O_b)
        y_b = self._reverse(y_rev, lengths)  # (T, B, O_b)
        return torch.cat([y_f, y_b], dim=-1), (s_f, s_b)  # (T, B, O_f + O_b)

    def _run_resets(
        self,
        x: Tensor,
        s_f: StackState | None,
        s_b: StackState | None,
        lengths: Tensor | None,
        resets: Tensor,
    ) -> tuple[Tensor, tuple[StackState, StackState]]:
        """:meth:`_run` on the segments ``resets`` cut (:func:`~recurrentkit.stack.run_segments`),
        the states of both stacks carried as one tuple of per-layer states."""
        unbatched = x.dim() == 2
        if unbatched:
            if lengths is not None:
                raise ConfigError("lengths", "None for unbatched input", describe(lengths))
            x_tm = x.unsqueeze(1)  # (T, 1, I)
        else:
            x_tm = x.transpose(0, 1) if self.batch_first else x  # (T, B, I)
        mask = check_resets(
            "resets", resets, x_tm, unbatched=unbatched, batch_first=self.batch_first
        )  # (T, B)
        T, B = x_tm.shape[0], x_tm.shape[1]
        if lengths is not None:
            lengths = check_lengths("lengths", lengths, T, B)
        stacks = (self.forward_stack, self.backward_stack)
        for stack, s in zip(stacks, (s_f, s_b)):  # (the segments' calls below are given
            warn_carried(stack.routing, s)  # states the caller did not carry: no warning)
        # each stack's state checked as its call checks it (None: its initial state)
        parts = [stack._check_state(s, B, x_tm, unbatched) for stack, s in zip(stacks, (s_f, s_b))]
        L = len(parts[0])
        initial = tuple(
            layer
            for stack in stacks
            for layer in stack.initial_state(1, device=x.device, dtype=x.dtype)
        )

        def run(
            x_seg: Tensor, states: tuple[Any, ...], seg_lengths: Tensor | None
        ) -> tuple[Tensor, tuple[Any, ...]]:
            xs = x_seg.transpose(0, 1) if self.batch_first else x_seg  # this module's layout
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CarriedStateWarning)
                y, (f, b) = self._run(xs, states[:L], states[L:], seg_lengths)
            return (y.transpose(0, 1) if self.batch_first else y), (*f, *b)  # (T', S, O)

        out, finals = run_segments(x_tm, (*parts[0], *parts[1]), lengths, mask, initial, run)
        if unbatched:
            out, finals = out[:, 0], rstate.index(finals, 0)  # (T, O)
        elif self.batch_first:
            out = out.transpose(0, 1)  # (B, T, O)
        return out, (tuple(finals[:L]), tuple(finals[L:]))

    def _reverse(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """:func:`reverse_within_lengths` in this module's layout (batched
        ``batch_first`` input is ``(B, T, F)``)."""
        if self.batch_first and x.dim() == 3:
            return reverse_within_lengths(x.transpose(0, 1), lengths).transpose(0, 1)
        return reverse_within_lengths(x, lengths)
