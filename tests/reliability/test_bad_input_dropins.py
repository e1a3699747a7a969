"""Bad-input fuzzing of the torch.nn drop-ins (``RNN``/``GRU``/``LSTM``) and of the
conversions ``from_torch``/``to_torch``.

Accepted calls are checked against torch.nn itself: the same module class from torch,
holding the same weights, given the same input.
"""

from __future__ import annotations

import warnings
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
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import recurrentkit as rk
from recurrentkit import interop

I, H = 3, 4
MODES = ("RNN", "RNN(relu)", "GRU", "LSTM", "LSTM(proj_size=2)")


def make_pair(data: st.DataObject) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """A drop-in and the torch.nn module with the same configuration and weights."""
    mode = data.draw(st.sampled_from(MODES), label="mode")
    cfg: dict[str, Any] = {
        "num_layers": data.draw(st.integers(1, 2), label="layers"),
        "bidirectional": data.draw(st.booleans(), label="bidirectional"),
        "batch_first": data.draw(st.booleans(), label="batch_first"),
        "bias": data.draw(st.booleans(), label="bias"),
        "dtype": torch.float64,
    }
    if mode == "RNN(relu)":
        cfg["nonlinearity"] = "relu"
    if "proj" in mode:
        cfg["proj_size"] = 2
    name = mode.split("(")[0]
    torch.manual_seed(0)
    ours = getattr(rk, name)(I, H, **cfg).eval()
    theirs = getattr(nn, name)(I, H, **cfg).eval()
    theirs.load_state_dict(ours.state_dict())
    cfg["mode"] = mode
    return ours, theirs, cfg


def describe(cfg: dict[str, Any]) -> str:
    flags = [k for k in ("bidirectional", "batch_first") if cfg[k]] + (
        [] if cfg["bias"] else ["bias=False"]
    )
    return f"{cfg['mode']}(layers={cfg['num_layers']}{''.join(', ' + f for f in flags)})"


def _plain(result: Any) -> Any:
    out, hidden = result
    if isinstance(out, PackedSequence):
        out = pad_packed_sequence(out)
    return out, hidden


def like_torch(theirs: nn.Module, *args: Any) -> Any:
    """A check: the drop-in's result equals torch.nn's on ``args``."""

    def check(result: Any) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = theirs(*args)
        same(_plain(result), _plain(want), atol=1e-9, rtol=1e-8)

    return check


INPUT_MUTATIONS = (
    "rank 1", "rank 4", "last dim", "empty time", "empty batch", "empty feature", "dtype",
    "device", "non-tensor", "values", "layout", "unbatched", "packed", "packed int",
)  # fmt: skip
HX_MUTATIONS = (
    "None", "layers", "batch", "width", "dtype", "device", "non-tensor", "tensor for tuple",
    "tuple of 3", "list", "tuple for tensor", "unbatched", "values",
)  # fmt: skip


@FUZZ
@given(data=st.data())
def fuzz_dropin_forward(where: str, mutation: str, data: st.DataObject) -> None:
    ours, theirs, cfg = make_pair(data)
    T = data.draw(st.integers(1, 4), label="T")
    B = data.draw(st.integers(1, 3), label="B")
    D = 2 if cfg["bidirectional"] else 1
    L = cfg["num_layers"]
    out_h = cfg.get("proj_size", 0) or H
    bf = cfg["batch_first"]
    torch.manual_seed(2)
    x = torch.randn(*((B, T) if bf else (T, B)), I, dtype=torch.float64)
    lstm = cfg["mode"].startswith("LSTM")
    h0 = torch.randn(D * L, B, out_h, dtype=torch.float64)
    c0 = torch.randn(D * L, B, H, dtype=torch.float64)
    hx: Any = (h0, c0) if lstm else h0
    name = describe(cfg)
    names = ("input", "hx")
    m = mutation
    check = None
    if where == "input":
        if m == "rank 1":
            bad = x[0, 0]
        elif m == "rank 4":
            bad = x[None]
        elif m == "last dim":
            bad = torch.randn(*x.shape[:2], I + 1, dtype=torch.float64)
        elif m == "empty batch":  # legal, as in torch.nn: empty outputs and states
            bad = x[:0] if bf else x[:, :0]
            hx = (h0[:, :0], c0[:, :0]) if lstm else h0[:, :0]
            check = like_torch(theirs, bad, hx)
        elif m.startswith("empty"):
            shape = list(x.shape)
            axis = {"empty time": 1 if bf else 0}.get(m, 2)
            shape[axis] = 0
            bad = torch.randn(*shape, dtype=torch.float64)
            hx = None
        elif m == "dtype":
            m, bad = odd_dtype(data, x)
        elif m == "device":
            bad = meta(x)
        elif m == "non-tensor":
            m, bad = non_tensor(data, x)
        elif m == "values":
            m, bad = odd_values(data, x)
            check = like_torch(theirs, bad, hx)
        elif m == "layout":
            m, bad = odd_layout(data, x)
            check = like_torch(theirs, x, hx)
        elif m == "unbatched":
            bad = x[0] if bf else x[:, 0]
            hx = (h0[:, 0], c0[:, 0]) if lstm else h0[:, 0]
            check = like_torch(theirs, bad, hx)
        elif m == "packed":
            lengths = torch.tensor(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
            bad = pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False)
            check = like_torch(theirs, bad, hx)
        else:
            lengths = torch.full((B,), T)
            bad = pack_padded_sequence(x.long(), lengths, batch_first=bf, enforce_sorted=False)
        LEDGER.probe(
            f"{name}: input {m}",
            lambda: ours(bad, hx),
            names=names,
            check=check,
            legal=check is not None,
        )
        return

    def both(fn: Any) -> Any:
        return (fn(h0, out_h), fn(c0, H)) if lstm else fn(h0, out_h)

    if m == "None":
        bad, check = None, like_torch(theirs, x, None)
    elif m == "layers":
        bad = both(lambda t, w: torch.randn(D * L + 1, B, w, dtype=torch.float64))
    elif m == "batch":
        bad = both(lambda t, w: torch.randn(D * L, B + 1, w, dtype=torch.float64))
    elif m == "width":
        bad = both(lambda t, w: torch.randn(D * L, B, w + 1, dtype=torch.float64))
    elif m == "dtype":
        m, t = odd_dtype(data, h0)
        bad = both(lambda u, w: u.to(t.dtype))
    elif m == "device":
        bad = both(lambda u, w: meta(u))
    elif m == "non-tensor":
        m, bad = non_tensor(data, h0)
        if lstm and m.endswith("tuple instead of a tensor"):
            bad = (h0,)
        if bad is None:  # None means zeros: legal
            check = like_torch(theirs, x, None)
    elif m == "tensor for tuple":
        bad = h0 if lstm else torch.stack([h0])
    elif m == "tuple of 3":
        bad = (h0, c0, c0) if lstm else (h0, h0, h0)
    elif m == "list":
        bad = [h0, c0] if lstm else [h0]
        if lstm:
            check = like_torch(theirs, x, (h0, c0))
    elif m == "tuple for tensor":
        bad = (h0,) if not lstm else ((h0, h0), c0)
    elif m == "unbatched":
        bad = both(lambda u, w: u[:, 0])
    else:
        bad = both(lambda u, w: u.clone().fill_(float("nan")))
        check = like_torch(theirs, x, bad)
    LEDGER.probe(
        f"{name}: hx {m}", lambda: ours(x, bad), names=names, check=check, legal=check is not None
    )


def test_dropin_forward_rejects_bad_input_clearly() -> None:
    with LEDGER.entry("drop-ins", "RNN/GRU/LSTM.forward") as run:
        for m in INPUT_MUTATIONS:
            fuzz_dropin_forward("input", m)
        for m in HX_MUTATIONS:
            fuzz_dropin_forward("hx", m)
    run.assert_clean()


# -- constructors ----------------------------------------------------------------------------

CONSTRUCTOR_CASES: list[tuple[str, dict[str, Any]]] = [
    ("input_size", {"input_size": 0}),
    ("input_size", {"input_size": "3"}),
    ("input_size", {"input_size": 2**62}),
    ("hidden_size", {"hidden_size": -4}),
    ("hidden_size", {"hidden_size": 4.0}),
    ("hidden_size", {"hidden_size": 2**62}),
    ("num_layers", {"num_layers": 0}),
    ("num_layers", {"num_layers": True}),
    ("bias", {"bias": "no"}),
    ("batch_first", {"batch_first": None}),
    ("dropout", {"dropout": 2.0}),
    ("dropout", {"dropout": float("inf")}),
    ("bidirectional", {"bidirectional": 2}),
    ("device", {"device": "quantum"}),
    ("device", {"device": "cuda:77"}),
    ("dtype", {"dtype": torch.int8}),
    ("dtype", {"dtype": "float"}),
]


@FUZZ
@given(data=st.data())
def fuzz_dropin_constructor(arg: str, kwargs: dict[str, Any], data: st.DataObject) -> None:
    mode = data.draw(st.sampled_from(("RNN", "GRU", "LSTM")), label="mode")
    full = {"input_size": I, "hidden_size": H, **kwargs}
    cls = getattr(rk, mode)
    LEDGER.probe(f"{mode}({arg}={kwargs[arg]!r})", lambda: cls(**full), names=(arg,))


def test_dropin_constructors_reject_bad_arguments_clearly() -> None:
    with LEDGER.entry("drop-ins", "RNN/GRU/LSTM(...)") as run:
        for arg, kwargs in CONSTRUCTOR_CASES:
            fuzz_dropin_constructor(arg, kwargs)
        extra = [
            ("nonlinearity", lambda: rk.RNN(I, H, nonlinearity="gelu")),
            ("proj_size", lambda: rk.GRU(I, H, proj_size=2)),
            ("proj_size", lambda: rk.LSTM(I, H, proj_size=H)),
            ("proj_size", lambda: rk.LSTM(I, H, proj_size=-1)),
        ]
        for arg, make in extra:
            LEDGER.probe(f"bad {arg}", make, names=(arg,))
    run.assert_clean()


# -- interop ------------------------------------------------------------------------------------


def _same_function(a: nn.Module, b: nn.Module, batch_first: bool) -> None:
    torch.manual_seed(5)
    x = torch.randn(2, 3, I, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ya, yb = a(x)[0], b(x)[0]
    same(ya, yb, atol=1e-9, rtol=1e-8)


def interop_cases() -> list[tuple[str, tuple[str, ...], Any, Any]]:
    f64 = {"dtype": torch.float64}
    gru_t = nn.GRU(I, H, num_layers=2, **f64)
    rnn_relu = nn.RNN(I, H, nonlinearity="relu", batch_first=True, **f64)
    lstm_proj = nn.LSTM(I, H, proj_size=2, **f64)
    bi = nn.GRU(I, H, bidirectional=True, **f64)
    mixed = rk.Stack([rk.GRUCell(I, H, **f64), rk.LSTMCell(H, H, **f64)])
    half = rk.Stack([rk.GRUCell(I, H, **f64), rk.GRUCell(H, H, **f64)])
    half.cells[1].float()

    def check_stack_from(module: nn.Module) -> Any:
        return lambda stack: _same_function(stack, module, module.batch_first)

    def check_to(stack: rk.Stack) -> Any:
        return lambda module: _same_function(module, stack, stack.batch_first)

    legal_stack = rk.Stack(
        [rk.LSTMCell(I, H, proj_size=2, **f64), rk.LSTMCell(2, H, proj_size=2, **f64)]
    )  # noqa: E501
    return [
        (
            "stack_from_torch(nn.Linear)",
            ("module",),
            lambda: rk.interop.stack_from_torch(nn.Linear(3, 4)),
            None,
        ),  # noqa: E501
        ("stack_from_torch(None)", ("module",), lambda: rk.interop.stack_from_torch(None), None),
        (
            "stack_from_torch(a string)",
            ("module",),
            lambda: rk.interop.stack_from_torch("GRU"),
            None,
        ),
        (
            "stack_from_torch(bidirectional GRU)",
            ("module",),
            lambda: rk.interop.stack_from_torch(bi),
            None,
        ),  # noqa: E501
        (
            "stack_from_torch(nn.GRUCell)",
            ("module",),
            lambda: rk.interop.stack_from_torch(nn.GRUCell(I, H)),
            None,
        ),  # noqa: E501
        (
            "stack_from_torch(2-layer GRU)",
            ("module",),
            lambda: rk.interop.stack_from_torch(gru_t),
            check_stack_from(gru_t),
        ),  # noqa: E501
        (
            "stack_from_torch(relu RNN, batch_first)",
            ("module",),
            lambda: rk.interop.stack_from_torch(rnn_relu),
            check_stack_from(rnn_relu),
        ),  # noqa: E501
        (
            "stack_from_torch(LSTM proj)",
            ("module",),
            lambda: rk.interop.stack_from_torch(lstm_proj),
            check_stack_from(lstm_proj),
        ),  # noqa: E501
        (
            "to_torch(shared routing)",
            ("stack",),
            lambda: rk.interop.stack_to_torch(
                rk.Stack([rk.GRUCell(I, H), rk.GRUCell(H, H)], "shared")
            ),
            None,
        ),  # noqa: E501
        (
            "to_torch(reset-before GRU)",
            ("stack",),
            lambda: rk.interop.stack_to_torch(rk.Stack([rk.GRUCell(I, H, reset="before")])),
            None,
        ),  # noqa: E501
        (
            "to_torch(nested LSTM)",
            ("stack",),
            lambda: rk.interop.stack_to_torch(rk.Stack([rk.NestedLSTMCell(I, H)])),
            None,
        ),  # noqa: E501
        ("to_torch(mixed cells)", ("stack",), lambda: rk.interop.stack_to_torch(mixed), None),
        (
            "to_torch(mixed dtypes)",
            ("stack", "cells"),
            lambda: rk.interop.stack_to_torch(half),
            None,
        ),
        (
            "to_torch(hidden sizes differ)",
            ("stack",),
            lambda: rk.interop.stack_to_torch(rk.Stack([rk.GRUCell(I, H), rk.GRUCell(H, H + 1)])),
            None,
        ),  # noqa: E501
        (
            "to_torch(legal LSTM proj stack)",
            ("stack",),
            lambda: rk.interop.stack_to_torch(legal_stack),
            check_to(legal_stack),
        ),  # noqa: E501
        ("interop.stack_to_torch(nn.GRU)", ("stack",), lambda: interop.stack_to_torch(gru_t), None),  # noqa: E501
        (
            "interop.dropin_to_torch(Stack)",
            ("dropin",),
            lambda: interop.dropin_to_torch(mixed),
            None,
        ),  # noqa: E501
        (
            "interop.dropin_from_torch(nn.Linear)",
            ("module",),
            lambda: interop.dropin_from_torch(nn.Linear(2, 2)),
            None,
        ),  # noqa: E501
        ("GRU.from_torch(nn.LSTM)", ("module",), lambda: rk.GRU.from_torch(lstm_proj), None),
        (
            "LSTM.from_torch(nn.LSTM proj)",
            ("module",),
            lambda: rk.LSTM.from_torch(lstm_proj),
            lambda m: _same_function(m, lstm_proj, False),
        ),  # noqa: E501
        (
            "GRU.from_torch(bidirectional)",
            ("module",),
            lambda: rk.GRU.from_torch(bi),
            lambda m: _same_function(m, bi, False),
        ),  # noqa: E501
        (
            "RNN(...).to_torch()",
            ("dropin",),
            lambda: rk.RNN(I, H, nonlinearity="relu", **f64).to_torch(),
            lambda m: m.nonlinearity == "relu",
        ),  # noqa: E501
    ]


def test_interop_rejects_bad_modules_clearly() -> None:
    with LEDGER.entry("interop", "from_torch / to_torch") as run:
        for label, names, call, check in interop_cases():
            LEDGER.probe(label, call, names=names, check=check, legal=check is not None)
    run.assert_clean()
