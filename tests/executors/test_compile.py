"""torch.compile: no graph breaks in a stack's forward or step, and equal results."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
import torch._dynamo as dynamo

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
    """Compiled forward and backward (inductor, fullgraph) agree with the reference path."""
    ref = checks.build("gru", "cross_layer", "reference", L=2)
    compiled = torch.compile(checks.build("gru", "cross_layer", "auto", L=2), fullgraph=True)
    x, state = checks.inputs(ref, T=4, B=2)
    checks.same_run(ref, compiled, x, state)


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
