"""Each routing policy equals a hand-written loop of its equations (float64).

``shared`` is checked against the seed study's snippet, written literally over the same
cell objects, to the bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import recurrentkit as rk
from recurrentkit.executors.reference import ReferenceExecutor
from recurrentkit.routing import RoutingPolicy

D = torch.float64
T, B = 5, 3


def gru(i: int, h: int) -> rk.GRUCell:
    return rk.GRUCell(i, h, dtype=D)


def lstm(i: int, h: int) -> rk.LSTMCell:
    return rk.LSTMCell(i, h, dtype=D)


# "To the bit" holds for the reference executor (the definition); "auto" and "handbuilt"
# run shared routing on its fast plan and are held to 1e-12 in float64.
EXECUTORS = rk.stack.EXECUTORS


def same(a: Tensor, b: Tensor, executor: str) -> None:
    if executor == "reference":
        assert torch.equal(a, b)
    else:
        close(a, b)


def close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def tensors(state: object) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    return [t for s in state for t in tensors(s)]  # type: ignore[union-attr]


def states_close(a: object, b: object) -> None:
    ta, tb = tensors(a), tensors(b)
    assert len(ta) == len(tb)
    for x, y in zip(ta, tb):
        close(x, y)


# -- shared: the seed snippet, literally ----------------------------------------------


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("make", [gru, lstm])
def test_shared_is_the_seed_snippet_two_layers(make: Callable, executor: str) -> None:
    torch.manual_seed(0)
    layer1, layer2 = make(3, 4), make(4, 4)
    stack = rk.Stack([layer1, layer2], "shared", executor=executor)
    x = torch.randn(T, B, 3, dtype=D)
    y, state = stack(x)

    hp1 = layer1.initial_state(B)
    outs = []
    for t in range(T):
        h1, hp1 = layer1(x[t], hp1)
        h2, hp2 = layer2(h1, hp1)
        outs.append(h2)
    same(y, torch.stack(outs), executor)
    for a, b in zip(tensors(state), tensors((hp1, hp2))):
        same(a, b, executor)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("make", [gru, lstm])
def test_shared_is_the_seed_snippet_three_layers(make: Callable, executor: str) -> None:
    torch.manual_seed(1)
    layer1, layer2, layer3 = make(3, 4), make(4, 4), make(4, 4)
    policy = rk.routing.Shared(carry="first")
    stack = rk.Stack([layer1, layer2, layer3], policy, executor=executor)
    x = torch.randn(T, B, 3, dtype=D)
    s0 = tuple(c.initial_state(B) for c in (layer1, layer2, layer3))
    s0 = (tuple(torch.randn_like(t) for t in tensors(s0[0])),) + s0[1:]
    if make is gru:
        s0 = (s0[0][0],) + s0[1:]
    y, state = stack(x, s0)

    hp1 = s0[0]
    outs = []
    for t in range(T):
        h1, hp1 = layer1(x[t], hp1)
        h2, hp2 = layer2(h1, hp1)
        h3, hp3 = layer3(h2, hp2)
        outs.append(h3)
    same(y, torch.stack(outs), executor)
    for a, b in zip(tensors(state), tensors((hp1, hp2, hp3))):
        same(a, b, executor)


def test_shared_ignores_the_states_of_higher_layers_with_carry_first() -> None:
    torch.manual_seed(2)
    stack = rk.Stack([gru(3, 4), gru(4, 4), gru(4, 4)], "shared")
    x = torch.randn(T, B, 3, dtype=D)
    s0 = tuple(torch.randn(B, 4, dtype=D) for _ in range(3))
    y1, _ = stack(x, s0)
    y2, _ = stack(x, (s0[0], s0[1] * 5, s0[2] - 1))
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("L", [2, 3])
def test_shared_carry_last_threads_one_memory(L: int, executor: str) -> None:
    torch.manual_seed(3)
    cells = [gru(3, 4)] + [gru(4, 4) for _ in range(L - 1)]
    stack = rk.Stack(cells, rk.routing.Shared(carry="last"), executor=executor)
    x = torch.randn(T, B, 3, dtype=D)
    s0 = tuple(torch.randn(B, 4, dtype=D) for _ in range(L))
    y, state = stack(x, s0)

    hp = s0[-1]  # layer 1 reads the top layer's last write
    outs = []
    for t in range(T):
        u, written = x[t], []
        for cell in cells:
            u, hp = cell(u, hp)
            written.append(hp)
        outs.append(u)
    same(y, torch.stack(outs), executor)
    for a, b in zip(state, written):
        same(a, b, executor)
    # and the first layer's incoming state is not what it read:
    y_first, _ = rk.Stack(cells, rk.routing.Shared(carry="first"))(x, s0)
    assert not torch.allclose(y, y_first)


# -- independent ----------------------------------------------------------------------


def independent_loop(cells: list, x: Tensor, s0: tuple) -> tuple[Tensor, tuple]:
    states, outs = list(s0), []
    for t in range(x.shape[0]):
        u = x[t]
        for k, cell in enumerate(cells):
            u, states[k] = cell(u, states[k])
        outs.append(u)
    return torch.stack(outs), tuple(states)


def test_independent_with_changing_widths() -> None:
    torch.manual_seed(4)
    cells = [gru(4, 7), lstm(7, 3), rk.RNNCell(3, 3, dtype=D)]
    stack = rk.Stack(cells, "independent")
    x = torch.randn(T, B, 4, dtype=D)
    s0 = tuple(
        type(s)(*(torch.randn_like(t) for t in s)) if isinstance(s, tuple) else torch.randn_like(s)
        for s in stack.initial_state(B)
    )
    y, state = stack(x, s0)
    assert y.shape == (T, B, 3)
    y_ref, state_ref = independent_loop(cells, x, s0)
    close(y, y_ref)
    states_close(state, state_ref)


# -- residual -------------------------------------------------------------------------


def test_residual_equations() -> None:
    torch.manual_seed(5)
    cells = [gru(3, 4), gru(4, 4), lstm(4, 4)]
    stack = rk.Stack(cells, "residual")
    x = torch.randn(T, B, 3, dtype=D)
    y, state = stack(x)

    states = [c.initial_state(B) for c in cells]
    outs = []
    for t in range(T):
        y1, states[0] = cells[0](x[t], states[0])
        u2 = y1  # layer 1 may change the width: no residual
        y2, states[1] = cells[1](u2, states[1])
        u3 = y2 + u2
        y3, states[2] = cells[2](u3, states[2])
        outs.append(y3 + u3)
    close(y, torch.stack(outs))
    states_close(state, tuple(states))


def test_residual_layer_one_may_change_width_others_may_not() -> None:
    rk.Stack([gru(3, 5), gru(5, 5)], "residual")
    with pytest.raises(rk.ConfigError, match=r"cells\[1\]\.output_size.*expected 5.*got 6"):
        rk.Stack([gru(3, 5), gru(5, 6)], "residual")
    with pytest.raises(rk.ConfigError, match=r"cells\[2\]\.output_size"):
        rk.Stack([gru(3, 5), gru(5, 5), gru(5, 4)], "residual")


# -- cross_layer ----------------------------------------------------------------------


def cross_layer_loop(stack: rk.Stack, x: Tensor, s0: tuple) -> tuple[Tensor, tuple]:
    """Chung et al.'s gated feedback, one gate and one projection U^{j->k} at a time."""
    cells, pol = list(stack.cells), stack.routing
    L = len(cells)
    widths = [rk.routing.state_h(s).shape[-1] for s in s0]
    states, outs = list(s0), []
    for t in range(x.shape[0]):
        hs = [rk.routing.state_h(s) for s in states]  # previous step, all layers
        h_all = torch.cat(hs, dim=1)
        u = x[t]
        for k in range(L):
            others = [j for j in range(L) if j != k]
            W_in = getattr(pol, f"gate_input_weight_l{k}")  # (L-1, I_k): rows w^{j->k}
            V = getattr(pol, f"gate_state_weight_l{k}")  # (L-1, sum H): rows v^{j->k}
            U_all = getattr(pol, f"feedback_weight_l{k}")  # (H_k, sum_{j!=k} H_j)
            h_mixed = hs[k]
            col = 0
            for row, j in enumerate(others):
                g = torch.sigmoid((u * W_in[row]).sum(-1) + (h_all * V[row]).sum(-1))  # (B,)
                U = U_all[:, col : col + widths[j]]  # U^{j->k}: (H_k, H_j)
                col += widths[j]
                h_mixed = h_mixed + g[:, None] * (hs[j] @ U.T)
            s = rk.routing.with_state_h(states[k], h_mixed)
            u, states[k] = cells[k](u, s)
        outs.append(u)
    return torch.stack(outs), tuple(states)


def test_cross_layer_equations_gru_three_widths() -> None:
    torch.manual_seed(6)
    stack = rk.Stack([gru(3, 4), gru(4, 5), gru(5, 2)], "cross_layer")
    x = torch.randn(T, B, 3, dtype=D)
    s0 = tuple(torch.randn_like(s) for s in stack.initial_state(B))
    y, state = stack(x, s0)
    y_ref, state_ref = cross_layer_loop(stack, x, s0)
    close(y, y_ref)
    states_close(state, state_ref)


def test_cross_layer_mixes_only_h_of_lstm_states() -> None:
    torch.manual_seed(7)
    stack = rk.Stack(
        [rk.LSTMCell(3, 4, proj_size=2, dtype=D), rk.NestedLSTMCell(2, 3, dtype=D)],
        "cross_layer",
    )
    x = torch.randn(T, B, 3, dtype=D)
    y, state = stack(x)
    y_ref, state_ref = cross_layer_loop(stack, x, stack.initial_state(B))
    close(y, y_ref)
    states_close(state, state_ref)


def test_cross_layer_parameters() -> None:
    stack = rk.Stack([gru(3, 4), gru(4, 5), gru(5, 2)], "cross_layer")
    shapes = {n: tuple(p.shape) for n, p in stack.routing.named_parameters()}
    assert shapes == {
        "feedback_weight_l0": (4, 7),
        "gate_input_weight_l0": (2, 3),
        "gate_state_weight_l0": (2, 11),
        "feedback_weight_l1": (5, 6),
        "gate_input_weight_l1": (2, 4),
        "gate_state_weight_l1": (2, 11),
        "feedback_weight_l2": (2, 9),
        "gate_input_weight_l2": (2, 5),
        "gate_state_weight_l2": (2, 11),
    }
    assert all(p.dtype == D for p in stack.routing.parameters())
    names = dict(stack.named_parameters())
    assert "routing.feedback_weight_l1" in names
    assert "routing.gate_state_weight_l2" in stack.state_dict()


def test_cross_layer_with_one_layer_is_independent() -> None:
    torch.manual_seed(8)
    cell = gru(3, 4)
    x = torch.randn(T, B, 3, dtype=D)
    stack = rk.Stack([cell], "cross_layer")
    assert not list(stack.routing.parameters())
    close(stack(x)[0], rk.Stack([cell], "independent")(x)[0])


def test_cross_layer_feeds_a_higher_layer_back_down() -> None:
    """Layer 1's output at t depends on layer 2's cell (which independent never allows)."""
    torch.manual_seed(9)
    cells = [gru(3, 4), gru(4, 4)]
    x = torch.randn(T, B, 3, dtype=D)
    for routing, depends in [("cross_layer", True), ("independent", False)]:
        stack = rk.Stack(cells, routing)
        layer1 = rk.Stack([cells[0]], "independent")
        state = None
        ys = []
        for t in range(T):
            _, state = stack.step(x[t], state)
            ys.append(state[0])
        solo, _ = layer1(x)
        assert (not torch.allclose(torch.stack(ys), solo)) == depends


# -- handoff --------------------------------------------------------------------------


def test_handoff_equations() -> None:
    torch.manual_seed(10)
    cells = [gru(3, 4), gru(4, 4), gru(4, 4)]
    stack = rk.Stack(cells, "handoff").eval()
    x = torch.randn(T, B, 3, dtype=D)
    s0 = tuple(torch.randn(B, 4, dtype=D) for _ in range(3))
    y, state = stack(x, s0)

    u, s, finals = x, s0[0], []
    for cell in cells:  # layer-major: each layer over the whole sequence
        outs = []
        for t in range(T):
            y_t, s = cell(u[t], s)
            outs.append(y_t)
        u = torch.stack(outs)
        finals.append(s)  # the next layer starts from this final state
    close(y, u)
    states_close(state, tuple(finals))
    # The states supplied for the higher layers are not read.
    y2, _ = stack(x, (s0[0], s0[1] + 3, s0[2] * 0))
    assert torch.equal(y, y2)


def test_handoff_warns_in_training_mode_only() -> None:
    stack = rk.Stack([gru(3, 4), gru(4, 4)], "handoff")
    x = torch.randn(T, B, 3, dtype=D)
    with pytest.warns(rk.routing.LeakWarning, match="not causal") as record:
        stack.train()(x)
    assert record[0].filename == __file__  # points at the user's line, not at internals
    with warnings.catch_warnings():
        warnings.simplefilter("error", rk.routing.LeakWarning)
        stack.eval()(x)
        stack.train().step(x[0])  # one step sees no future


def test_handoff_stepping_differs_from_teacher_forcing() -> None:
    torch.manual_seed(11)
    stack = rk.Stack([gru(3, 4), gru(4, 4)], "handoff").eval()
    x = torch.randn(T, B, 3, dtype=D)
    y, _ = stack(x)
    state, ys = None, []
    for t in range(T):
        y_t, state = stack.step(x[t], state)
        ys.append(y_t)
    stepped = torch.stack(ys)
    # Already at t = 0 the teacher-forced output has seen layer 1's final state.
    assert (stepped[0] - y[0]).abs().max() > 1e-6


@pytest.mark.parametrize("executor", ["reference", "auto", "handbuilt"])
def test_handoff_step_is_its_run_on_one_step(executor: str) -> None:
    torch.manual_seed(12)
    before = rk.GRUCell(4, 4, reset="before").double()
    stack = rk.Stack([gru(3, 4), before, gru(4, 4)], "handoff", executor=executor)
    x = torch.randn(1, B, 3, dtype=D)
    states = stack.initial_state(B)
    states = tuple(torch.randn_like(s) for s in states)
    y, finals = stack(x, states)  # run() on a one-step sequence
    y_t, s_t = stack.step(x[0], states)
    torch.testing.assert_close(y_t, y[0], rtol=0, atol=1e-12)
    for a, b in zip(s_t, finals):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    other = (states[0],) + tuple(torch.randn_like(s) for s in states[1:])
    torch.testing.assert_close(stack.step(x[0], other)[0], y_t, rtol=0, atol=0)  # unread


# -- which widths a policy accepts ----------------------------------------------------


@pytest.mark.parametrize("routing", ["shared", "handoff"])
def test_state_passing_policies_need_one_state_shape(routing: str) -> None:
    rk.Stack([gru(3, 4), gru(4, 4)], routing)  # the input width may differ
    with pytest.raises(rk.ConfigError, match=rf"cells\[1\].*{routing}.*got \(1, 5\)"):
        rk.Stack([gru(3, 4), gru(4, 5)], routing)
    with pytest.raises(rk.ConfigError, match=r"cells\[1\]"):
        rk.Stack([gru(3, 4), lstm(4, 4)], routing)


@pytest.mark.parametrize("routing", ["independent", "cross_layer"])
def test_free_width_policies_accept_changing_widths(routing: str) -> None:
    stack = rk.Stack([gru(4, 7), lstm(7, 3)], routing)
    y, _ = stack(torch.randn(T, B, 4, dtype=D))
    assert y.shape == (T, B, 3)


@pytest.mark.parametrize("routing", list(rk.routing.POLICIES))
def test_widths_must_chain(routing: str) -> None:
    with pytest.raises(rk.ConfigError, match=r"cells\[1\]\.input_size: expected 4.*got 5"):
        rk.Stack([gru(3, 4), gru(5, 4)], routing)


# -- layer-major run equals the step loop ---------------------------------------------


@pytest.mark.parametrize("routing", ["independent", "residual"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_layer_major_run_equals_step_loop(routing: str, with_lengths: bool) -> None:
    torch.manual_seed(12)
    stack = rk.Stack([gru(3, 4), lstm(4, 4), gru(4, 4)], routing)
    policy = stack.routing
    assert policy.layer_major
    x = torch.randn(T, B, 3, dtype=D)
    lengths = torch.tensor([T, 2, 4]) if with_lengths else None
    states = stack.initial_state(B)
    layers = ReferenceExecutor(stack.cells, 0.0, False)
    y_run, s_run = policy.run(layers, x, states, lengths)
    y_step, s_step = RoutingPolicy.run(policy, layers, x, states, lengths)  # scan over step
    close(y_run, y_step)
    states_close(s_run, s_step)


def test_reference_shared_stack_is_the_seed_snippet_to_the_bit_in_float32() -> None:
    torch.manual_seed(2)
    layer1, layer2, layer3 = rk.GRUCell(5, 8), rk.GRUCell(8, 8), rk.GRUCell(8, 8)
    stack = rk.Stack([layer1, layer2, layer3], "shared", executor="reference")
    x = torch.randn(9, 4, 5)
    y, state = stack(x)
    hp1 = torch.zeros(4, 8)
    outs = []
    for t in range(9):
        h1, hp1 = layer1(x[t], hp1)
        h2, hp2 = layer2(h1, hp1)
        h3, hp3 = layer3(h2, hp2)
        outs.append(h3)
    assert torch.equal(y, torch.stack(outs))
    assert all(torch.equal(a, b) for a, b in zip(state, (hp1, hp2, hp3)))
