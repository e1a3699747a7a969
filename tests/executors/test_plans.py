"""The plan table: which plan each call runs, pinned, and ``Stack.explain`` tells the truth.

``PINNED`` is the plan of every built-in policy x cell x executor for a padded batch, the
same batch with ``lengths``, a packed batch, one step with autograd and one step without
(sampling); a per-layer plan appears in brackets (one name where every layer has it).
A change to the plan table or to a predicate shows up here as a diff to review.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence

import recurrentkit as rk
from recurrentkit.executors import fast, plans

CELLS = {
    "rnn": lambda i, h: rk.RNNCell(i, h),
    "gru": lambda i, h: rk.GRUCell(i, h),
    "gru_before": lambda i, h: rk.GRUCell(i, h, reset="before"),
    "lstm": lambda i, h: rk.LSTMCell(i, h),
    "nested_lstm": lambda i, h: rk.NestedLSTMCell(i, h),
}
POLICIES = ["independent", "shared", "residual", "cross_layer", "handoff"]
INPUTS = ["padded", "lengths", "packed", "step", "step_no_grad"]

PINNED: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("rnn", "independent", "auto"): (
        "torch_multilayer",
        "torch_multilayer",
        "torch_multilayer_rows",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("rnn", "independent", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layers_on_rows[kernel]",
        "layers_on_rows[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("rnn", "shared", "auto"): (
        "shared_batched",
        "shared_batched",
        "shared_batched",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("rnn", "shared", "handbuilt"): (
        "shared_batched",
        "shared_batched",
        "shared_batched",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("rnn", "residual", "auto"): (
        "layer_by_layer[torch_op]",
        "layer_by_layer[torch_op]",
        "layer_by_layer[torch_op]",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("rnn", "residual", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("rnn", "cross_layer", "auto"): (
        "step_loop[kernel_step]",
        "step_loop[kernel_step]",
        "step_loop[kernel_step]",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("rnn", "cross_layer", "handbuilt"): (
        "step_loop[kernel_step]",
        "step_loop[kernel_step]",
        "step_loop[kernel_step]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("rnn", "handoff", "auto"): (
        "layer_by_layer[torch_op]",
        "layer_by_layer[torch_op]",
        "layer_by_layer[torch_op]",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("rnn", "handoff", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru", "independent", "auto"): (
        "torch_multilayer",
        "torch_multilayer",
        "torch_multilayer_rows",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("gru", "independent", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layers_on_rows[kernel]",
        "layers_on_rows[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru", "shared", "auto"): (
        "shared_batched",
        "shared_batched",
        "shared_batched",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("gru", "shared", "handbuilt"): (
        "shared_batched",
        "shared_batched",
        "shared_batched",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru", "residual", "auto"): (
        "layer_by_layer[torch_op]",
        "layer_by_layer[torch_op]",
        "layer_by_layer[torch_op]",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("gru", "residual", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru", "cross_layer", "auto"): (
        "cross_whole_run",
        "cross_whole_run",
        "cross_whole_run",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("gru", "cross_layer", "handbuilt"): (
        "cross_whole_run",
        "cross_whole_run",
        "cross_whole_run",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru", "handoff", "auto"): (
        "layer_by_layer[torch_op]",
        "layer_by_layer[torch_op]",
        "layer_by_layer[torch_op]",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("gru", "handoff", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru_before", "independent", "auto"): (
        "layer_by_layer[kernel]",
        "layers_on_rows[kernel]",
        "layers_on_rows[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru_before", "independent", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layers_on_rows[kernel]",
        "layers_on_rows[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru_before", "shared", "auto"): (
        "shared_batched",
        "shared_batched",
        "shared_batched",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru_before", "shared", "handbuilt"): (
        "shared_batched",
        "shared_batched",
        "shared_batched",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru_before", "residual", "auto"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru_before", "residual", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru_before", "cross_layer", "auto"): (
        "step_loop[kernel_step]",
        "step_loop[kernel_step]",
        "step_loop[kernel_step]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru_before", "cross_layer", "handbuilt"): (
        "step_loop[kernel_step]",
        "step_loop[kernel_step]",
        "step_loop[kernel_step]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru_before", "handoff", "auto"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("gru_before", "handoff", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("lstm", "independent", "auto"): (
        "torch_multilayer",
        "torch_multilayer",
        "torch_multilayer_rows",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("lstm", "independent", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layers_on_rows[kernel]",
        "layers_on_rows[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("lstm", "shared", "auto"): (
        "shared_batched",
        "shared_batched",
        "shared_batched",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("lstm", "shared", "handbuilt"): (
        "shared_batched",
        "shared_batched",
        "shared_batched",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("lstm", "residual", "auto"): (
        "layer_by_layer[torch_op]",
        "layer_by_layer[torch_op]",
        "layer_by_layer[torch_op]",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("lstm", "residual", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("lstm", "cross_layer", "auto"): (
        "cross_whole_run",
        "cross_whole_run",
        "cross_whole_run",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("lstm", "cross_layer", "handbuilt"): (
        "cross_whole_run",
        "cross_whole_run",
        "cross_whole_run",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("lstm", "handoff", "auto"): (
        "layer_by_layer[torch_op]",
        "layer_by_layer[torch_op]",
        "layer_by_layer[torch_op]",
        "step[kernel_step]",
        "step[torch_cell]",
    ),
    ("lstm", "handoff", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("nested_lstm", "independent", "auto"): (
        "layer_by_layer[kernel]",
        "layers_on_rows[kernel]",
        "layers_on_rows[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("nested_lstm", "independent", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layers_on_rows[kernel]",
        "layers_on_rows[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("nested_lstm", "shared", "auto"): (
        "shared_batched",
        "shared_batched",
        "shared_batched",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("nested_lstm", "shared", "handbuilt"): (
        "shared_batched",
        "shared_batched",
        "shared_batched",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("nested_lstm", "residual", "auto"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("nested_lstm", "residual", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("nested_lstm", "cross_layer", "auto"): (
        "step_loop[kernel_step]",
        "step_loop[kernel_step]",
        "step_loop[kernel_step]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("nested_lstm", "cross_layer", "handbuilt"): (
        "step_loop[kernel_step]",
        "step_loop[kernel_step]",
        "step_loop[kernel_step]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("nested_lstm", "handoff", "auto"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
    ("nested_lstm", "handoff", "handbuilt"): (
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "layer_by_layer[kernel]",
        "step[kernel_step]",
        "step[kernel_step]",
    ),
}


def _stack(cell: str, policy: str, executor: str) -> rk.Stack:
    torch.manual_seed(0)
    make = CELLS[cell]
    return rk.Stack([make(3, 4), make(4, 4)], policy, executor=executor)


X = torch.randn(5, 2, 3)
LENGTHS = torch.tensor([5, 3])


def _call(stack: rk.Stack, inp: str, explain: bool) -> Any:
    """``stack.explain`` (or the call itself) on input kind ``inp``."""
    fn = stack.explain if explain else stack
    if inp == "padded":
        return fn(X)
    if inp == "lengths":
        return fn(X, lengths=LENGTHS)
    if inp == "packed":
        return fn(pack_padded_sequence(X, LENGTHS))
    if explain:
        if inp == "step_no_grad":
            with torch.no_grad():
                return stack.explain(X[0], step=True)
        return stack.explain(X[0], step=True)
    if inp == "step_no_grad":
        with torch.no_grad():
            return stack.step(X[0])
    return stack.step(X[0])


def _short(e: plans.Explanation) -> str:
    if e.layers is None:
        return e.plan
    names = sorted(set(e.layers)) if len(set(e.layers)) == 1 else list(e.layers)
    return f"{e.plan}[{','.join(names)}]"


@pytest.mark.parametrize(("cell", "policy", "executor"), list(PINNED))
def test_the_plan_of_every_builtin_combination_is_pinned(
    cell: str, policy: str, executor: str
) -> None:
    stack = _stack(cell, policy, executor)
    got = tuple(_short(_call(stack, inp, explain=True)) for inp in INPUTS)
    assert got == PINNED[(cell, policy, executor)]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("policy", POLICIES)
def test_the_reference_executor_explains_itself(cell: str, policy: str) -> None:
    stack = _stack(cell, policy, "reference")
    for inp in INPUTS:
        e = _call(stack, inp, explain=True)
        assert (e.plan, e.layers, e.executor) == ("reference", None, "reference")


def _record(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every plan ``fast`` chooses while a call runs, as ``(table, plan)``."""
    names = {id(plans.WHOLE_RUN): "run", id(plans.PACKED): "packed", id(plans.LAYER): "layer"}
    names[id(plans.STEP)] = "step"
    chosen: list[tuple[str, str]] = []
    real = fast.choose

    def spy(table: Any, *args: Any) -> plans.Plan:
        plan = real(table, *args)
        chosen.append((names[id(table)], plan.name))
        return plan

    monkeypatch.setattr(fast, "choose", spy)
    return chosen


@pytest.mark.parametrize(("cell", "policy", "executor"), list(PINNED))
@pytest.mark.parametrize("inp", ["padded", "lengths", "packed"])
def test_explain_names_the_plan_that_runs(
    monkeypatch: pytest.MonkeyPatch, cell: str, policy: str, executor: str, inp: str
) -> None:
    stack = _stack(cell, policy, executor)
    said = _call(stack, inp, explain=True)
    chosen = _record(monkeypatch)
    _call(stack, inp, explain=False)
    whole = [p for table, p in chosen if table in ("run", "packed") and p != "padded"]
    assert whole[0] == said.plan
    layer_plans = tuple(p for table, p in chosen if table == "layer")
    if said.plan in ("one_layer", "layer_by_layer"):
        assert layer_plans == said.layers
    else:
        assert layer_plans == ()


class DeclaresIndependent(rk.routing.RoutingPolicy):
    """A user policy (not a subclass) with independent routing's equations, declared."""

    name = "mine"
    layer_major = True
    reduces_to_cell = True
    rows_independent = True
    wiring = "independent"
    step = rk.routing.Independent.step
    run = rk.routing.Independent.run


def test_a_user_policy_that_declares_a_wiring_gets_its_plans() -> None:
    torch.manual_seed(1)
    cells = [rk.GRUCell(3, 4, dtype=torch.float64), rk.GRUCell(4, 4, dtype=torch.float64)]
    mine = rk.Stack(cells, DeclaresIndependent())
    assert mine.explain(X.double()).plan == "torch_multilayer"
    builtin = rk.Stack(cells, "independent", executor="reference")
    x = X.double()
    torch.testing.assert_close(mine(x)[0], builtin(x)[0], rtol=0, atol=1e-12)


def test_a_subclass_with_new_equations_loses_the_declarations() -> None:
    class Changed(rk.routing.Independent):
        def step(self, executor: Any, x: Tensor, states: tuple[Any, ...]) -> Any:
            return super().step(executor, x, states)

    class Same(rk.routing.Independent):
        pass

    assert (Same.wiring, Same.reduces_to_cell) == ("independent", True)
    assert (Changed.wiring, Changed.reduces_to_cell, Changed.rows_independent) == (
        None,
        False,
        False,
    )
    assert Changed.layer_major  # what run does is still declared by the base's run
    cells = [rk.GRUCell(3, 4), rk.GRUCell(4, 4)]
    assert rk.Stack(cells, Changed()).explain(X).plan == "layer_by_layer"


def test_shared_declares_its_wiring_by_carry() -> None:
    assert rk.routing.Shared("first").wiring == "shared_first"
    assert rk.routing.Shared("last").wiring is None


def test_an_explanation_reads_as_a_report() -> None:
    stack = rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 4)], "residual", executor="handbuilt")
    text = str(stack.explain(X))
    assert text.startswith("layer_by_layer (handbuilt): a layer-major policy")
    assert "layer 0: kernel" in text and "layer 1: kernel" in text


def test_explain_checks_its_input_as_the_call_does() -> None:
    stack = rk.Stack([rk.GRUCell(3, 4)])
    with pytest.raises(rk.ShapeError, match="x"):
        stack.explain(torch.randn(5, 2, 7))
    with pytest.raises(rk.ShapeError, match="lengths"):
        stack.explain(X, torch.tensor([6, 1]))
    with pytest.raises(rk.ConfigError, match="lengths"):
        stack.explain(X[0], torch.tensor([1, 1]), step=True)


def test_every_table_ends_in_a_plan_that_always_applies() -> None:
    for table in (plans.WHOLE_RUN, plans.PACKED, plans.LAYER, plans.STEP):
        names = [p.name for p in table]
        assert len(set(names)) == len(names)
        always = table[-1].when
        assert always(*([None] * always.__code__.co_argcount))
