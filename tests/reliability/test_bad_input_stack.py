"""Bad-input fuzzing of ``Stack`` (constructor, forward, step, initial_state, as_cell) and
of the routing policies it runs, under every executor.

Accepted calls are checked against a copy of the stack on the ``reference`` executor
(the plain loop over the cells' equations) given the canonical form of the same input;
where the input requires gradients, the gradients are compared too.
"""

from __future__ import annotations

import copy
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
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import recurrentkit as rk
from recurrentkit._validation import map_state
from recurrentkit.routing import POLICIES, CrossLayer, Shared
from recurrentkit.stack import EXECUTORS
from recurrentkit.study.cells import StudyGRUCell

I, H = 3, 4
CELL_KINDS = ("rnn", "gru", "gru_before", "lstm", "lstm_proj", "nested", "study")
ROUTINGS = (*POLICIES, "shared(carry=last)")


def make_cells(kind: str, L: int) -> list[nn.Module]:
    f64 = {"dtype": torch.float64}

    def one(i: int) -> nn.Module:
        out: nn.Module = {
            "rnn": lambda: rk.RNNCell(i, H, **f64),
            "gru": lambda: rk.GRUCell(i, H, **f64),
            "gru_before": lambda: rk.GRUCell(i, H, reset="before", **f64),
            "lstm": lambda: rk.LSTMCell(i, H, **f64),
            "lstm_proj": lambda: rk.LSTMCell(i, H, proj_size=2, **f64),
            "nested": lambda: rk.NestedLSTMCell(i, H, **f64),
            "study": lambda: StudyGRUCell(i, H).double(),
        }[kind]()
        return out

    width = 2 if kind == "lstm_proj" else H
    return [one(I if k == 0 else width) for k in range(L)]


def make_stack(data: st.DataObject, *, routing: str | None = None) -> rk.Stack:
    kind = data.draw(st.sampled_from(CELL_KINDS), label="cells")
    L = data.draw(st.integers(1, 3), label="layers")
    routing = routing or data.draw(st.sampled_from(ROUTINGS), label="routing")
    executor = data.draw(st.sampled_from(EXECUTORS), label="executor")
    batch_first = data.draw(st.booleans(), label="batch_first")
    torch.manual_seed(0)
    policy: Any = Shared(carry="last") if routing == "shared(carry=last)" else routing
    stack = rk.Stack(make_cells(kind, L), policy, batch_first=batch_first, executor=executor)
    return stack.eval()


def describe_stack(stack: rk.Stack) -> str:
    kind = type(stack.cells[0]).__name__
    bf = ", batch_first" if stack.batch_first else ""
    return f"Stack({stack.num_layers}x{kind}, {stack.routing.name}, executor={stack.executor}{bf})"


def reference_of(stack: rk.Stack) -> rk.Stack:
    ref = copy.deepcopy(stack)
    ref.executor = "reference"
    return ref


def random_state(stack: rk.Stack, B: int) -> tuple[Any, ...]:
    torch.manual_seed(1)
    return tuple(map_state(torch.randn_like, s) for s in stack.initial_state(B))


def _grad_of(x: Any) -> Tensor | None:
    if isinstance(x, PackedSequence):
        x = x.data
    return x.grad if isinstance(x, Tensor) and x.requires_grad else None


def _output(result: Any) -> Any:
    out, state = result
    if isinstance(out, PackedSequence):
        padded, lengths = pad_packed_sequence(out)
        return (padded, lengths), state
    return out, state


def expect_forward(stack: rk.Stack, x: Any, state: Any, lengths: Any, *, reshape=None) -> Any:
    """A check: the stack's result equals the reference stack's on (x, state, lengths)."""
    ref = reference_of(stack)

    def check(result: Any) -> None:
        x_ref = x.detach().clone().requires_grad_(True) if isinstance(x, Tensor) else x
        want = ref(x_ref, state, lengths=lengths) if lengths is not None else ref(x_ref, state)
        got = _output(result)
        if reshape is not None:
            want = reshape(want)
        same(got, _output(want), atol=1e-9, rtol=1e-8)

    return check


# -- forward ------------------------------------------------------------------------------

X_MUTATIONS = (
    "rank 1", "rank 4", "last dim", "empty time", "empty batch", "empty feature", "dtype",
    "device", "non-tensor", "values", "layout", "unbatched", "packed", "packed bad",
    "grad",
)  # fmt: skip
STATE_MUTATIONS = (
    "None", "list", "fewer layers", "more layers", "one cell's state", "layer batch",
    "layer width", "layer dtype", "layer device", "layer None", "values", "other stack",
    "inner list", "string",
)  # fmt: skip
LENGTH_MUTATIONS = (
    "float", "2-D", "wrong count", "zero", "too long", "negative", "bool", "list", "meta",
    "unbatched", "with packed", "legal", "nan in padding",
)  # fmt: skip


@FUZZ
@given(data=st.data())
def fuzz_stack_forward(where: str, mutation: str, data: st.DataObject) -> None:
    stack = make_stack(data)
    T = data.draw(st.integers(1, 4), label="T")
    B = data.draw(st.integers(1, 3), label="B")
    torch.manual_seed(2)
    x_tm = torch.randn(T, B, I, dtype=torch.float64)  # (T, B, I)
    bf = stack.batch_first
    x = x_tm.transpose(0, 1).contiguous() if bf else x_tm
    state = random_state(stack, B)
    m = mutation
    name = describe_stack(stack)
    names = ("x", "state", "lengths")

    def probe(label: str, call: Any, check: Any = None) -> None:
        LEDGER.probe(f"{name}: {label}", call, names=names, check=check,
                     legal=check is not None)  # fmt: skip

    if where == "x":
        if m == "rank 1":
            probe(m, lambda: stack(x[0, 0]))
        elif m == "rank 4":
            probe(m, lambda: stack(x[None]))
        elif m == "last dim":
            bad = torch.randn(*x.shape[:2], I + 1, dtype=torch.float64)
            probe(m, lambda: stack(bad))
        elif m == "empty batch":  # legal (as in torch.nn): empty outputs and states
            empty = x[:0] if bf else x[:, :0]

            def none_of(result: Any) -> Any:  # the full batch's result, no rows of it
                out, st_ = result
                out = out[:0] if bf else out[:, :0]
                return out, tuple(map_state(lambda t: t[:0], s) for s in st_)

            probe(m, lambda: stack(empty), expect_forward(stack, x, None, None, reshape=none_of))
        elif m.startswith("empty"):
            shape = list(x.shape)
            axis = {"empty time": 1 if bf else 0}.get(m, 2)
            shape[axis] = 0
            bad = torch.randn(*shape, dtype=torch.float64)
            probe(m, lambda: stack(bad, state if m == "empty time" else None))
        elif m == "dtype":
            label, bad = odd_dtype(data, x)
            probe(f"x {label}", lambda: stack(bad, state))
        elif m == "device":
            probe("x on the meta device", lambda: stack(meta(x), state))
        elif m == "non-tensor":
            label, bad = non_tensor(data, x)
            probe(f"x {label}", lambda: stack(bad, state))
        elif m == "values":
            label, bad = odd_values(data, x)
            probe(
                f"x with {label}",
                lambda: stack(bad, state),
                expect_forward(stack, bad, state, None),
            )  # noqa: E501
        elif m == "layout":
            label, bad = odd_layout(data, x)
            probe(f"x {label}", lambda: stack(bad, state), expect_forward(stack, x, state, None))
        elif m == "grad":
            check_grad(stack, x, state, None, probe)
        elif m == "unbatched":
            xb = x[0] if bf else x[:, 0]  # (T, I)
            sb = tuple(map_state(lambda t: t[0], s) for s in state)
            x1 = x[:1] if bf else x[:, :1]
            s1 = tuple(map_state(lambda t: t[:1], s) for s in state)
            axis = 0 if bf else 1

            def squeeze(result: Any) -> Any:
                out, st_ = result
                return out.squeeze(axis), tuple(map_state(lambda t: t.squeeze(0), s) for s in st_)

            probe(
                "unbatched x (T, I)",
                lambda: stack(xb, sb),
                expect_forward(stack, x1, s1, None, reshape=squeeze),
            )  # noqa: E501
        elif m == "packed":
            lengths = torch.tensor(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
            packed = pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False)
            x_pad = x_tm * (torch.arange(T)[:, None] < lengths[None, :])[..., None]
            ref_stack = reference_of(stack)
            ref_stack.batch_first = False

            def check(result: Any) -> None:
                out, st_ = result
                padded, lens = pad_packed_sequence(out)  # (T', B, O)
                want, want_state = ref_stack(x_pad, state, lengths=lengths)
                same(lens, lengths)
                same(padded, want[: padded.shape[0]], atol=1e-9, rtol=1e-8)
                same(st_, want_state, atol=1e-9, rtol=1e-8)

            probe("a PackedSequence", lambda: stack(packed, state), check)
        else:  # packed bad
            lengths = torch.full((B,), T)
            bad = data.draw(st.sampled_from(["int data", "wide data"]))
            xx = (
                x.long()
                if bad == "int data"
                else torch.randn(*x.shape[:2], I + 2, dtype=torch.float64)
            )  # noqa: E501
            packed = pack_padded_sequence(xx, lengths, batch_first=bf, enforce_sorted=False)
            probe(f"a PackedSequence of {bad}", lambda: stack(packed, state))
        return

    if where == "state":
        L = stack.num_layers
        check = None
        k = data.draw(st.integers(0, L - 1), label="layer")

        def at_layer(fn: Any) -> tuple[Any, ...]:
            return tuple(fn(s) if j == k else s for j, s in enumerate(state))

        if m == "None":
            bad, check = None, expect_forward(stack, x, None, None)
        elif m == "list":
            bad, check = list(state), expect_forward(stack, x, state, None)
        elif m == "fewer layers":
            bad = state[:-1]
        elif m == "more layers":
            bad = (*state, state[-1])
        elif m == "one cell's state":
            bad = state[0]
        elif m == "layer batch":
            bad = at_layer(
                lambda s: map_state(lambda t: torch.randn(B + 1, t.shape[1], dtype=t.dtype), s)
            )  # noqa: E501
        elif m == "layer width":
            bad = at_layer(
                lambda s: map_state(lambda t: torch.randn(B, t.shape[1] + 1, dtype=t.dtype), s)
            )  # noqa: E501
        elif m == "layer dtype":
            label, t = odd_dtype(data, x)
            bad = at_layer(lambda s: map_state(lambda u: u.to(t.dtype), s))
            m = f"layer {label}"
        elif m == "layer device":
            bad = at_layer(lambda s: map_state(meta, s))
        elif m == "layer None":
            bad = at_layer(lambda s: None)  # None for one layer is not a None state
        elif m == "values":

            def nanify(s: Any) -> Any:
                return map_state(lambda t: t.clone().fill_(float("nan")), s)

            bad = at_layer(nanify)
            check = expect_forward(stack, x, bad, None)
        elif m == "other stack":
            other = rk.Stack(
                make_cells("lstm" if "LSTM" not in type(stack.cells[0]).__name__ else "gru", L)
            )  # noqa: E501
            bad = other.initial_state(B)
        elif m == "inner list":
            bad = tuple(list(s) if isinstance(s, tuple) else s for s in state)
            check = expect_forward(stack, x, state, None)  # a list for a NamedTuple: legal
        else:
            bad = "state"
        probe(f"state: {m}", lambda: stack(x, bad), check)
        return

    legal = torch.tensor(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    bad_lengths: Any = {
        "float": legal.double(),
        "2-D": legal[None],
        "wrong count": torch.ones(B + 1, dtype=torch.long),
        "zero": torch.zeros(B, dtype=torch.long),
        "too long": torch.full((B,), T + 1),
        "negative": torch.full((B,), -1),
        "bool": torch.ones(B, dtype=torch.bool),
        "list": legal.tolist(),
        "meta": legal.to("meta"),
    }.get(m)
    if bad_lengths is not None:
        probe(f"lengths {m}", lambda: stack(x, state, lengths=bad_lengths))
    elif m == "unbatched":
        xb = x[0] if bf else x[:, 0]
        probe("lengths with unbatched x", lambda: stack(xb, lengths=torch.tensor([T])))
    elif m == "with packed":
        packed = pack_padded_sequence(x, legal, batch_first=bf, enforce_sorted=False)
        probe("lengths with a PackedSequence", lambda: stack(packed, lengths=legal))
    elif m == "legal":
        probe(
            "legal lengths",
            lambda: stack(x, state, lengths=legal),
            expect_forward(stack, x, state, legal),
        )  # noqa: E501
    else:  # NaN past each sequence's end: masked out, must not leak into states or outputs
        mask = (torch.arange(T)[:, None] < legal[None, :])[..., None]  # (T, B, 1)
        poisoned_tm = torch.where(mask, x_tm, torch.full_like(x_tm, float("nan")))
        poisoned = poisoned_tm.transpose(0, 1).contiguous() if bf else poisoned_tm
        clean = torch.where(mask, x_tm, torch.zeros_like(x_tm))
        clean = clean.transpose(0, 1).contiguous() if bf else clean
        check_grad(stack, poisoned, state, legal, probe, clean=clean, label="NaN past the lengths")


def check_grad(
    stack: rk.Stack,
    x: Tensor,
    state: Any,
    lengths: Tensor | None,
    probe: Any,
    *,
    clean: Tensor | None = None,
    label: str = "x requiring grad",
) -> None:
    """Outputs, final states and d(sum of outputs)/dx equal the reference's on ``clean``
    (``x`` itself by default): nothing of ``x`` beyond ``lengths`` may leak."""
    clean = x if clean is None else clean
    x_in = x.detach().clone().requires_grad_(True)
    ref = reference_of(stack)

    def call() -> Any:
        out, st_ = stack(x_in, state, lengths=lengths)
        out.sum().backward()
        return out, st_, x_in.grad

    def check(result: Any) -> None:
        out, st_, grad = result
        x_ref = clean.detach().clone().requires_grad_(True)
        want, want_state = ref(x_ref, state, lengths=lengths)
        want.sum().backward()
        same(out, want, atol=1e-9, rtol=1e-8)
        same(st_, want_state, atol=1e-9, rtol=1e-8)
        if lengths is not None:  # the gradient past each end is zero, not NaN
            grad = grad.nan_to_num(123.0)
        same(grad, x_ref.grad, atol=1e-9, rtol=1e-8)

    probe(label, call, check)


def test_stack_forward_rejects_bad_input_clearly() -> None:
    with LEDGER.entry("Stack", "Stack.forward") as run:
        for where, mutations in (
            ("x", X_MUTATIONS),
            ("state", STATE_MUTATIONS),
            ("lengths", LENGTH_MUTATIONS),
        ):
            for m in mutations:
                fuzz_stack_forward(where, m)
    run.assert_clean()


# -- step and as_cell ---------------------------------------------------------------------

STEP_MUTATIONS = (
    "rank 0", "rank 3", "last dim", "empty batch", "dtype", "device", "non-tensor",
    "values", "layout", "unbatched", "state None", "state layers", "state batch",
    "state dtype", "state device", "stepped twice", "stepped then changed",
)  # fmt: skip


@FUZZ
@given(data=st.data())
def fuzz_stack_step(mutation: str, data: st.DataObject) -> None:
    stack = make_stack(data)
    B = data.draw(st.integers(1, 3), label="B")
    torch.manual_seed(3)
    x_t = torch.randn(B, I, dtype=torch.float64)
    state = random_state(stack, B)
    via = data.draw(st.sampled_from(["step", "as_cell"]), label="via")
    fn = stack.step if via == "step" else stack.as_cell()
    name = f"{describe_stack(stack)}.{via}"
    names = ("x_t", "state", "x") if via == "step" else ("x_t", "x", "state")
    ref = reference_of(stack)
    ref.batch_first = False

    def expect(xx: Tensor, ss: Any, unbatched: bool = False) -> Any:
        def check(result: Any) -> None:
            y, st_ = result
            want, want_state = ref(xx[None], ss)  # (1, B, O)
            want = want[0]
            if unbatched:
                want = want[0]
                want_state = tuple(map_state(lambda t: t[0], s) for s in want_state)
            same((y, tuple(st_)), (want, want_state), atol=1e-9, rtol=1e-8)

        return check

    m = mutation
    check = None
    if m == "rank 0":
        call = lambda: fn(torch.tensor(1.0, dtype=torch.float64))  # noqa: E731
    elif m == "rank 3":
        call = lambda: fn(x_t[None], state)  # noqa: E731
    elif m == "last dim":
        call = lambda: fn(torch.randn(B, I + 2, dtype=torch.float64), state)  # noqa: E731
    elif m == "empty batch":  # legal (as in torch.nn): an empty output and states
        call, check = (lambda: fn(x_t[:0], None)), expect(x_t[:0], None)
    elif m == "dtype":
        m, bad = odd_dtype(data, x_t)
        call = lambda: fn(bad, state)  # noqa: E731
    elif m == "device":
        call = lambda: fn(meta(x_t), state)  # noqa: E731
    elif m == "non-tensor":
        m, bad = non_tensor(data, x_t)
        call = lambda: fn(bad, state)  # noqa: E731
    elif m == "values":
        m, bad = odd_values(data, x_t)
        call, check = (lambda: fn(bad, state)), expect(bad, state)
    elif m == "layout":
        m, bad = odd_layout(data, x_t)
        call, check = (lambda: fn(bad, state)), expect(x_t, state)
    elif m == "unbatched":
        sb = tuple(map_state(lambda t: t[0], s) for s in state)
        s1 = tuple(map_state(lambda t: t[:1], s) for s in state)
        call, check = (lambda: fn(x_t[0], sb)), expect(x_t[:1], s1, unbatched=True)
    elif m == "state None":
        call, check = (lambda: fn(x_t, None)), expect(x_t, None)
    elif m == "state layers":
        call = lambda: fn(x_t, state[:-1] if len(state) > 1 else (*state, *state))  # noqa: E731
    elif m == "state batch":
        bad_state = tuple(map_state(lambda t: t[:1].expand(B + 1, -1), s) for s in state)
        call = lambda: fn(x_t, bad_state)  # noqa: E731
    elif m == "state dtype":
        bad_state = tuple(map_state(lambda t: t.float(), s) for s in state)
        call = lambda: fn(x_t, bad_state)  # noqa: E731
    elif m == "state device":
        bad_state = tuple(map_state(meta, s) for s in state)
        call = lambda: fn(x_t, bad_state)  # noqa: E731
    elif m == "stepped twice":  # the returned state passed back: the fast re-entry path

        def call() -> Any:
            _, s1 = fn(x_t, state)
            return fn(x_t, s1), s1

        def check(result: Any) -> None:
            (y, s2), s1 = result
            expect(x_t, tuple(s1))((y, s2))
    else:  # the stack changed between steps: the re-entry path must notice

        def call() -> Any:
            _, s1 = fn(x_t, state)
            stack.float()
            return fn(x_t, s1)

    LEDGER.probe(f"{name}: {m}", call, names=names, check=check, legal=check is not None)


def test_stack_step_and_as_cell_reject_bad_input_clearly() -> None:
    with LEDGER.entry("Stack", "Stack.step / as_cell") as run:
        for m in STEP_MUTATIONS:
            fuzz_stack_step(m)
    run.assert_clean()


# -- initial_state ------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def fuzz_stack_initial_state(arg: str, data: st.DataObject) -> None:
    stack = make_stack(data)
    names = ("batch_size", "device", "dtype")
    name = describe_stack(stack)
    if arg == "batch_size":
        bad = data.draw(st.sampled_from([-1, -2, False, 1.0, "1", None, 2**62]))
        LEDGER.probe(f"{name}: batch_size={bad!r}", lambda: stack.initial_state(bad), names=names)
    elif arg == "device":
        bad = data.draw(st.sampled_from(["tpu", 2.0, "cuda:123", ["cpu"]]))
        LEDGER.probe(
            f"{name}: device={bad!r}", lambda: stack.initial_state(1, device=bad), names=names
        )
    elif arg == "dtype":
        bad = data.draw(st.sampled_from([torch.long, "double", torch.complex128]))
        LEDGER.probe(
            f"{name}: dtype={bad!r}", lambda: stack.initial_state(1, dtype=bad), names=names
        )
    else:
        B = data.draw(st.integers(0, 3))  # 0: the empty states an empty batch starts from

        def check(states: Any) -> None:
            assert isinstance(states, tuple) and len(states) == stack.num_layers
            for cell, s in zip(stack.cells, states):
                same(s, map_state(lambda t: t[:B], cell.initial_state(max(B, 1))))

        LEDGER.probe(
            f"{name}: initial_state({B})",
            lambda: stack.initial_state(B),
            names=names,
            check=check,
            legal=True,
        )


def test_stack_initial_state_rejects_bad_input_clearly() -> None:
    with LEDGER.entry("Stack", "Stack.initial_state") as run:
        for arg in ("batch_size", "device", "dtype", "legal"):
            fuzz_stack_initial_state(arg)
    run.assert_clean()


# -- constructor and policies ---------------------------------------------------------------


class _NoSizes(nn.Module):
    """A user cell that declares no sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(H, H).double()

    def initial_state(self, batch_size: int, *, device: Any = None, dtype: Any = None) -> Tensor:
        return torch.zeros(batch_size, H, dtype=torch.float64)

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Tensor]:
        h = torch.tanh(self.lin(x))
        return h, h


def constructor_cases() -> list[tuple[str, tuple[str, ...], Any]]:
    f64 = {"dtype": torch.float64}
    gru = rk.GRUCell(I, H, **f64)
    used = Shared()
    rk.Stack([rk.GRUCell(I, H, **f64)], used)
    cases: list[tuple[str, tuple[str, ...], Any]] = [
        ("cells: a single cell", ("cells",), lambda: rk.Stack(gru)),
        ("cells: empty", ("cells",), lambda: rk.Stack([])),
        ("cells: a string", ("cells",), lambda: rk.Stack("gru")),
        ("cells: None", ("cells",), lambda: rk.Stack(None)),
        ("cells: a non-module", ("cells",), lambda: rk.Stack([gru, "gru"])),
        ("cells: a module without initial_state", ("cells",), lambda: rk.Stack([nn.Linear(3, 4)])),  # noqa: E501
        (
            "cells: widths that do not chain",
            ("cells",),
            lambda: rk.Stack([gru, rk.GRUCell(5, H, **f64)]),
        ),  # noqa: E501
        ("routing: unknown name", ("routing",), lambda: rk.Stack([gru], "diagonal")),
        ("routing: a class, not an instance", ("routing",), lambda: rk.Stack([gru], Shared)),
        ("routing: None", ("routing",), lambda: rk.Stack([gru], None)),
        ("routing: a policy already bound", ("routing",), lambda: rk.Stack([gru], used)),
        (
            "routing: Shared(carry='middle')",
            ("carry",),
            lambda: rk.Stack([gru], Shared(carry="middle")),
        ),  # noqa: E501
        (
            "shared: state shapes differ",
            ("cells",),
            lambda: rk.Stack([rk.GRUCell(I, H, **f64), rk.GRUCell(H, H + 1, **f64)], "shared"),
        ),  # noqa: E501
        (
            "handoff: state kinds differ",
            ("cells",),
            lambda: rk.Stack([rk.GRUCell(I, H, **f64), rk.LSTMCell(H, H, **f64)], "handoff"),
        ),  # noqa: E501
        (
            "residual: a layer changes width",
            ("cells",),
            lambda: rk.Stack([rk.GRUCell(I, H, **f64), rk.GRUCell(H, H + 2, **f64)], "residual"),
        ),  # noqa: E501
        (
            "cross_layer: a cell without input_size",
            ("cells",),
            lambda: rk.Stack([rk.GRUCell(I, H, **f64), _NoSizes()], CrossLayer()),
        ),  # noqa: E501
        ("dropout: 1.5", ("dropout",), lambda: rk.Stack([gru], dropout=1.5)),
        ("dropout: nan", ("dropout",), lambda: rk.Stack([gru], dropout=float("nan"))),
        ("dropout: '0.1'", ("dropout",), lambda: rk.Stack([gru], dropout="0.1")),
        ("dropout: -0.1", ("dropout",), lambda: rk.Stack([gru], dropout=-0.1)),
        ("batch_first: 'yes'", ("batch_first",), lambda: rk.Stack([gru], batch_first="yes")),
        ("batch_first: 1", ("batch_first",), lambda: rk.Stack([gru], batch_first=1)),
        ("executor: 'fast'", ("executor",), lambda: rk.Stack([gru], executor="fast")),
        ("executor: None", ("executor",), lambda: rk.Stack([gru], executor=None)),
        ("resolve: 3", ("routing",), lambda: rk.routing.resolve(3)),
    ]
    return cases


def test_stack_constructor_and_policies_reject_bad_configurations_clearly() -> None:
    with LEDGER.entry("Stack", "Stack(...) and routing policies") as run:
        for label, names, call in constructor_cases():
            LEDGER.probe(label, call, names=names)
    run.assert_clean()
