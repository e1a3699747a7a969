"""The split-step plan: a cell that declares its split step runs fast with no kernel.

Its input is projected once per layer, its steps run on the projected rows with finished
sequences leaving the batch, and where its ``step_projected`` takes ``linear`` its
weights' gradients are made once per run (deferred). Every result equals the reference
executor in float64, forward and backward.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

import recurrentkit as rk
from recurrentkit.executors import deferred

D = torch.float64
RAGGED = torch.tensor([6, 2, 5, 1])
POLICIES = ["independent", "residual", "handoff", "shared", "cross_layer"]


class LinearLeakyCell(torch.nn.Module):
    """``h' = 0.5 h + tanh(W x + b + U h)`` with a split step that takes ``linear``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.weight_ih = torch.nn.Parameter(torch.randn(hidden_size, input_size) / 3)
        self.bias_ih = torch.nn.Parameter(torch.randn(hidden_size) / 3)
        self.weight_hh = torch.nn.Parameter(torch.randn(hidden_size, hidden_size) / 3)

    def initial_state(
        self, batch_size: int, *, device: Any = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        ref = self.weight_ih
        return torch.zeros(
            batch_size, self.hidden_size, device=device or ref.device, dtype=dtype or ref.dtype
        )

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        state = self.initial_state(x.shape[0], dtype=x.dtype) if state is None else state
        return self.step_projected(self.input_projection(x), state)

    def input_projection(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # (M, H)

    def step_projected(
        self, gi: Tensor, state: Tensor, linear: Any = F.linear
    ) -> tuple[Tensor, Tensor]:
        h = 0.5 * state + torch.tanh(gi + linear(state, self.weight_hh))
        return h, h


class Redefined(LinearLeakyCell):
    """Changes the call below the class that defines the split step: not a split cell."""

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, h = super().forward(x, state)
        return 2 * y, 2 * h


def _stack(policy: str, executor: str) -> rk.Stack:
    torch.manual_seed(7)
    cells = [LinearLeakyCell(3 if k == 0 else 5, 5) for k in range(3)]
    return rk.Stack(cells, policy, executor=executor).to(D)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("executor", ["auto", "handbuilt"])
def test_split_cells_equal_the_reference(
    checks: SimpleNamespace, policy: str, ragged: bool, executor: str
) -> None:
    ref, fast = _stack(policy, "reference"), _stack(policy, executor)
    x, state = checks.inputs(ref)
    checks.same_run(ref, fast, x, state, RAGGED if ragged else None)


@pytest.mark.parametrize("policy", ["independent", "residual", "handoff"])
def test_layer_major_policies_run_each_layer_on_the_split_plan(policy: str) -> None:
    e = _stack(policy, "handbuilt").explain(torch.randn(6, 4, 3, dtype=D))
    assert (e.plan, e.layers) == ("layer_by_layer", ("split_step",) * 3)


def test_the_recurrent_weight_gradient_is_deferred(
    checks: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a whole run the cell's ``linear`` is the run's deferred linear: each step's
    backward records its pair and the tap makes ``U``'s gradient once."""
    recorded: list[int] = []
    real = deferred.Slot.record

    def spy(self: deferred.Slot, dy: Tensor, x: Tensor) -> None:
        recorded.append(dy.shape[0])
        real(self, dy, x)

    monkeypatch.setattr(deferred.Slot, "record", spy)
    ref, fast = _stack("independent", "reference"), _stack("independent", "handbuilt")
    x, state = checks.inputs(ref)
    checks.same_run(ref, fast, x, state, RAGGED)
    # 3 layers x 6 steps, each step's rows (finished sequences leave the batch)
    rows = [int((RAGGED > t).sum()) for t in range(6)]  # [4, 3, 2, 2, 2, 1]
    assert sorted(recorded) == sorted(rows * 3)


def test_a_cell_that_redefines_its_call_loses_the_split() -> None:
    assert rk.cells.splits_step(LinearLeakyCell(3, 5))
    assert not rk.cells.splits_step(Redefined(3, 5))
    stack = rk.Stack([Redefined(3, 5)], executor="handbuilt")
    assert stack.explain(torch.randn(4, 2, 3)).layers == ("cell_loop",)


def test_a_split_cell_gradchecks_through_the_split_plan() -> None:
    torch.manual_seed(3)
    stack = rk.Stack([LinearLeakyCell(2, 3), LinearLeakyCell(3, 3)], executor="handbuilt").to(D)
    x = torch.randn(4, 2, 2, dtype=D, requires_grad=True)
    lengths = torch.tensor([4, 2])
    assert torch.autograd.gradcheck(lambda x: stack(x, lengths=lengths)[0], (x,))


class PlainGRU(rk.GRUCell):
    """A subclass that keeps the equations: no kernel (exact types only), its split step."""


class PlainLSTM(rk.LSTMCell):
    """Likewise for the LSTM."""


class PlainRNN(rk.RNNCell):
    """Likewise for the RNN."""


BUILTIN_SPLIT = {
    "gru": lambda i, h: PlainGRU(i, h),
    "gru_before": lambda i, h: PlainGRU(i, h, reset="before"),
    "gru_nobias": lambda i, h: PlainGRU(i, h, bias=False),
    "lstm": lambda i, h: PlainLSTM(i, h),
    "lstm_proj": lambda i, h: PlainLSTM(i, h, proj_size=3),
    "rnn": lambda i, h: PlainRNN(i, h, nonlinearity="relu"),
}


def _builtin_stack(cell: str, policy: str, executor: str) -> rk.Stack:
    torch.manual_seed(11)
    make = BUILTIN_SPLIT[cell]
    width = 3 if cell == "lstm_proj" else 5
    cells = [make(3 if k == 0 else width, 5) for k in range(2)]
    return rk.Stack(cells, policy, executor=executor).to(D)


@pytest.mark.parametrize("cell", list(BUILTIN_SPLIT))
@pytest.mark.parametrize("policy", ["independent", "shared", "cross_layer"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_builtin_cells_split_steps_equal_the_reference(
    checks: SimpleNamespace, cell: str, policy: str, ragged: bool
) -> None:
    """The built-in cells declare their split step: with their kernels out of reach (a
    subclass keeping the equations), they run on the split-step plan, equal to the
    reference in float64."""
    if policy != "independent" and cell == "lstm_proj":
        pytest.skip("shared and cross_layer need one state shape in every layer")
    ref, fast = _builtin_stack(cell, policy, "reference"), _builtin_stack(cell, policy, "auto")
    assert "split_step" in (fast.explain(torch.zeros(6, 4, 3, dtype=D)).layers or ())
    x, state = checks.inputs(ref)
    checks.same_run(ref, fast, x, state, RAGGED if ragged else None)


def test_a_subclass_that_changes_the_step_keeps_to_its_call() -> None:
    class Doubled(rk.GRUCell):
        def _step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
            y, h = super()._step(x, state)
            return 2 * y, 2 * h

    assert rk.cells.splits_step(PlainGRU(3, 5)) and not rk.cells.splits_step(Doubled(3, 5))
    assert rk.Stack([Doubled(3, 5)]).explain(torch.zeros(4, 2, 3)).layers == ("cell_loop",)
