"""The drop-ins where torch.nn's own code and tests look: what torch.nn documents, checked
against torch.nn itself.

Each mistake is made twice, once on ``torch.nn.RNN/GRU/LSTM`` and once on the drop-in
with the same configuration; the drop-in's error must be catchable as the class torch
raised, be a recurrentkit error in ``argument: expected ..., got ...`` form and, where
torch words the mistake itself (not an op deep inside), carry torch's message. Then: an
empty batch (B = 0) on every drop-in and every ``Stack`` path, torch's private
``_flat_weights``, ``isinstance``, dynamic quantization, ``torch.jit.script``, and what
third-party code relies on and must keep working.
"""

from __future__ import annotations

import copy
import io
import pickle
import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import recurrentkit as rk
from recurrentkit import interop
from recurrentkit._validation import map_state
from recurrentkit.errors import RecurrentKitError

I, H = 3, 5
D64 = torch.float64

# every configuration the issue names: three drop-ins, with and without batch_first,
# bidirectional and (LSTM) proj_size
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    (name, dict(num_layers=2, batch_first=bf, bidirectional=bi, **extra))
    for name, extra in (
        ("RNN", {}),
        ("RNN", {"nonlinearity": "relu"}),
        ("GRU", {}),
        ("LSTM", {}),
        ("LSTM", {"proj_size": 2}),
    )
    for bf in (False, True)
    for bi in (False, True)
]


def cfg_id(cfg: tuple[str, dict[str, Any]]) -> str:
    name, kw = cfg
    flags = [k for k in ("batch_first", "bidirectional") if kw[k]]
    flags += [f"{k}={kw[k]}" for k in ("proj_size", "nonlinearity") if k in kw]
    return "-".join([name, *flags])


def pair(name: str, kw: dict[str, Any], dtype: torch.dtype = D64) -> tuple[nn.Module, nn.Module]:
    """The drop-in and torch's module, same configuration and weights."""
    torch.manual_seed(0)
    ours = getattr(rk, name)(I, H, dtype=dtype, **kw)
    theirs = getattr(nn, name)(I, H, dtype=dtype, **kw)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def sizes(kw: dict[str, Any]) -> tuple[int, int]:
    """``(D * num_layers, H_out)``."""
    return (2 if kw["bidirectional"] else 1) * kw["num_layers"], kw.get("proj_size", 0) or H


def batch_of(x: Tensor, bf: bool) -> Tensor:
    """``x (T, B, F)`` in the module's layout."""
    return x.transpose(0, 1).contiguous() if bf else x


def state(name: str, kw: dict[str, Any], B: int, *, width: int | None = None) -> Any:
    n, out = sizes(kw)
    h = torch.randn(n, B, width or out, dtype=D64)
    return (h, torch.randn(n, B, H, dtype=D64)) if name == "LSTM" else h


def leaves(state: Any) -> tuple[Tensor, ...]:
    """Every tensor of a (nested) state."""
    if isinstance(state, Tensor):
        return (state,)
    return tuple(t for s in state for t in leaves(s))


def raised(call: Callable[[], Any]) -> BaseException:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            call()
        except Exception as e:  # noqa: BLE001 - the exception is what is compared
            return e
    raise AssertionError("no exception")


# -- 1 and 3: exception classes and torch's wording, forward ------------------------------

# (mistake, make the call's arguments, torch words it itself): the last is False where
# torch's message comes from an op deep inside (``mat1 and mat2 must have the same dtype``)
MISTAKES: list[tuple[str, Callable[[str, dict[str, Any]], tuple[Any, ...]], bool]] = [
    ("hx batch", lambda n, kw: (torch.randn(4, 2, I, dtype=D64), state(n, kw, 3)), True),
    (
        "hx width",
        lambda n, kw: (torch.randn(4, 2, I, dtype=D64), state(n, kw, 2, width=H + 1)),
        True,
    ),
    (
        "hx layers",
        lambda n, kw: (
            torch.randn(4, 2, I, dtype=D64),
            map_state(lambda t: t[:1], state(n, kw, 2)),
        ),
        True,
    ),
    (
        "hx rank",
        lambda n, kw: (
            torch.randn(4, 2, I, dtype=D64),
            map_state(lambda t: t[:, 0], state(n, kw, 2)),
        ),
        True,
    ),
    (
        "unbatched hx rank",
        lambda n, kw: (torch.randn(4, I, dtype=D64), state(n, kw, 1)),
        True,
    ),
    ("feature size", lambda n, kw: (torch.randn(4, 2, I + 1, dtype=D64),), True),
    ("empty sequence", lambda n, kw: (torch.randn(0, 2, I, dtype=D64),), True),
    ("empty unbatched sequence", lambda n, kw: (torch.randn(0, I, dtype=D64),), True),
    ("rank 4", lambda n, kw: (torch.randn(1, 4, 2, I, dtype=D64),), True),
    ("rank 1", lambda n, kw: (torch.randn(I, dtype=D64),), True),
    ("integer input", lambda n, kw: (torch.ones(4, 2, I, dtype=torch.long),), True),
    ("float32 input", lambda n, kw: (torch.randn(4, 2, I),), True),
    ("input on meta", lambda n, kw: (torch.randn(4, 2, I, dtype=D64, device="meta"),), True),
    (
        "hx on meta",
        lambda n, kw: (
            torch.randn(4, 2, I, dtype=D64),
            map_state(lambda t: t.to("meta"), state(n, kw, 2)),
        ),
        True,
    ),
    (
        "hx float32",
        lambda n, kw: (torch.randn(4, 2, I, dtype=D64), map_state(Tensor.float, state(n, kw, 2))),
        False,
    ),
    (
        "hx integer",
        lambda n, kw: (torch.randn(4, 2, I, dtype=D64), map_state(Tensor.long, state(n, kw, 2))),
        False,
    ),
]


def _fix_layout(kw: dict[str, Any], args: tuple[Any, ...], mistake: str) -> tuple[Any, ...]:
    """Batched 3-D inputs above are ``(T, B, I)``: the module's layout."""
    x = args[0]
    if kw["batch_first"] and x.dim() == 3 and mistake not in ("rank 4",):
        x = batch_of(x, True)
    return (x, *args[1:])


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
@pytest.mark.parametrize(("mistake", "make", "worded"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_forward_mistakes_raise_what_torch_raises(cfg, mistake, make, worded) -> None:
    name, kw = cfg
    ours, theirs = pair(name, kw)
    torch.manual_seed(1)
    args = _fix_layout(kw, make(name, kw), mistake)
    if mistake == "empty sequence" and kw["batch_first"]:
        args = (torch.randn(2, 0, I, dtype=D64),)
    want = raised(lambda: theirs(*args))
    got = raised(lambda: ours(*args))
    assert isinstance(got, RecurrentKitError), f"{type(got).__name__}: {got}"
    assert isinstance(got, type(want)), (
        f"torch raises {type(want).__name__}, the drop-in {type(got).__name__} (a "
        f"{[c.__name__ for c in type(got).__mro__]}): {got}"
    )
    text = str(got)
    assert text.startswith(f"{got.argument}: expected "), text
    if worded:
        assert str(want) in text, f"torch's {str(want)!r} not in {text!r}"
        assert got.torch_message == str(want)


def test_the_three_breaks_of_the_issue_are_runtime_errors() -> None:
    """The issue's own examples, word for word: ``except RuntimeError`` catches them."""
    gru = rk.GRU(3, 5, 2)
    with pytest.raises(
        RuntimeError, match=re.escape("Expected hidden size (2, 2, 5), got [2, 3, 5]")
    ):
        gru(torch.randn(4, 2, 3), torch.zeros(2, 3, 5))
    with pytest.raises(RuntimeError, match=re.escape("Expected 3, got 4")) as info:
        gru(torch.randn(4, 2, 4))
    assert "input.size(-1) must be equal to input_size" in str(info.value)
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0 in RNN"):
        gru(torch.randn(0, 2, 3))
    # still recurrentkit's, and still what `except ValueError` caught before
    for call in (
        lambda: gru(torch.randn(4, 2, 3), torch.zeros(2, 3, 5)),
        lambda: gru(torch.randn(4, 2, 4)),
        lambda: gru(torch.randn(0, 2, 3)),
    ):
        e = raised(call)
        assert isinstance(e, (rk.ShapeError, rk.StateError)) and isinstance(e, ValueError)
    assert isinstance(raised(lambda: gru(torch.randn(4, 2, 4))), rk.ShapeRuntimeError)
    assert isinstance(
        raised(lambda: gru(torch.randn(4, 2, 3), torch.zeros(2, 3, 5))), rk.StateRuntimeError
    )


def test_lstm_state_structure_mistakes_raise_what_torch_raises() -> None:
    ours, theirs = pair("LSTM", dict(num_layers=2, batch_first=False, bidirectional=False))
    x = torch.randn(4, 2, I, dtype=D64)
    h = torch.zeros(2, 2, H, dtype=D64)
    for hx in ((h, h, h), h):  # three tensors; one tensor where the pair goes
        want = raised(lambda hx=hx: theirs(x, hx))
        got = raised(lambda hx=hx: ours(x, hx))
        assert isinstance(got, RecurrentKitError) and isinstance(got, type(want)), (want, got)
    got = raised(lambda: ours(x, (h, h, h)))
    assert "lstm expects two hidden states" in str(got)


def test_packed_input_mistakes_raise_what_torch_raises() -> None:
    from torch.nn.utils.rnn import pack_padded_sequence

    for name in ("GRU", "RNN"):
        ours, theirs = pair(name, dict(num_layers=1, batch_first=False, bidirectional=False))
        bad = pack_padded_sequence(torch.randn(4, 2, I + 1, dtype=D64), [4, 2])
        want = raised(lambda m=theirs, bad=bad: m(bad))
        got = raised(lambda m=ours, bad=bad: m(bad))
        assert isinstance(got, rk.ShapeRuntimeError) and isinstance(got, type(want))
        assert str(want) in str(got)


# -- 3: constructor messages ----------------------------------------------------------------

CONSTRUCTOR_MISTAKES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("RNN", (10, 0, 1), {}),
    ("GRU", (10, 0, 1), {}),
    ("LSTM", (10, 0, 1), {}),
    ("GRU", (0, 10), {}),
    ("LSTM", (10, 10, 0), {}),
    ("RNN", (10, 10, 0), {}),
    ("GRU", (10, 10, 2), {"dropout": 2.0}),
    ("GRU", (10, 10, 2), {"dropout": -0.5}),
    ("LSTM", (10, 10, 2), {"dropout": "a"}),
    ("GRU", (10, 10), {"bias": "yes"}),
    ("LSTM", (10, 10), {"batch_first": 1}),
    ("RNN", (10.0, 10), {}),
    ("GRU", (10, 10.0), {}),
    ("GRU", (10, 10), {"proj_size": 3}),
    ("RNN", (10, 10), {"proj_size": 3}),
    ("RNN", (10, 10), {"proj_size": -1}),
    ("LSTM", (10, 10), {"proj_size": -1}),
    ("LSTM", (10, 10), {"proj_size": 10}),
    ("LSTM", (10, 10), {"proj_size": 12}),
    ("RNN", (10, 10), {"nonlinearity": "sigmoid"}),
    ("RNN", (10, 10, 1, "gelu"), {}),
]


@pytest.mark.parametrize(
    ("name", "args", "kw"),
    CONSTRUCTOR_MISTAKES,
    ids=[f"{n}{a}{k}" for n, a, k in CONSTRUCTOR_MISTAKES],
)
def test_constructor_mistakes_raise_torchs_class_with_torchs_words(name, args, kw) -> None:
    want = raised(lambda: getattr(nn, name)(*args, **kw))
    got = raised(lambda: getattr(rk, name)(*args, **kw))
    assert isinstance(got, RecurrentKitError), f"{type(got).__name__}: {got}"
    assert isinstance(got, type(want)), (type(want), type(got), got)
    text = str(got)
    assert text.startswith(f"{got.argument}: expected ") and ", got " in text
    if "could not convert" in str(want):  # Python's words (float("a")), not torch's
        assert "dropout should be a number in range [0, 1]" in text
        return
    assert str(want) in text, f"torch's {str(want)!r} not in {text!r}"
    assert text.endswith(f" (torch.nn: {want})")


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_dtype_mismatch_message_is_torchs(name) -> None:
    """The wording torch.nn's module tests look for: input dtype vs weight dtype."""
    module = getattr(rk, name)(3, 5)
    pattern = (
        r"RNN input dtype .* does not match weight dtype .* "
        r"Convert input: input\.to\(.*\), or convert model: model\.to\(.*\)"
    )
    for x in (torch.randn(2, 4, 3, dtype=D64), torch.ones(2, 4, 3, dtype=torch.long)):
        with pytest.raises(ValueError, match=pattern) as info:
            module(x)
        assert isinstance(info.value, RecurrentKitError)


def test_torch_message_survives_pickling() -> None:
    e = raised(lambda: rk.GRU(3, 5)(torch.randn(4, 2, 4)))
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is type(e) and str(back) == str(e)
    assert (back.argument, back.expected, back.got, back.torch_message) == (
        e.argument,
        e.expected,
        e.got,
        e.torch_message,
    )


def test_error_classes_are_both() -> None:
    pairs = [
        (rk.ShapeRuntimeError, (rk.ShapeError, ValueError, RuntimeError)),
        (rk.StateRuntimeError, (rk.StateError, ValueError, RuntimeError)),
        (rk.DeviceRuntimeError, (rk.DeviceError, ValueError, RuntimeError)),
        (rk.InputTypeValueError, (rk.InputTypeError, TypeError, ValueError)),
        (rk.InputTypeRuntimeError, (rk.InputTypeError, TypeError, RuntimeError)),
        (rk.UnsupportedError, (rk.RecurrentKitError, RuntimeError)),
    ]
    for cls, bases in pairs:
        assert issubclass(cls, rk.RecurrentKitError)
        for base in bases:
            assert issubclass(cls, base), (cls, base)
    # the plain classes keep their meaning (Stack and cells raise them as before)
    assert not issubclass(rk.ShapeError, RuntimeError)
    assert not issubclass(rk.StateError, RuntimeError)


# -- 2: an empty batch ------------------------------------------------------------------------


def _zeros_everywhere(module: nn.Module) -> None:
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{pname}: no gradient"
        assert bool((p.grad == 0).all()), f"{pname}: a gradient that is not zero"


def _total(result: Any) -> Tensor:
    out, hidden = result
    return out.sum() + sum(t.sum() for t in (hidden if isinstance(hidden, tuple) else (hidden,)))


@pytest.mark.parametrize("executor", ["auto", "handbuilt", "reference"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_dropins_take_an_empty_batch_as_torch_does(cfg, executor) -> None:
    name, kw = cfg
    ours, theirs = pair(name, kw)
    ours.executor = executor
    ours.train()  # dropout 0 here; train mode is what a training loop sees
    for with_hx in (False, True):
        x = batch_of(torch.randn(4, 0, I, dtype=D64), kw["batch_first"])
        x_ours = x.clone().requires_grad_(True)
        hx = state(name, kw, 0) if with_hx else None
        got = ours(x_ours, hx)
        want = theirs(x, hx)
        assert got[0].shape == want[0].shape
        for a, b in zip(*(h if isinstance(h, tuple) else (h,) for h in (got[1], want[1]))):
            assert a.shape == b.shape and a.dtype == b.dtype
        ours.zero_grad(set_to_none=True)
        _total(got).backward()
        _zeros_everywhere(ours)
        assert x_ours.grad is not None and x_ours.grad.shape == x.shape


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_dropins_empty_batch_in_training_with_dropout(name) -> None:
    torch.manual_seed(0)
    module = getattr(rk, name)(I, H, num_layers=3, dropout=0.5, bidirectional=True).train()
    for executor in ("auto", "handbuilt", "reference"):
        module.executor = executor
        module.zero_grad(set_to_none=True)
        out = module(torch.randn(6, 0, I))
        assert out[0].shape == (6, 0, 2 * H)
        _total(out).backward()
        _zeros_everywhere(module)


def test_dropins_empty_batch_under_compile() -> None:
    gru = rk.GRU(I, H, num_layers=2)
    compiled = torch.compile(gru, fullgraph=True, backend="eager")
    out, h = compiled(torch.randn(4, 0, I))
    assert out.shape == (4, 0, H) and h.shape == (2, 0, H)


ROUTINGS = ["independent", "shared", "residual", "cross_layer", "handoff"]


@pytest.mark.parametrize("executor", ["auto", "handbuilt", "reference"])
@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("cell", [rk.GRUCell, rk.LSTMCell, rk.RNNCell, rk.NestedLSTMCell])
def test_every_stack_takes_an_empty_batch(routing, executor, cell) -> None:
    torch.manual_seed(0)
    if routing == "handoff":
        warnings.simplefilter("ignore")  # handoff warns that it is not causal
    cells = [cell(I, H, dtype=D64), cell(H, H, dtype=D64)]
    stack = rk.Stack(cells, routing, executor=executor, dropout=0.25).train()
    T = 4
    for bf in (False, True):
        stack.batch_first = bf
        for lengths in (None, torch.zeros(0, dtype=torch.long)):
            x = batch_of(torch.randn(T, 0, I, dtype=D64), bf).requires_grad_(True)
            stack.zero_grad(set_to_none=True)
            y, states = stack(x, lengths=lengths)
            assert y.shape == ((0, T, H) if bf else (T, 0, H))
            full = stack.initial_state(2)
            assert len(states) == len(full)
            for s, f in zip(states, full):  # the structure of a real state, no rows
                assert type(s) is type(f)
                for a, b in zip(leaves(s), leaves(f), strict=True):
                    assert a.shape == (0, *b.shape[1:])
            _total((y, leaves(states))).backward()
            _zeros_everywhere(stack)
            assert x.grad is not None and x.grad.shape == x.shape
            # a given (empty) state, and the plan report
            y2, _ = stack(x.detach(), states, lengths=lengths)
            assert y2.shape == y.shape
            explained = stack.explain(x, lengths)
            assert explained.plan == "empty_batch", explained
            assert "B = 0" in explained.why
        # one step, and a second from the returned state (the fast re-entry path)
        stack.zero_grad(set_to_none=True)
        y_t, s = stack.step(torch.randn(0, I, dtype=D64))
        y_t2, s2 = stack.step(torch.randn(0, I, dtype=D64), s)
        assert y_t.shape == y_t2.shape == (0, H)
        y_t2.sum().backward()
        _zeros_everywhere(stack)
        assert stack.explain(torch.randn(0, I, dtype=D64), step=True).plan == "empty_batch"
        # the cell view steps it too
        y_c, _ = stack.as_cell()(torch.randn(0, I, dtype=D64))
        assert y_c.shape == (0, H)
    assert stack.initial_state(0)[0] is not None


def test_empty_batch_explain_names_the_plan_of_the_row_it_runs() -> None:
    stack = rk.Stack([rk.GRUCell(I, H), rk.GRUCell(H, H)])
    e = stack.explain(torch.randn(5, 0, I))
    full = stack.explain(torch.randn(5, 1, I))
    assert (e.plan, e.layers, e.executor) == ("empty_batch", full.layers, full.executor)
    assert repr(full.plan) in e.why


def test_empty_batch_state_is_yours() -> None:
    """Changing the returned (empty) state in place leaves the backward intact."""
    stack = rk.Stack([rk.GRUCell(I, H), rk.GRUCell(H, H)], executor="handbuilt")
    y, states = stack(torch.randn(3, 0, I))
    for s in states:
        s.mul_(2)
    y.sum().backward()


def test_bidirectional_takes_an_empty_batch() -> None:
    from recurrentkit.bidirectional import Bidirectional

    bi = Bidirectional(rk.Stack([rk.GRUCell(I, H)]), rk.Stack([rk.LSTMCell(I, H)]))
    y, (f, b) = bi(torch.randn(4, 0, I), lengths=torch.zeros(0, dtype=torch.long))
    assert y.shape == (4, 0, 2 * H) and f[0].shape == (0, H) and b[0].h.shape == (0, H)
    y.sum().backward()
    _zeros_everywhere(bi)


def test_an_empty_sequence_stays_an_error() -> None:
    with pytest.raises(rk.ShapeError, match="non-empty time dimension"):
        rk.Stack([rk.GRUCell(I, H)])(torch.randn(0, 2, I))
    with pytest.raises(rk.ShapeError, match="non-empty time dimension"):
        rk.Stack([rk.GRUCell(I, H)], batch_first=True)(torch.randn(2, 0, I))
    for name in ("RNN", "GRU", "LSTM"):
        for bf, shape in ((False, (0, 2, I)), (True, (2, 0, I)), (False, (0, I))):
            module = getattr(rk, name)(I, H, batch_first=bf)
            with pytest.raises(RuntimeError, match="Expected sequence length to be larger"):
                module(torch.randn(*shape))


# -- 4: torch's _flat_weights ------------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_flat_weights_have_torchs_meaning(cfg) -> None:
    name, kw = cfg
    ours, theirs = pair(name, kw)
    assert ours._flat_weights_names == theirs._flat_weights_names
    assert len(ours._flat_weights) == len(ours._flat_weights_names)
    for wname, w in zip(ours._flat_weights_names, ours._flat_weights):
        assert w is getattr(ours, wname)
    ours.float()  # .to() & co. rebuild the list, as torch's do
    assert all(w.dtype == torch.float32 for w in ours._flat_weights)
    for wname, w in zip(ours._flat_weights_names, ours._flat_weights):
        assert w is getattr(ours, wname)


def _replace_weight(module: nn.Module, wname: str, value: Tensor) -> None:
    """What weight-drop implementations do: the parameter becomes a plain tensor."""
    raw = getattr(module, wname)
    del module._parameters[wname]
    module.register_parameter(wname + "_raw", raw)
    setattr(module, wname, value)


@pytest.mark.parametrize("executor", ["auto", "handbuilt", "reference"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_forward_runs_what_flat_weights_hold(cfg, executor) -> None:
    name, kw = cfg
    ours, theirs = pair(name, kw)
    ours.executor = executor
    x = batch_of(torch.randn(4, 2, I, dtype=D64), kw["batch_first"])
    dropped = torch.nn.functional.dropout(ours.weight_hh_l0.detach(), 0.5)
    for module in (ours, theirs):  # a weight-drop: an attribute set to a plain tensor
        _replace_weight(module, "weight_hh_l0", dropped.clone())
    assert not isinstance(ours._flat_weights[1], nn.Parameter)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-10)
    # the list itself written, as cuDNN workarounds do: torch's forward runs it as it is
    scaled = [w * 0.5 for w in ours._flat_weights]
    ours._flat_weights[:] = scaled
    theirs._flat_weights[:] = [w.clone() for w in scaled]
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_weight_norm_reaches_flat_weights_and_forward(name) -> None:
    kw = dict(num_layers=2, batch_first=False, bidirectional=True)
    for normed in ("weight_hh_l0", "weight_ih_l1_reverse"):
        ours, theirs = pair(name, kw)
        n_params = len(ours._flat_weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the old weight_norm API
            for module in (ours, theirs):
                torch.nn.utils.weight_norm(module, name=normed)
                with torch.no_grad():
                    getattr(module, normed + "_g").mul_(0.3)
        x = torch.randn(4, 2, I, dtype=D64)
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-10)
        assert sum(isinstance(w, nn.Parameter) for w in ours._flat_weights) == n_params - 1
        ours(x)[0].sum().backward()
        assert getattr(ours, normed + "_g").grad is not None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.nn.utils.remove_weight_norm(ours, name=normed)
        assert sum(isinstance(w, nn.Parameter) for w in ours._flat_weights) == n_params
        assert normed in ours._parameters and normed + "_g" not in ours._parameters


# -- isinstance and quantization ----------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_isinstance_rnnbase_and_mode_as_torchs(cfg) -> None:
    name, kw = cfg
    ours, theirs = pair(name, kw)
    assert isinstance(ours, nn.RNNBase) and isinstance(ours, rk.nn.RecurrentBase)
    assert ours.mode == theirs.mode
    # an init loop written for torch's modules (the documented test: RNNBase and mode)
    for module in (ours, theirs):
        for m in module.modules():
            if isinstance(m, nn.RNNBase) and m.mode == theirs.mode:
                for w in m.all_weights[0]:
                    nn.init.zeros_(w)
        assert all(bool((w == 0).all()) for w in module.all_weights[0])
    # not an instance of nn.GRU & co.: TorchDynamo refuses every one of those
    assert not isinstance(ours, (nn.RNN, nn.GRU, nn.LSTM))


def _quantize_both(name: str, kw: dict[str, Any]) -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(I, I), getattr(rk, name)(I, H, **kw))
    theirs = nn.Sequential(nn.Linear(I, I), getattr(nn, name)(I, H, **kw))
    theirs.load_state_dict(ours.state_dict())
    spec = {nn.LSTM, nn.GRU, nn.Linear}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        q_theirs = torch.ao.quantization.quantize_dynamic(theirs, spec)
    q_ours = interop.quantize_dynamic(ours, spec)
    return ours, q_ours, q_theirs


def _outcome(module: nn.Module, x: Tensor) -> Any:
    try:
        return module(x)[0]
    except RuntimeError as e:  # torch's quantized LSTM has no projection
        return f"{type(e).__name__}: {e}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_quantize_dynamic_quantizes_dropins_as_torch_does(cfg) -> None:
    name, kw = cfg
    ours, q_ours, q_theirs = _quantize_both(name, kw)
    assert type(q_ours[0]) is type(q_theirs[0])
    if name == "RNN":  # torch has no dynamic quantized RNN: torch's stays, so does ours
        assert type(q_theirs[1]) is nn.RNN
        assert type(q_ours[1]) is rk.RNN and q_ours[1] is not ours[1]
    else:
        assert type(q_ours[1]) is type(q_theirs[1])
        assert type(q_ours[1]).__module__.startswith("torch.ao.nn.quantized.dynamic")
    x = batch_of(torch.randn(4, 2, I), kw["batch_first"])
    a, b = _outcome(q_ours, x), _outcome(q_theirs, x)
    if isinstance(b, str):
        assert a == b
    else:
        assert torch.equal(a, b)
    assert type(ours[1]) is getattr(rk, name)  # not inplace: the model is untouched


def test_quantize_dynamic_keeps_unlisted_dropins_and_honours_names_and_inplace() -> None:
    model = nn.Sequential(rk.LSTM(I, H), rk.GRU(H, H))
    q = interop.quantize_dynamic(model, {nn.GRU})
    assert type(q[0]) is rk.LSTM and "quantized" in type(q[1]).__module__
    q = interop.quantize_dynamic(model, {rk.LSTM})  # a drop-in class means torch's class
    assert "quantized" in type(q[0]).__module__ and type(q[1]) is rk.GRU
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    q = interop.quantize_dynamic(model, {"0": torch.ao.quantization.default_dynamic_qconfig})
    q[0](torch.randn(4, 2, I))  # the hook moved to the quantized module
    assert seen == ["LSTM"] and "quantized" in type(q[0]).__module__
    same = interop.quantize_dynamic(model, None, inplace=True)
    assert same is model and "quantized" in type(model[0]).__module__
    with pytest.raises(rk.InputTypeError):
        interop.quantize_dynamic("model")  # type: ignore[arg-type]


def test_torchs_quantize_dynamic_alone_leaves_dropins() -> None:
    """Why :func:`interop.quantize_dynamic` exists: torch's matches exact types (and so it
    leaves even a subclass of nn.LSTM unquantized)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        q = torch.ao.quantization.quantize_dynamic(nn.Sequential(rk.LSTM(I, H)), {nn.LSTM})
    assert type(q[0]) is rk.LSTM


# -- torch.jit.script -------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_jit_script_refuses_with_one_error_naming_what_works(cfg) -> None:
    name, kw = cfg
    ours, _ = pair(name, kw)
    for target in (ours, nn.Sequential(nn.Identity(), ours)):
        with pytest.raises(rk.UnsupportedError) as info:
            torch.jit.script(target)
        text = str(info.value)
        assert isinstance(info.value, RuntimeError)
        assert "torch.export" in text and "torch.jit.trace" in text
        assert text.startswith("torch.jit.script: expected ")
    # what the message offers works
    x = batch_of(torch.randn(4, 2, I, dtype=D64), kw["batch_first"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(ours, (x,), check_trace=False)
    torch.testing.assert_close(traced(x), ours(x))
    scripted = torch.jit.script(_Holder(ours.to_torch()))  # the torch twin scripts
    torch.testing.assert_close(scripted(x), ours(x)[0], rtol=0, atol=1e-10)


class _Holder(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(x)[0]


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_torch_export_works(name) -> None:
    ours, _ = pair(name, dict(num_layers=2, batch_first=True, bidirectional=True))
    x = torch.randn(2, 4, I, dtype=D64)
    exported = torch.export.export(ours, (x,))
    torch.testing.assert_close(exported.module()(x), ours(x))


# -- what third-party code relies on, kept -------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_what_was_true_stays_true(cfg) -> None:
    name, kw = cfg
    ours, theirs = pair(name, kw)
    x = batch_of(torch.randn(4, 2, I, dtype=D64), kw["batch_first"])
    want = theirs(x)
    torch.testing.assert_close(ours(x), want, rtol=0, atol=1e-10)
    assert [[w.shape for w in ws] for ws in ours.all_weights] == [
        [w.shape for w in ws] for ws in theirs.all_weights
    ]
    ours.flatten_parameters()
    assert ours.proj_size == theirs.proj_size
    # dtype casts
    torch.testing.assert_close(ours.float()(x.float()), theirs.float()(x.float()))
    ours.double()
    theirs.double()
    want = theirs(x)  # the weights went through float32
    torch.testing.assert_close(ours(x), want, rtol=0, atol=1e-10)
    # deepcopy, pickle, save/load (a whole module, and its state_dict from torch)
    for twin in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        torch.testing.assert_close(twin(x), want, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)
    fresh = getattr(rk, name)(I, H, dtype=D64, **kw)
    fresh.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(fresh(x), want, rtol=0, atol=0)
    # functional_call with other weights
    zeros = {k: torch.zeros_like(v) for k, v in ours.named_parameters()}
    out = torch.func.functional_call(ours, zeros, (x,))
    torch.testing.assert_close(out, torch.func.functional_call(theirs, zeros, (x,)))
    torch.testing.assert_close(ours(x), want, rtol=0, atol=1e-10)  # its own weights again
    # spectral_norm on weight_hh_l0 (the old API; a hook that sets the attribute)
    torch.manual_seed(3)
    sn_ours = torch.nn.utils.spectral_norm(copy.deepcopy(ours), name="weight_hh_l0")
    torch.manual_seed(3)
    sn_theirs = torch.nn.utils.spectral_norm(copy.deepcopy(theirs), name="weight_hh_l0")
    torch.testing.assert_close(sn_ours(x), sn_theirs(x), rtol=0, atol=1e-10)
    # the parametrization API
    for module in (ours, theirs):
        torch.nn.utils.parametrizations.weight_norm(module, name="weight_hh_l0")
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_compile_fullgraph_works_where_torchs_module_is_refused(name) -> None:
    ours, theirs = pair(name, dict(num_layers=2, batch_first=True, bidirectional=True))
    x = torch.randn(2, 4, I, dtype=D64)
    model = nn.Sequential(nn.Identity(), ours)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), theirs(x), rtol=0, atol=1e-10)
    with pytest.raises(Exception, match="RNN, GRU, or LSTM"):
        torch.compile(nn.Sequential(theirs), fullgraph=True, backend="eager")(x)


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_a_module_pickled_by_version_0_1_still_loads(name) -> None:
    """0.1's drop-ins were plain nn.Modules: their pickled state names the flat order
    ``_flat_names`` and has no ``_flat_weights``; loading it gives a working module."""
    module, theirs = pair(name, dict(num_layers=2, batch_first=False, bidirectional=True))
    old = dict(module.__dict__)
    old["_flat_names"] = old.pop("_flat_weights_names")
    for key in ("_flat_weights", "_flat_weight_refs", "_slots"):
        old.pop(key)
    loaded = type(module).__new__(type(module))
    loaded.__setstate__(old)  # what unpickling does
    x = torch.randn(4, 2, I, dtype=D64)
    assert loaded._flat_weights_names == theirs._flat_weights_names
    torch.testing.assert_close(loaded(x), theirs(x), rtol=0, atol=1e-10)
    loaded.executor = "handbuilt"
    torch.testing.assert_close(loaded(x), theirs(x), rtol=0, atol=1e-10)
