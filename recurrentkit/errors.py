"""The one error family recurrentkit raises for bad input.

Every check at a public boundary raises a subclass of :class:`RecurrentKitError`.
Value problems (shapes, sizes, options, states) are also :class:`ValueError`;
wrong types (an integer tensor where floats are needed, a tensor where a tuple
state is expected) are also :class:`TypeError`, so ``except ValueError`` keeps
working for code written against torch.nn.

Messages follow one pattern: ``<argument>: expected <what>, got <what>``. Where
torch.nn words the same mistake, its own message follows in parentheses
(``... (torch.nn: Expected hidden size (2, 2, 5), got [2, 3, 5])``), so code and people
that look for torch's wording still find it.

The torch.nn drop-ins (:class:`recurrentkit.RNN`, :class:`~recurrentkit.GRU`,
:class:`~recurrentkit.LSTM`) raise, for each mistake, an error that is also the
class torch.nn raises for it: torch raises :class:`RuntimeError` for a wrong feature
size, an empty sequence and every hidden-state or device mismatch, so those are the
``*RuntimeError`` classes below (still a :class:`ShapeError`, :class:`StateError`,
... and so still a :class:`ValueError`); an integer input, a :class:`ValueError` in
torch, is an :class:`InputTypeValueError`.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeviceError",
    "DeviceRuntimeError",
    "InputTypeError",
    "InputTypeRuntimeError",
    "InputTypeValueError",
    "RecurrentKitError",
    "ShapeError",
    "ShapeRuntimeError",
    "StateError",
    "StateRuntimeError",
    "UnsupportedError",
]


class RecurrentKitError(Exception):
    """Base class of every error recurrentkit raises on bad input.

    Args:
        argument: what was wrong (an argument's name, ``hx[0] (h_0)``, ...).
        expected: what would have been accepted.
        got: what arrived.
        torch_message: torch.nn's own message for the same mistake, if it has one;
            appended to the message in parentheses.

    Attributes:
        argument, expected, got, torch_message: as given.
    """

    def __init__(
        self, argument: str, expected: str, got: object, *, torch_message: str | None = None
    ) -> None:
        self.argument = argument
        self.expected = expected
        self.got = got
        self.torch_message = torch_message
        text = f"{argument}: expected {expected}, got {got}"
        if torch_message:
            text += f" (torch.nn: {torch_message})"
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:  # pickles with its keyword argument
        return (_rebuild, (type(self), self.argument, self.expected, self.got, self.torch_message))


def _rebuild(
    cls: type[RecurrentKitError], argument: str, expected: str, got: object, torch_message: str
) -> RecurrentKitError:
    return cls(argument, expected, got, torch_message=torch_message)


class ShapeError(RecurrentKitError, ValueError):
    """A tensor has the wrong rank, feature size, batch size or length."""


class StateError(RecurrentKitError, ValueError):
    """A recurrent state has the wrong structure, layer count or shape."""


class ConfigError(RecurrentKitError, ValueError):
    """A constructor or option received a value outside what it accepts."""


class DeviceError(RecurrentKitError, ValueError):
    """Tensors that must share a device or dtype do not."""


class InputTypeError(RecurrentKitError, TypeError):
    """An argument has the wrong type (e.g. an integer tensor, a tensor for a tuple)."""


class ShapeRuntimeError(ShapeError, RuntimeError):
    """A :class:`ShapeError` that torch.nn raises as a :class:`RuntimeError`: a drop-in's
    input with the wrong feature size, or an empty sequence (``T = 0``)."""


class StateRuntimeError(StateError, RuntimeError):
    """A :class:`StateError` that torch.nn raises as a :class:`RuntimeError`: a drop-in's
    ``hx`` of the wrong shape, rank or tensor count."""


class DeviceRuntimeError(DeviceError, RuntimeError):
    """A :class:`DeviceError` that torch.nn raises as a :class:`RuntimeError`: a drop-in's
    input on another device than its parameters, ``hx`` on another dtype or device than
    the input, parameters that do not share one dtype and device."""


class InputTypeValueError(InputTypeError, ValueError):
    """An :class:`InputTypeError` that torch.nn raises as a :class:`ValueError`: a
    drop-in's integer input (torch: a dtype mismatch), a ``dropout`` that is not a
    number."""


class InputTypeRuntimeError(InputTypeError, RuntimeError):
    """An :class:`InputTypeError` that torch.nn raises as a :class:`RuntimeError`: an
    integer ``hx``, or one tensor where an LSTM takes the pair ``(h_0, c_0)``."""


class UnsupportedError(RecurrentKitError, RuntimeError):
    """An operation that recurrentkit refuses as a whole, naming what works instead
    (``torch.jit.script`` of a drop-in: use ``torch.export`` or ``torch.jit.trace``)."""
