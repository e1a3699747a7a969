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

from typing import overload

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from recurrentkit._validation import describe
from recurrentkit.cells.protocol import StackState
from recurrentkit.errors import ConfigError, InputTypeError, StateError
from recurrentkit.stack import Stack, repack

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
    ) -> tuple[Tensor, tuple[StackState, StackState]]: ...

    @overload
    def forward(
        self,
        x: PackedSequence,
        state: tuple[StackState | None, StackState | None] | None = None,
        *,
        lengths: None = None,
    ) -> tuple[PackedSequence, tuple[StackState, StackState]]: ...

    def forward(
        self,
        x: Tensor | PackedSequence,
        state: tuple[StackState | None, StackState | None] | None = None,
        *,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor | PackedSequence, tuple[StackState, StackState]]:
        """Run both directions over the whole sequence.

        Args:
            x: ``(T, B, I)`` (``(B, T, I)`` if :attr:`batch_first`) or ``(T, I)``, or a
                ``PackedSequence``.
            state: ``(forward_state, backward_state)``, each a stack state, or ``None``
                (both stacks' initial states). Either element may be ``None``.
            lengths: optional ``(B,)`` integer lengths in ``1..T`` (not with a
                ``PackedSequence``, which carries its own).

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
            y, states = self.forward(padded, state, lengths=lengths)  # original batch order
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
        y_f, s_f = self.forward_stack(x, s_f, lengths=lengths)  # (T, B, O_f)
        x_rev = self._reverse(x, lengths)  # (T, B, I)
        y_rev, s_b = self.backward_stack(x_rev, s_b, lengths=lengths)  # (T, B, O_b)
        y_b = self._reverse(y_rev, lengths)  # (T, B, O_b)
        return torch.cat([y_f, y_b], dim=-1), (s_f, s_b)  # (T, B, O_f + O_b)

    def _reverse(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """:func:`reverse_within_lengths` in this module's layout (batched
        ``batch_first`` input is ``(B, T, F)``)."""
        if self.batch_first and x.dim() == 3:
            return reverse_within_lengths(x.transpose(0, 1), lengths).transpose(0, 1)
        return reverse_within_lengths(x, lengths)
