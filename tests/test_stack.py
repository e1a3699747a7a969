"""Stack: time loop, stepping, state layout, batch layouts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import recurrentkit as rk

CAUSAL = ["independent", "shared", "residual", "cross_layer"]


def make(routing: str, cell=rk.GRUCell, H: int = 5, L: int = 3, **kw) -> rk.Stack:
    cells = [cell(4 if k == 0 else H, H) for k in range(L)]
    return rk.Stack(cells, routing, **kw).double()


@pytest.mark.parametrize("routing", CAUSAL)
@pytest.mark.parametrize("cell", [rk.GRUCell, rk.LSTMCell, rk.RNNCell, rk.NestedLSTMCell])
def test_stepping_equals_whole_sequence(routing: str, cell: type) -> None:
    torch.manual_seed(0)
    stack = make(routing, cell)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    y, final = stack(x)
    state = None
    for t in range(x.shape[0]):
        y_t, state = stack.step(x[t], state)
        torch.testing.assert_close(y_t, y[t], rtol=0, atol=1e-12)
    flat = [t for s in final for t in (s if isinstance(s, tuple) else (s,))]
    assert len(final) == 3
    assert flat


def test_batch_first_and_unbatched_match_time_major() -> None:
    torch.manual_seed(0)
    stack = make("shared")
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    y, _ = stack(x)
    bf = make("shared", batch_first=True)
    bf.load_state_dict(stack.state_dict())
    y_bf, _ = bf(x.transpose(0, 1))
    torch.testing.assert_close(y_bf.transpose(0, 1), y)
    y0, s0 = stack(x[:, 0])
    torch.testing.assert_close(y0, y[:, 0])
    assert s0[0].shape == (5,)


def test_handoff_is_not_causal_and_others_are() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 2, 4, dtype=torch.float64)
    for routing in CAUSAL:
        assert rk.check_causal(make(routing).eval(), x)
    assert not rk.check_causal(make("handoff").eval(), x)


# -- properties over every built-in cell and policy (hypothesis) ----------------------

D = torch.float64
CELL_KINDS = {
    "rnn-tanh": lambda i, h: rk.RNNCell(i, h, dtype=D),
    "rnn-relu": lambda i, h: rk.RNNCell(i, h, nonlinearity="relu", dtype=D),
    "gru-after": lambda i, h: rk.GRUCell(i, h, dtype=D),
    "gru-before": lambda i, h: rk.GRUCell(i, h, reset="before", dtype=D),
    "lstm": lambda i, h: rk.LSTMCell(i, h, dtype=D),
    "lstm-proj": lambda i, h: rk.LSTMCell(i, h, proj_size=h - 1, dtype=D),
    "nested-2": lambda i, h: rk.NestedLSTMCell(i, h, dtype=D),
    "nested-3": lambda i, h: rk.NestedLSTMCell(i, h, depth=3, dtype=D),
}
ALL_POLICIES = [*CAUSAL, "shared-last", "handoff"]


def policy(name: str) -> rk.RoutingPolicy:
    return rk.routing.Shared("last") if name == "shared-last" else rk.routing.resolve(name)


def build(kind: str, routing: str, L: int, I: int, H: int, seed: int, **kw) -> rk.Stack:
    torch.manual_seed(seed)
    cells, width = [], I
    for _ in range(L):
        cells.append(CELL_KINDS[kind](width, H))
        width = cells[-1].output_size
    return rk.Stack(cells, policy(routing), **kw).eval()


def flat(state: object) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in flat(s)]  # type: ignore[union-attr]


def assert_states_close(a: object, b: object) -> None:
    fa, fb = flat(a), flat(b)
    assert len(fa) == len(fb)
    for x, y in zip(fa, fb):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


configs = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(list(CELL_KINDS)),
        "L": st.integers(1, 3),
        "I": st.integers(1, 4),
        "H": st.integers(2, 5),
        "seed": st.integers(0, 2**16),
    }
)


@given(
    cfg=configs,
    routing=st.sampled_from([*CAUSAL, "shared-last"]),
    T=st.integers(1, 6),
    B=st.integers(1, 3),
)
def test_property_stepping_equals_whole_sequence(cfg: dict, routing: str, T: int, B: int) -> None:
    stack = build(routing=routing, **cfg)
    x = torch.randn(T, B, cfg["I"], dtype=D)
    s0 = tuple(map_random(s) for s in stack.initial_state(B))
    y, final = stack(x, s0)
    state = s0
    for t in range(T):
        y_t, state = stack.step(x[t], state)
        torch.testing.assert_close(y_t, y[t], rtol=0, atol=1e-12)
    assert_states_close(state, final)
    # Chunking: a call on x[:k] then one on x[k:] from its state equals one call.
    k = T // 2
    if k:
        y1, s1 = stack(x[:k], s0)
        y2, s2 = stack(x[k:], s1)
        torch.testing.assert_close(torch.cat([y1, y2]), y, rtol=0, atol=1e-12)
        assert_states_close(s2, final)


def map_random(state: object) -> object:
    if isinstance(state, torch.Tensor):
        return torch.randn_like(state)
    items = [map_random(s) for s in state]  # type: ignore[union-attr]
    return type(state)(*items) if hasattr(state, "_fields") else tuple(items)


@given(
    cfg=configs,
    routing=st.sampled_from(ALL_POLICIES),
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=3),
)
def test_property_lengths_equal_separate_runs(cfg: dict, routing: str, lengths: list) -> None:
    stack = build(routing=routing, **cfg)
    T, B = max(lengths), len(lengths)
    x = torch.randn(T, B, cfg["I"], dtype=D)
    s0 = tuple(map_random(s) for s in stack.initial_state(B))
    y, final = stack(x, s0, lengths=torch.tensor(lengths))
    assert y.shape[:2] == (T, B)
    for b, n in enumerate(lengths):
        s0_b = tuple(_index(s, b) for s in s0)
        y_b, final_b = stack(x[:n, b : b + 1], s0_b)
        torch.testing.assert_close(y[:n, b : b + 1], y_b, rtol=0, atol=1e-12)
        assert not y[n:, b].any()  # zeros past the end
        assert_states_close(tuple(_index(s, b) for s in final), final_b)


def _index(state: object, b: int) -> object:
    if isinstance(state, torch.Tensor):
        return state[b : b + 1]
    items = [_index(s, b) for s in state]  # type: ignore[union-attr]
    return type(state)(*items) if hasattr(state, "_fields") else tuple(items)


@given(
    cfg=configs,
    routing=st.sampled_from(ALL_POLICIES),
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=3),
)
def test_property_packed_equals_padded_with_lengths(cfg: dict, routing: str, lengths: list) -> None:
    stack = build(routing=routing, **cfg)
    T, B = max(lengths), len(lengths)
    x = torch.randn(T, B, cfg["I"], dtype=D, requires_grad=True)
    lens = torch.tensor(lengths)
    y, final = stack(x, lengths=lens)
    packed_in = pack_padded_sequence(x, lens, enforce_sorted=False)
    packed_out, final_p = stack(packed_in)
    assert isinstance(packed_out, PackedSequence)
    assert torch.equal(packed_out.batch_sizes, packed_in.batch_sizes)
    assert packed_out.sorted_indices is None or torch.equal(
        packed_out.sorted_indices, packed_in.sorted_indices
    )
    y_p, lens_p = pad_packed_sequence(packed_out, total_length=T)
    assert torch.equal(lens_p, lens)
    torch.testing.assert_close(y_p, y, rtol=0, atol=1e-12)
    assert_states_close(final_p, final)
    (g,) = torch.autograd.grad(y.sum() + sum(t.sum() for t in flat(final)), x)
    (g_p,) = torch.autograd.grad(packed_out.data.sum() + sum(t.sum() for t in flat(final_p)), x)
    torch.testing.assert_close(g_p, g, rtol=0, atol=1e-12)


@given(cfg=configs, routing=st.sampled_from(ALL_POLICIES), T=st.integers(1, 5), B=st.integers(1, 3))
def test_property_layouts_equal_time_major(cfg: dict, routing: str, T: int, B: int) -> None:
    stack = build(routing=routing, **cfg)
    bf = build(routing=routing, batch_first=True, **cfg)
    bf.load_state_dict(stack.state_dict())
    x = torch.randn(T, B, cfg["I"], dtype=D)
    s0 = tuple(map_random(s) for s in stack.initial_state(B))
    y, final = stack(x, s0)
    y_bf, final_bf = bf(x.transpose(0, 1), s0)
    assert y_bf.shape == (B, T, y.shape[-1])
    torch.testing.assert_close(y_bf.transpose(0, 1), y, rtol=0, atol=1e-12)
    assert_states_close(final_bf, final)  # states are (B, ...) in both layouts
    for b in range(B):
        s0_b = tuple(_squeeze(_index(s, b)) for s in s0)
        for model in (stack, bf):  # unbatched (T, I) whatever batch_first says
            y_u, final_u = model(x[:, b], s0_b)
            torch.testing.assert_close(y_u, y[:, b], rtol=0, atol=1e-12)
            assert_states_close(final_u, tuple(_squeeze(_index(s, b)) for s in final))
    y_t, _ = bf.step(x[0], s0)  # step is (B, I) whatever batch_first says
    first, _ = stack(x[:1], s0)
    torch.testing.assert_close(y_t, first[0], rtol=0, atol=1e-12)


def _squeeze(state: object) -> object:
    if isinstance(state, torch.Tensor):
        return state[0]
    items = [_squeeze(s) for s in state]  # type: ignore[union-attr]
    return type(state)(*items) if hasattr(state, "_fields") else tuple(items)


def test_state_is_one_cell_state_per_layer_for_every_policy() -> None:
    for routing in ALL_POLICIES:
        stack = build("nested-2", routing, L=3, I=2, H=3, seed=0)
        _, state = stack(torch.randn(4, 2, 2, dtype=D))
        assert type(state) is tuple and len(state) == 3
        assert all(type(s) is rk.NestedLSTMState for s in state)
        init = stack.initial_state(2)
        assert type(init) is tuple and [type(s) for s in init] == [type(s) for s in state]


def test_initial_state_arguments() -> None:
    stack = build("lstm", "independent", L=2, I=2, H=3, seed=0)
    state = stack.initial_state(4, dtype=torch.float32, device="meta")
    assert all(t.is_meta and t.dtype == torch.float32 and t.shape[0] == 4 for t in flat(state))
    assert all(t.dtype == D for t in flat(stack.initial_state(1)))


def test_step_equals_forward_on_length_one() -> None:
    stack = build("gru-before", "cross_layer", L=3, I=2, H=3, seed=0)
    x = torch.randn(1, 2, 2, dtype=D)
    y, s = stack(x)
    y_t, s_t = stack.step(x[0])
    torch.testing.assert_close(y[0], y_t, rtol=0, atol=1e-12)
    assert_states_close(s, s_t)


def test_is_causal_reflects_the_policy() -> None:
    assert all(build("gru-after", r, 2, 2, 3, 0).is_causal for r in CAUSAL)
    assert not build("gru-after", "handoff", 2, 2, 3, 0).is_causal


# -- returned states belong to the caller ---------------------------------------------


def _run_mode(stack: rk.Stack, x: torch.Tensor, mode: str) -> tuple[torch.Tensor, object]:
    """``stack`` over ``x (T, 2, I)`` one way: its outputs (flattened) and final states."""
    if mode == "lengths":
        return stack(x, lengths=torch.tensor([x.shape[0], 2]))
    if mode == "packed":
        packed = pack_padded_sequence(x, torch.tensor([2, x.shape[0]]), enforce_sorted=False)
        y, s = stack(packed)
        return y.data, s
    if mode == "unbatched":
        return stack(x[:, 0])
    if mode == "steps":
        s, ys = None, []
        for t in range(x.shape[0]):
            y_t, s = stack.step(x[t], s)
            ys.append(y_t)
        return torch.stack(ys), s
    return stack(x)


@pytest.mark.parametrize("mode", ["padded", "lengths", "packed", "unbatched", "steps"])
@pytest.mark.parametrize("executor", ["auto", "handbuilt", "reference"])
@pytest.mark.parametrize("routing", ALL_POLICIES)
@pytest.mark.parametrize("kind", ["gru-after", "gru-before", "lstm", "rnn-tanh", "nested-2"])
def test_changing_returned_states_in_place_leaves_the_backward_intact(
    kind: str, routing: str, executor: str, mode: str
) -> None:
    """As with torch.nn's modules, a caller may change the final states in place
    (``h[:, done] = 0``, ``h.detach_()``) before backpropagating through the outputs."""
    stack = build(kind, routing, 2, 3, 4, seed=5, executor=executor)
    x = torch.randn(4, 2, 3, dtype=D)
    grads = []
    for change in (False, True):
        stack.zero_grad()
        y, s = _run_mode(stack, x, mode)
        loss = y.sum()
        if change:
            for t in flat(tuple(s)):
                t.mul_(0)
        loss.backward()
        grads.append([p.grad.clone() for p in stack.parameters() if p.grad is not None])
    assert grads[0] and len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_state_checks_stay_exact_from_call_to_call() -> None:
    """The state templates a stack keeps between calls (a stream checks every chunk
    against the same ones) never let a wrong state through."""
    stack = rk.Stack([rk.LSTMCell(3, 4), rk.LSTMCell(4, 4)])
    x = torch.randn(5, 2, 3)
    _, state = stack(x)
    _, state = stack(x, state)  # the templates for B = 2 are kept now
    with pytest.raises(rk.StateError, match="state"):
        stack(torch.randn(5, 3, 3), state)  # another batch
    with pytest.raises(rk.StateError, match=r"state\[1\]"):
        stack(x, (state[0], rk.LSTMState(state[1].h[:, :3], state[1].c)))
    with pytest.raises(rk.DeviceError, match="dtype"):
        stack.double()(x.double(), state)
    stack.float()
    stack.cells[1] = rk.LSTMCell(4, 6)  # another cell: other templates
    with pytest.raises(rk.StateError, match=r"state\[1\]"):
        stack(x, state)
    _, unbatched = stack(x[:, 0])
    stack(x[:, 0], unbatched)
    with pytest.raises(rk.StateError):
        stack(x[:, 0], state)
