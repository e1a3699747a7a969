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
