"""The one error family recurrentkit raises for bad input.

Every check at a public boundary raises a subclass of :class:`RecurrentKitError`.
Value problems (shapes, sizes, options, states) are also :class:`ValueError`;
wrong types (an integer tensor where floats are needed, a tensor where a tuple
state is expected) are also :class:`TypeError`, so ``except ValueError`` keeps
working for code written against torch.nn.

Messages follow one pattern: ``<argument>: expected <what>, got <what>``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeviceError",
    "InputTypeError",
    "RecurrentKitError",
    "ShapeError",
    "StateError",
]


class RecurrentKitError(Exception):
    """Base class of every error recurrentkit raises on bad input."""

    def __init__(self, argument: str, expected: str, got: object) -> None:
        self.argument = argument
        self.expected = expected
        self.got = got
        super().__init__(f"{argument}: expected {expected}, got {got}")


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
