"""recurrentkit: readable recurrent cells, stacks with explicit state routing, torch.nn drop-ins.

The public names, re-exported; nothing is defined here.
"""

from recurrentkit import export, interop, routing, scan, state
from recurrentkit.analysis.causality import causality_violation, check_causal
from recurrentkit.cells import (
    Cell,
    CellBase,
    CellState,
    CoupledLSTMCell,
    GRUCell,
    IndRNNCell,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    LRUCell,
    LSTMCell,
    LSTMState,
    MGUCell,
    MinGRUCell,
    MinLSTMCell,
    NestedLSTMCell,
    NestedLSTMState,
    RecurrentDropout,
    RecurrentDropoutState,
    RNNCell,
    StackState,
    WeightDrop,
    Zoneout,
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
from recurrentkit.tbptt import Chunk, TBPTTResult, tbptt
from recurrentkit.tbptt import chunks as tbptt_chunks

__version__ = "0.1.0"

__all__ = [
    "Cell",
    "CellBase",
    "CellState",
    "Chunk",
    "ConfigError",
    "CoupledLSTMCell",
    "DeviceError",
    "DeviceRuntimeError",
    "GRU",
    "GRUCell",
    "IndRNNCell",
    "InputTypeError",
    "InputTypeRuntimeError",
    "InputTypeValueError",
    "LSTM",
    "LSTMCell",
    "LRUCell",
    "LSTMState",
    "LayerNormGRUCell",
    "LayerNormLSTMCell",
    "MGUCell",
    "MinGRUCell",
    "MinLSTMCell",
    "NestedLSTMCell",
    "NestedLSTMState",
    "RNN",
    "RNNCell",
    "RecurrentDropout",
    "RecurrentDropoutState",
    "RecurrentKitError",
    "RoutingPolicy",
    "ShapeError",
    "ShapeRuntimeError",
    "Stack",
    "StackCell",
    "StackState",
    "StateError",
    "StateRuntimeError",
    "TBPTTResult",
    "UnsupportedError",
    "WeightDrop",
    "Zoneout",
    "causality_violation",
    "check_causal",
    "export",
    "interop",
    "routing",
    "scan",
    "state",
    "tbptt",
    "tbptt_chunks",
]
