"""Stack ↔ torch.nn conversions: equal outputs, states and gradients; clear refusals."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import recurrentkit as rk
from recurrentkit.interop import (
    dropin_from_torch,
    dropin_to_torch,
    stack_from_torch,
    stack_to_torch,
)

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")
KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


KINDS_OF_MODULE = ["rnn_tanh", "rnn_relu", "gru", "lstm"]


@st.composite
def torch_modules(draw, kind: str, dtype: torch.dtype) -> nn.Module:
    """A unidirectional nn.RNN / nn.GRU / nn.LSTM of random configuration."""
    I, H, L = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 3))
    kw: dict[str, Any] = dict(
        num_layers=L,
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        dropout=draw(st.sampled_from([0.0, 0.3])),
        dtype=dtype,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if kind == "gru":
            module = nn.GRU(I, H, **kw)
        elif kind == "lstm":
            module = nn.LSTM(I, H, proj_size=draw(st.sampled_from([0, *range(1, H)])), **kw)
        else:
            module = nn.RNN(I, H, nonlinearity=kind.removeprefix("rnn_"), **kw)
    return module.eval() if module.dropout else module


def torch_hx(module: nn.Module, state: tuple[Any, ...] | None) -> Any:
    """A stack state (one cell state per layer) as torch's hx."""
    if state is None:
        return None
    if isinstance(module, nn.LSTM):
        return torch.stack([s.h for s in state]), torch.stack([s.c for s in state])
    return torch.stack(list(state))


def stack_as_hx(module: nn.Module, state: tuple[Any, ...]) -> list[Tensor]:
    h = torch_hx(module, state)
    return list(h) if isinstance(h, tuple) else [h]


def random_state(module: nn.Module, B: int | None, dtype: torch.dtype) -> tuple[Any, ...]:
    lead = () if B is None else (B,)
    out = module.proj_size or module.hidden_size if isinstance(module, nn.LSTM) else None

    def leaf(width: int) -> Tensor:
        return torch.randn(*lead, width, dtype=dtype, requires_grad=True)

    if isinstance(module, nn.LSTM):
        return tuple(
            rk.LSTMState(leaf(out), leaf(module.hidden_size)) for _ in range(module.num_layers)
        )
    return tuple(leaf(module.hidden_size) for _ in range(module.num_layers))


def param_pairs(module: nn.Module, stack: rk.Stack) -> list[tuple[Tensor, Tensor]]:
    """(torch parameter, stack parameter) by name: ``{kind}_l{k}`` ↔ ``cells.{k}.{kind}``."""
    ours = dict(stack.named_parameters())
    pairs = []
    for name, p in module.named_parameters():
        kind, layer = name.rsplit("_l", 1)
        pairs.append((p, ours[f"cells.{layer}.{kind}"]))
    assert len(pairs) == len(ours)
    return pairs


def loss_of(outputs: list[Tensor]) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    return sum(  # type: ignore[return-value]
        (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs
    )


def compare(module: nn.Module, stack: rk.Stack, inp: Any, state: Any, leaves: list[Tensor],
            tol: float) -> None:  # fmt: skip
    """Outputs, final states and gradients (inputs, initial state, parameters) agree."""
    out_t, hn_t = module(inp, torch_hx(module, state))
    out_o, s_o = stack(inp, state)
    if isinstance(out_t, PackedSequence):
        assert isinstance(out_o, PackedSequence)
        assert torch.equal(out_t.batch_sizes, out_o.batch_sizes)
        out_t, out_o = out_t.data, out_o.data
    hn_t = list(hn_t) if isinstance(hn_t, tuple) else [hn_t]
    got = [out_o, *stack_as_hx(module, s_o)]
    want = [out_t, *hn_t]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)
    pairs = param_pairs(module, stack)
    initial = (
        [] if state is None else [t for s in state for t in (s if isinstance(s, tuple) else (s,))]
    )
    g_t = torch.autograd.grad(
        loss_of(want), [*leaves, *initial, *(p for p, _ in pairs)], retain_graph=True
    )
    g_o = torch.autograd.grad(loss_of(got), [*leaves, *initial, *(q for _, q in pairs)])
    for a, b in zip(g_o, g_t):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)


DTYPES = st.sampled_from([torch.float64, torch.float64, torch.float32])


@pytest.mark.parametrize("kind", KINDS_OF_MODULE)
@given(data=st.data(), dtype=DTYPES, layout=st.sampled_from(["padded", "unbatched", "packed"]),
       with_state=st.booleans())  # fmt: skip
def test_stack_from_torch_equals_torch(kind, data, dtype, layout, with_state) -> None:
    module = data.draw(torch_modules(kind, dtype))
    stack = stack_from_torch(module)
    assert stack.batch_first == module.batch_first and stack.dropout == module.dropout
    assert stack.training == module.training
    assert isinstance(stack.routing, rk.routing.Independent)
    B, T, I = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5)), module.input_size
    if layout == "unbatched":
        x = torch.randn(T, I, dtype=dtype, requires_grad=True)
        inp = x
    elif layout == "padded":
        x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
        inp = x.transpose(0, 1) if module.batch_first else x
    else:
        x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
        lengths = data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
        inp = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    state = (
        random_state(module, None if layout == "unbatched" else B, dtype) if with_state else None
    )
    compare(module, stack, inp, state, [x], TOL[dtype])


@pytest.mark.parametrize("kind", KINDS_OF_MODULE)
@given(data=st.data(), dtype=DTYPES)
def test_stack_to_torch_equals_stack_and_round_trips(kind, data, dtype) -> None:
    source = data.draw(torch_modules(kind, dtype))
    stack = stack_from_torch(source)
    with torch.no_grad():  # the stack's own weights now, not the source's
        for p in stack.parameters():
            p.add_(torch.randn(p.shape, dtype=dtype) * 0.1)
    module = stack_to_torch(stack)
    assert type(module) is type(source)
    assert module.batch_first == stack.batch_first and module.dropout == stack.dropout
    assert module.training == stack.training and not module.bidirectional
    assert next(module.parameters()).dtype == dtype
    for p, q in param_pairs(module, stack):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()  # copied, not shared
    x = torch.randn(4, 2, module.input_size, dtype=dtype, requires_grad=True)
    inp = x.transpose(0, 1) if module.batch_first else x
    compare(module, stack, inp, None, [x], TOL[dtype])
    again = stack_from_torch(module)
    for (n, p), q in zip(stack.named_parameters(), again.parameters()):
        assert torch.equal(p, q), n


def test_stack_conversions_copy_weights() -> None:
    gru = nn.GRU(3, 4, num_layers=2, batch_first=True).double()
    stack = rk.interop.stack_from_torch(gru)
    with torch.no_grad():
        stack.cells[0].weight_ih.zero_()
    assert gru.weight_ih_l0.abs().sum() > 0  # a copy: the source is untouched
    back = rk.interop.stack_to_torch(stack)
    assert type(back) is nn.GRU and back.batch_first and back.num_layers == 2
    assert torch.equal(back.weight_ih_l0, torch.zeros_like(back.weight_ih_l0))


def test_single_layer_dropout_round_trips_quietly() -> None:
    stack = rk.Stack([rk.GRUCell(3, 4)], dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = stack_to_torch(stack)
    assert module.dropout == 0.5


def test_dropin_conversions_cover_bidirectional() -> None:
    theirs = nn.LSTM(3, 5, 2, bidirectional=True, proj_size=2, batch_first=True).double().eval()
    ours = dropin_from_torch(theirs)
    assert isinstance(ours, rk.LSTM) and not ours.training and ours.proj_size == 2
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[1][1], theirs(x)[1][1], rtol=0, atol=1e-10)
    back = dropin_to_torch(ours)
    assert type(back) is nn.LSTM and back.bidirectional and not back.training
    torch.testing.assert_close(back(x)[0], theirs(x)[0], rtol=0, atol=0)


# -- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "error", "argument"),
    [
        (nn.GRU(3, 4, bidirectional=True), rk.ConfigError, "module.bidirectional"),
        (nn.GRUCell(3, 4), rk.InputTypeError, "module"),
        (nn.Linear(3, 4), rk.InputTypeError, "module"),
        ("gru", rk.InputTypeError, "module"),
    ],
)
def test_stack_from_torch_refuses(module, error, argument) -> None:
    with pytest.raises(error) as info:
        stack_from_torch(module)
    assert info.value.argument == argument


def test_dropin_conversions_refuse_other_modules() -> None:
    with pytest.raises(rk.InputTypeError, match="module"):
        dropin_from_torch(nn.LSTMCell(3, 4))
    with pytest.raises(rk.InputTypeError, match="dropin"):
        dropin_to_torch(nn.GRU(3, 4))


class UserCell(nn.Module):
    input_size = output_size = 4

    def initial_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, 4, device=device, dtype=dtype)

    def forward(self, x, state=None):
        return x, x


REFUSED = [
    (lambda: rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 4)], "shared"), "stack.routing"),
    (lambda: rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 4)], "residual"), "stack.routing"),
    (lambda: rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 4)], "cross_layer"), "stack.routing"),
    (lambda: rk.Stack([rk.GRUCell(3, 4, reset="before")]), "stack.cells[0].reset"),
    (lambda: rk.Stack([rk.GRUCell(3, 4), rk.LSTMCell(4, 4)]), "stack.cells[1]"),
    (lambda: rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 6)]), "stack.cells[1].hidden_size"),
    (lambda: rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 4, bias=False)]), "stack.cells[1].bias"),
    (
        lambda: rk.Stack([rk.RNNCell(3, 4), rk.RNNCell(4, 4, nonlinearity="relu")]),
        "stack.cells[1].nonlinearity",
    ),  # fmt: skip
    (
        lambda: rk.Stack([rk.LSTMCell(3, 4, proj_size=2), rk.LSTMCell(2, 4)]),
        "stack.cells[1].proj_size",
    ),  # fmt: skip
    (lambda: rk.Stack([rk.NestedLSTMCell(3, 4)]), "stack.cells[0]"),
    (lambda: rk.Stack([rk.GRUCell(3, 4), UserCell()]), "stack.cells[1]"),
    (lambda: rk.Stack([rk.Stack([rk.GRUCell(3, 4)]).as_cell()]), "stack.cells[0]"),
]


@pytest.mark.parametrize(("make", "argument"), REFUSED)
def test_stack_to_torch_refuses_what_torch_cannot_express(make, argument) -> None:
    with pytest.raises(rk.ConfigError) as info:
        stack_to_torch(make())
    assert info.value.argument == argument
    assert "expected" in str(info.value)


def test_stack_to_torch_refuses_mixed_dtypes_and_non_stacks() -> None:
    stack = rk.Stack([rk.GRUCell(3, 4), rk.GRUCell(4, 4)])
    stack.cells[1].double()
    with pytest.raises(rk.DeviceError, match="cells.1.weight_ih"):
        stack_to_torch(stack)
    with pytest.raises(rk.InputTypeError, match="stack"):
        stack_to_torch(nn.GRU(3, 4))
