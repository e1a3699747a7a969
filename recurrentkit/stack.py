"""``Stack``: the owner of cells and a routing policy, and the boundary of the time loop.

Shapes: inside, everything is **time-major**, ``(T, B, F)``. ``batch_first`` and
unbatched input are converted once, here, at the boundary; policies and executors
never see them. Every public argument is checked here (raising
:mod:`recurrentkit.errors`), so policies and cells run on trusted tensors.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast, overload

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from recurrentkit import state as rstate
from recurrentkit._scan import Restart, length_mask, traced
from recurrentkit._validation import (
    check_choice,
    check_int,
    check_lengths,
    check_nonempty,
    check_params_like,
    check_probability,
    check_state,
    check_tensor,
    describe,
    map_state,
    param_like,
    params_match,
    shape_str,
    zip_state,
)
from recurrentkit.cells.protocol import Cell, CellState, StackState
from recurrentkit.errors import (
    ConfigError,
    DeviceError,
    InputTypeError,
    ShapeError,
    StateError,
    UnsupportedError,
)
from recurrentkit.executors.fast import FastExecutor, scan_policy, step_layers
from recurrentkit.executors.packing import schedule_packed
from recurrentkit.executors.plans import Explanation
from recurrentkit.executors.reference import ReferenceExecutor
from recurrentkit.routing import CarriedStateWarning, RoutingPolicy, resolve
from recurrentkit.routing.handoff import caller_level

__all__ = ["EXECUTORS", "Stack", "StackCell"]

EXECUTORS = ("auto", "handbuilt", "reference")


_PACKED_INSTEAD = (
    "the padded tensor (T, B, I) with lengths= (both trace, the lengths as a mask; "
    "torch.nn.utils.rnn.pad_packed_sequence gives them)"
)
_PACKED_UNTRACEABLE = (
    "recurrentkit: a PackedSequence does not trace (its batch_sizes are data that fix "
    "every step's rows); pass " + _PACKED_INSTEAD
)


def _never_traced(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compiler.disable(fn)``, with the reason a graph break reports where this
    torch takes one (``reason=``, newer than the oldest torch this package supports)."""
    try:
        return cast(Callable[..., Any], torch.compiler.disable(fn, reason=_PACKED_UNTRACEABLE))
    except TypeError:  # an older torch: no reason
        return cast(Callable[..., Any], torch.compiler.disable(fn))


class Stack(nn.Module):
    r"""Cells composed into a deep recurrent model by an explicit routing policy.

    Args:
        cells: the layers, bottom first: built-in cells or any ``nn.Module`` following
            the cell protocol (``initial_state`` and ``cell(x, state)``). Where cells
            declare ``input_size``/``output_size``, widths are checked to chain.
        routing: a :class:`~recurrentkit.routing.RoutingPolicy` or one of
            ``"independent"``, ``"shared"``, ``"residual"``, ``"cross_layer"``,
            ``"handoff"``. A policy's parameters are the stack's.
        dropout: inter-layer dropout, as torch.nn.GRU: in training mode only, on each
            layer's output except the top layer's, before anything else uses it.
        batch_first: inputs and outputs are ``(B, T, F)`` instead of ``(T, B, F)``.
        executor: ``"auto"`` (default: torch's fused op for layers that are exactly
            torch layers, hand-built fast paths elsewhere), ``"handbuilt"`` (never
            torch's op) or ``"reference"`` (the plain loop). See :attr:`executor`.
        initial_state: ``"zeros"`` (default: every sequence starts from the cells'
            zero states) or ``"learned"``: a parameter for each initial state the policy
            reads (:meth:`~recurrentkit.routing.RoutingPolicy.reads_initial_states`;
            under ``shared`` only the carried one), one per field of the cell's state
            that starts at zero, shared by every sequence: ``initial_l{k}`` for a
            tensor state, ``initial_l{k}_{field}`` for a NamedTuple's fields (a complex
            state, :class:`~recurrentkit.LRUCell`'s ``(N,)``, as real and imaginary parts
            ``(N, 2)``). Zeros at first, so a new learned stack computes what a zeros one
            does. A state passed to a call overrides them.

    A stack's state is a tuple with one cell state per layer, for every policy.

    Shape:
        - x: ``(T, B, I)`` (``(B, T, I)`` if ``batch_first``), ``(T, I)`` unbatched, or a
          :class:`~torch.nn.utils.rnn.PackedSequence`.
        - outputs: ``(T, B, O)`` (or as ``x``), the top of the stack; ``O`` is the last
          cell's ``output_size``. Packed in, packed out.

    Raises:
        ConfigError: empty ``cells``, unknown routing, dropout outside ``[0, 1]``, widths
            that do not chain or that the policy cannot accept.
        InputTypeError: ``cells`` is not a sequence of cell modules.

    Example:
        >>> import torch, recurrentkit as rk
        >>> stack = rk.Stack([rk.GRUCell(8, 16), rk.GRUCell(16, 16)], routing="shared")
        >>> y, state = stack(torch.randn(10, 4, 8))          # (T, B, I)
        >>> y.shape, len(state), state[0].shape
        (torch.Size([10, 4, 16]), 2, torch.Size([4, 16]))
        >>> y_t, state = stack.step(torch.randn(4, 8), state)  # one step
    """

    cells: nn.ModuleList
    routing: RoutingPolicy

    def __init__(
        self,
        cells: Sequence[nn.Module],
        routing: str | RoutingPolicy = "independent",
        *,
        dropout: float = 0.0,
        batch_first: bool = False,
        executor: str = "auto",
        initial_state: str = "zeros",
    ) -> None:
        super().__init__()
        if isinstance(cells, nn.Module) and not isinstance(cells, nn.ModuleList):
            raise InputTypeError(
                "cells", "a sequence of cells (for one layer: [cell])", describe(cells)
            )
        if not isinstance(cells, (list, tuple, nn.ModuleList)):
            raise InputTypeError("cells", "a list or tuple of cells", describe(cells))
        cells = list(cells)
        if not cells:
            raise ConfigError("cells", "at least one cell", "an empty sequence")
        for k, c in enumerate(cells):
            if not isinstance(c, nn.Module) or not callable(getattr(c, "initial_state", None)):
                raise InputTypeError(
                    f"cells[{k}]",
                    "an nn.Module following the cell protocol (initial_state and __call__)",
                    describe(c),
                )
        if not isinstance(batch_first, bool):
            raise InputTypeError("batch_first", "a bool", describe(batch_first))
        self.dropout = check_probability("dropout", dropout)
        self.batch_first = batch_first
        self.cells = nn.ModuleList(cells)
        policy = resolve(routing)
        policy.bind(tuple(self.cells), [cast(Cell, c).initial_state(1) for c in cells])
        self.routing = policy
        self.executor = executor
        self._step_token = object()  # marks the states this stack's step has checked
        self._templates: tuple[Any, tuple[Any, ...]] | None = None  # see _state_templates
        self.initial = check_choice("initial_state", initial_state, INITIAL_STATES)
        self.initial_states = nn.ParameterDict()
        if self.initial == "learned":
            reads = policy.reads_initial_states(len(cells))
            for k, (cell, read) in enumerate(zip(cells, reads)):
                if read:
                    for path, t in _read_fields(cell):
                        name = "_".join((f"initial_l{k}", *path))
                        self.initial_states[name] = nn.Parameter(_real_zeros(t[0]))

    # -- what the stack is -------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        """Number of layers ``L``."""
        return len(self.cells)

    @property
    def input_size(self) -> int | None:
        """Features of the input (the bottom cell's ``input_size``; ``None`` if undeclared)."""
        return getattr(self.cells[0], "input_size", None)

    @property
    def output_size(self) -> int | None:
        """Features of the output (the top cell's ``output_size``; ``None`` if undeclared)."""
        return getattr(self.cells[-1], "output_size", None)

    @property
    def is_causal(self) -> bool:
        """What the policy declares: outputs before ``t`` never depend on inputs from ``t``.

        See :func:`recurrentkit.check_causal` for a measurement.
        """
        return self.routing.causal

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> StackState:
        """Each layer's initial state, bottom first: the cells' zero states, with the
        learned ones (``initial_state="learned"``) expanded over the batch.

        Args:
            batch_size: ``B >= 0`` (``0``: empty states, what an empty batch starts from).
            device: defaults to each cell's parameters' device.
            dtype: defaults to each cell's parameters' dtype.

        Returns:
            A tuple of ``L`` cell states (learned fields: ``(B, ·)`` expanded views of
            their parameters, so gradients reach them).
        """
        check_int("batch_size", batch_size, minimum=0)
        states = tuple(
            cast(Cell, c).initial_state(max(batch_size, 1), device=device, dtype=dtype)
            for c in self.cells
        )
        if batch_size == 0:  # cells make states for B >= 1: one row, none of it kept
            states = tuple(map_state(lambda t: t[:0], s) for s in states)
        if len(self.initial_states):
            states = tuple(
                _with_learned(s, f"initial_l{k}", self.initial_states, batch_size)
                for k, s in enumerate(states)
            )
        return states

    # -- running -----------------------------------------------------------------------

    @overload
    def forward(
        self,
        x: Tensor,
        state: Sequence[CellState] | None = None,
        *,
        lengths: Tensor | None = None,
        resets: Tensor | None = None,
    ) -> tuple[Tensor, StackState]: ...

    @overload
    def forward(
        self,
        x: PackedSequence,
        state: Sequence[CellState] | None = None,
        *,
        lengths: None = None,
        resets: Tensor | None = None,
    ) -> tuple[PackedSequence, StackState]: ...

    def forward(
        self,
        x: Tensor | PackedSequence,
        state: Sequence[CellState] | None = None,
        *,
        lengths: Tensor | None = None,
        resets: Tensor | None = None,
    ) -> tuple[Tensor | PackedSequence, StackState]:
        """Run the whole sequence.

        Args:
            x: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, ``(T, I)`` unbatched, or
                a ``PackedSequence``.
            state: a tuple of ``L`` per-layer states (unbatched for unbatched ``x``);
                ``None`` means :meth:`initial_state`. For a causal policy, a sequence run
                in chunks with the returned state passed on equals one call over it
                (streaming); a non-causal one (``handoff``) warns
                (:class:`~recurrentkit.routing.CarriedStateWarning`) when given a state.
            lengths: optional ``(B,)`` integer lengths of padded sequences (each in
                ``1..T``): states stop at each sequence's end, outputs past it are zero,
                and the padding is never read (its gradient is zero, whatever it holds).
            resets: optional bool mask ``(T, B)`` (``(B, T)`` with ``batch_first``,
                ``(T,)`` unbatched, ``(T, B)`` in the caller's batch order for a
                ``PackedSequence``): where ``resets[t, b]`` is true, every layer's state
                of sequence ``b`` is replaced by its initial state (zeros, or the learned
                one) *before* step ``t``, as if a new sequence began there (a reset at
                ``t = 0`` ignores ``state`` for that row; resets past a sequence's length
                are ignored). Exact under every policy, cell and executor: each row is
                cut at its resets into segments, the segments run as one batch with
                lengths (see :meth:`explain`, plan ``"segments"``) and their outputs go
                back in place.

        Returns:
            ``(outputs, state)``: the top layer's outputs (packed if ``x`` was) and each
            layer's last state (yours: where autograd records it, a copy, so changing
            it in place leaves the backward intact, as with torch.nn's modules).

        An empty batch (``B = 0``) is accepted, as torch.nn accepts it: the outputs
        ``(T, 0, O)`` and states are empty, and connected to the parameters, so a
        backward through them gives every parameter a gradient of zeros (see
        :meth:`explain`, plan ``"empty_batch"``). An empty sequence (``T = 0``) is a
        :class:`~recurrentkit.ShapeError`.
        """
        _refuse_jit_trace()
        warn_carried(self.routing, state)
        if isinstance(x, PackedSequence):
            return self._forward_packed(x, state, lengths, resets)
        self._check_input("x", x, ranks=(2, 3))
        assert isinstance(x, Tensor)
        unbatched = x.dim() == 2
        if unbatched:
            x_tm = x.unsqueeze(1)  # (T, 1, I)
        else:
            x_tm = x.transpose(0, 1) if self.batch_first else x  # (T, B, I)
        check_nonempty("x", x, [self._time_axis(x.dim())], ["time"])
        if lengths is not None:
            lengths = self._check_lengths(lengths, x_tm, unbatched)
            # Padding is never read; zeroing it keeps its gradient exactly zero even
            # where it holds NaN or inf (autograd would give 0 * NaN = NaN).
            mask = length_mask(lengths, x_tm.shape[0], x_tm.device)  # (T, B, 1)
            x_tm = torch.where(mask, x_tm, x_tm.new_zeros(()))
        states = self._check_state(state, x_tm.shape[1], x_tm, unbatched)
        cut = None if resets is None else self._check_resets(resets, x_tm, unbatched)
        if x_tm.shape[1] == 0:  # (no row to reset)
            out, states = self._run_empty(x_tm, states, lengths)  # (T, 0, O)
        elif cut is not None:
            out, states = self._run_resets(x_tm, states, lengths, cut)  # (T, B, O)
        else:
            out, states = self._run(x_tm, states, lengths)  # (T, B, O)
        if unbatched:
            return out.squeeze(1), tuple(map_state(lambda t: t.squeeze(0), s) for s in states)
        return (out.transpose(0, 1) if self.batch_first else out), states

    def step(
        self,
        x_t: Tensor,
        state: Sequence[CellState] | None = None,
        *,
        reset: Tensor | None = None,
    ) -> tuple[Tensor, StackState]:
        """One time step, whatever ``batch_first`` says.

        Equal to :meth:`forward` on a length-1 sequence. For causal policies, stepping
        through a sequence gives exactly what one :meth:`forward` call gives.

        Args:
            x_t: ``(B, I)`` (``B = 0`` included: empty output and states) or ``(I,)``.
            state: a tuple of ``L`` per-layer states; ``None`` means the initial state.
            reset: optional bool mask ``(B,)`` (``()`` for unbatched ``x_t``): the rows
                where it is true start from the initial state (zeros, or the learned
                one) instead of ``state``, as :meth:`forward`'s ``resets`` at this step.

        Returns:
            ``(y_t (B, O), state)``. The state is a tuple that remembers the input
            it was checked with: passed back with an input of the same shape, dtype
            and device, the next step skips checking it again (sampling loops pay
            for validation once).
        """
        _refuse_jit_trace()
        if reset is not None:
            return self._step_reset(x_t, state, reset)
        stamp = _stamp(self, x_t)
        if stamp is not None and type(state) is _StepState and state.stamp == stamp:
            try:  # a state this stack's step returned for such an input: already checked
                return self._step_checked(x_t, tuple(state), stamp)
            except RuntimeError:
                pass  # something changed since (a converted layer, ...): check everything
        self._check_input("x_t", x_t, ranks=(1, 2))
        x_tm = x_t.reshape(1, 1, -1) if x_t.dim() == 1 else x_t.unsqueeze(0)  # (1, B, I)
        states = self._check_state(state, x_tm.shape[1], x_tm, x_t.dim() == 1)
        if x_t.dim() == 1:
            states = tuple(map_state(lambda t: t.squeeze(0), s) for s in states)
        return self._step_checked(x_t, states, _stamp(self, x_t))

    def _step_reset(
        self, x_t: Tensor, state: Sequence[CellState] | None, reset: object
    ) -> tuple[Tensor, StackState]:
        """:meth:`step` with a ``reset`` mask: checked, the masked rows' states replaced
        by the initial state, then the usual step."""
        self._check_input("x_t", x_t, ranks=(1, 2))
        unbatched = x_t.dim() == 1
        x_tm = x_t.reshape(1, 1, -1) if unbatched else x_t.unsqueeze(0)  # (1, B, I)
        states = self._check_state(state, x_tm.shape[1], x_tm, unbatched)  # (B, ·)
        mask = self._check_resets(reset, x_tm, unbatched, name="reset")[0]  # (B,)
        states = self._reset_rows(states, mask.to(x_t.device), x_tm)
        if unbatched:
            states = tuple(map_state(lambda t: t.squeeze(0), s) for s in states)
        return self._step_checked(x_t, states, _stamp(self, x_t))

    def _reset_rows(self, states: tuple[Any, ...], mask: Tensor, like: Tensor) -> tuple[Any, ...]:
        """``states (B, ·)`` with the rows where ``mask (B,)`` holds replaced by the
        initial state."""
        init = self.initial_state(1, device=like.device, dtype=like.dtype)
        return tuple(rstate.reset(s, mask, i) for s, i in zip(states, init))

    def _check_resets(
        self,
        resets: object,
        x_tm: Tensor,
        unbatched: bool,
        *,
        packed: bool = False,
        name: str = "resets",
    ) -> Tensor:
        """``resets`` checked against ``x_tm (T, B, I)`` (:func:`check_resets`)."""
        return check_resets(
            name,
            resets,
            x_tm,
            unbatched=unbatched,
            batch_first=self.batch_first and not packed,
            step=name == "reset",
        )

    def _run_resets(
        self, x_tm: Tensor, states: tuple[Any, ...], lengths: Tensor | None, mask: Tensor
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """A run with ``resets`` (``mask (T, B)``, on the CPU): see :func:`run_segments`;
        while ``torch.compile`` or ``torch.export`` traces, the mask inside the traced
        time loop instead (:class:`~recurrentkit._scan.Restart`: no shapes that depend on
        values)."""
        init = self.initial_state(1, device=x_tm.device, dtype=x_tm.dtype)
        if traced():
            if not self.routing.causal:
                raise UnsupportedError(
                    "resets",
                    "a causal routing policy while torch.compile or torch.export traces (a "
                    "traced loop restarts each layer from its initial state; a non-causal "
                    "policy's layers start from the layer below's state at each segment's "
                    "end): call the stack eagerly, or split the sequence at its resets",
                    f"routing {self.routing.name!r}",
                )
            layers = self._make_executor()
            layers.restart = Restart(mask.to(x_tm.device), init)
            return self._run(x_tm, states, lengths, layers)

        def run(
            x: Tensor, s: tuple[Any, ...], seg_lengths: Tensor | None
        ) -> tuple[Tensor, tuple[Any, ...]]:
            layers = self._make_executor(segments=_kernel_lstm(x.device, seg_lengths))
            return self._run(x, s, seg_lengths, layers)

        out, finals = run_segments(x_tm, states, lengths, mask, init, run)
        return out, tuple(finals)

    def _step_checked(
        self, x_t: Tensor, states: tuple[Any, ...], stamp: Any
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """:meth:`step` on checked arguments (unbatched ones without their batch axis)."""
        if x_t.dim() == 2 and x_t.shape[0] == 0:  # an empty batch: one row, none kept
            padded = self._pad_states(states, x_t)
            y, states = self._run_step(torch.cat([x_t, x_t.new_zeros(1, x_t.shape[1])]), padded)
            return y[:0].clone(), _StepState(_none_of(states), stamp)
        if x_t.dim() == 1:
            states = tuple(map_state(lambda t: t.unsqueeze(0), s) for s in states)
            y, states = self._run_step(x_t.unsqueeze(0), states)  # (1, O)
            y, states = y[0], tuple(map_state(lambda t: t.squeeze(0), s) for s in states)
        else:
            y, states = self._run_step(x_t, states)  # (B, O)
        return y, _StepState(states, stamp)

    def as_cell(self) -> StackCell:
        """A cell view of this stack: its call is :meth:`step`.

        Use it as a layer of another :class:`Stack` or in a sampler that steps. The
        view shares this stack's parameters. Only a causal stack's steps equal its
        whole-sequence call.
        """
        return StackCell(self)

    def explain(
        self,
        x: Tensor | PackedSequence,
        lengths: Tensor | None = None,
        *,
        step: bool = False,
        resets: Tensor | None = None,
    ) -> Explanation:
        """Which plan a call on ``x`` would run, and why; nothing is run.

        The answer comes from the same plan tables the call itself reads
        (:mod:`recurrentkit.executors.plans`), in the current grad mode, autocast and
        tracing state, with this stack's executor, train mode and dropout.

        Args:
            x: what :meth:`forward` takes (``(T, B, I)``, ``(B, T, I)`` with
                ``batch_first``, ``(T, I)`` unbatched, or a ``PackedSequence``); with
                ``step=True``, what :meth:`step` takes (``(B, I)`` or ``(I,)``).
            lengths: as :meth:`forward`'s ``lengths``.
            step: explain :meth:`step` on ``x`` instead of :meth:`forward`.
            resets: as :meth:`forward`'s ``resets``: where they cut rows (a reset at
                ``1 <= t <`` the row's length), the plan is ``"segments"``, and ``inner``
                (with ``layers``) is the plan the segments run on as one batch.

        Returns:
            An :class:`~recurrentkit.executors.plans.Explanation`: ``plan`` (the whole
            stack's plan), ``why``, and ``layers`` (each layer's plan where the plan
            runs layer by layer, else ``None``); ``str()`` of it reads as a report.
            For an empty batch (``B = 0``) the plan is ``"empty_batch"``: one row of
            zeros runs and none of it is returned; ``why`` names that row's plan and
            ``layers`` are its layers' plans.

        Raises:
            ShapeError, InputTypeError, DeviceError, ConfigError: as :meth:`forward` (or
                :meth:`step`) would for the same arguments.

        Example:
            >>> import torch, recurrentkit as rk
            >>> stack = rk.Stack([rk.GRUCell(8, 16), rk.GRUCell(16, 16)], "independent")
            >>> stack.explain(torch.randn(10, 4, 8)).plan
            'torch_multilayer'
            >>> stack.executor = "handbuilt"
            >>> e = stack.explain(torch.randn(10, 4, 8))
            >>> e.plan, e.layers
            ('layer_by_layer', ('kernel', 'kernel'))
        """
        packed = isinstance(x, PackedSequence)
        empty = False
        mask = None
        if step:
            self._check_input("x_t", x, ranks=(1, 2))
            if lengths is not None:
                raise ConfigError("lengths", "None for one step", describe(lengths))
            if resets is not None:
                raise ConfigError(
                    "resets", "None for one step (step's reset= keeps the step's plan)", "a mask"
                )
            steps = 1
            assert isinstance(x, Tensor)
            empty = x.dim() == 2 and x.shape[0] == 0
        elif isinstance(x, PackedSequence):
            if lengths is not None:
                raise ConfigError("lengths", "None when x is a PackedSequence", "a tensor")
            self._check_input("x (PackedSequence data)", x.data, ranks=(2,))
            steps = len(x.batch_sizes)
            if resets is not None:  # the call pads, then runs with lengths
                x_pad, lengths = pad_packed_sequence(x)  # the caller's batch order
                mask = self._check_resets(resets, x_pad, False, packed=True)
                packed = False
            else:
                lengths = _packed_lengths(x)
        else:
            self._check_input("x", x, ranks=(2, 3))
            assert isinstance(x, Tensor)
            unbatched = x.dim() == 2
            x_tm = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if self.batch_first else x)
            check_nonempty("x", x, [self._time_axis(x.dim())], ["time"])
            if lengths is not None:
                lengths = self._check_lengths(lengths, x_tm, unbatched)
            if resets is not None:
                mask = self._check_resets(resets, x_tm, unbatched)
            steps = x_tm.shape[0]
            empty = x_tm.shape[1] == 0
        seg = None if mask is None or empty else _Segments(mask, lengths, steps)
        if seg is not None and seg.cut:
            device = x.data.device if isinstance(x, PackedSequence) else x.device
            return self._explain_segments(seg, lengths, device)
        if empty:
            assert isinstance(x, Tensor)
            return self._explain_empty(x, lengths, step)
        if self._executor == "reference":
            return Explanation(
                "reference",
                "reference",
                "the plain loop: the policy's step (or its run) over the cells' own calls, "
                "the definition every other path is tested against",
            )
        layers = self._make_executor()
        assert isinstance(layers, FastExecutor)
        plan, why, per_layer = layers.explain(
            self.routing, steps, lengths, packed=packed, step=step
        )
        return Explanation(self._executor, plan, why, per_layer)

    # -- internals ---------------------------------------------------------------------

    def _explain_segments(
        self, seg: _Segments, lengths: Tensor | None, device: torch.device
    ) -> Explanation:
        """:meth:`explain` for a call whose resets cut rows into segments."""
        B = int(seg.last.shape[0])
        head = (
            f"resets cut the batch's {B} rows into {seg.count} segments (a row's first "
            "segment from its given state, each later one from the initial state), run as "
            f"one batch of {seg.count} rows of up to {seg.steps} steps with their lengths; "
            "outputs go back in place and each row's state is its last segment's"
        )
        if self._executor == "reference":
            return Explanation("reference", "segments", head, None, "reference")
        layers = self._make_executor(segments=_kernel_lstm(device, seg.lengths))
        assert isinstance(layers, FastExecutor)
        plan, why, per_layer = layers.explain(self.routing, seg.steps, seg.lengths, packed=False)
        return Explanation(
            self._executor, "segments", f"{head}; they run as {plan!r}: {why}", per_layer, plan
        )

    def _time_axis(self, rank: int) -> int:
        """The time axis of a forward input of ``rank`` in this stack's layout."""
        return 1 if rank == 3 and self.batch_first else 0

    def _pad_states(self, states: tuple[Any, ...], like: Tensor) -> tuple[Any, ...]:
        """Empty-batch states with one initial-state row appended (batch ``0 -> 1``)."""
        one = self.initial_state(1, device=like.device, dtype=like.dtype)
        return tuple(zip_state(lambda s, o: torch.cat([s, o]), s, o) for s, o in zip(states, one))

    def _run_empty(
        self, x_tm: Tensor, states: tuple[Any, ...], lengths: Tensor | None
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """An empty batch, ``x_tm (T, 0, I)``: one row of zeros (starting from the initial
        state, of length ``T``) runs on the stack's own plan and none of it is returned.

        Cells and kernels are written for ``B >= 1``; running one row keeps every policy,
        cell and executor on its usual path. The empty outputs ``(T, 0, O)`` and states
        are slices of that run, so a backward through them reaches every parameter that
        the run used, with zeros.
        """
        T = x_tm.shape[0]
        x_one = torch.cat([x_tm, x_tm.new_zeros(T, 1, x_tm.shape[2])], dim=1)  # (T, 1, I)
        lengths_one = None
        if lengths is not None:
            lengths_one = torch.cat([lengths, lengths.new_full((1,), T)])
        out, finals = self._run(x_one, self._pad_states(states, x_tm), lengths_one)
        return out[:, :0].clone(), _none_of(finals)  # (T, 0, O)

    def _explain_empty(self, x: Tensor, lengths: Tensor | None, step: bool) -> Explanation:
        """:meth:`explain` for an empty batch: the plan of the one-row run it makes."""
        axis = 0 if step or self.batch_first else 1
        shape = list(x.shape)
        shape[axis] = 1
        x_one = torch.cat([x, x.new_zeros(shape)], dim=axis)
        lengths_one = None
        if lengths is not None:
            T = x.shape[1 if self.batch_first else 0]
            lengths_one = torch.cat([lengths, lengths.new_full((1,), T)])
        inner = self.explain(x_one, lengths_one, step=step)
        why = (
            "an empty batch (B = 0): one row of zeros runs and none of it is returned, so "
            "outputs and states are empty and connected to the parameters (a backward gives "
            f"them zero gradients); the row runs as {inner.plan!r}: {inner.why}"
        )
        return Explanation(inner.executor, "empty_batch", why, inner.layers)

    def _make_executor(self, *, segments: bool = False) -> ReferenceExecutor | FastExecutor:
        """The executor for this call, as :attr:`executor` selects (``segments``: for
        segments of unequal lengths on the CPU, LSTM layers on their kernel, see
        :func:`_kernel_lstm`)."""
        cells = tuple(self.cells)
        if self._executor == "reference":
            return ReferenceExecutor(cells, self.dropout, self.training)
        return FastExecutor(
            cells,
            self.dropout,
            self.training,
            torch_ops=self._executor == "auto",
            torch_lstm_rows=not segments,
        )

    @_never_traced
    def _forward_packed(
        self,
        packed: PackedSequence,
        state: Any,
        lengths: Tensor | None,
        resets: Tensor | None,
    ) -> tuple[PackedSequence, tuple[Any, ...]]:
        """:meth:`forward` of a ``PackedSequence``, never traced: ``torch.compile`` runs it
        eagerly (a graph break; ``fullgraph=True`` reports it with this reason), and
        ``torch.export`` is refused with an :class:`~recurrentkit.UnsupportedError`
        naming ``x``: its layout is data (``batch_sizes``' values fix every step's
        rows). Padded input with ``lengths`` traces."""
        if torch.compiler.is_exporting():
            raise UnsupportedError("x", _PACKED_INSTEAD, "a PackedSequence under torch.export")
        if lengths is not None:
            raise ConfigError("lengths", "None when x is a PackedSequence", "a tensor")
        self._check_input("x (PackedSequence data)", packed.data, ranks=(2,))
        states = self._check_state(state, int(packed.batch_sizes[0]), packed.data, False)
        if resets is not None:
            x_tm, lengths = pad_packed_sequence(packed)  # (T, B, I), original batch order
            mask = self._check_resets(resets, x_tm, False, packed=True)
            out, states = self._run_resets(x_tm, states, lengths, mask)  # (T, B, O)
            return repack(out, lengths, packed), states
        layers = self._make_executor()
        direct = self._run_packed(layers, packed, states)
        if direct is not None:  # ran on the packed rows themselves
            return direct
        x_tm, lengths = pad_packed_sequence(packed)  # (T, B, I), original batch order
        out, states = self._run(x_tm, states, lengths, layers)  # (T, B, O)
        return repack(out, lengths, packed), states

    def _run(
        self,
        x_tm: Tensor,
        states: tuple[Any, ...],
        lengths: Tensor | None,
        layers: ReferenceExecutor | FastExecutor | None = None,
    ) -> tuple[Tensor, tuple[Any, ...]]:
        layers = layers if layers is not None else self._make_executor()
        if isinstance(layers, FastExecutor):
            out, states = layers.run(self.routing, x_tm, states, lengths)
        elif traced():  # the reference's loop as torch's scan operator
            out, states = scan_policy(self.routing, layers, x_tm, states, lengths)
        else:
            out, states = self.routing.run(layers, x_tm, states, lengths)
        return out, _owned(states)

    def _run_packed(
        self,
        layers: ReferenceExecutor | FastExecutor,
        packed: PackedSequence,
        states: tuple[Any, ...],
    ) -> tuple[PackedSequence, tuple[Any, ...]] | None:
        """The plans that run on a PackedSequence's rows as they are (see
        :meth:`FastExecutor.run_packed`); ``None`` where the executor has none."""
        if not isinstance(layers, FastExecutor):
            return None
        done = layers.run_packed(self.routing, packed.data, schedule_packed(packed), states)
        if done is None:
            return None
        out, states = done  # (N, O)
        return PackedSequence(
            out, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
        ), _owned(states)

    def _run_step(self, x_t: Tensor, states: tuple[Any, ...]) -> tuple[Tensor, tuple[Any, ...]]:
        if self._executor == "reference":
            layers: ReferenceExecutor | FastExecutor = self._make_executor()
        else:  # kept between steps without autograd (sampling)
            auto = self._executor == "auto"
            layers = step_layers(
                self, tuple(self.cells), self.dropout, self.training, torch_ops=auto
            )
        if isinstance(layers, FastExecutor):
            y, states = layers.step(self.routing, x_t, states)
            return y, _owned(states)
        out, states = self.routing.run(layers, x_t.unsqueeze(0), states, None)  # (1, B, O)
        return out[0], _owned(states)

    def _check_input(self, name: str, x: object, ranks: tuple[int, ...]) -> None:
        size = self.input_size
        if (  # what the checks below test, without building their messages
            isinstance(x, Tensor)
            and x.is_floating_point()
            and x.dim() in ranks
            and (size is None or x.shape[-1] == size)
            and params_match(self, x)
        ):
            return
        I = self.input_size if self.input_size is not None else "I"  # noqa: E741
        if name == "x_t":
            layout = f"(B, {I}) or ({I},)"
        elif self.batch_first:
            layout = f"(B, T, {I}) or (T, {I})"
        else:
            layout = f"(T, B, {I}) or (T, {I})"
        if ranks == (2,):
            layout = f"(N, {I}) (packed rows)"
        check_tensor(
            name, x, ranks=ranks, size_last=self.input_size, like=param_like(self), layout=layout
        )
        assert isinstance(x, Tensor)  # (check_tensor raised otherwise)
        check_params_like(name, x, self)

    def _check_lengths(self, lengths: object, x_tm: Tensor, unbatched: bool) -> Tensor:
        if unbatched:
            raise ConfigError("lengths", "None for unbatched input", describe(lengths))
        return check_lengths("lengths", lengths, x_tm.shape[0], x_tm.shape[1])

    def _check_state(self, state: object, B: int, x: Tensor, unbatched: bool) -> tuple[Any, ...]:
        """``state`` checked for batch ``B`` and ``x``'s dtype and device (``None``: the
        initial state)."""
        if state is None:
            return self.initial_state(B, device=x.device, dtype=x.dtype)
        L = self.num_layers
        if not isinstance(state, (tuple, list)):
            raise InputTypeError(
                "state",
                f"a tuple of {L} per-layer states (one per layer, for every policy)",
                describe(state),
            )
        if hasattr(state, "_fields"):
            raise InputTypeError(
                "state",
                f"a tuple of {L} per-layer states (for a one-layer stack: (cell_state,))",
                f"a {type(state).__name__}, one cell's state",
            )
        if len(state) != L:
            raise StateError(
                "state",
                f"a tuple of {L} per-layer states (one per layer)",
                f"{len(state)} elements",
            )
        out = []
        for k, (s, template) in enumerate(zip(state, self._state_templates(B, x, unbatched))):
            s = check_state(f"state[{k}]", s, template, device=x.device)
            out.append(map_state(lambda t: t.unsqueeze(0), s) if unbatched else s)
        return tuple(out)

    def _state_templates(self, B: int, x: Tensor, unbatched: bool) -> tuple[Any, ...]:
        """Each layer's state as :meth:`_check_state` expects it, on the meta device: the
        cells' ``initial_state`` for ``B`` rows (no batch axis if ``unbatched``) in
        ``x``'s dtype. Kept for the last key (the cells themselves, ``B``, dtype,
        ``unbatched``): a stream of chunks checks each chunk's state against the same
        templates, and making them took a third of the check."""
        key = (tuple(self.cells), B, x.dtype, unbatched)
        # a symbolic B (torch.export, torch.compile) is never compared with the kept key:
        # the comparison would specialise the free batch axis to the last eager call's
        keep = type(B) is int
        if keep and self._templates is not None and self._templates[0] == key:
            return self._templates[1]
        templates = []
        for cell in self.cells:
            template = cast(Cell, cell).initial_state(max(B, 1), device="meta", dtype=x.dtype)
            if B == 0:  # cells make states for B >= 1
                template = map_state(lambda t: t[:0], template)
            if unbatched:
                template = map_state(lambda t: t[0], template)
            templates.append(template)
        if keep:
            self._templates = (key, tuple(templates))
        return tuple(templates)

    @property
    def executor(self) -> str:
        """How the stack runs: ``"auto"``, ``"handbuilt"`` or ``"reference"``.

        - ``"auto"`` (the default): each layer that is exactly a torch layer
          (``RNNCell``, ``GRUCell(reset="after")``, ``LSTMCell``) runs on torch's
          fused recurrent op when its policy goes layer by layer; everything else on
          the hand-built fast paths of :mod:`recurrentkit.executors`
          (:meth:`explain` says which).
        - ``"handbuilt"``: the hand-built fast paths only (never torch's fused op).
        - ``"reference"``: the plain loop over the cells' equations, the definition
          every faster path is tested against (``shared`` routing here equals a
          literal loop over the cells to the bit).

        All three compute the same function (float64 agreement ≤ 1e-10, forward and
        backward); they differ in speed and in how dropout draws its random masks.
        Settable at any time: ``stack.executor = "reference"``.
        """
        return self._executor

    @executor.setter
    def executor(self, value: str) -> None:
        self._executor = check_choice("executor", value, EXECUTORS)

    def extra_repr(self) -> str:
        learned = ", initial_state='learned'" if self.initial == "learned" else ""
        return f"dropout={self.dropout}, batch_first={self.batch_first}{learned}"


class StackCell(nn.Module):
    """A :class:`Stack` seen as a cell: ``cell(x_t, state) == stack.step(x_t, state)``.

    Attributes:
        stack: the stack it steps (its parameters are this module's).
    """

    def __init__(self, stack: Stack) -> None:
        super().__init__()
        self.stack = stack

    @property
    def input_size(self) -> int | None:
        return self.stack.input_size

    @property
    def output_size(self) -> int | None:
        return self.stack.output_size

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[Any, ...]:
        """The stack's :meth:`Stack.initial_state`."""
        return self.stack.initial_state(batch_size, device=device, dtype=dtype)

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, tuple[Any, ...]]:
        """One step: ``x (B, I)`` → ``(y (B, O), state)``."""
        return self.stack.step(x, state)


class _StepState(tuple):
    """The state :meth:`Stack.step` returns: a plain tuple of per-layer states that
    also remembers what it was checked against (``stamp``)."""

    stamp: Any

    def __new__(cls, states: tuple[Any, ...], stamp: Any) -> _StepState:
        self = super().__new__(cls, states)
        self.stamp = stamp
        return self

    def __reduce__(self) -> Any:  # pickles and copies as the plain tuple it is
        return (tuple, (tuple(self),))


def check_resets(
    name: str,
    resets: object,
    x_tm: Tensor,
    *,
    unbatched: bool,
    batch_first: bool,
    step: bool = False,
) -> Tensor:
    """A ``resets`` mask checked against ``x_tm (T, B, I)`` (time-major): a bool tensor
    ``(T, B)`` (``(B, T)`` if ``batch_first``, ``(T,)`` if ``unbatched``; for one
    ``step``, ``(B,)`` or ``()``) on the CPU or ``x``'s device. Returned time-major
    ``(T, B)`` (``(1, B)`` for a step) on the CPU.

    Raises:
        InputTypeError: not a bool tensor.
        DeviceError: on another device (or meta).
        ShapeError: another shape.
    """
    T, B = x_tm.shape[0], x_tm.shape[1]
    if step:
        want: tuple[int, ...] = () if unbatched else (B,)
    elif unbatched:
        want = (T,)
    else:
        want = (B, T) if batch_first else (T, B)
    if not isinstance(resets, Tensor) or resets.dtype != torch.bool:
        raise InputTypeError(name, f"a bool tensor of shape {shape_str(want)}", describe(resets))
    if resets.is_meta or resets.device not in (torch.device("cpu"), x_tm.device):
        raise DeviceError(
            name, f"a tensor on the CPU or on x's device ({x_tm.device})", resets.device
        )
    if tuple(resets.shape) != want:
        raise ShapeError(name, f"shape {shape_str(want)}", shape_str(resets.shape))
    mask = resets.reshape(T, B) if step or unbatched else resets
    if batch_first and not step and not unbatched:
        mask = mask.t()
    return mask.cpu()


def run_segments(
    x_tm: Tensor,
    states: Sequence[Any],
    lengths: Tensor | None,
    mask: Tensor,
    initial: Sequence[Any],
    run: Callable[[Tensor, tuple[Any, ...], Tensor | None], tuple[Tensor, Sequence[Any]]],
) -> tuple[Tensor, tuple[Any, ...]]:
    """``run`` over ``x_tm (T, B, I)`` with resets ``mask (T, B)`` (CPU bool).

    Resets at ``t = 0`` replace the given states' rows by ``initial``'s; if no row has a
    reset at ``1 <= t < length``, that is the run. Otherwise each row is cut at its resets
    into segments (:class:`_Segments`), laid out as a batch of segments (a row's first
    from its given state, each later one from ``initial``), ``run`` once over them with
    their lengths, and the outputs scattered back (zeros past each length); each row's
    final states are its last segment's.

    Args:
        states: parts (one per layer, say), each a state with the batch first ``(B, ·)``.
        initial: the matching initial states, each ``(1, ·)``.
        run: ``run(x (T', S, I), states, lengths or None) -> (out (T', S, O), finals)``.
    """
    states = tuple(rstate.reset(s, mask[0].to(x_tm.device), i) for s, i in zip(states, initial))
    seg = _Segments(mask, lengths, x_tm.shape[0])
    if not seg.cut:
        out, finals = run(x_tm, states, lengths)
        return out, tuple(finals)
    T, B, I = x_tm.shape  # noqa: E741
    dev = x_tm.device
    src, valid = seg.src.to(dev), seg.valid.to(dev)  # (Ts, S)
    x_seg = x_tm.reshape(T * B, I).index_select(0, src.flatten()).view(*src.shape, I)
    x_seg = torch.where(valid.unsqueeze(-1), x_seg, x_seg.new_zeros(()))
    pick = seg.start_row.to(dev)  # (S,): the row's given state, or B (the initial one)
    s_seg = tuple(
        rstate.index(rstate.cat([s, rstate.to(i, s_like)]), pick)
        for s, i, s_like in zip(states, initial, (rstate.leaves(s)[0] for s in states))
    )
    out_seg, finals = run(x_seg, s_seg, seg.lengths)  # (Ts, S, O)
    flat = out_seg.reshape(-1, out_seg.shape[-1])
    keep = valid.flatten().nonzero().squeeze(1)
    out = flat.new_zeros(T * B, flat.shape[-1]).index_copy(
        0, src.flatten().index_select(0, keep), flat.index_select(0, keep)
    )
    last = seg.last.to(dev)  # (B,)
    return out.view(T, B, -1), tuple(rstate.index(s, last) for s in finals)


class _Segments:
    """Rows of a batch cut at their resets into segments, laid out as a new batch.

    From ``mask (T, B)`` (CPU bool: a reset before step ``t`` of row ``b``) and each
    row's length (``lengths`` or ``T``): a segment runs from a row's start or a reset
    at ``t >= 1`` (before its length) to the next such reset or the row's end.

    Attributes:
        cut: whether any row has a reset at ``1 <= t < length`` (else no segments).
        src: ``(Ts, S)`` each segment position's flat index ``t * B + b`` in ``(T, B)``
            (0 past the segment's end); ``Ts`` the longest segment.
        valid: ``(Ts, S)`` whether that position is inside its segment.
        start_row: ``(S,)`` the row whose given state a segment starts from, or ``B``
            for the initial state (every segment after a reset, and a row's first one
            where it resets at ``t = 0``: that reset is applied to the given state).
        lengths: ``(S,)`` segment lengths, or ``None`` if all equal ``Ts``.
        last: ``(B,)`` each row's last segment.
    """

    def __init__(self, mask: Tensor, lengths: Tensor | None, T: int) -> None:
        B = mask.shape[1]
        ends = lengths.tolist() if lengths is not None else [T] * B
        cuts: list[list[int]] = [[] for _ in range(B)]
        ts, bs = mask[1:].nonzero(as_tuple=True)
        for t, b in zip((ts + 1).tolist(), bs.tolist()):
            if t < ends[b]:
                cuts[b].append(t)
        self.cut = any(cuts)
        if not self.cut:
            return
        starts, rows, given, last = [], [], [], []
        for b in range(B):
            bounds = [0, *sorted(cuts[b])]
            for i, t0 in enumerate(bounds):
                t1 = bounds[i + 1] if i + 1 < len(bounds) else ends[b]
                starts.append((t0, t1 - t0))
                rows.append(b)
                given.append(b if i == 0 else B)
            last.append(len(rows) - 1)
        start = torch.tensor([s for s, _ in starts])
        size = torch.tensor([n for _, n in starts])
        row = torch.tensor(rows)
        Ts = int(size.max())
        tau = torch.arange(Ts).unsqueeze(1)  # (Ts, 1)
        self.valid = tau < size  # (Ts, S)
        self.src = torch.where(self.valid, (start + tau) * B + row, 0)
        self.start_row = torch.tensor(given)
        self.lengths = None if bool((size == Ts).all()) else size
        self.last = torch.tensor(last)
        self.steps = Ts
        self.count = len(rows)


def _kernel_lstm(device: torch.device, lengths: Tensor | None) -> bool:
    """Whether segments run with LSTM layers on their hand-built kernel instead of
    torch's op: segments of unequal ``lengths`` on the CPU. There torch's LSTM op runs
    padded input on oneDNN but ``lengths`` (packed rows) on its slower native loop;
    measured on the segments of ``benchmarks/state_bench.py`` (1 thread, a loaded
    2-core machine), the kernel took 0.80-0.88 of that op's time."""
    return lengths is not None and device.type == "cpu"


def warn_carried(routing: RoutingPolicy, state: Any) -> None:
    """Issue :class:`~recurrentkit.routing.CarriedStateWarning` for a call of a non-causal
    policy given a ``state`` (not while ``torch.compile`` traces)."""
    if state is not None and not routing.causal and not torch.compiler.is_compiling():
        warnings.warn(
            f"routing {routing.name!r} is not causal: a sequence run in chunks with the "
            "state carried differs from one call over it (streaming and truncated BPTT do "
            "not compute the whole-sequence function)",
            CarriedStateWarning,
            stacklevel=caller_level(),
        )


def _refuse_jit_trace() -> None:
    """Refuse ``torch.jit.trace``: a trace records one batch size and one length and
    replays them for any input; ``torch.export`` records the time loop instead."""
    if torch.jit.is_tracing():
        raise UnsupportedError(
            "torch.jit.trace",
            "torch.export.export(stack.eval(), (x,), dynamic_shapes=...) (a trace would "
            "freeze the batch size and the length into the graph; torch.export keeps "
            "both dynamic: see the Deploy guide)",
            "torch.jit.trace of a Stack",
        )


def _none_of(states: tuple[Any, ...]) -> tuple[Any, ...]:
    """Per-layer states with their batch emptied (``[:0]``), each its own tensor (a
    copy, so an in-place change never reaches what the backward saved)."""
    return tuple(map_state(lambda t: t[:0].clone(), s) for s in states)


INITIAL_STATES = ("zeros", "learned")
"""What ``Stack(initial_state=...)`` accepts."""


def _state_fields(state: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Tensor]]:
    """Every tensor of a (nested NamedTuple) state with its field path."""
    if isinstance(state, Tensor):
        return [(path, state)]
    fields = getattr(state, "_fields", None) or [str(i) for i in range(len(state))]
    return [f for name, s in zip(fields, state) for f in _state_fields(s, (*path, name))]


def _read_fields(cell: nn.Module) -> list[tuple[tuple[str, ...], Tensor]]:
    """The fields of ``cell``'s initial state that start at zero and that its step reads
    (found by one probe step: a field the step never uses gets no gradient path; a cell
    without ``input_size`` keeps every zero field)."""
    probe = cast(Cell, cell).initial_state(1)
    every = _state_fields(probe)
    fields = [(path, t) for path, t in every if bool((t == 0).all())]
    width = getattr(cell, "input_size", None)
    if not fields or not isinstance(width, int):
        return fields
    leaves = [t.detach().clone().requires_grad_() for _, t in every]
    it = iter(leaves)
    with torch.enable_grad():
        t0 = every[0][1]  # a zero input, on the state's (real) dtype and device
        x = torch.zeros(1, width, dtype=t0.real.dtype, device=t0.device)
        y, new = cell(x, map_state(lambda _t: next(it), probe))
        outs = [y, *(t for _, t in _state_fields(new))]
        grads = torch.autograd.grad(
            [o for o in outs if o.requires_grad],
            leaves,
            [torch.ones_like(o) for o in outs if o.requires_grad],
            allow_unused=True,
        )
    used = {path for (path, _), g in zip(every, grads) if g is not None}
    return [(path, t) for path, t in fields if path in used]


def _real_zeros(t: Tensor) -> Tensor:
    """Zeros for a learned initial state like ``t``: ``t``'s shape, or for a complex
    state (:class:`~recurrentkit.LRUCell`'s) real and imaginary parts as a last axis of
    2, so that ``Stack.to(dtype)`` and ``.double()`` convert it as every other parameter."""
    if t.is_complex():
        return torch.zeros(*t.shape, 2, dtype=t.real.dtype, device=t.device)
    return torch.zeros_like(t)


def _with_learned(state: Any, prefix: str, learned: nn.ParameterDict, batch: int) -> Any:
    """``state`` with each field that has a learned parameter replaced by it, expanded
    over ``batch`` rows (in the state's dtype and device)."""
    if isinstance(state, Tensor):
        p = learned[prefix] if prefix in learned else None
        if p is None:
            return state
        if state.is_complex():  # kept as (..., 2) real pairs: see _real_zeros
            return torch.view_as_complex(p.to(state.real)).expand(batch, -1)
        return p.to(state).expand(batch, -1)
    fields = getattr(state, "_fields", None) or [str(i) for i in range(len(state))]
    parts = [_with_learned(s, f"{prefix}_{n}", learned, batch) for n, s in zip(fields, state)]
    return type(state)(*parts) if hasattr(state, "_fields") else type(state)(parts)


def _owned(states: tuple[Any, ...]) -> tuple[Any, ...]:
    """Final states the caller owns: where autograd records them, a copy of each, so
    that changing one in place (``h[:, done] = 0``, ``h.detach_()`` ...) cannot touch a
    tensor the backward saved (a layer's last ``h`` is the next layer's input, a
    kernel's output buffer, ...), as torch.nn's modules allow."""
    if not torch.is_grad_enabled():
        return states
    return tuple(map_state(lambda t: t.clone() if t.requires_grad else t, s) for s in states)


def _stamp(stack: Stack, x_t: object) -> Any:
    """What a checked step state is valid for: this stack, and ``x_t``'s kind."""
    if not isinstance(x_t, Tensor):
        return None
    return (stack._step_token, x_t.shape, x_t.dtype, x_t.device)


def _packed_lengths(packed: PackedSequence) -> Tensor:
    """Each sequence's length in a ``PackedSequence`` (sorted order: what matters here
    is only that lengths are given)."""
    batch_sizes = packed.batch_sizes  # (T,), non-increasing
    rows = torch.arange(int(batch_sizes[0]))
    return (batch_sizes[None, :] > rows[:, None]).sum(1)  # (B,)


def repack(out: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack ``out (T, B, O)`` (original batch order) with ``like``'s ordering (the
    outputs of a run over ``like`` padded; the drop-ins and
    :class:`.bidirectional.Bidirectional` use it too)."""
    if like.sorted_indices is not None:
        order = like.sorted_indices.to(out.device)
        out = out.index_select(1, order)
        lengths = lengths.index_select(0, like.sorted_indices.cpu())
    data = pack_padded_sequence(out, lengths.cpu(), enforce_sorted=True)
    return PackedSequence(data.data, data.batch_sizes, like.sorted_indices, like.unsorted_indices)
