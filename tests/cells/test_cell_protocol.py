"""The cell protocol: initial_state, None state, unbatched input, names, torch state_dicts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import recurrentkit as rk

B, I, H = 3, 4, 5

MAKERS: dict[str, Callable[..., nn.Module]] = {
    "rnn": lambda **kw: rk.RNNCell(I, H, **kw),
    "gru": lambda **kw: rk.GRUCell(I, H, reset="before", **kw),
    "lstm": lambda **kw: rk.LSTMCell(I, H, **kw),
    "lstm-proj": lambda **kw: rk.LSTMCell(I, H, proj_size=2, **kw),
    "nested-2": lambda **kw: rk.NestedLSTMCell(I, H, **kw),
    "nested-3": lambda **kw: rk.NestedLSTMCell(I, H, depth=3, **kw),
}


def tensors(state: object) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    return [t for s in state for t in tensors(s)]  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", list(MAKERS))
def test_initial_state_follows_parameters_and_arguments(kind: str) -> None:
    cell = MAKERS[kind]()
    for t in tensors(cell.initial_state(B)):
        assert t.dtype == torch.float32 and t.device.type == "cpu" and t.shape[0] == B
        assert not t.any()
    cell = cell.double()
    assert all(t.dtype == torch.float64 for t in tensors(cell.initial_state(B)))
    state = cell.initial_state(B, dtype=torch.float16, device="meta")
    assert all(t.dtype == torch.float16 and t.is_meta for t in tensors(state))
    meta = MAKERS[kind](device="meta", dtype=torch.float64)
    assert all(t.is_meta and t.dtype == torch.float64 for t in tensors(meta.initial_state(2)))


@pytest.mark.parametrize("kind", list(MAKERS))
def test_sizes_and_state_widths(kind: str) -> None:
    cell = MAKERS[kind]()
    assert (cell.input_size, cell.hidden_size) == (I, H)
    y, state = cell(torch.randn(B, I))
    assert y.shape == (B, cell.output_size)
    assert cell.output_size == (2 if kind == "lstm-proj" else H)
    # The returned state has the structure and shapes of initial_state.
    assert [t.shape for t in tensors(state)] == [t.shape for t in tensors(cell.initial_state(B))]
    assert type(state) is type(cell.initial_state(B))


@pytest.mark.parametrize("kind", list(MAKERS))
def test_none_state_means_zeros(kind: str) -> None:
    torch.manual_seed(0)
    cell = MAKERS[kind](dtype=torch.float64)
    x = torch.randn(B, I, dtype=torch.float64)
    y_none, s_none = cell(x)
    y_zero, s_zero = cell(x, cell.initial_state(B))
    assert torch.equal(y_none, y_zero)
    for a, b in zip(tensors(s_none), tensors(s_zero)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", list(MAKERS))
def test_unbatched_equals_batch_of_one(kind: str) -> None:
    torch.manual_seed(1)
    cell = MAKERS[kind](dtype=torch.float64)
    x = torch.randn(I, dtype=torch.float64)
    batched = [torch.randn_like(t) for t in tensors(cell.initial_state(1))]
    it = iter(batched)

    def rebuild(template: object, squeeze: bool) -> object:
        if isinstance(template, Tensor):
            t = next(it)
            return t[0] if squeeze else t
        items = [rebuild(s, squeeze) for s in template]  # type: ignore[union-attr]
        return type(template)(*items) if hasattr(template, "_fields") else tuple(items)

    state_b = rebuild(cell.initial_state(1), False)
    it = iter(batched)
    state_u = rebuild(cell.initial_state(1), True)
    y_u, new_u = cell(x, state_u)
    y_b, new_b = cell(x[None], state_b)
    assert y_u.shape == (cell.output_size,)
    torch.testing.assert_close(y_u, y_b[0], rtol=0, atol=1e-15)
    assert type(new_u) is type(new_b)
    for a, b in zip(tensors(new_u), tensors(new_b)):
        assert a.dim() == 1
        torch.testing.assert_close(a, b[0], rtol=0, atol=1e-15)
    y0, s0 = cell(x)  # unbatched with no state
    assert y0.shape == (cell.output_size,) and all(t.dim() == 1 for t in tensors(s0))


def test_plain_tuples_are_accepted_as_named_states() -> None:
    cell = rk.NestedLSTMCell(I, H, depth=3)
    h = torch.zeros(B, H)
    _, state = cell(torch.randn(B, I), (h, h, (h, h, [h, h])))
    assert isinstance(state, rk.NestedLSTMState)
    assert isinstance(state.inner, rk.NestedLSTMState)
    assert isinstance(state.inner.inner, rk.LSTMState)


def test_cells_satisfy_the_protocol() -> None:
    for make in MAKERS.values():
        assert isinstance(make(), rk.Cell)


# -- torch.nn interop of the parameter layout -----------------------------------------


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: rk.RNNCell(I, H), lambda: nn.RNNCell(I, H)),
        (
            lambda: rk.RNNCell(I, H, nonlinearity="relu", bias=False),
            lambda: nn.RNNCell(I, H, nonlinearity="relu", bias=False),
        ),
        (lambda: rk.GRUCell(I, H), lambda: nn.GRUCell(I, H)),
        (lambda: rk.GRUCell(I, H, bias=False), lambda: nn.GRUCell(I, H, bias=False)),
        (lambda: rk.LSTMCell(I, H), lambda: nn.LSTMCell(I, H)),
    ],
)
def test_load_torch_cell_state_dict(ours: Callable, theirs: Callable) -> None:
    torch.manual_seed(2)
    ref = theirs().double()
    cell = ours().double()
    cell.load_state_dict(ref.state_dict())  # strict: same names and shapes
    assert list(cell.state_dict()) == list(ref.state_dict())
    x = torch.randn(B, I, dtype=torch.float64)
    if isinstance(ref, nn.LSTMCell):
        hc = (torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64))
        y, (h, c) = cell(x, hc)
        h_ref, c_ref = ref(x, hc)
        torch.testing.assert_close(c, c_ref, rtol=0, atol=1e-12)
    else:
        h0 = torch.randn(B, H, dtype=torch.float64)
        y, h = cell(x, h0)
        h_ref = ref(x, h0)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-12)
    # ...and back: torch loads ours.
    back = theirs().double()
    back.load_state_dict(cell.state_dict())


def test_projected_lstm_parameter_names() -> None:
    cell = rk.LSTMCell(I, H, proj_size=2)
    shapes = {n: tuple(p.shape) for n, p in cell.named_parameters()}
    assert shapes == {
        "weight_ih": (4 * H, I),
        "weight_hh": (4 * H, 2),
        "bias_ih": (4 * H,),
        "bias_hh": (4 * H,),
        "weight_hr": (2, H),
    }
