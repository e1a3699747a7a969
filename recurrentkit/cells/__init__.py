"""Hand-built recurrent cells: one time step each, torch.nn's parameter names."""

from recurrentkit.cells.gru import GRUCell
from recurrentkit.cells.lstm import LSTMCell, LSTMState
from recurrentkit.cells.nested_lstm import NestedLSTMCell, NestedLSTMState
from recurrentkit.cells.protocol import (
    Cell,
    CellBase,
    CellState,
    StackState,
    splits_step,
    takes_linear,
)
from recurrentkit.cells.rnn import RNNCell

__all__ = [
    "Cell",
    "CellBase",
    "CellState",
    "GRUCell",
    "LSTMCell",
    "LSTMState",
    "NestedLSTMCell",
    "NestedLSTMState",
    "RNNCell",
    "StackState",
    "splits_step",
    "takes_linear",
]
