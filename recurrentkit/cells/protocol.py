"""The cell protocol: one step of a recurrent cell, and a base class that checks its input.

A *cell* is anything with::

    cell.initial_state(batch_size, *, device=None, dtype=None) -> state
    cell(x, state=None) -> (output, new_state)        # one time step

and, optionally, ``input_size`` and ``output_size`` (ints) so that a
:class:`~recurrentkit.Stack` can check that layer widths chain. A state is a tensor
or a NamedTuple of states. A cell knows nothing of time, layers or routing.

Also optional, for speed: a **split step**, two methods such that
``cell(x, state) == cell.step_projected(cell.input_projection(x), state)``::

    cell.input_projection(x) -> gi          # (M, I) -> (M, G): the part that reads x only
    cell.step_projected(gi, state) -> (output, new_state)
    cell.step_projected(gi, state, linear=F.linear)   # or: it takes the matmul to use

A cell whose recurrence is *linear* in its state, ``h' = a ⊙ h + b`` with ``a`` and
``b`` read from the input only (:class:`~recurrentkit.MinGRUCell`,
:class:`~recurrentkit.LRUCell`), may also declare that (:func:`scans_linearly`)::

    cell.linear_coefficients(gi) -> (a, b)     # (..., G) -> (..., N) each (a may broadcast)
    cell.linear_output(h, gi) -> y             # (..., N), (..., G) -> (..., O)

for ``gi = input_projection(x)`` over any leading axes; the step is then
``h = a ⊙ state + b``, ``y = linear_output(h, gi)``, and a whole layer is one
:func:`recurrentkit.scan.linear` over the sequence.

With a split step, the fast executor projects a layer's whole input sequence in one call wherever
that sequence is known in advance (every layer under layer-major policies, layer 1
under step-major ones) and steps on the projected rows (see :func:`splits_step`). A
``step_projected`` that takes ``linear`` and computes ``linear(h, weight, bias)`` with it
(``F.linear``'s signature) for its products with its own weights gets those weights'
gradients deferred to the end of a run: one matrix product over every step instead of
one per step (:mod:`recurrentkit.executors.deferred`). That is all a new cell needs to
run fast (the guide "Adding a fast cell" walks an example).

:class:`CellBase` implements the public call once for every built-in cell: it checks
``x`` and ``state`` (raising :mod:`recurrentkit.errors`), accepts unbatched input the
way torch cells do, and hands batched tensors to the subclass's :meth:`CellBase._step`,
which holds only the equations.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, Protocol, TypeAlias, Union, cast, runtime_checkable

import torch
from torch import Tensor, nn

from recurrentkit._validation import (
    allocate,
    check_bool,
    check_device,
    check_dtype,
    check_int,
    check_nonempty,
    check_state,
    check_tensor,
    factory_kwargs,
    map_state,
)

__all__ = [
    "Cell",
    "CellBase",
    "CellState",
    "StackState",
    "scans_linearly",
    "splits_step",
    "takes_linear",
]

CellState: TypeAlias = Union[Tensor, tuple[Any, ...]]  # noqa: UP007 (a runtime alias)
"""One cell's state: a tensor ``(B, H)``, or a NamedTuple of states (e.g.
:class:`~recurrentkit.LSTMState` ``(h, c)``), fields in torch's order."""

StackState: TypeAlias = tuple[CellState, ...]
"""A :class:`~recurrentkit.Stack`'s state: one :data:`CellState` per layer, bottom first."""


@runtime_checkable
class Cell(Protocol):
    """What a :class:`~recurrentkit.Stack` needs of a layer (structural typing)."""

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any: ...

    def __call__(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]: ...


def splits_step(cell: object) -> bool:
    """Whether ``cell`` has the optional split step: *methods* ``input_projection`` and
    ``step_projected`` (a submodule of that name does not count), not overridden away:
    a subclass that redefines the call (``forward``, or a built-in cell's ``_step``)
    below the class that defines ``step_projected`` has new equations, so its inherited
    split step does not count.

    The executor trusts the split: ``step_projected(input_projection(x), state)`` must
    equal ``cell(x, state)``, rows independent of each other, on tensors the
    :class:`~recurrentkit.Stack` has already checked (``cell``'s own per-step checks
    do not run on this path). The reference executor always calls ``cell(x, state)``.
    """
    if not all(
        inspect.ismethod(getattr(cell, name, None))
        for name in ("input_projection", "step_projected")
    ):
        return False
    kind = type(cell)
    split_at = _defined_by(kind, "step_projected")
    for call in ("forward", "_step"):
        at = _defined_by(kind, call)
        if at is not None and split_at is not None and not issubclass(split_at, at):
            return False  # the call was redefined below the split step
    return True


def scans_linearly(cell: object) -> bool:
    """Whether ``cell`` declares a linear recurrence: a split step (:func:`splits_step`)
    and *methods* ``linear_coefficients`` and ``linear_output``, defined where (or
    below where) its split step is, so that a subclass that redefines the step does
    not inherit the declaration.

    The executor trusts it: ``step_projected(gi, h)`` must equal
    ``(linear_output(a ⊙ h + b, gi), a ⊙ h + b)`` with ``(a, b) =
    linear_coefficients(gi)``, elementwise over rows and any leading axes.
    """
    if not splits_step(cell) or not all(
        inspect.ismethod(getattr(cell, name, None))
        for name in ("linear_coefficients", "linear_output")
    ):
        return False
    kind = type(cell)
    split_at = _defined_by(kind, "step_projected")
    scan_at = _defined_by(kind, "linear_coefficients")
    return split_at is not None and scan_at is not None and issubclass(scan_at, split_at)


def takes_linear(cell: object) -> bool:
    """Whether ``cell.step_projected`` takes the ``linear`` to use for its products."""
    kind = type(cell)
    hit = _TAKES_LINEAR.get(kind)
    if hit is None:
        params = inspect.signature(cast(Any, cell).step_projected).parameters
        hit = _TAKES_LINEAR[kind] = "linear" in params
    return hit


_TAKES_LINEAR: dict[type, bool] = {}


def _defined_by(kind: type, name: str) -> type | None:
    """The class of ``kind``'s MRO whose body defines ``name``."""
    for k in kind.__mro__:
        if name in vars(k):
            return k
    return None


class CellBase(nn.Module, ABC):
    """Base of the built-in cells: input checks, unbatched input, zero initial state.

    Subclasses set ``input_size``, ``hidden_size`` and ``output_size``, create their
    parameters, and implement :meth:`_step` (and :meth:`_zero_state` if the state is not
    one ``(B, hidden_size)`` tensor).
    """

    input_size: int
    hidden_size: int
    output_size: int
    weight_ih: Tensor  # every built-in cell has one; it carries the dtype and device

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        """The zero state for ``batch_size`` sequences.

        Args:
            batch_size: number of sequences, ``B >= 1``.
            device: defaults to the device of the cell's parameters.
            dtype: defaults to the dtype of the cell's parameters.

        Returns:
            A tensor of shape ``(B, hidden_size)`` or a NamedTuple of such tensors,
            depending on the cell.

        Raises:
            ConfigError: ``batch_size < 1``, an unknown device, a non-floating dtype.
            InputTypeError: ``batch_size`` not an int, ``dtype`` not a ``torch.dtype``.
        """
        check_int("batch_size", batch_size)
        want_device = check_device("device", device)
        want_dtype = check_dtype("dtype", dtype)
        ref = self.weight_ih
        return allocate(
            "batch_size",
            (batch_size, self.hidden_size),
            lambda: self._zero_state(
                batch_size,
                want_device if want_device is not None else ref.device,
                want_dtype if want_dtype is not None else ref.dtype,
            ),
        )

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """One time step.

        Args:
            x: input of shape ``(B, input_size)``, or ``(input_size,)`` unbatched.
            state: the previous state (see :meth:`initial_state`), unbatched when
                ``x`` is; ``None`` means zeros.

        Returns:
            ``(output, new_state)``; ``output`` has shape ``(B, output_size)``
            (``(output_size,)`` unbatched).

        Raises:
            ShapeError: ``x`` of the wrong rank or feature size, or an empty batch.
            StateError: a state of the wrong shape or number of fields.
            InputTypeError: a non-tensor or integer ``x``; a tensor where the state is a
                NamedTuple, or the reverse.
            DeviceError: ``x`` or the state on another dtype/device than the parameters.
        """
        ref = self.weight_ih
        check_tensor(
            "x",
            x,
            ranks=(1, 2),
            size_last=self.input_size,
            like=ref,
            layout=f"(B, {self.input_size}) or ({self.input_size},)",
        )
        unbatched = x.dim() == 1
        batch = 1 if unbatched else x.shape[0]
        if not unbatched:
            check_nonempty("x", x, [0], ["batch"])
        if state is None:
            state = self._zero_state(batch, x.device, x.dtype)
        else:
            template = self._zero_state(batch, torch.device("meta"), x.dtype)
            if unbatched:
                template = map_state(lambda t: t[0], template)
            state = check_state("state", state, template, device=x.device)
            if unbatched:
                state = map_state(lambda t: t.unsqueeze(0), state)
        if unbatched:
            x = x.unsqueeze(0)
        y, new_state = self._step(x, state)
        if unbatched:
            return y.squeeze(0), map_state(lambda t: t.squeeze(0), new_state)
        return y, new_state

    def _set_sizes(self, input_size: int, hidden_size: int) -> None:
        """Check and set ``input_size``, ``hidden_size`` and ``output_size``
        (``= hidden_size``)."""
        self.input_size = check_int("input_size", input_size)
        self.hidden_size = check_int("hidden_size", hidden_size)
        self.output_size = self.hidden_size

    def _begin(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> tuple[bool, dict[str, Any]]:
        """What every cell's constructor starts with (torch.nn's arguments): the sizes
        checked and set (:meth:`_set_sizes`); returns ``bias`` checked and the factory
        keywords for its parameters (``device``, ``dtype``)."""
        self._set_sizes(input_size, hidden_size)
        return check_bool("bias", bias), factory_kwargs(device, dtype)

    def _make_gate_parameters(
        self, rows: int, recurrent_width: int, bias: bool, factory: dict[str, Any]
    ) -> None:
        """Create torch.nn's ``weight_ih (rows, I)``, ``weight_hh (rows, recurrent_width)``
        and, with ``bias``, ``bias_ih``/``bias_hh (rows,)`` (else registered as ``None``),
        in torch's order. Call after setting ``input_size``."""
        self.weight_ih = make_weight(rows, self.input_size, factory)
        self.weight_hh = make_weight(rows, recurrent_width, factory)
        if bias:
            self.bias_ih = make_bias(rows, factory)
            self.bias_hh = make_bias(rows, factory)
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)

    def _zero_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        """The zero state, no argument checks: ``(B, hidden_size)`` zeros by default.

        Cells whose state is a NamedTuple (LSTM family) override it.
        """
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)

    @abstractmethod
    def _step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """The cell's equations on batched, already-checked input ``(B, input_size)``."""

    def reset_parameters(self) -> None:
        """torch.nn's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters(recurse=False):
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


_SIZES = "input_size, hidden_size"  # what a parameter too large to allocate is blamed on


def make_weight(rows: int, cols: int, factory: dict[str, Any]) -> nn.Parameter:
    """An uninitialised ``(rows, cols)`` parameter (filled by ``reset_parameters``)."""
    return nn.Parameter(allocate(_SIZES, (rows, cols), lambda: torch.empty(rows, cols, **factory)))


def make_bias(rows: int, factory: dict[str, Any]) -> nn.Parameter:
    """An uninitialised ``(rows,)`` parameter."""
    return nn.Parameter(allocate(_SIZES, (rows,), lambda: torch.empty(rows, **factory)))
