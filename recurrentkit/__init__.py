"""recurrentkit: readable recurrent cells, stacks with explicit state routing, torch.nn drop-ins.

The public names, re-exported; nothing is defined here.
"""

from recurrentkit import interop, routing
from recurrentkit.analysis.causality import causality_violation, check_causal
from recurrentkit.cells import (
    Cell,
    CellBase,
    CellState,
    GRUCell,
    LSTMCell,
    LSTMState,
    NestedLSTMCell,
    NestedLSTMState,
    RNNCell,
    StackState,
)
from recurrentkit.errors import (
    ConfigError,
    DeviceError,
    DeviceRuntimeError,
    InputTypeError,
    InputTypeRuntimeError,
    InputTypeValueError,
    RecurrentKitError,
    ShapeError,
    ShapeRuntimeError,
    StateError,
    StateRuntimeError,
    UnsupportedError,
)
from recurrentkit.nn import GRU, LSTM, RNN
from recurrentkit.routing import RoutingPolicy
from recurrentkit.stack import Stack, StackCell

__version__ = "0.1.0"

__all__ = [
    "Cell",
    "CellBase",
    "CellState",
    "ConfigError",
    "DeviceError",
    "DeviceRuntimeError",
    "GRU",
    "GRUCell",
    "InputTypeError",
    "InputTypeRuntimeError",
    "InputTypeValueError",
    "LSTM",
    "LSTMCell",
    "LSTMState",
    "NestedLSTMCell",
    "NestedLSTMState",
    "RNN",
    "RNNCell",
    "RecurrentKitError",
    "RoutingPolicy",
    "ShapeError",
    "ShapeRuntimeError",
    "Stack",
    "StackCell",
    "StackState",
    "StateError",
    "StateRuntimeError",
    "UnsupportedError",
    "causality_violation",
    "check_causal",
    "interop",
    "routing",
]
