"""Checks shared by every public boundary: one place that words the errors.

Private module: each function raises a :mod:`recurrentkit.errors` subclass whose
message names the argument, what was expected and what arrived.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

from recurrentkit.errors import (
    ConfigError,
    DeviceError,
    InputTypeError,
    ShapeError,
    StateError,
)

T = TypeVar("T")


def shape_str(shape: Iterable[Any]) -> str:
    """``(3, 4)`` for a shape, ``()`` for a scalar."""
    items = [str(s) for s in shape]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def describe(value: object) -> str:
    """A short description of what arrived, for error messages."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {shape_str(value.shape)} on {value.device}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} elements"
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if isinstance(shape, tuple) and dtype is not None:  # a numpy (or other) array
        kind = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}"
        return f"a {kind} of shape {shape_str(shape)} and dtype {dtype}"
    text = repr(value)
    if "\n" in text or len(text) > 80:  # messages stay one short line
        text = text.strip().splitlines()[0][:60] + " ..." if text.strip() else ""
    return f"{type(value).__name__} {text}"


def check_bool(name: str, value: object) -> bool:
    """A ``bool`` (not a truthy string or number)."""
    if not isinstance(value, bool):
        raise InputTypeError(name, "a bool", describe(value))
    return value


def check_dtype(name: str, dtype: object) -> torch.dtype | None:
    """``None`` or a floating-point ``torch.dtype`` (parameters and states are real)."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise InputTypeError(name, "a torch.dtype such as torch.float32, or None", describe(dtype))
    if not dtype.is_floating_point:
        raise ConfigError(name, "a floating-point torch.dtype, or None", dtype)
    return dtype


def check_device(name: str, device: object) -> torch.device | None:
    """``None`` or something ``torch.device`` accepts (a device, a string, an index)."""
    if device is None:
        return None
    if isinstance(device, torch.device):
        return _check_available(name, device)
    if isinstance(device, bool) or not isinstance(device, (str, int)):
        raise InputTypeError(name, "a torch.device, a device string or None", describe(device))
    try:
        found = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(name, "a device such as 'cpu' or 'cuda:0'", repr(device)) from None
    return _check_available(name, found)


def _check_available(name: str, device: torch.device) -> torch.device:
    """A CUDA device that this machine has (torch would fail deep inside otherwise)."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(name, "an available device (no CUDA device here; use 'cpu')", device)
        if device.index is not None and device.index >= count:
            raise DeviceError(name, f"a CUDA device index below {count}", device)
    return device


def factory_kwargs(device: object, dtype: object) -> dict[str, Any]:
    """Checked ``{"device": ..., "dtype": ...}`` for creating parameters."""
    return {"device": check_device("device", device), "dtype": check_dtype("dtype", dtype)}


def check_int(name: str, value: object, *, minimum: int = 1) -> int:
    """An integer (not a bool) ``>= minimum``; a symbolic size (``torch.SymInt``, while
    ``torch.export`` traces with dynamic shapes) passes as it is."""
    if isinstance(value, torch.SymInt):
        return cast(int, value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(name, f"an int >= {minimum}", describe(value))
    if value < minimum:
        raise ConfigError(name, f"an int >= {minimum}", value)
    return value


def check_lengths(name: str, lengths: object, T: int, B: int) -> Tensor:
    """Sequence lengths: an integer tensor ``(B,)`` with values in ``1..T`` (with values:
    not on the meta device). Under ``torch.compile`` tracing the range is asserted on the
    device instead (no Python branch on values).

    Raises:
        InputTypeError: not a 1-D integer tensor.
        DeviceError: on the meta device.
        ShapeError: another number of lengths, or a value outside ``1..T``.
    """
    if (
        not isinstance(lengths, Tensor)
        or lengths.is_floating_point()
        or lengths.is_complex()
        or lengths.dtype == torch.bool
        or lengths.dim() != 1
    ):
        raise InputTypeError(name, f"an integer tensor of shape ({B},)", describe(lengths))
    if lengths.is_meta:
        raise DeviceError(name, "a tensor with values (on the CPU or x's device)", "meta")
    if lengths.shape[0] != B:
        raise ShapeError(name, f"shape ({B},) (one length per sequence)", shape_str(lengths.shape))
    if torch.compiler.is_compiling():  # no Python branch on values while tracing
        ok = ((lengths >= 1) & (lengths <= T)).all()
        torch._assert_async(ok, f"{name}: expected values in 1..{T} (T)")
    elif bool((lengths < 1).any()) or bool((lengths > T).any()):
        raise ShapeError(name, f"values in 1..{T} (T)", lengths.tolist())
    return lengths


def check_choice(name: str, value: object, choices: Sequence[T]) -> T:
    """One of ``choices``; the message lists them all."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ConfigError(name, f"one of {listed}", repr(value))
    return cast("T", value)  # (one of the choices)


def check_real(name: str, value: object, *, minimum: float = 0.0, strict: bool = False) -> float:
    """A real number (not a bool, not NaN) ``>= minimum`` (``> minimum`` if ``strict``).

    Infinity passes when the bound allows it (a tolerance of ``inf`` accepts everything).
    """
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputTypeError(name, f"a float {bound}", describe(value))
    v = float(value)
    if math.isnan(v) or v < minimum or (strict and v == minimum):
        raise ConfigError(name, f"a float {bound}", value)
    return v


def check_probability(name: str, value: object) -> float:
    """A real number in [0, 1] (dropout rates)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputTypeError(name, "a float in [0, 1]", describe(value))
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(name, "a float in [0, 1]", value)
    return float(value)


def check_tensor(
    name: str,
    x: object,
    *,
    ranks: Sequence[int],
    size_last: int | None = None,
    like: Tensor | None = None,
    layout: str = "",
) -> Tensor:
    """A floating tensor of one of ``ranks``, last dim ``size_last``, matching ``like``.

    ``layout`` spells the expected shape for messages, e.g. ``"(T, B, I)"``.
    """
    expected = layout or " or ".join(f"rank {r}" for r in ranks)
    if not isinstance(x, Tensor):
        raise InputTypeError(name, f"a tensor of shape {expected}", describe(x))
    if not x.is_floating_point():
        raise InputTypeError(
            name, "a floating-point tensor (token ids go through an nn.Embedding first)", x.dtype
        )
    if x.dim() not in ranks:
        raise ShapeError(name, f"shape {expected}", shape_str(x.shape))
    if size_last is not None and x.shape[-1] != size_last:
        raise ShapeError(name, f"shape {expected} with last dim {size_last}", shape_str(x.shape))
    if like is not None:
        check_like(name, x, like)
    return x


def check_like(name: str, x: Tensor, like: Tensor) -> None:
    """``x`` shares ``like``'s dtype and device (the module's parameters)."""
    if x.dtype != like.dtype:
        raise DeviceError(name, f"dtype {like.dtype} (the module's parameters)", x.dtype)
    if x.device != like.device:
        raise DeviceError(name, f"device {like.device} (the module's parameters)", x.device)


def params_match(module: torch.nn.Module, x: Tensor) -> bool:
    """Whether every parameter of ``module`` (and its submodules) has ``x``'s dtype and
    device: :func:`check_params_like`'s test as one walk over the modules'
    ``_parameters``, building no names (a call's check where nothing is wrong)."""
    dtype, device = x.dtype, x.device
    todo: list[torch.nn.Module | None] = [module]
    while todo:
        m = todo.pop()
        if m is None:
            continue
        for p in m._parameters.values():
            if p is not None and (p.dtype != dtype or p.device != device):
                return False
        todo.extend(m._modules.values())
    return True


def check_params_like(
    name: str, x: Tensor, params: torch.nn.Module | Iterable[tuple[str, Tensor]]
) -> None:
    """Every parameter shares ``x``'s dtype and device.

    ``params`` is a module (its ``named_parameters()``) or ``(name, tensor)`` pairs.
    ``x`` has already been checked against the first parameter; this finds a part of the
    module (a layer, a policy, one weight) converted on its own, which would otherwise
    fail deep in a matrix product.
    """
    named = params.named_parameters() if isinstance(params, torch.nn.Module) else params
    for pname, p in named:
        if p.dtype != x.dtype or p.device != x.device:
            raise DeviceError(
                pname,
                f"the input's dtype {x.dtype} and device {x.device} (all parameters of the "
                f"module must share them; {name} has them)",
                f"{p.dtype} on {p.device}",
            )


def check_nonempty(name: str, x: Tensor, dims: Sequence[int], what: Sequence[str]) -> None:
    """No zero-length dimension among ``dims`` (named ``what`` in the message)."""
    for d, label in zip(dims, what):
        if x.shape[d] == 0:
            raise ShapeError(name, f"a non-empty {label} dimension", shape_str(x.shape))


def check_state(
    name: str, state: object, template: object, *, device: torch.device | None = None
) -> Any:
    """Check ``state`` against ``template`` (same structure, shapes, dtypes, devices).

    ``template`` is what ``initial_state`` returns, typically on the meta device: then
    devices are compared with ``device`` instead. Tuples are rebuilt as the template's
    type, so a plain ``(h, c)`` tuple becomes an ``LSTMState``. Returns the normalised
    state.
    """
    if isinstance(template, Tensor):
        if not isinstance(state, Tensor):
            raise InputTypeError(
                name, f"a tensor of shape {shape_str(template.shape)}", describe(state)
            )
        if template.is_complex() != state.is_complex() or not (
            state.is_floating_point() or state.is_complex()
        ):
            kind = "complex" if template.is_complex() else "floating-point"
            raise InputTypeError(name, f"a {kind} tensor", state.dtype)
        if state.shape != template.shape:
            raise StateError(name, f"shape {shape_str(template.shape)}", shape_str(state.shape))
        if state.dtype != template.dtype:
            raise DeviceError(name, f"dtype {template.dtype} (the input's)", state.dtype)
        want = device if template.device.type == "meta" else template.device
        if want is not None and state.device != want:
            raise DeviceError(name, f"device {want} (the input's)", state.device)
        return state
    if isinstance(template, tuple):
        fields = getattr(template, "_fields", None)
        kind = type(template).__name__ if fields else "tuple"
        if not isinstance(state, (tuple, list)) or isinstance(state, Tensor):
            raise InputTypeError(name, f"a {kind} of {len(template)} elements", describe(state))
        if len(state) != len(template):
            raise StateError(name, f"a {kind} of {len(template)} elements", len(state))
        labels = fields or [str(i) for i in range(len(template))]
        items = [
            check_state(f"{name}.{label}", s, t, device=device)
            for label, s, t in zip(labels, state, template)
        ]
        return type(template)(*items) if fields else tuple(items)
    return state


def map_state(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    """Apply ``fn`` to every tensor of a (nested, NamedTuple) state."""
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, tuple):
        items = [map_state(fn, s) for s in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    return state


def zip_state(fn: Callable[[Tensor, Tensor], Tensor], a: Any, b: Any) -> Any:
    """Combine two states of the same structure tensor by tensor."""
    if isinstance(a, Tensor):
        return fn(a, b)
    items = [zip_state(fn, x, y) for x, y in zip(a, b)]
    return type(a)(*items) if hasattr(a, "_fields") else tuple(items)


def first_tensor(state: Any) -> Tensor:
    """The first tensor of a state (its batch size, dtype and device)."""
    if isinstance(state, Tensor):
        return state
    for s in state:
        found = first_tensor(s)
        if found is not None:
            return found
    raise StateError("state", "at least one tensor", "none")  # pragma: no cover


def param_like(module: torch.nn.Module) -> Tensor | None:
    """A tensor carrying the module's dtype and device: its first parameter, if any."""
    for p in module.parameters():
        return p
    return None


def allocate(name: str, shape: Sequence[int], make: Callable[[], T]) -> T:
    """``make()``, with a size too large to allocate reported as a :class:`ConfigError`.

    ``name`` is the argument that set the size (e.g. ``"batch_size"``); any other
    failure of ``make`` propagates unchanged.
    """
    try:
        return make()
    except (RuntimeError, TypeError, OverflowError, MemoryError) as e:
        text = str(e).lower()
        if not any(k in text for k in ("allocate", "overflow", "out of memory")):
            raise
        raise ConfigError(
            name, "sizes whose tensors fit in memory", f"a tensor of shape {shape_str(shape)}"
        ) from None
