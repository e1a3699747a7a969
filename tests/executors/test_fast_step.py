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


# -- the executor kept between steps without autograd (executors.fast.step_layers) -----


def _steps_match_reference(stack: rk.Stack, x: torch.Tensor) -> None:
    """Step ``stack`` without autograd; each step equals the reference executor's."""
    ref = copy.deepcopy(stack)
    ref.executor = "reference"
    s = s_ref = None
    with torch.no_grad():
        for t in range(x.shape[0]):
            y, s = stack.step(x[t], s)
            y_ref, s_ref = ref.step(x[t], s_ref)
            torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)


def _kept_executors(stack: rk.Stack, x: torch.Tensor) -> set[int]:
    """The executors kept for ``stack`` while stepping it over ``x`` without autograd."""
    from recurrentkit.executors import fast

    seen = set()
    with torch.no_grad():
        s = None
        for t in range(x.shape[0]):
            _, s = stack.step(x[t], s)
            seen.add(id(fast._STEP_LAYERS[stack][1]))
    return seen


def test_sampling_steps_keep_one_executor(checks: SimpleNamespace) -> None:
    from recurrentkit.executors import fast

    stack = checks.build("gru", "cross_layer", "auto")
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    seen = _kept_executors(stack, x)
    assert len(seen) == 1
    s = None
    for t in range(2):  # with autograd: a new executor per step, none kept for it
        _, s = stack.step(x[t], s)
    assert id(fast._STEP_LAYERS[stack][1]) in seen


@pytest.mark.parametrize("executor", ["auto", "handbuilt"])
def test_a_kept_executor_follows_changes_between_steps(
    checks: SimpleNamespace, executor: str
) -> None:
    """Whatever changes between two sampling steps, the next step computes what the
    reference computes for the stack as it is then."""
    torch.manual_seed(0)
    stack = rk.Stack(
        [rk.GRUCell(3, 5), rk.GRUCell(5, 5), rk.RNNCell(5, 5)],
        routing="cross_layer",
        dropout=0.5,
        executor=executor,
    ).double()
    stack.eval()
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    changes = [
        lambda: setattr(stack.cells[1], "reset", "before"),  # the layer leaves torch's op
        lambda: setattr(stack.cells[2], "nonlinearity", "relu"),
        lambda: stack.cells.__setitem__(0, rk.GRUCell(3, 5).double()),
        lambda: setattr(stack, "executor", "handbuilt" if executor == "auto" else "auto"),
        lambda: stack.float().double(),  # new storage for every weight
        lambda: torch.nn.init.normal_(stack.cells[1].weight_hh),  # in place
    ]
    for change in changes:
        _steps_match_reference(stack, x)
        change()
        _steps_match_reference(stack, x)


NEWER_CELLS = {
    "mgu": rk.cells.MGUCell,
    "coupled": rk.cells.CoupledLSTMCell,
    "indrnn": rk.cells.IndRNNCell,
    "ln_gru": rk.cells.LayerNormGRUCell,
    "ln_lstm": rk.cells.LayerNormLSTMCell,
    "mingru": rk.MinGRUCell,
    "minlstm": rk.MinLSTMCell,
    "lru": rk.LRUCell,
}


@pytest.mark.parametrize("cell", list(NEWER_CELLS))
def test_the_newer_built_in_cells_keep_their_executor_and_follow_changes(cell: str) -> None:
    """The built-in cells without a kernel keep one executor across sampling steps too
    (their plan follows from their exact type), and a step after their weights change
    in place, or after a layer is replaced, still equals the reference's."""
    make = NEWER_CELLS[cell]
    torch.manual_seed(0)
    routing = "independent" if cell == "lru" else "cross_layer"  # (the LRU's state is complex)
    stack = rk.Stack([make(3, 5), make(5, 5)], routing).double().eval()
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    assert len(_kept_executors(stack, x)) == 1
    _steps_match_reference(stack, x)
    with torch.no_grad():
        for p in stack.cells[1].parameters():
            p.add_(0.1)
    _steps_match_reference(stack, x)
    stack.cells[0] = make(3, 5).double()
    _steps_match_reference(stack, x)


def test_a_kept_executor_follows_train_mode_and_dropout(checks: SimpleNamespace) -> None:
    torch.manual_seed(0)
    stack = rk.Stack([rk.GRUCell(3, 5), rk.GRUCell(5, 5)], dropout=0.0).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad():
        y0, _ = stack.step(x)
        stack.dropout = 0.9  # train mode: the layer below's output is dropped now
        torch.manual_seed(1)
        y1, _ = stack.step(x)
        ref = copy.deepcopy(stack)
        ref.executor = "reference"
        torch.manual_seed(1)
        y_ref, _ = ref.step(x)
        stack.eval()
        y2, _ = stack.step(x)
    torch.testing.assert_close(y1, y_ref, rtol=0, atol=1e-10)
    assert not torch.allclose(y0, y1)
    torch.testing.assert_close(y2, y0, rtol=0, atol=1e-10)


def test_user_cells_get_a_new_executor_each_step(checks: SimpleNamespace) -> None:
    from recurrentkit.executors import fast

    stack = checks.build("user", "independent", "auto")
    x, _ = checks.inputs(stack)
    with torch.no_grad():
        stack.step(x[0])
    assert stack not in fast._STEP_LAYERS
