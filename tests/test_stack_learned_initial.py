"""``Stack(..., initial_state="learned")``: a parameter for each initial state the policy
reads, and only those; every executor runs from them and trains them."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

import recurrentkit as rk

pytestmark = pytest.mark.filterwarnings("ignore::recurrentkit.routing.LeakWarning")

D = torch.float64
POLICIES = ["independent", "shared", "residual", "cross_layer", "handoff"]
CELLS = {
    "gru": lambda i, h: rk.GRUCell(i, h, dtype=D),
    "lstm": lambda i, h: rk.LSTMCell(i, h, dtype=D),
    "rnn": lambda i, h: rk.RNNCell(i, h, dtype=D),
    "nested_lstm": lambda i, h: rk.NestedLSTMCell(i, h, dtype=D),
}


def _stack(cell: str, policy: Any, executor: str = "auto") -> rk.Stack:
    torch.manual_seed(5)
    cells = [CELLS[cell](3 if k == 0 else 4, 4) for k in range(3)]
    stack = rk.Stack(cells, policy, executor=executor, initial_state="learned")
    with torch.no_grad():  # away from zero, so that using them shows
        for p in stack.initial_states.values():
            p.copy_(torch.randn_like(p))
    return stack


def _flat(state: Any) -> list[Tensor]:
    return [state] if isinstance(state, Tensor) else [t for s in state for t in _flat(s)]


@pytest.mark.parametrize(
    ("policy", "layers"),
    [
        ("independent", {0, 1, 2}),
        ("residual", {0, 1, 2}),
        ("cross_layer", {0, 1, 2}),
        ("shared", {0}),
        ("handoff", {0}),
        (rk.routing.Shared(carry="last"), {2}),
    ],
    ids=["independent", "residual", "cross_layer", "shared", "handoff", "shared_last"],
)
def test_only_the_initial_states_the_policy_reads_are_parameters(
    policy: Any, layers: set[int]
) -> None:
    stack = _stack("lstm", policy)
    assert set(stack.initial_states) == {f"initial_l{k}_{f}" for k in layers for f in "hc"}
    assert all(
        n.startswith("initial_states.") for n in dict(stack.named_parameters()) if "initial" in n
    )


def test_zeros_makes_no_parameters_and_learned_starts_at_zero() -> None:
    plain = rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 4)])
    assert len(plain.initial_states) == 0
    learned = rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 4)], initial_state="learned")
    learned.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(5, 2, 3)
    assert torch.equal(plain(x)[0], learned(x)[0])  # zeros at first: the same function
    with pytest.raises(rk.ConfigError, match="initial_state"):
        rk.Stack([rk.GRUCell(3, 4)], initial_state="random")


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("executor", ["auto", "handbuilt"])
def test_every_executor_runs_from_them_and_trains_them(
    cell: str, policy: str, executor: str
) -> None:
    """Equal to the reference executor in float64: outputs, final states, and every
    gradient, the learned initial states' included (with lengths)."""
    ref, fast = _stack(cell, policy, "reference"), _stack(cell, policy, executor)
    x = torch.randn(6, 4, 3, dtype=D)
    lengths = torch.tensor([6, 2, 5, 1])
    outs = []
    for stack in (ref, fast):
        y, s = stack(x, lengths=lengths)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=D).view_as(y)).sum()
        loss = loss + sum((t * 0.3).sum() for t in _flat(s))
        grads = torch.autograd.grad(loss, list(stack.parameters()))
        outs.append([y, *_flat(s), *grads])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)


def test_the_initial_state_is_the_parameter_expanded_and_a_given_state_overrides() -> None:
    stack = _stack("gru", "independent")
    s0 = stack.initial_state(3)
    for k in range(3):
        assert torch.equal(s0[k], stack.initial_states[f"initial_l{k}"].expand(3, -1))
    x = torch.randn(5, 3, 3, dtype=D)
    zeros = tuple(torch.zeros(3, 4, dtype=D) for _ in range(3))
    plain = rk.Stack(list(stack.cells), "independent")  # the same cells, zeros
    assert torch.equal(stack(x, zeros)[0], plain(x, zeros)[0])  # passing a state overrides
    assert not torch.allclose(stack(x)[0], plain(x)[0])  # None: the learned ones


def test_steps_start_from_them_and_equal_the_whole_sequence() -> None:
    stack = _stack("lstm", "shared")
    x = torch.randn(4, 2, 3, dtype=D)
    y, _ = stack(x)
    state, ys = None, []
    for t in range(4):
        y_t, state = stack.step(x[t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys), y, rtol=0, atol=1e-12)


def test_the_drop_ins_keep_torch_zeros() -> None:
    gru = rk.GRU(3, 4, 2)
    assert not any("initial" in n for n, _ in gru.named_parameters())


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("policy", POLICIES)
def test_no_learned_initial_state_is_dead(cell: str, policy: str) -> None:
    """Each learned parameter is read: a backward reaches every one (a cell's state
    field its step never reads, like the Nested LSTM's inner h, gets none)."""
    stack = _stack(cell, policy)
    y, s = stack(torch.randn(3, 2, 3, dtype=D))
    params = list(stack.initial_states.values())
    grads = torch.autograd.grad(y.sum(), params, allow_unused=True)
    assert params and all(g is not None for g in grads)
