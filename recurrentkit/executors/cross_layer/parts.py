r"""What a cell provides to :mod:`.run`'s whole-run op (:class:`CellPart`), and the
per-step views of packed buffers that the op and the parts share.

Each part holds one layer's buffers and per-step views for one call of the op, and does
that layer's arithmetic between the mixing (which the op does): forward, from the
mixed previous state ``h̃`` to the layer's output, with the factors its backward needs
made while the step's values are in cache; backward, from the gradient of the output
(and of ``c``, LSTM) to the gradient of ``h̃``, the gradient into the layer below, and
its weight gradients added up over one run of steps. The backward writes a layer's
pre-activation gradients into the columns after the op's ``a`` gate columns of one row
buffer ``D``, in an order each part states.

The parts of the built-in cells live with each cell's other fast forms, so that a
cell's arithmetic is written once: a reset-after GRU layer in
:class:`~recurrentkit.executors.kernels.gru.GRUPart`, an LSTM layer without projection in
:class:`~recurrentkit.executors.kernels.lstm.LSTMPart`. This module imports nothing of
the executor's (the kernels import it, and :mod:`.run` imports the kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

__all__ = ["CellPart", "previous_per_step", "rows_per_step", "step_views"]

PerStep = Callable[[Tensor], list[Tensor]]
"""A chunk-sized buffer's views for every step (see :mod:`.run`'s backward)."""


def rows_per_step(buf: Tensor, sizes: Sequence[int]) -> Sequence[Tensor]:
    """A scratch buffer ``(B, ·)``'s first ``sizes[t]`` rows for each step ``t`` (one view
    per distinct size)."""
    views = {bs: buf[:bs] for bs in set(sizes)}
    return [views[bs] for bs in sizes]


def step_views(buf: Tensor, sizes: tuple[int, ...], every_step: bool) -> Sequence[Tensor]:
    """Per-step views of a buffer that holds every step's rows (``every_step``: packed
    ``(N, ·)``, kept for the backward) or only the running step's (a ``(B, ·)`` scratch
    reused by every step, when no backward will run)."""
    return list(buf.split(sizes)) if every_step else rows_per_step(buf, sizes)


class CellPart:
    """One layer's cell arithmetic inside the whole-run op (see the module docstring).

    Args:
        H: the layer's hidden size.
        first: the bottom layer (its input projection ``gi`` is given, made outside).
        sizes: the packed layout's rows per step.
        like: a tensor of the run's dtype and device.
        grad: whether a backward will run (the forward then makes its factors).
    """

    gates = 0  # gate columns per hidden unit
    states = 1  # 1: the state is h; 2: (h, c)

    def __init__(
        self, H: int, first: bool, sizes: tuple[int, ...], like: Tensor, grad: bool
    ) -> None:
        self.H, self.first, self.sizes, self.grad = H, first, sizes, grad
        self.B, self.N = sizes[0], sum(sizes)
        self.like = like

    # -- forward -------------------------------------------------------------------------

    def start(
        self,
        gi: Tensor | None,
        weights: Sequence[Tensor | None],
        c0: Tensor | None,
    ) -> None:
        """Buffers and views for a forward: ``gi (N, gates·H)`` the given projection
        (bottom layer), ``weights = (w_ih, b_ih, w_hh, b_hh)``, ``c0`` the initial ``c``
        (LSTM)."""
        raise NotImplementedError

    def step(self, t: int, u: Tensor, ht: Tensor, out: Tensor) -> Tensor:
        """Step ``t`` from the layer's input ``u`` (unused by the bottom layer) and mixed
        previous state ``ht``: writes the new ``h`` into ``out`` and returns it."""
        raise NotImplementedError

    def saved(self) -> list[Tensor]:
        """The buffers the backward needs (for ``save_for_backward``)."""
        raise NotImplementedError

    def outputs(self) -> list[Tensor]:
        """Outputs besides ``h``: the ``c`` sequence ``(N, H)`` (LSTM)."""
        return []

    # -- backward ------------------------------------------------------------------------

    def restore(
        self,
        saved: Sequence[Tensor],
        weights: Sequence[Tensor | None],
        D: Tensor,
        per_step: PerStep,
        dc_out: Tensor | None,
    ) -> None:
        """Views for a backward: ``saved`` as :meth:`saved` returned them, ``D`` the
        chunk-sized gradient rows (the cell's columns), ``dc_out`` the gradient of the
        ``c`` sequence output (LSTM; ``None`` if unused)."""
        raise NotImplementedError

    def back(self, t: int, dh: Tensor, dht: Tensor) -> None:
        """Step ``t``'s pre-activation gradients into ``D`` from ``dh`` (the gradient of
        the step's output) and the gradient of ``h̃`` into ``dht``."""
        raise NotImplementedError

    def down(self, t: int, below: Tensor) -> None:
        """Add step ``t``'s gradient of the layer's input (the layer below's output)."""
        raise NotImplementedError

    def add_grads(self, D: Tensor, ht: Tensor, u: Tensor | None, grads: list[Any]) -> None:
        """Add one chunk's weight gradients: ``D`` its cell columns, ``ht``/``u`` its rows
        of ``h̃`` and of the input (``None``: bottom layer), ``grads`` the four slots
        ``[d w_ih, d b_ih, d w_hh, d b_hh]`` (``None`` where not needed)."""
        raise NotImplementedError

    def input_grad(self, D: Tensor, out: Tensor) -> None:
        """The bottom layer's gradient of ``gi`` for one chunk's rows, into ``out``."""
        raise NotImplementedError

    def c0_grad(self) -> Tensor | None:
        """After the backward: the gradient of the initial ``c`` (LSTM)."""
        return None


def previous_per_step(buf: Tensor, B: int, sizes: tuple[int, ...]) -> list[Tensor]:
    """For each step ``t``, the rows of ``buf`` (a ``(B + N, ·)`` buffer of initial
    states and outputs) that hold step ``t``'s previous states: the first ``sizes[t]``
    rows of the block before step ``t``'s."""
    blocks = buf.split((B, *sizes))[:-1]
    return [blk if blk.shape[0] == bs else blk[:bs] for blk, bs in zip(blocks, sizes)]
