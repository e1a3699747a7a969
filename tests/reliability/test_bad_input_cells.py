"""Bad-input fuzzing of the cells: constructors, ``initial_state`` and one step.

Accepted calls are checked against the cells' equations written out here, textbook
style, in float64 (an independent reference, not the cell's own code path).
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st
from reliability_harness import (
    FUZZ,
    LEDGER,
    meta,
    non_tensor,
    odd_dtype,
    odd_layout,
    odd_values,
    same,
)
from torch import Tensor, nn

import recurrentkit as rk
from recurrentkit._validation import map_state
from recurrentkit.cells import LSTMState, NestedLSTMState
from recurrentkit.study.cells import StudyGRUCell

I, H = 3, 4
KINDS = (
    "RNNCell",
    "RNNCell(relu)",
    "GRUCell",
    "GRUCell(reset=before)",
    "LSTMCell",
    "LSTMCell(proj_size=2)",
    "NestedLSTMCell(depth=3)",
    "StudyGRUCell",
)


def make_cell(kind: str, input_size: int = I, hidden_size: int = H) -> nn.Module:
    torch.manual_seed(0)
    f64 = {"dtype": torch.float64}
    cell: nn.Module = {
        "RNNCell": lambda: rk.RNNCell(input_size, hidden_size, **f64),
        "RNNCell(relu)": lambda: rk.RNNCell(input_size, hidden_size, nonlinearity="relu", **f64),
        "GRUCell": lambda: rk.GRUCell(input_size, hidden_size, **f64),
        "GRUCell(reset=before)": lambda: rk.GRUCell(input_size, hidden_size, reset="before", **f64),
        "LSTMCell": lambda: rk.LSTMCell(input_size, hidden_size, **f64),
        "LSTMCell(proj_size=2)": lambda: rk.LSTMCell(input_size, hidden_size, proj_size=2, **f64),
        "NestedLSTMCell(depth=3)": lambda: rk.NestedLSTMCell(
            input_size, hidden_size, depth=3, **f64
        ),
        "StudyGRUCell": lambda: StudyGRUCell(input_size, hidden_size).double(),
    }[kind]()
    return cell


# -- the reference: each cell's equations, written out ----------------------------------


def _lin(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return x @ w.T + (0 if b is None else b)


def _lstm(cell: Any, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    i, f, g, o = (
        _lin(x, cell.weight_ih, cell.bias_ih) + _lin(h, cell.weight_hh, cell.bias_hh)
    ).chunk(4, 1)  # noqa: E501
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    if getattr(cell, "weight_hr", None) is not None:
        h = h @ cell.weight_hr.T
    return h, c


def _nested(cell: Any, x: Tensor, s: Any) -> tuple[Tensor, Any]:
    i, f, g, o = (
        _lin(x, cell.weight_ih, cell.bias_ih) + _lin(s.h, cell.weight_hh, cell.bias_hh)
    ).chunk(4, 1)  # noqa: E501
    inner_x, inner_h = torch.sigmoid(i) * g, torch.sigmoid(f) * s.c
    if isinstance(cell.inner, rk.NestedLSTMCell):
        c, inner = _nested(cell.inner, inner_x, s.inner._replace(h=inner_h))
    else:
        hh, cc = _lstm(cell.inner, inner_x, inner_h, s.inner.c)
        c, inner = hh, LSTMState(hh, cc)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, NestedLSTMState(h, c, inner)


def reference(kind: str, cell: Any, x: Tensor, state: Any) -> tuple[Tensor, Any]:
    """One step of ``cell`` on batched ``x (B, I)`` from ``state`` (zeros if ``None``)."""
    if state is None:
        state = map_state(torch.zeros_like, cell.initial_state(x.shape[0]))
    if kind.startswith("RNNCell"):
        pre = _lin(x, cell.weight_ih, cell.bias_ih) + _lin(state, cell.weight_hh, cell.bias_hh)
        h = torch.relu(pre) if "relu" in kind else torch.tanh(pre)
        return h, h
    if kind.startswith("GRUCell"):
        ir, iz, i_n = _lin(x, cell.weight_ih, cell.bias_ih).chunk(3, 1)
        w_r, w_z, w_n = cell.weight_hh.chunk(3, 0)
        b_r, b_z, b_n = cell.bias_hh.chunk(3, 0)
        r = torch.sigmoid(ir + state @ w_r.T + b_r)
        z = torch.sigmoid(iz + state @ w_z.T + b_z)
        if "before" in kind:
            n = torch.tanh(i_n + (r * state) @ w_n.T + b_n)
        else:
            n = torch.tanh(i_n + r * (state @ w_n.T + b_n))
        h = (1 - z) * n + z * state
        return h, h
    if kind.startswith("LSTMCell"):
        h, c = _lstm(cell, x, state[0], state[1])
        return h, LSTMState(h, c)
    if kind.startswith("Nested"):
        return _nested(cell, x, NestedLSTMState(*state))
    # the study's cell: x-projections with bias, h-projections without, b_r and b_z
    ir, iz, i_n = _lin(x, cell.weight_ih, cell.bias_ih).chunk(3, 1)
    w_r, w_z, w_n = cell.weight_hh.chunk(3, 0)
    r = torch.sigmoid(ir + state @ w_r.T + cell.bias_r)
    z = torch.sigmoid(iz + state @ w_z.T + cell.bias_z)
    n = torch.tanh(i_n + (r * state) @ w_n.T)
    h = (1 - z) * state + z * n
    return h, h


def random_state(cell: Any, B: int) -> Any:
    torch.manual_seed(1)
    return map_state(torch.randn_like, cell.initial_state(B))


def squeeze0(result: Any) -> Any:
    return map_state(lambda t: t.squeeze(0), result)


# -- one step -----------------------------------------------------------------------------

X_MUTATIONS = (
    "rank 0", "rank 3", "rank 4", "last dim", "empty feature", "empty batch", "dtype",
    "device", "non-tensor", "values", "layout", "unbatched",
)  # fmt: skip
STATE_MUTATIONS = (
    "None", "list", "plain tuple", "batch", "width", "missing field", "extra field",
    "tensor for tuple", "tuple for tensor", "dtype", "device", "None inside", "unbatched",
    "values", "layout", "other cell's state", "string",
)  # fmt: skip


@FUZZ
@given(data=st.data())
def fuzz_cell_step(target: str, mutation: str, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(KINDS), label="cell")
    cell = make_cell(kind)
    B = data.draw(st.integers(1, 3), label="B")
    torch.manual_seed(2)
    x = torch.randn(B, I, dtype=torch.float64)
    state = random_state(cell, B)
    tuple_state = not isinstance(state, Tensor)

    def expect(xx: Tensor, ss: Any, unbatched: bool = False) -> Any:
        def check(result: Any) -> None:
            want = reference(kind, cell, xx, ss)
            same(result, squeeze0(want) if unbatched else want)

        return check

    names = ("x", "state")
    m = mutation
    if target == "x":
        check = None
        if m == "rank 0":
            label, bad = m, torch.tensor(1.0, dtype=torch.float64)
        elif m == "rank 3":
            label, bad = m, x[None]
        elif m == "rank 4":
            label, bad = m, x[None, None]
        elif m == "last dim":
            extra = data.draw(st.sampled_from([-2, -1, 1, 5]))
            label, bad = f"last dim {I + extra}", torch.randn(B, I + extra, dtype=torch.float64)
        elif m == "empty feature":
            label, bad = m, torch.randn(B, 0, dtype=torch.float64)
        elif m == "empty batch":
            label, bad = m, torch.randn(0, I, dtype=torch.float64)
        elif m == "dtype":
            label, bad = odd_dtype(data, x)
        elif m == "device":
            label, bad = "x on the meta device", meta(x)
        elif m == "non-tensor":
            label, bad = non_tensor(data, x)
        elif m == "values":
            label, bad = odd_values(data, x)
            check = expect(bad, state)
        elif m == "layout":
            label, bad = odd_layout(data, x)
            check = expect(x, state)
        else:  # unbatched x with an unbatched state: legal
            label, bad = "unbatched x (I,)", x[0]
            ub_state = map_state(lambda t: t[0], state)
            LEDGER.probe(
                f"{kind}: {label}",
                lambda: cell(bad, ub_state),
                names=names,
                check=expect(x[:1], map_state(lambda t: t[:1], state), unbatched=True),
                legal=kind != "StudyGRUCell",  # the study's cell takes batches only
            )
            return
        LEDGER.probe(f"{kind}: x {label}", lambda: cell(bad, state), names=names, check=check,
                     legal=check is not None)  # fmt: skip
        return

    check = None
    if m == "None":
        label, bad = "state None", None
        check = expect(x, None)
    elif m == "list":
        label, bad = "a list for the tuple state", list(state) if tuple_state else [state]
        check = expect(x, state) if tuple_state else None
    elif m == "plain tuple":
        label, bad = "a plain tuple", tuple(state) if tuple_state else (state,)
        check = expect(x, state) if tuple_state else None
    elif m == "batch":
        label, bad = (
            "state batch B+1",
            map_state(lambda t: torch.randn(B + 1, *t.shape[1:], dtype=t.dtype), state),
        )  # noqa: E501
    elif m == "width":
        label, bad = (
            "state width +1",
            map_state(lambda t: torch.randn(B, t.shape[1] + 1, dtype=t.dtype), state),
        )  # noqa: E501
    elif m == "missing field":
        label, bad = "a field missing", tuple(state)[:-1] if tuple_state else ()
    elif m == "extra field":
        label, bad = "an extra field", (*state, state[0]) if tuple_state else (state, state)
    elif m == "tensor for tuple":
        label, bad = "a tensor for the tuple", state[0] if tuple_state else torch.stack([state])
    elif m == "tuple for tensor":
        label, bad = (
            "a tuple of tensors",
            (state, state) if not tuple_state else (state[0], (state[1],) * 2, *state[2:]),
        )  # noqa: E501
    elif m == "dtype":
        label, t = odd_dtype(data, x)
        dtype = t.dtype
        bad = map_state(lambda s: s.to(dtype), state)
        label = f"state {label}"
    elif m == "device":
        label, bad = "state on the meta device", map_state(meta, state)
    elif m == "None inside":
        label, bad = "None inside the state", (None, *tuple(state)[1:]) if tuple_state else [None]
    elif m == "unbatched":
        label, bad = "an unbatched state for batched x", map_state(lambda t: t[0], state)
    elif m == "values":
        tag, first = odd_values(data, state if not tuple_state else state[0])
        bad = first if not tuple_state else type(state)(first, *state[1:])
        label = f"state with {tag}"
        check = expect(x, bad)
    elif m == "layout":
        tag, first = odd_layout(data, state if not tuple_state else state[0])
        bad = first if not tuple_state else type(state)(first, *state[1:])
        label = f"state {tag}"
        check = expect(x, state)
    elif m == "other cell's state":
        other = data.draw(st.sampled_from([k for k in KINDS if k != kind]))
        bad = make_cell(other).initial_state(B)
        label = f"a {other}'s state"
        if type(bad) is type(state) and all(
            a.shape == b.shape for a, b in zip(_tensors(bad), _tensors(state))
        ):
            check = expect(x, bad)  # the same structure: legal
    else:
        label, bad = "a string state", "h"
    LEDGER.probe(f"{kind}: {label}", lambda: cell(x, bad), names=names, check=check,
                 legal=check is not None)  # fmt: skip


def _tensors(state: Any) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    return [t for s in state for t in _tensors(s)]


def test_cell_step_rejects_bad_input_clearly() -> None:
    with LEDGER.entry("cells", "cell(x, state)") as run:
        for m in X_MUTATIONS:
            fuzz_cell_step("x", m)
        for m in STATE_MUTATIONS:
            fuzz_cell_step("state", m)
    run.assert_clean()


# -- initial_state -------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def fuzz_initial_state(arg: str, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(KINDS), label="cell")
    cell = make_cell(kind)
    names = ("batch_size", "device", "dtype")
    if arg == "batch_size":
        bad = data.draw(st.sampled_from([0, -1, True, 2.0, "2", None, 2**62, 10**30]))
        LEDGER.probe(f"{kind}: batch_size={bad!r}", lambda: cell.initial_state(bad), names=names)
    elif arg == "device":
        bad = data.draw(st.sampled_from(["gpu", "cpu:x", 3.5, object(), "cuda:99"]))
        legal = bad == "cuda:99" and torch.cuda.device_count() > 99
        LEDGER.probe(
            f"{kind}: device={bad!r}",
            lambda: cell.initial_state(2, device=bad),
            names=names,
            check=(lambda s: True) if legal else None,
        )
    elif arg == "dtype":
        bad = data.draw(
            st.sampled_from([torch.int64, torch.bool, "float32", float, torch.complex64])
        )  # noqa: E501
        LEDGER.probe(
            f"{kind}: dtype={bad!r}", lambda: cell.initial_state(2, dtype=bad), names=names
        )
    else:
        B = data.draw(st.integers(1, 4))
        dtype = data.draw(st.sampled_from([None, torch.float32, torch.float16]))
        device = data.draw(st.sampled_from([None, "cpu", "meta", torch.device("cpu")]))

        def check(state: Any) -> None:
            want = cell.initial_state(B)  # the parameters' dtype and device
            for t, w in zip(_tensors(state), _tensors(want)):
                assert t.shape == w.shape
                assert t.dtype == (dtype or torch.float64)
                assert t.device.type == (torch.device(device).type if device else "cpu")
                if not t.is_meta:
                    assert not t.any()

        LEDGER.probe(
            f"{kind}: initial_state({B}, device={device}, dtype={dtype})",
            lambda: cell.initial_state(B, device=device, dtype=dtype),
            names=names,
            check=check,
            legal=True,
        )


def test_initial_state_rejects_bad_input_clearly() -> None:
    with LEDGER.entry("cells", "cell.initial_state") as run:
        for arg in ("batch_size", "device", "dtype", "legal"):
            fuzz_initial_state(arg)
    run.assert_clean()


# -- constructors ----------------------------------------------------------------------------

BAD_SIZES = (0, -1, True, 2.5, "3", None, 2**62)


@FUZZ
@given(data=st.data())
def fuzz_cell_constructor(arg: str, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(KINDS), label="cell")
    if arg in ("input_size", "hidden_size"):
        bad = data.draw(st.sampled_from(BAD_SIZES))
        sizes = {"input_size": I, "hidden_size": H, arg: bad}
        LEDGER.probe(
            f"{kind}({arg}={bad!r})",
            lambda: make_cell(kind, sizes["input_size"], sizes["hidden_size"]),
            names=(arg,),
        )
        return
    f64 = {"dtype": torch.float64}
    options: dict[str, list[tuple[str, Any]]] = {
        "RNNCell": [
            ("nonlinearity", lambda: rk.RNNCell(I, H, nonlinearity="sigmoid")),
            ("bias", lambda: rk.RNNCell(I, H, bias="yes")),
            ("device", lambda: rk.RNNCell(I, H, device="gpu")),
            ("dtype", lambda: rk.RNNCell(I, H, dtype=torch.int32)),
        ],
        "GRUCell": [
            ("reset", lambda: rk.GRUCell(I, H, reset="middle")),
            ("reset", lambda: rk.GRUCell(I, H, reset=None)),
            ("bias", lambda: rk.GRUCell(I, H, bias=1)),
            ("device", lambda: rk.GRUCell(I, H, device=1.5)),
        ],
        "LSTMCell": [
            ("proj_size", lambda: rk.LSTMCell(I, H, proj_size=H, **f64)),
            ("proj_size", lambda: rk.LSTMCell(I, H, proj_size=-1, **f64)),
            ("proj_size", lambda: rk.LSTMCell(I, H, proj_size=1.0, **f64)),
            ("dtype", lambda: rk.LSTMCell(I, H, dtype="float64")),
        ],
        "NestedLSTMCell": [
            ("depth", lambda: rk.NestedLSTMCell(I, H, depth=1)),
            ("depth", lambda: rk.NestedLSTMCell(I, H, depth="2")),
            ("bias", lambda: rk.NestedLSTMCell(I, H, bias=None)),
        ],
        "StudyGRUCell": [
            ("dropout", lambda: StudyGRUCell(I, H, dropout=1.5)),
            ("dropout", lambda: StudyGRUCell(I, H, dropout=float("nan"))),
            ("dropout", lambda: StudyGRUCell(I, H, dropout="0.1")),
        ],
    }
    family = kind.split("(")[0]
    name, make = data.draw(st.sampled_from(options[family]), label="option")
    LEDGER.probe(f"{kind}: bad {name}", make, names=(name,))


def test_cell_constructors_reject_bad_arguments_clearly() -> None:
    with LEDGER.entry("cells", "cell constructors") as run:
        for arg in ("input_size", "hidden_size", "option"):
            fuzz_cell_constructor(arg)
    run.assert_clean()
