"""Hand-built recurrent cells: one time step each, torch.nn's parameter names."""

from recurrentkit.cells.coupled_lstm import CoupledLSTMCell
from recurrentkit.cells.gru import GRUCell
from recurrentkit.cells.indrnn import IndRNNCell
from recurrentkit.cells.layer_norm import LayerNormGRUCell, LayerNormLSTMCell
from recurrentkit.cells.linear import LinearCellBase, MinGRUCell, MinLSTMCell
from recurrentkit.cells.lru import LRUCell
from recurrentkit.cells.lstm import LSTMCell, LSTMState
from recurrentkit.cells.mgu import MGUCell
from recurrentkit.cells.nested_lstm import NestedLSTMCell, NestedLSTMState
from recurrentkit.cells.protocol import (
    Cell,
    CellBase,
    CellState,
    StackState,
    scans_linearly,
    splits_step,
    takes_linear,
)
from recurrentkit.cells.rnn import RNNCell
from recurrentkit.cells.wrappers import (
    RecurrentDropout,
    RecurrentDropoutState,
    WeightDrop,
    Zoneout,
)

__all__ = [
    "Cell",
    "CellBase",
    "CellState",
    "CoupledLSTMCell",
    "GRUCell",
    "IndRNNCell",
    "LSTMCell",
    "LSTMState",
    "LayerNormGRUCell",
    "LRUCell",
    "LayerNormLSTMCell",
    "LinearCellBase",
    "MGUCell",
    "MinGRUCell",
    "MinLSTMCell",
    "NestedLSTMCell",
    "NestedLSTMState",
    "RNNCell",
    "RecurrentDropout",
    "RecurrentDropoutState",
    "StackState",
    "WeightDrop",
    "Zoneout",
    "scans_linearly",
    "splits_step",
    "takes_linear",
]
