"""Bad input: one test per case; each raises a recurrentkit error naming argument, expected, got.

Every check asserts the exact error class (so a torch-internal error, or a bare
ValueError, fails it) and that the message reads ``<argument>: expected ..., got ...``.
The last tests throw random malformed calls at cells and stacks: only recurrentkit
errors may come out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import recurrentkit as rk
from recurrentkit.errors import RecurrentKitError

D = torch.float64
I, H, B, T = 4, 5, 2, 3


@contextmanager
def expect(cls: type[RecurrentKitError], argument: str, *parts: str) -> Iterator[None]:
    with pytest.raises(cls) as info:
        yield
    err = info.value
    assert type(err) is cls, f"{type(err).__name__}: {err}"
    assert err.argument == argument, str(err)
    msg = str(err)
    assert msg.startswith(f"{argument}: expected "), msg
    assert ", got " in msg, msg
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"


def gru() -> rk.GRUCell:
    return rk.GRUCell(I, H)


def two_layer(routing: str = "independent", cell=rk.GRUCell) -> rk.Stack:
    return rk.Stack([cell(I, H), cell(H, H)], routing)


# -- the error family -----------------------------------------------------------------


def test_error_family() -> None:
    for cls in (rk.ShapeError, rk.StateError, rk.ConfigError, rk.DeviceError):
        assert issubclass(cls, rk.RecurrentKitError) and issubclass(cls, ValueError)
    assert issubclass(rk.InputTypeError, rk.RecurrentKitError)
    assert issubclass(rk.InputTypeError, TypeError)
    err = rk.ShapeError("x", "shape (T, B, 4)", "(2, 3)")
    assert str(err) == "x: expected shape (T, B, 4), got (2, 3)"
    assert (err.argument, err.expected, err.got) == ("x", "shape (T, B, 4)", "(2, 3)")


# -- cells: input -------------------------------------------------------------------------


def test_cell_input_rank() -> None:
    with expect(rk.ShapeError, "x", "(B, 4) or (4,)", "got (1, 2, 4)"):
        gru()(torch.randn(1, 2, I))
    with expect(rk.ShapeError, "x", "got ()"):
        gru()(torch.tensor(1.0))


def test_cell_input_feature_size() -> None:
    with expect(rk.ShapeError, "x", "last dim 4", "got (2, 5)"):
        gru()(torch.randn(2, 5))


def test_cell_integer_input() -> None:
    with expect(rk.InputTypeError, "x", "floating-point", "nn.Embedding", "torch.int64"):
        gru()(torch.ones(2, I, dtype=torch.long))


def test_cell_input_not_a_tensor() -> None:
    with expect(rk.InputTypeError, "x", "a tensor", "got a list of 4 elements"):
        gru()([0.0] * I)


def test_cell_empty_batch() -> None:
    with expect(rk.ShapeError, "x", "non-empty batch", "got (0, 4)"):
        gru()(torch.randn(0, I))


def test_cell_input_dtype_mismatch() -> None:
    with expect(rk.DeviceError, "x", "dtype torch.float64", "got torch.float32"):
        rk.GRUCell(I, H, dtype=D)(torch.randn(2, I))


def test_cell_input_device_mismatch() -> None:
    with expect(rk.DeviceError, "x", "device cpu", "got meta"):
        gru()(torch.randn(2, I, device="meta"))


# -- cells: state -------------------------------------------------------------------------


def test_cell_state_batch_size() -> None:
    with expect(rk.StateError, "state", "shape (2, 5)", "got (3, 5)"):
        gru()(torch.randn(B, I), torch.randn(3, H))


def test_cell_state_width() -> None:
    with expect(rk.StateError, "state.c", "shape (2, 5)", "got (2, 4)"):
        rk.LSTMCell(I, H)(torch.randn(B, I), (torch.randn(B, H), torch.randn(B, 4)))


def test_cell_unbatched_input_with_batched_state() -> None:
    with expect(rk.StateError, "state", "shape (5,)", "got (1, 5)"):
        gru()(torch.randn(I), torch.randn(1, H))


def test_cell_tensor_where_tuple_state_expected() -> None:
    with expect(rk.InputTypeError, "state", "LSTMState of 2 elements", "tensor of shape (2, 5)"):
        rk.LSTMCell(I, H)(torch.randn(B, I), torch.randn(B, H))


def test_cell_tuple_where_tensor_state_expected() -> None:
    with expect(rk.InputTypeError, "state", "a tensor of shape (2, 5)", "a tuple of 2 elements"):
        gru()(torch.randn(B, I), (torch.randn(B, H), torch.randn(B, H)))


def test_cell_state_tuple_length() -> None:
    h = torch.randn(B, H)
    with expect(rk.StateError, "state", "LSTMState of 2 elements", "got 3"):
        rk.LSTMCell(I, H)(torch.randn(B, I), (h, h, h))


def test_nested_cell_inner_state_is_checked() -> None:
    h = torch.randn(B, H)
    with expect(rk.StateError, "state.inner.c", "shape (2, 5)", "got (2, 3)"):
        rk.NestedLSTMCell(I, H)(torch.randn(B, I), (h, h, (h, torch.randn(B, 3))))
    with expect(rk.InputTypeError, "state.inner", "LSTMState", "tensor"):
        rk.NestedLSTMCell(I, H)(torch.randn(B, I), (h, h, h))


def test_cell_state_dtype_mismatch() -> None:
    with expect(rk.DeviceError, "state", "dtype torch.float32", "got torch.float64"):
        gru()(torch.randn(B, I), torch.randn(B, H, dtype=D))


def test_cell_state_device_mismatch() -> None:
    with expect(rk.DeviceError, "state", "device cpu", "got meta"):
        gru()(torch.randn(B, I), torch.randn(B, H, device="meta"))


def test_cell_integer_state() -> None:
    with expect(rk.InputTypeError, "state", "floating-point", "torch.int64"):
        gru()(torch.randn(B, I), torch.zeros(B, H, dtype=torch.long))


def test_cell_initial_state_arguments() -> None:
    with expect(rk.ConfigError, "batch_size", "int >= 1", "got 0"):
        gru().initial_state(0)
    with expect(rk.InputTypeError, "batch_size", "int >= 1", "float 2.0"):
        gru().initial_state(2.0)  # type: ignore[arg-type]
    with expect(rk.ConfigError, "dtype", "floating-point", "torch.int64"):
        gru().initial_state(2, dtype=torch.long)
    with expect(rk.InputTypeError, "dtype", "torch.dtype", "str 'float64'"):
        gru().initial_state(2, dtype="float64")  # type: ignore[arg-type]
    with expect(rk.ConfigError, "device", "'cpu'", "'gpu'"):
        gru().initial_state(2, device="gpu")


# -- cells: constructors ------------------------------------------------------------------

CELL_CLASSES = [rk.RNNCell, rk.GRUCell, rk.LSTMCell, rk.NestedLSTMCell]


@pytest.mark.parametrize("cls", CELL_CLASSES)
def test_non_positive_sizes(cls: type) -> None:
    with expect(rk.ConfigError, "input_size", "int >= 1", "got 0"):
        cls(0, H)
    with expect(rk.ConfigError, "hidden_size", "int >= 1", "got -3"):
        cls(I, -3)


@pytest.mark.parametrize("cls", CELL_CLASSES)
def test_non_integer_sizes(cls: type) -> None:
    with expect(rk.InputTypeError, "hidden_size", "an int", "float 5.0"):
        cls(I, 5.0)
    with expect(rk.InputTypeError, "input_size", "an int", "bool True"):
        cls(True, H)


def test_proj_size_not_below_hidden_size() -> None:
    with expect(rk.ConfigError, "proj_size", "< hidden_size=5", "got 5"):
        rk.LSTMCell(I, H, proj_size=H)
    with expect(rk.ConfigError, "proj_size", "< hidden_size=5", "got 9"):
        rk.LSTMCell(I, H, proj_size=9)
    with expect(rk.ConfigError, "proj_size", "int >= 0", "got -1"):
        rk.LSTMCell(I, H, proj_size=-1)


@pytest.mark.parametrize("depth", [1, 0, -2])
def test_depth_below_two(depth: int) -> None:
    with expect(rk.ConfigError, "depth", "int >= 2", f"got {depth}"):
        rk.NestedLSTMCell(I, H, depth=depth)


def test_unknown_nonlinearity() -> None:
    with expect(rk.ConfigError, "nonlinearity", "'tanh', 'relu'", "got 'sigmoid'"):
        rk.RNNCell(I, H, nonlinearity="sigmoid")


def test_unknown_reset() -> None:
    with expect(rk.ConfigError, "reset", "'after', 'before'", "got 'sometimes'"):
        rk.GRUCell(I, H, reset="sometimes")


@pytest.mark.parametrize("cls", CELL_CLASSES)
def test_bias_must_be_bool(cls: type) -> None:
    with expect(rk.InputTypeError, "bias", "a bool", "str 'False'"):
        cls(I, H, bias="False")


@pytest.mark.parametrize("cls", CELL_CLASSES)
def test_cell_dtype_and_device_arguments(cls: type) -> None:
    with expect(rk.ConfigError, "dtype", "floating-point", "torch.int32"):
        cls(I, H, dtype=torch.int32)
    with expect(rk.ConfigError, "device", "'cpu'", "'tpu0'"):
        cls(I, H, device="tpu0")


# -- Stack: construction ----------------------------------------------------------------


def test_unknown_policy_name_lists_the_valid_ones() -> None:
    names = ", ".join(repr(n) for n in rk.routing.POLICIES)
    with expect(rk.ConfigError, "routing", names, "got 'gated'"):
        two_layer("gated")


def test_policy_of_the_wrong_type() -> None:
    with expect(rk.InputTypeError, "routing", "RoutingPolicy instance", "type"):
        rk.Stack([gru()], rk.routing.Shared)  # the class, not an instance
    with expect(rk.InputTypeError, "routing", "policy name", "int 3"):
        rk.Stack([gru()], 3)  # type: ignore[arg-type]


def test_policy_instance_used_twice() -> None:
    policy = rk.routing.Independent()
    rk.Stack([gru()], policy)
    with expect(rk.ConfigError, "routing", "not yet used by another Stack"):
        rk.Stack([gru()], policy)


def test_unknown_carry() -> None:
    with expect(rk.ConfigError, "carry", "'first', 'last'", "got 'middle'"):
        rk.routing.Shared(carry="middle")


def test_widths_that_do_not_chain() -> None:
    with expect(rk.ConfigError, "cells[1].input_size", "5 (cells[0].output_size", "got 4"):
        rk.Stack([rk.GRUCell(I, H), rk.GRUCell(4, H)])
    with expect(rk.ConfigError, "cells[1].input_size", "3 (cells[0].output_size", "got 5"):
        rk.Stack([rk.LSTMCell(I, H, proj_size=3), rk.GRUCell(H, H)])


@pytest.mark.parametrize("routing", ["shared", "handoff"])
def test_widths_a_state_passing_policy_cannot_accept(routing: str) -> None:
    with expect(rk.ConfigError, "cells[1]", "same shape as layer 0's", "got (1, 6)"):
        rk.Stack([rk.GRUCell(I, H), rk.GRUCell(H, 6)], routing)


def test_widths_residual_cannot_accept() -> None:
    with expect(rk.ConfigError, "cells[1].output_size", "equal to its input_size", "got 6"):
        rk.Stack([rk.GRUCell(I, H), rk.GRUCell(H, 6)], "residual")


def test_cells_cross_layer_cannot_accept() -> None:
    class NoWidths(nn.Module):
        def initial_state(self, batch_size, *, device=None, dtype=None):
            return torch.zeros(batch_size, H, device=device, dtype=dtype)

        def forward(self, x, state=None):
            return state, state

    with expect(rk.ConfigError, "cells[0].input_size", "cross_layer gates", "got None"):
        rk.Stack([NoWidths(), NoWidths()], "cross_layer")

    class TupleState(NoWidths):
        input_size = output_size = H

        def initial_state(self, batch_size, *, device=None, dtype=None):
            z = torch.zeros(batch_size, H, device=device, dtype=dtype)
            return (z, z)

    with expect(rk.ConfigError, "cells[0]", "an 'h' field", "got a state of type tuple"):
        rk.Stack([TupleState(), TupleState()], "cross_layer")


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), float("inf")])
def test_dropout_outside_unit_interval(p: float) -> None:
    with expect(rk.ConfigError, "dropout", "[0, 1]", f"got {p}"):
        rk.Stack([gru()], dropout=p)


def test_dropout_of_the_wrong_type() -> None:
    with expect(rk.InputTypeError, "dropout", "a float", "str '0.5'"):
        rk.Stack([gru()], dropout="0.5")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1, "yes", None])
def test_batch_first_must_be_bool(value: object) -> None:
    with expect(rk.InputTypeError, "batch_first", "a bool"):
        rk.Stack([gru()], batch_first=value)  # type: ignore[arg-type]


def test_non_cell_in_cells() -> None:
    with expect(rk.InputTypeError, "cells[1]", "cell protocol", "Linear"):
        rk.Stack([gru(), nn.Linear(H, H)])
    with expect(rk.InputTypeError, "cells[0]", "cell protocol", "str 'gru'"):
        rk.Stack(["gru"])  # type: ignore[list-item]


def test_cells_not_a_sequence() -> None:
    with expect(rk.InputTypeError, "cells", "for one layer: [cell]", "GRUCell"):
        rk.Stack(gru())  # type: ignore[arg-type]
    with expect(rk.ConfigError, "cells", "at least one cell", "empty"):
        rk.Stack([])


# -- Stack: input -----------------------------------------------------------------------


def test_stack_input_rank() -> None:
    with expect(rk.ShapeError, "x", "(T, B, 4) or (T, 4)", "got (1, 2, 3, 4)"):
        two_layer()(torch.randn(1, 2, 3, I))
    with expect(rk.ShapeError, "x", "(B, T, 4) or (T, 4)", "got (4,)"):
        rk.Stack([gru()], batch_first=True)(torch.randn(I))


def test_stack_input_feature_size() -> None:
    with expect(rk.ShapeError, "x", "last dim 4", "got (3, 2, 6)"):
        two_layer()(torch.randn(T, B, 6))


def test_stack_integer_input() -> None:
    with expect(rk.InputTypeError, "x", "floating-point", "torch.int64"):
        two_layer()(torch.zeros(T, B, I, dtype=torch.long))


def test_stack_empty_sequence() -> None:
    with expect(rk.ShapeError, "x", "non-empty time dimension", "got (0, 2, 4)"):
        two_layer()(torch.randn(0, B, I))
    with expect(rk.ShapeError, "x", "non-empty time dimension", "got (0, 4)"):
        two_layer()(torch.randn(0, I))


def test_stack_empty_batch_is_not_an_error() -> None:
    # B = 0 is accepted (as torch.nn accepts it); tests/test_nn_torch_compat.py checks
    # every policy, executor and path. Only T = 0 stays an error (above).
    y, state = two_layer()(torch.randn(T, 0, I))
    assert y.shape == (T, 0, H) and state[1].shape == (0, H)
    y, _ = rk.Stack([gru()], batch_first=True)(torch.randn(0, T, I))
    assert y.shape == (0, T, H)


def test_stack_input_dtype_mismatch() -> None:
    with expect(rk.DeviceError, "x", "dtype torch.float32", "got torch.float64"):
        two_layer()(torch.randn(T, B, I, dtype=D))


def test_stack_input_device_mismatch() -> None:
    with expect(rk.DeviceError, "x", "device cpu", "got meta"):
        two_layer()(torch.randn(T, B, I, device="meta"))


def test_stack_layer_converted_on_its_own() -> None:
    stack = two_layer()
    stack.cells[1].double()
    with expect(rk.DeviceError, "cells.1.weight_ih", "torch.float32", "got torch.float64"):
        stack(torch.randn(T, B, I))


def test_stack_policy_converted_on_its_own() -> None:
    stack = two_layer("cross_layer")
    stack.routing.double()
    with expect(rk.DeviceError, "routing.feedback_weight_l0", "float32", "got torch.float64"):
        stack(torch.randn(T, B, I))


def test_step_input_rank_and_size() -> None:
    with expect(rk.ShapeError, "x_t", "(B, 4) or (4,)", "got (3, 2, 4)"):
        two_layer().step(torch.randn(T, B, I))
    with expect(rk.ShapeError, "x_t", "last dim 4", "got (2, 3)"):
        two_layer().step(torch.randn(B, 3))
    y, _ = two_layer().step(torch.randn(0, I))  # B = 0: accepted, empty
    assert y.shape == (0, H)


# -- Stack: state -------------------------------------------------------------------------


def test_stack_state_not_a_tuple() -> None:
    with expect(rk.InputTypeError, "state", "tuple of 2 per-layer states", "tensor"):
        two_layer()(torch.randn(T, B, I), torch.randn(B, H))


def test_stack_state_layer_count() -> None:
    with expect(rk.StateError, "state", "tuple of 2 per-layer states", "got 3"):
        two_layer()(torch.randn(T, B, I), tuple(torch.randn(B, H) for _ in range(3)))


def test_stack_cell_state_where_per_layer_tuple_expected() -> None:
    stack = rk.Stack([rk.LSTMCell(I, H), rk.LSTMCell(H, H)])
    one_cell = rk.LSTMState(torch.randn(B, H), torch.randn(B, H))  # 2 fields == 2 layers
    with expect(rk.InputTypeError, "state", "per-layer states", "LSTMState, one cell's state"):
        stack(torch.randn(T, B, I), one_cell)
    with expect(rk.InputTypeError, "state", "(cell_state,)", "LSTMState"):
        rk.Stack([rk.LSTMCell(I, H)]).step(torch.randn(B, I), one_cell)


def test_stack_state_batch_size() -> None:
    state = (torch.randn(3, H), torch.randn(3, H))
    with expect(rk.StateError, "state[0]", "shape (2, 5)", "got (3, 5)"):
        two_layer()(torch.randn(T, B, I), state)


def test_stack_state_structure_per_layer() -> None:
    good = two_layer("independent", rk.LSTMCell).initial_state(B)
    with expect(rk.InputTypeError, "state[1]", "LSTMState of 2 elements", "tensor"):
        two_layer("independent", rk.LSTMCell)(torch.randn(T, B, I), (good[0], good[1].h))
    with expect(rk.InputTypeError, "state[0]", "a tensor of shape (2, 5)", "tuple"):
        two_layer()(torch.randn(T, B, I), ((torch.randn(B, H),), torch.randn(B, H)))


def test_stack_state_dtype_and_device() -> None:
    h = torch.randn(B, H)
    with expect(rk.DeviceError, "state[1]", "dtype torch.float32", "torch.float64"):
        two_layer()(torch.randn(T, B, I), (h, h.double()))
    with expect(rk.DeviceError, "state[0]", "device cpu", "meta"):
        two_layer()(torch.randn(T, B, I), (h.to("meta"), h))


def test_stack_initial_state_arguments() -> None:
    with expect(rk.ConfigError, "batch_size", "int >= 0", "got -1"):
        two_layer().initial_state(-1)
    assert two_layer().initial_state(0)[0].shape == (0, H)  # B = 0: empty states
    with expect(rk.ConfigError, "dtype", "floating-point", "torch.int64"):
        two_layer().initial_state(2, dtype=torch.long)


# -- Stack: lengths and packed sequences ----------------------------------------------------


def test_lengths_type() -> None:
    x = torch.randn(T, B, I)
    with expect(rk.InputTypeError, "lengths", "integer tensor of shape (2,)", "list"):
        two_layer()(x, lengths=[3, 2])  # type: ignore[arg-type]
    with expect(rk.InputTypeError, "lengths", "integer tensor", "torch.float32"):
        two_layer()(x, lengths=torch.tensor([3.0, 2.0]))
    with expect(rk.InputTypeError, "lengths", "integer tensor", "torch.bool"):
        two_layer()(x, lengths=torch.tensor([True, True]))
    with expect(rk.DeviceError, "lengths", "with values", "got meta"):
        two_layer()(x, lengths=torch.tensor([3, 2], device="meta"))


def test_lengths_shape_and_values() -> None:
    x = torch.randn(T, B, I)
    with expect(rk.ShapeError, "lengths", "shape (2,)", "got (3,)"):
        two_layer()(x, lengths=torch.tensor([3, 2, 1]))
    with expect(rk.ShapeError, "lengths", "values in 1..3", "got [4, 2]"):
        two_layer()(x, lengths=torch.tensor([4, 2]))
    with expect(rk.ShapeError, "lengths", "values in 1..3", "got [0, 2]"):
        two_layer()(x, lengths=torch.tensor([0, 2]))


def test_lengths_with_unbatched_or_packed_input() -> None:
    with expect(rk.ConfigError, "lengths", "None for unbatched input"):
        two_layer()(torch.randn(T, I), lengths=torch.tensor([T]))
    packed = pack_sequence([torch.randn(3, I), torch.randn(2, I)])
    with expect(rk.ConfigError, "lengths", "None when x is a PackedSequence"):
        two_layer()(packed, lengths=torch.tensor([3, 2]))


def test_packed_data_checked() -> None:
    with expect(rk.InputTypeError, "x (PackedSequence data)", "floating-point", "torch.int64"):
        two_layer()(pack_sequence([torch.ones(3, I, dtype=torch.long)]))
    with expect(rk.ShapeError, "x (PackedSequence data)", "last dim 4", "(3, 6)"):
        two_layer()(pack_sequence([torch.ones(3, 6)]))


# -- no torch traceback: random malformed calls --------------------------------------------

DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.bool]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    rank = draw(st.integers(0, 4))
    shape = draw(st.lists(st.integers(0, 6), min_size=rank, max_size=rank))
    dtype = draw(st.sampled_from(DTYPES))
    device = draw(st.sampled_from(["cpu", "cpu", "cpu", "meta"]))
    return torch.zeros(shape, dtype=dtype, device=device)


def states() -> st.SearchStrategy:
    leaf = st.one_of(st.none(), tensors(), st.integers(), st.just("h"))
    return st.recursive(
        leaf, lambda kids: st.lists(kids, max_size=3).map(tuple) | st.lists(kids, max_size=3)
    )


def good_tensors(widths: list[int]) -> st.SearchStrategy:
    """Mostly-valid inputs: the right width, random leading dims and dtype."""
    return st.builds(
        lambda lead, w, dtype: torch.randn(*lead, w).to(dtype),
        st.lists(st.integers(0, 3), min_size=0, max_size=3),
        st.sampled_from(widths),
        st.sampled_from([torch.float32, torch.float32, torch.float64, torch.int64]),
    )


CELLS = {
    "rnn": lambda: rk.RNNCell(3, 4),
    "gru": lambda: rk.GRUCell(3, 4, reset="before"),
    "lstm": lambda: rk.LSTMCell(3, 4, proj_size=2),
    "nested": lambda: rk.NestedLSTMCell(3, 4, depth=3),
}


def only_recurrentkit_errors(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except RecurrentKitError:
        pass


@given(
    kind=st.sampled_from(list(CELLS)),
    x=st.one_of(tensors(), good_tensors([3, 4])),
    state=st.one_of(states(), st.none()),
)
def test_random_malformed_cell_calls(kind: str, x: torch.Tensor, state: object) -> None:
    cell = CELLS[kind]()
    only_recurrentkit_errors(cell, x, state)
    if isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[0] > 0 and x.shape[1] == 3:
        # a valid x: try a state built from the right template with one leaf spoiled
        only_recurrentkit_errors(cell, x.float(), _spoil(cell.initial_state(x.shape[0]), state))


def _spoil(template: object, leaf: object) -> object:
    if isinstance(template, torch.Tensor):
        return leaf
    items = list(template)  # type: ignore[call-overload]
    items[-1] = _spoil(items[-1], leaf)
    return type(template)(*items) if hasattr(template, "_fields") else tuple(items)


@given(
    routing=st.sampled_from(list(rk.routing.POLICIES)),
    cell=st.sampled_from(["gru", "lstm"]),
    batch_first=st.booleans(),
    x=st.one_of(tensors(), good_tensors([3, 4])),
    state=st.one_of(st.none(), states()),
    lengths=st.one_of(st.none(), tensors(), st.lists(st.integers(-1, 5), max_size=3)),
    use_step=st.booleans(),
)
def test_random_malformed_stack_calls(
    routing: str,
    cell: str,
    batch_first: bool,
    x: object,
    state: object,
    lengths: object,
    use_step: bool,
) -> None:
    width = 3 if cell == "gru" else 2
    if cell == "gru":
        cells = [rk.GRUCell(3, 3), rk.GRUCell(width, 3)]
    else:
        cells = [rk.LSTMCell(3, 4, proj_size=2), rk.LSTMCell(width, 4, proj_size=2)]
    stack = rk.Stack(cells, routing, batch_first=batch_first).eval()
    if use_step:
        only_recurrentkit_errors(stack.step, x, state)
    else:
        if isinstance(lengths, list):
            lengths = torch.tensor(lengths, dtype=torch.long)
        only_recurrentkit_errors(stack, x, state, lengths=lengths)


@given(
    input_size=st.one_of(st.integers(-2, 4), st.floats(0, 4), st.none(), st.just("3")),
    hidden_size=st.one_of(st.integers(-2, 4), st.floats(0, 4), st.just("3")),
    bias=st.sampled_from([True, False, 1, "yes", None]),
    extra=st.sampled_from(
        [
            {},
            {"dtype": torch.int64},
            {"dtype": "float"},
            {"device": "nowhere"},
            {"device": 1.5},
            {"device": "meta"},
            {"dtype": torch.float64},
        ]
    ),
    kind=st.sampled_from(["rnn", "gru", "lstm", "nested"]),
    option=st.one_of(st.integers(-2, 5), st.text(max_size=3), st.none()),
)
def test_random_malformed_constructors(
    input_size: object, hidden_size: object, bias: object, extra: dict, kind: str, option: object
) -> None:
    def build() -> None:
        if kind == "rnn":
            rk.RNNCell(input_size, hidden_size, bias, option, **extra)  # type: ignore[arg-type]
        elif kind == "gru":
            rk.GRUCell(input_size, hidden_size, bias, option, **extra)  # type: ignore[arg-type]
        elif kind == "lstm":
            rk.LSTMCell(input_size, hidden_size, bias, option, **extra)  # type: ignore[arg-type]
        else:
            rk.NestedLSTMCell(input_size, hidden_size, option, bias, **extra)  # type: ignore[arg-type]

    only_recurrentkit_errors(build)


@given(
    cells=st.lists(
        st.sampled_from(["gru34", "gru44", "gru45", "lstm44", "linear", "str", "none"]),
        max_size=3,
    ),
    routing=st.one_of(st.sampled_from([*rk.routing.POLICIES, "bogus"]), st.integers()),
    dropout=st.one_of(st.floats(allow_nan=True), st.integers(-1, 2), st.just("0.1")),
    batch_first=st.sampled_from([True, False, 0, None]),
)
def test_random_malformed_stack_constructors(
    cells: list, routing: object, dropout: object, batch_first: object
) -> None:
    makers = {
        "gru34": lambda: rk.GRUCell(3, 4),
        "gru44": lambda: rk.GRUCell(4, 4),
        "gru45": lambda: rk.GRUCell(4, 5),
        "lstm44": lambda: rk.LSTMCell(4, 4),
        "linear": lambda: nn.Linear(4, 4),
        "str": lambda: "cell",
        "none": lambda: None,
    }
    only_recurrentkit_errors(
        rk.Stack,
        [makers[c]() for c in cells],
        routing,  # type: ignore[arg-type]
        dropout=dropout,  # type: ignore[arg-type]
        batch_first=batch_first,  # type: ignore[arg-type]
    )


@given(
    kind=st.sampled_from(list(CELLS)),
    batch_size=st.one_of(st.integers(-2, 3), st.floats(0, 3), st.just("2"), st.none()),
    dtype=st.sampled_from([None, torch.float64, torch.int8, torch.bool, "float32", 3]),
    device=st.sampled_from([None, "cpu", "meta", "nowhere", 2.5, torch.device("cpu")]),
    through_stack=st.booleans(),
)
def test_random_malformed_initial_state_calls(
    kind: str, batch_size: object, dtype: object, device: object, through_stack: bool
) -> None:
    cell = CELLS[kind]()
    target = rk.Stack([cell]) if through_stack else cell
    only_recurrentkit_errors(target.initial_state, batch_size, dtype=dtype, device=device)
