"""torch.compile: no graph breaks in a stack's forward or step, and equal results."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import cast

import pytest
import torch
import torch._dynamo as dynamo
from torch.export import Dim

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, in inductor


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    dynamo.reset()
    yield
    dynamo.reset()


@pytest.mark.parametrize(
    ("routing", "cell"),
    [
        ("independent", "lstm"),
        ("shared", "gru"),
        ("residual", "gru_before"),
        ("cross_layer", "nested"),
        ("handoff", "gru"),
    ],
)
def test_forward_and_step_trace_without_graph_breaks(
    checks: SimpleNamespace, routing: str, cell: str
) -> None:
    stack = checks.build(cell, routing, "auto", L=2).eval()  # eval: handoff warns in training
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    found = dynamo.explain(stack)(x)
    assert found.graph_break_count == 0, [b.reason for b in found.break_reasons]
    assert found.graph_count == 1
    found = dynamo.explain(stack.step)(x[0], stack.initial_state(2))
    assert found.graph_break_count == 0, [b.reason for b in found.break_reasons]


def test_compiled_stack_equals_eager(checks: SimpleNamespace) -> None:
    """Compiled forward and backward (inductor, fullgraph) agree with the reference path
    (with torch 2.13's inductor, buffer donation off: see test_inductor_float32...)."""
    ref = checks.build("gru", "cross_layer", "reference", L=2)
    compiled = torch.compile(checks.build("gru", "cross_layer", "auto", L=2), fullgraph=True)
    x, state = checks.inputs(ref, T=4, B=2)
    with no_donated_buffers():
        checks.same_run(ref, compiled, x, state)


def no_donated_buffers() -> contextlib.AbstractContextManager[None]:
    """Inductor's buffer donation off, which torch <= 2.13 needs for correct gradients
    through a scan (pytorch#153679: it corrupts a scan's backward, silently)."""
    import torch._functorch.config as functorch_config

    patch = functorch_config.patch(donated_buffer=False)
    return cast(contextlib.AbstractContextManager[None], patch)


POLICY_NAMES = ["independent", "shared", "shared_last", "residual", "cross_layer", "handoff"]


def policy(name: str) -> object:
    """A routing for ``checks.build``: a name, or a factory (a policy binds one stack)."""
    import recurrentkit as rk

    return (lambda: rk.routing.Shared(carry="last")) if name == "shared_last" else name


@pytest.mark.parametrize("routing", POLICY_NAMES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("executor", ["auto", "handbuilt"])
def test_fullgraph_with_lengths_and_in_training(
    checks: SimpleNamespace, routing: str, training: bool, executor: str
) -> None:
    """``fullgraph=True`` holds with ``lengths`` and in training mode too (handoff's
    warning and the lengths check are not Python branches while tracing); results,
    gradients included, equal the reference. Dropout 0 so both draw nothing."""
    ref = checks.build("lstm", policy(routing), "reference", L=2).train(training)
    stack = checks.build("lstm", policy(routing), executor, L=2).train(training)
    compiled = torch.compile(stack, fullgraph=True, backend="eager")
    x, state = checks.inputs(ref, T=4, B=3)
    checks.same_run(ref, compiled, x, state, torch.tensor([4, 1, 3]))
    step = torch.compile(stack.step, fullgraph=True, backend="eager")
    y, _ = step(x[0], state)
    y_ref, _ = ref.step(x[0], state)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)


def test_compiled_lengths_out_of_range_fail_naming_lengths(checks: SimpleNamespace) -> None:
    stack = torch.compile(checks.build("gru", "independent", "auto", L=2), backend="eager")
    x, _ = checks.inputs(stack._orig_mod, T=4, B=2)
    with pytest.raises(RuntimeError, match=r"lengths: expected values in 1\.\.4"):
        stack(x, lengths=torch.tensor([5, 2]))


# -- the "scan" plan: the time loop as torch's scan operator ------------------------------

LENGTHS = torch.tensor([5, 2, 4])


def resets_mask() -> torch.Tensor:
    """``(T=5, B=3)``: a reset at ``t = 0`` (row 1), mid-sequence (rows 0 and 2) and past
    row 1's length (ignored)."""
    mask = torch.zeros(5, 3, dtype=torch.bool)
    for t, b in ((0, 1), (2, 0), (3, 2), (4, 1)):
        mask[t, b] = True
    return mask


class ScanGraphs:
    """A ``torch.compile`` backend that runs each graph as it is (as ``"eager"``) and
    keeps it, so a test can check that the time loop is torch's scan operator."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: object) -> object:
        self.graphs.append(gm)
        return gm.forward

    def scans(self) -> int:
        return sum(
            n.target is torch.ops.higher_order.scan for g in self.graphs for n in g.graph.nodes
        )


CORE_CELLS = ["rnn", "gru", "lstm", "nested"]
SCAN_MATRIX = (
    [(p, c, "auto") for p in POLICY_NAMES for c in CORE_CELLS]
    + [(p, "lstm", "reference") for p in POLICY_NAMES]
    + [  # the newer cells, each under one policy (layer-major and step-major both)
        ("shared", "mgu", "auto"),
        ("independent", "coupled", "auto"),
        ("cross_layer", "indrnn", "auto"),
        ("residual", "ln_gru", "auto"),
        ("shared_last", "ln_lstm", "auto"),
        ("handoff", "lstm_proj", "auto"),
    ]
)


@pytest.mark.parametrize(("routing", "cell", "executor"), SCAN_MATRIX)
def test_compiled_scan_equals_eager_with_lengths_and_resets(
    checks: SimpleNamespace, routing: str, cell: str, executor: str
) -> None:
    """``fullgraph=True`` over every policy x cell: one graph whose time loop is torch's
    scan operator (no unrolling), equal to eager (outputs, final states and every
    gradient, float64 to 1e-10) with ``lengths`` and ``resets`` (handoff: lengths only,
    see the next tests)."""
    ref = checks.build(cell, policy(routing), "reference", L=2)
    stack = checks.build(cell, policy(routing), executor, L=2)
    backend = ScanGraphs()
    compiled = torch.compile(stack, fullgraph=True, backend=backend)
    x, state = checks.inputs(ref, T=5, B=3)
    resets = None if routing == "handoff" else resets_mask()
    checks.same_run(ref, compiled, x, state, LENGTHS, resets=resets)
    assert backend.scans() >= 1


@pytest.mark.parametrize("routing", ["shared", "independent"])
def test_compiled_resets_restart_from_learned_initial_states(
    checks: SimpleNamespace, routing: str
) -> None:
    """A traced reset restarts a row from the learned initial state (set away from zero,
    so a restart from zeros would differ), as the eager segments do."""
    ref = checks.build("lstm", routing, "reference", L=2, initial_state="learned")
    with torch.no_grad():
        for p in ref.initial_states.values():
            p.normal_()
    stack = checks.build("lstm", routing, "auto", L=2, initial_state="learned")
    compiled = torch.compile(stack, fullgraph=True, backend="eager")
    x, state = checks.inputs(ref, T=5, B=3)
    checks.same_run(ref, compiled, x, state, LENGTHS, resets=resets_mask())


def test_compiled_handoff_with_resets_is_refused(checks: SimpleNamespace) -> None:
    """Handoff's layers start from the layer below's state at each segment's end, which a
    traced loop does not compute: refused with a recurrentkit error naming ``resets``."""
    import recurrentkit as rk

    stack = torch.compile(checks.build("gru", "handoff", "auto", L=2), backend="eager")
    x, _ = checks.inputs(stack._orig_mod, T=5, B=3)
    with pytest.raises(rk.UnsupportedError, match=r"resets: expected a causal routing policy"):
        stack(x, resets=resets_mask())


@pytest.mark.parametrize("routing", ["shared", "independent"])
def test_compiled_dropout_is_drawn_inside_the_scan(checks: SimpleNamespace, routing: str) -> None:
    """Inter-layer dropout in training mode under compile: ``p = 1`` zeroes every layer's
    output below the top, as eager does (a deterministic check that the scanned step
    applies it); ``p = 0.5`` runs forward and backward."""
    ref = checks.build("gru", routing, "reference", L=2, dropout=1.0)
    stack = checks.build("gru", routing, "auto", L=2, dropout=1.0)
    compiled = torch.compile(stack, fullgraph=True, backend="eager")
    x, state = checks.inputs(ref, T=5, B=3)
    checks.same_run(ref, compiled, x, state)
    half = checks.build("gru", routing, "auto", L=2, dropout=0.5)
    y, _ = torch.compile(half, fullgraph=True, backend="eager")(x, state)
    y.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_explain_names_the_plans_while_tracing(
    checks: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``explain`` reads the same tables as the run. Under ``torch.compile``, a
    layer-major policy or ``shared`` over built-in cells runs each layer's kernel as
    custom ops (``"kernel_ops"``), ``cross_layer`` its whole-run op; with active
    dropout ``cross_layer`` is one scan of its step. Under
    ``torch.export`` every policy scans: one scan of the step for a causal policy (its
    layers on their STEP plans), each layer scanned in turn for one that is not
    (handoff)."""
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    assert checks.build("gru", "independent", "auto", L=2).explain(x).plan != "scan"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    for routing in ("independent", "handoff", "residual"):
        e = checks.build("gru", routing, "auto", L=2).explain(x)
        assert (e.plan, e.layers) == ("kernel_ops", ("kernel", "kernel")), routing
    e = checks.build("gru", "shared", "auto", L=2).explain(x)
    assert (e.plan, e.layers) == ("kernel_ops", None)
    e = checks.build("gru", "cross_layer", "auto", L=2).explain(x)
    assert (e.plan, e.layers) == ("kernel_ops", None)
    e = checks.build("gru", "cross_layer", "auto", L=2, dropout=0.5).explain(x)
    assert (e.plan, e.layers) == ("scan", ("kernel_step", "kernel_step"))
    e = checks.build("mgu", "independent", "auto", L=2).explain(x)  # no kernel: the scan
    assert e.plan == "scan"
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    for routing in ("independent", "shared", "cross_layer"):
        e = checks.build("gru", routing, "auto", L=2).explain(x)
        assert (e.plan, e.layers) == ("scan", ("kernel_step", "kernel_step")), routing
    e = checks.build("gru", "handoff", "auto", L=2).explain(x)
    assert (e.plan, e.layers) == ("scan", ("scan", "scan"))


@pytest.mark.parametrize("routing", ["shared", "cross_layer", "independent", "handoff"])
def test_inductor_float32_equals_eager(checks: SimpleNamespace, routing: str) -> None:
    """Inductor (the default backend), float32: outputs and gradients within 1e-5
    (buffer donation off: :func:`no_donated_buffers`)."""
    ref = checks.build("gru", routing, "reference", L=2).float()
    stack = checks.build("gru", routing, "auto", L=2).float()
    compiled = torch.compile(stack, fullgraph=True)
    x, state = checks.inputs(ref, T=5, B=3)
    x = x.detach().float().requires_grad_()
    state = tuple(s.detach().float().requires_grad_() for s in state)
    with no_donated_buffers():
        checks.same_run(ref, compiled, x, state, LENGTHS, tol=1e-5)


# -- torch.export with a dynamic time axis and batch --------------------------------------

# -- torch.export with a dynamic time axis and batch --------------------------------------

EXPORTS = [  # every policy and every cell at least once
    ("independent", "rnn"),
    ("shared", "gru"),
    ("shared_last", "lstm"),
    ("residual", "gru_before"),
    ("cross_layer", "nested"),
    ("handoff", "lstm_proj"),
    ("shared", "mgu"),
    ("independent", "coupled"),
    ("cross_layer", "indrnn"),
    ("residual", "ln_gru"),
    ("handoff", "ln_lstm"),
]


def dynamic(*names: str) -> dict[str, dict[int, object]]:
    """``dynamic_shapes`` with a dynamic time axis (0) and batch (1) for each input named."""
    T, B = Dim("T", min=1), Dim("B", min=1)
    return {name: {0: T, 1: B} for name in names}


def same_at_every_shape(module: torch.nn.Module, exported: torch.nn.Module) -> None:
    """The exported program equals eager at T in {1, 5, 64} and B in {1, 3}."""
    for T in (1, 5, 64):
        for B in (1, 3):
            x = torch.randn(T, B, 3, dtype=torch.float64)
            y_ref, s_ref = module(x)
            y, s = exported(x)
            assert y.shape == y_ref.shape
            for a, b in zip([y, *flat(s)], [y_ref, *flat(s_ref)]):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def flat(state: object) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    assert isinstance(state, tuple)
    return [t for s in state for t in flat(s)]


@pytest.mark.parametrize(("routing", "cell"), EXPORTS)
def test_export_with_dynamic_time_and_batch(
    checks: SimpleNamespace, routing: str, cell: str
) -> None:
    """``torch.export.export`` with ``T`` and ``B`` dynamic, for every policy and cell:
    the program's time loop is a scan, so it equals eager at other lengths and batches."""
    stack = checks.build(cell, policy(routing), "auto", L=2).eval()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    program = torch.export.export(stack, (x,), dynamic_shapes=dynamic("x"))
    same_at_every_shape(stack, program.module())


def test_export_bidirectional_with_dynamic_time_and_batch(checks: SimpleNamespace) -> None:
    from recurrentkit.bidirectional import Bidirectional

    bi = Bidirectional(
        checks.build("gru", "independent", "auto", L=2),
        checks.build("lstm", "shared", "auto", L=2),
    ).eval()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    program = torch.export.export(bi, (x,), dynamic_shapes=dynamic("x"))
    same_at_every_shape(bi, program.module())


def test_export_with_lengths_and_resets(checks: SimpleNamespace) -> None:
    """``lengths`` and ``resets`` as inputs of the exported program (dynamic too)."""
    stack = checks.build("lstm", "shared", "auto", L=2).eval()
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    shapes = dynamic("x", "resets")
    shapes["lengths"] = {0: shapes["x"][1]}
    program = torch.export.export(
        stack,
        (x,),
        {"lengths": LENGTHS, "resets": resets_mask()},
        dynamic_shapes=shapes,
    ).module()
    for T, B in ((5, 3), (9, 4), (1, 2)):
        x = torch.randn(T, B, 3, dtype=torch.float64)
        lengths = torch.randint(1, T + 1, (B,))
        resets = torch.rand(T, B) < 0.3
        y_ref, s_ref = stack(x, lengths=lengths, resets=resets)
        y, s = program(x, lengths=lengths, resets=resets)
        for a, b in zip([y, *flat(s)], [y_ref, *flat(s_ref)]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_export_after_an_eager_call_with_a_state_keeps_the_batch_free(
    checks: SimpleNamespace,
) -> None:
    """An eager call with a given state first (as a user does before exporting) must not
    fix the exported batch axis to that call's batch size."""
    stack = checks.build("lstm", "shared", "auto", L=2).eval()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    state = stack.initial_state(2)
    stack(x, state)  # eager, B = 2
    B = Dim("B", min=1)
    shapes = {
        "x": {0: Dim("T", min=1), 1: B},
        "state": tuple(type(s)({0: B}, {0: B}) for s in state),
    }
    program = torch.export.export(stack, (x, state), dynamic_shapes=shapes).module()
    for T, rows in ((1, 1), (9, 3)):
        x = torch.randn(T, rows, 3, dtype=torch.float64)
        given = tuple(
            type(s)(*(torch.randn(rows, t.shape[-1], dtype=t.dtype) for t in s)) for s in state
        )
        y_ref, s_ref = stack(x, given)
        y, s = program(x, given)
        for a, b in zip([y, *flat(s)], [y_ref, *flat(s_ref)]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


# -- PackedSequence ------------------------------------------------------------------------


def _packed() -> torch.nn.utils.rnn.PackedSequence:
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    return torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 4, 2]))


def test_a_packed_sequence_runs_eagerly_under_compile(checks: SimpleNamespace) -> None:
    """A PackedSequence's layout is data: under torch.compile (not fullgraph) its call is
    a graph break and runs eagerly, equal to the eager stack."""
    stack = checks.build("gru", "independent", "auto", L=2)
    packed = _packed()
    y, s = torch.compile(stack, backend="eager")(packed)
    y_ref, s_ref = stack(packed)
    torch.testing.assert_close(y.data, y_ref.data, rtol=0, atol=0)
    for a, b in zip(flat(s), flat(s_ref)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_packed_sequence_is_refused_by_fullgraph_and_export(checks: SimpleNamespace) -> None:
    """fullgraph=True reports the graph break with recurrentkit's reason; torch.export
    raises UnsupportedError naming x and the padded tensor with lengths."""
    import recurrentkit as rk

    stack = checks.build("gru", "independent", "auto", L=2).eval()
    with pytest.raises(dynamo.exc.Unsupported, match="PackedSequence does not trace"):
        torch.compile(stack, fullgraph=True, backend="eager")(_packed())
    with pytest.raises(rk.UnsupportedError, match=r"^x: expected the padded tensor .*lengths="):
        torch.export.export(stack, (_packed(),))


# -- TorchScript ---------------------------------------------------------------------------


def test_jit_trace_of_a_stack_is_refused_naming_torch_export(checks: SimpleNamespace) -> None:
    import recurrentkit as rk

    stack = checks.build("gru", "independent", "auto", L=2)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with pytest.raises(rk.UnsupportedError, match=r"torch\.jit\.trace: expected torch\.export"):
        torch.jit.trace(stack, (x,))
    with pytest.raises(rk.UnsupportedError, match=r"torch\.export"):
        torch.jit.trace_module(stack, {"step": (x[0],)})
