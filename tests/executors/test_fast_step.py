"""Stack.step on the fast executors: equal to forward, and checked once per sampling loop."""

from __future__ import annotations

import copy
import pickle
from types import SimpleNamespace

import pytest
import torch

import recurrentkit as rk

CAUSAL = ["independent", "shared", "residual", "cross_layer"]


@pytest.mark.parametrize("routing", CAUSAL)
@pytest.mark.parametrize("cell", ["gru", "gru_before", "lstm_proj", "nested", "rnn", "user"])
@pytest.mark.parametrize("executor", ["auto", "handbuilt"])
def test_stepping_equals_forward(
    checks: SimpleNamespace, routing: str, cell: str, executor: str
) -> None:
    stack = checks.build(cell, routing, executor)
    x, state = checks.inputs(stack)
    y, final = stack(x, state)
    s = state
    for t in range(x.shape[0]):
        y_t, s = stack.step(x[t], s)
        torch.testing.assert_close(y_t, y[t], rtol=0, atol=1e-10)
    for a, b in zip(checks.flat(s), checks.flat(final)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_unbatched_steps(checks: SimpleNamespace) -> None:
    stack = checks.build("lstm", "shared", "auto")
    x = torch.randn(5, 3, dtype=torch.float64)
    y, _ = stack(x)
    s = None
    for t in range(5):
        y_t, s = stack.step(x[t], s)
        assert y_t.shape == (5,) and s[0].h.shape == (5,)
        torch.testing.assert_close(y_t, y[t], rtol=0, atol=1e-10)


def test_a_sampling_loop_checks_its_state_once(
    checks: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = checks.build("gru", "independent", "auto")
    calls = []
    original = rk.Stack._check_state
    monkeypatch.setattr(
        rk.Stack, "_check_state", lambda self, *a: calls.append(1) or original(self, *a)
    )
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    s = None
    for t in range(6):
        _, s = stack.step(x[t], s)
    assert len(calls) == 1  # the first step; its returned states are trusted after
    assert isinstance(s, tuple) and len(s) == 3
    other = checks.build("gru", "independent", "auto")
    other.step(x[0], s)  # another stack's state is checked again
    stack.step(x[0], tuple(s))  # so is a rebuilt tuple
    assert len(calls) == 3
    with pytest.raises(rk.StateError):
        stack.step(x[0, :1], s)  # another input kind: batch size 1, the state's is 2


def test_a_trusted_state_still_meets_every_check(checks: SimpleNamespace) -> None:
    stack = checks.build("gru", "shared", "auto")
    x = torch.randn(2, 3, dtype=torch.float64)
    _, s = stack.step(x)
    stack.float()  # the stack changed: the old float64 state no longer fits
    with pytest.raises(rk.DeviceError):
        stack.step(x.float(), s)
    stack.double()
    stack.cells[1].float()  # one layer converted on its own, same input kind as before
    with pytest.raises(rk.DeviceError):
        stack.step(x, s)


def test_step_states_copy_and_pickle_as_plain_tuples(checks: SimpleNamespace) -> None:
    stack = checks.build("lstm", "independent", "auto")
    with torch.no_grad():  # (torch deep-copies graph leaves only)
        _, s = stack.step(torch.randn(2, 3, dtype=torch.float64))
    for clone in (copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
        assert type(clone) is tuple and len(clone) == 3
        assert isinstance(clone[0], rk.LSTMState)
        torch.testing.assert_close(clone[0].c, s[0].c)
