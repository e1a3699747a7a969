"""Every backbone cell and regulariser under every routing policy and executor equals the
reference executor in float64: outputs, final states and every gradient (input, initial
state, parameters), with and without ``lengths`` (``checks.same_run``).

Regularisers draw random masks: each run starts from one seed. Zoneout draws a mask per
step over the rows that step runs; the fast plans run only the sequences still going
(sorted by length), the reference every row, so with ``lengths`` in training the two
draw different (equally distributed) masks, as inter-layer dropout does: there the
test is each unit's rule (kept or new), in tests/cells/test_wrappers.py. Recurrent
dropout's mask travels in the state and weight drop's is drawn per call: equal draws
under every plan.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import recurrentkit as rk

POLICIES = ["independent", "residual", "handoff", "shared", "cross_layer"]
EXECUTORS = ["auto", "handbuilt"]
RAGGED = torch.tensor([6, 2, 5, 1])
BACKBONES = [
    "mgu",
    "mgu_nobias",
    "coupled_lstm",
    "coupled_lstm_nobias",
    "indrnn",
    "indrnn_tanh",
    "ln_gru",
    "ln_gru_nobias",
    "ln_lstm",
    "ln_lstm_nobias",
]
WRAPPED = [
    "zoneout_mgu",
    "zoneout_ln_lstm",
    "zoneout_lstm",
    "zoneout_nested",
    "zoneout_user",
    "rdrop_gru",
    "rdrop_coupled",
    "rdrop_indrnn",
    "zoneout_rdrop_lstm",
    "weightdrop_mgu",
]


class Seeded(nn.Module):
    """``stack`` run from one seed at every call (its parameters are this module's)."""

    def __init__(self, stack: rk.Stack) -> None:
        super().__init__()
        self.stack = stack

    def forward(self, x: Tensor, state: Any = None, **kw: Any) -> Any:
        torch.manual_seed(2024)
        return self.stack(x, state, **kw)


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cell", BACKBONES)
def test_backbones_equal_the_reference(
    checks: SimpleNamespace, cell: str, policy: str, executor: str, ragged: bool
) -> None:
    ref, fast = checks.build(cell, policy, "reference"), checks.build(cell, policy, executor)
    x, state = checks.inputs(ref)
    checks.same_run(ref, fast, x, state, RAGGED if ragged else None)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cell", WRAPPED)
def test_regularisers_in_eval_mode_equal_the_reference(
    checks: SimpleNamespace, cell: str, policy: str, executor: str
) -> None:
    ref = checks.build(cell, policy, "reference").eval()
    fast = checks.build(cell, policy, executor).eval()
    x, state = checks.inputs(ref)
    checks.same_run(ref, fast, x, state, RAGGED)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cell", WRAPPED)
def test_regularisers_in_training_mode_equal_the_reference(
    checks: SimpleNamespace, cell: str, policy: str, executor: str
) -> None:
    """The same masks on every plan (zoneout: without lengths, see the module doc)."""
    ref, fast = checks.build(cell, policy, "reference"), checks.build(cell, policy, executor)
    assert ref.training and fast.training
    x, state = checks.inputs(ref)
    lengths = None if cell.startswith("zoneout") else RAGGED
    checks.same_run(Seeded(ref), Seeded(fast), x, state, lengths)


@pytest.mark.parametrize("cell", ["zoneout_mgu", "rdrop_coupled", "zoneout_lstm"])
def test_the_regularisers_run_on_the_split_plan(checks: SimpleNamespace, cell: str) -> None:
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    for policy, plan in (("residual", "layer_by_layer"), ("cross_layer", "step_loop")):
        e = checks.build(cell, policy, "auto").explain(x)
        assert (e.plan, e.layers) == (plan, ("split_step",) * 3)
    assert checks.build("weightdrop_mgu", "independent", "auto").explain(x).layers == (
        ("cell_loop",) * 3  # a cell inside WeightDrop runs on its own call (a mask per call)
    )


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "handoff"])  # (not causal)
@pytest.mark.parametrize("cell", ["mgu", "ln_lstm", "rdrop_coupled", "zoneout_lstm"])
def test_stepping_equals_the_whole_sequence(
    checks: SimpleNamespace, cell: str, policy: str
) -> None:
    """``Stack.step`` over a sequence equals one call (causal policies) in eval mode, and
    in training mode for recurrent dropout, whose mask travels in the state."""
    stack = checks.build(cell, policy, "auto")
    if cell.startswith("zoneout"):
        stack.eval()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    state = stack.initial_state(4)
    y, final = stack(x, state)
    s, ys = state, []
    for t in range(6):
        y_t, s = stack.step(x[t], s)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys), y, rtol=0, atol=1e-12)
    for a, b in zip(checks.flat(s), checks.flat(final)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_policies_reject_what_their_shape_rules_forbid() -> None:
    """The cells meet the rules of every policy where their widths allow; where not,
    the policy's own ConfigError names the layer."""
    with pytest.raises(rk.ConfigError, match=r"^cells\[1\].output_size: expected 4"):
        rk.Stack([rk.MGUCell(3, 4), rk.MGUCell(4, 5)], "residual")
    with pytest.raises(rk.ConfigError, match=r"^cells\[1\]: expected a state of the same shape"):
        rk.Stack([rk.CoupledLSTMCell(3, 4), rk.CoupledLSTMCell(4, 5)], "shared")
    with pytest.raises(rk.ConfigError, match=r"^cells\[1\]: expected a state of the same shape"):
        rk.Stack([rk.IndRNNCell(3, 4), rk.LayerNormLSTMCell(4, 4)], "handoff")
    with pytest.raises(rk.ConfigError, match=r"^cells\[1\]: expected a state of the same shape"):
        rk.Stack([rk.RecurrentDropout(rk.GRUCell(3, 4), 0.1), rk.GRUCell(4, 4)], "shared")
    # mixed kinds with one state shape are fine, under every policy
    for policy in POLICIES:
        rk.Stack([rk.MGUCell(3, 4), rk.IndRNNCell(4, 4), rk.LayerNormGRUCell(4, 4)], policy)
        rk.Stack([rk.CoupledLSTMCell(3, 4), rk.Zoneout(rk.LayerNormLSTMCell(4, 4), 0.1)], policy)
