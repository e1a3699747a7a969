"""The packed time-major layout every fast path runs on, and the moves in and out of it.

A sequence batch ``(T, B, F)`` with lengths is laid out as torch's
:class:`~torch.nn.utils.rnn.PackedSequence` does: sequences sorted by length (longest
first), then the rows of step 0, the rows of step 1, ... — step ``t`` holds the
``sizes[t]`` sequences still running, always the first ones. Without lengths the
layout is the plain reshape ``(T * B, F)``, ``sizes = (B,) * T`` and no sorting.

Fast paths compute only real tokens this way (no padding), and a step's rows are one
contiguous block, so a step reads its previous state as the first ``sizes[t]`` rows
of the previous step's block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from recurrentkit import state as rstate
from recurrentkit._validation import map_state

__all__ = ["CHUNK_ROWS", "Schedule", "cat_states", "chunk_steps", "schedule", "schedule_packed"]

CHUNK_ROWS = 256
"""Hand-written backward passes that add up their weight gradients run by run go over runs
of steps of at least this many rows (:func:`chunk_steps`), so their buffers hold one
run's rows, not the whole sequence's."""


def chunk_steps(sizes: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """The steps grouped into consecutive runs of at least :data:`CHUNK_ROWS` rows (the
    last may be shorter): ``(first step, end step, first row, end row)`` each."""
    out, t0, r0, r = [], 0, 0, 0
    for t, bs in enumerate(sizes):
        r += bs
        if r - r0 >= CHUNK_ROWS or t == len(sizes) - 1:
            out.append((t0, t + 1, r0, r))
            t0, r0 = t + 1, r
    return out


class Schedule:
    """Where each step's rows live in the packed layout.

    Attributes:
        sizes: running sequences at each step, non-increasing, ``sizes[0] == B``.
        batch: ``B``.
        sorted_indices: ``(B,)`` original row of each sorted row; ``None`` if the
            layout is unsorted (no lengths, or all lengths equal ``T``).
        unsorted_indices: the inverse permutation, or ``None``.
    """

    def __init__(
        self,
        sizes: tuple[int, ...],
        batch: int,
        sorted_indices: Tensor | None = None,
        unsorted_indices: Tensor | None = None,
        batch_sizes: Tensor | None = None,
    ) -> None:
        self._sizes: tuple[int, ...] | None = sizes
        self.batch = batch
        self.steps = len(sizes)
        """``T``."""
        self.sorted_indices = sorted_indices
        self.unsorted_indices = unsorted_indices
        self.batch_sizes = batch_sizes
        self.uniform = sorted_indices is None
        self._cache: dict[tuple[str, torch.device], Tensor] = {}

    @classmethod
    def of_uniform(cls, steps: int, batch: int) -> Schedule:
        """Every row runs every step (no lengths). ``steps`` and ``batch`` may be symbolic
        (``torch.compile`` with dynamic shapes): :attr:`sizes` is built only when read,
        and the uniform layout's moves (:meth:`pack`, :meth:`unpack`, :meth:`last`, …)
        never read it."""
        sched = cls((), batch)
        sched._sizes, sched.steps = None, steps
        return sched

    @property
    def sizes(self) -> tuple[int, ...]:
        """Running sequences at each step (``(B,) * T`` when uniform)."""
        if self._sizes is None:
            self._sizes = (self.batch,) * self.steps
        return self._sizes

    @property
    def total(self) -> int:
        """``N``, the number of real tokens (packed rows)."""
        return self.steps * self.batch if self.uniform else sum(self.sizes)

    # -- into and out of the layout ------------------------------------------------------

    def pack(self, x: Tensor) -> Tensor:
        """``(T, B, F)`` (original order) → ``(N, F)`` packed rows."""
        if self.uniform:
            return x.reshape(-1, x.shape[-1])  # (T*B, F)
        assert self.sorted_indices is not None and self.batch_sizes is not None
        lengths = self._lengths_cpu()
        return pack_padded_sequence(
            x.index_select(1, self.sorted_indices.to(x.device)), lengths, enforce_sorted=True
        ).data  # (N, F)

    def unpack(self, data: Tensor) -> Tensor:
        """``(N, F)`` packed rows → ``(T, B, F)``, zero past each end, original order."""
        if self.uniform:
            return data.view(self.steps, self.batch, data.shape[-1])  # (T, B, F)
        assert self.batch_sizes is not None
        packed = PackedSequence(data, self.batch_sizes, self.sorted_indices, self.unsorted_indices)
        out, _ = pad_packed_sequence(packed, total_length=self.steps)  # (T, B, F)
        return out

    def sort_state(self, state: Any) -> Any:
        """A ``(B, ...)`` state in original row order → sorted order."""
        if self.uniform:
            return state
        assert self.sorted_indices is not None
        idx = self.sorted_indices
        return map_state(lambda s: s.index_select(0, idx.to(s.device)), state)

    def unsort_state(self, state: Any) -> Any:
        """A ``(B, ...)`` state in sorted order → original row order."""
        if self.uniform:
            return state
        assert self.unsorted_indices is not None
        idx = self.unsorted_indices
        return map_state(lambda s: s.index_select(0, idx.to(s.device)), state)

    def last(self, data: Tensor) -> Tensor:
        """The row of each sequence's last step, ``(N, F)`` → ``(B, F)`` in sorted order."""
        if self.uniform:
            return data[data.shape[0] - self.batch :]
        return data.index_select(0, self._index("last", data.device))

    def final_state(self, seq: Any) -> Any:
        """Each sequence's state after its last step, from a packed state sequence
        (each field ``(N, ...)``): ``(B, ...)`` fields in original row order."""
        return self.unsort_state(map_state(self.last, seq))

    def previous(self, first: Tensor, data: Tensor) -> Tensor:
        """Each row's previous-step row: ``first (B, F)`` at step 0, else ``data``'s.

        ``(N, F)``; row ``r`` of step ``t >= 1`` is row ``r`` of step ``t - 1``.
        """
        if self.uniform:
            return torch.cat([first, data[: data.shape[0] - self.batch]])  # (N, F)
        both = torch.cat([first, data])  # (B + N, F)
        return both.index_select(0, self._index("previous", data.device))

    def previous_blocks(self, first: Tensor, data: Tensor) -> list[tuple[slice, Tensor]]:
        """:meth:`previous` as ``(rows, tensor)`` blocks, without a copy when unsorted.

        ``previous(first, data)[rows] == tensor`` for each block; the blocks cover all
        ``N`` rows. Lets kernels read the previous rows in place.
        """
        if self.uniform:
            B = self.batch
            return [(slice(0, B), first), (slice(B, None), data[:-B])]
        return [(slice(0, None), self.previous(first, data))]

    def previous_rows(self, first: Tensor, data: Tensor) -> Callable[[int, int], Tensor]:
        """``rows(r0, r1)``: :meth:`previous` for packed rows ``r0 … r1`` only, a view
        of ``data`` where the layout allows (unsorted, the run past step 0), else a copy.
        For backward passes that go run by run (:func:`chunk_steps`)."""
        if not self.uniform:
            prev = self.previous(first, data)  # (N, F)
            return lambda r0, r1: prev[r0:r1]
        B = self.batch

        def rows(r0: int, r1: int) -> Tensor:
            if r0 >= B:
                return data[r0 - B : r1 - B]
            return torch.cat([first[r0:], data[: r1 - B]]) if r1 > B else first[r0:r1]

        return rows

    # -- internals -----------------------------------------------------------------------

    def _lengths_cpu(self) -> Tensor:
        sizes = torch.tensor(self.sizes)
        return (sizes[None, :] > torch.arange(self.batch)[:, None]).sum(1)  # (B,) sorted

    def _index(self, kind: str, device: torch.device) -> Tensor:
        key = (kind, device)
        if key not in self._cache:
            offsets = [0]
            for s in self.sizes:
                offsets.append(offsets[-1] + s)
            if kind == "last":
                lengths = self._lengths_cpu().tolist()
                rows = [offsets[n - 1] + b for b, n in enumerate(lengths)]
            else:
                rows = list(range(self.batch))
                for t in range(1, self.steps):
                    start = self.batch + offsets[t - 1]
                    rows.extend(range(start, start + self.sizes[t]))
            self._cache[key] = torch.tensor(rows, dtype=torch.long, device=device)
        return self._cache[key]


def schedule(x: Tensor, lengths: Tensor | None) -> Schedule:
    """The layout of ``x (T, B, F)`` with optional ``lengths (B,)`` (each in ``1..T``)."""
    T, B = x.shape[0], x.shape[1]
    if lengths is None:
        return Schedule.of_uniform(T, B)
    lengths_cpu = lengths.detach().to("cpu", torch.long)
    if bool((lengths_cpu == T).all()):
        return Schedule.of_uniform(T, B)
    order = torch.sort(lengths_cpu, descending=True, stable=True)
    sorted_lengths, sorted_indices = order.values, order.indices
    batch_sizes = (sorted_lengths[None, :] > torch.arange(T)[:, None]).sum(1)  # (T,)
    unsorted = torch.empty_like(sorted_indices)
    unsorted[sorted_indices] = torch.arange(B)
    return Schedule(
        tuple(batch_sizes.tolist()),
        B,
        sorted_indices.to(x.device),
        unsorted.to(x.device),
        batch_sizes,
    )


def schedule_packed(packed: PackedSequence) -> Schedule:
    """The layout of a :class:`~torch.nn.utils.rnn.PackedSequence`: its ``data`` already
    is the packed rows ``(N, F)`` of this schedule (no copy needed to run on them)."""
    batch_sizes = packed.batch_sizes.detach().to("cpu", torch.long)
    sizes = tuple(batch_sizes.tolist())
    B = sizes[0]
    if all(n == B for n in sizes):  # every sequence runs every step: a plain reshape
        return Schedule(sizes, B)
    sorted_indices, unsorted = packed.sorted_indices, packed.unsorted_indices
    if sorted_indices is None or unsorted is None:  # packed with enforce_sorted=True
        sorted_indices = unsorted = torch.arange(B, device=packed.data.device)
    return Schedule(sizes, B, sorted_indices, unsorted, batch_sizes)


def cat_states(states: list[Any]) -> Any:
    """Concatenate states of one structure along the batch axis (:func:`recurrentkit.state.cat`)."""
    return rstate.cat(states)
