"""Deferred weight gradients: exact, including partial and repeated backward passes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

import recurrentkit as rk
from recurrentkit.executors import deferred
from recurrentkit.executors.deferred import DeferredLinear

D = torch.float64


@pytest.fixture
def always_defer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deferred, "MIN_NUMEL", 0)  # the test weights are tiny


@pytest.fixture(params=["pairs", "sums"])
def either_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a slot makes a weight's gradient: pairs gathered into one matmul at the
    end, or running sums step by step (the test weights are tiny: sums by default)."""
    if request.param == "pairs":
        monkeypatch.setattr(deferred, "MIN_NUMEL", 0)
    return str(request.param)


def chain(linear, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, u: torch.Tensor) -> list:
    """A recurrence through two weights: h_t = tanh(x_t W^T + b + h_{t-1} U^T)."""
    h, hs = torch.zeros(x.shape[1], w.shape[0], dtype=D), []
    for x_t in x:
        h = torch.tanh(linear(x_t, w, b) + linear(h, u))
        hs.append(h)
    return hs


def test_deferred_linear_equals_f_linear(either_way: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, dtype=D, requires_grad=True)
    w, b, u = (torch.randn(*s, dtype=D, requires_grad=True) for s in ((6, 4), (6,), (6, 6)))
    ref = torch.stack(chain(F.linear, x, w, b, u))
    got = torch.stack(chain(DeferredLinear(), x, w, b, u))
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    cot = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, (x, w, b, u), cot)
    g_got = torch.autograd.grad(got, (x, w, b, u), cot)
    for a, c in zip(g_ref, g_got):
        torch.testing.assert_close(c, a, rtol=0, atol=1e-12)


def test_partial_and_repeated_backward_passes(either_way: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, dtype=D, requires_grad=True)
    w, b, u = (torch.randn(*s, dtype=D, requires_grad=True) for s in ((6, 4), (6,), (6, 6)))
    y = torch.stack(chain(DeferredLinear(), x, w, b, u)).square().sum()
    y_ref = torch.stack(chain(F.linear, x, w, b, u)).square().sum()
    # a pass that never reaches the weights records nothing ...
    (gx,) = torch.autograd.grad(y, x, retain_graph=True)
    (gx_ref,) = torch.autograd.grad(y_ref, x, retain_graph=True)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-12)
    # ... so two full passes later give exactly twice one pass
    y.backward(retain_graph=True)
    y.backward()
    once = torch.autograd.grad(y_ref, (w, b, u))
    for p, g in zip((w, b, u), once):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, 2 * g, rtol=0, atol=1e-11)


def test_frozen_weights_and_no_grad_use_plain_linear(always_defer: None) -> None:
    w = torch.randn(3, 2)
    x = torch.randn(4, 2)
    linear = DeferredLinear()
    assert linear(x, w).grad_fn is None  # frozen weight: plain F.linear
    with torch.no_grad():
        assert linear(x, w.requires_grad_()).grad_fn is None


@pytest.mark.parametrize(
    "routing", ["shared_last", "cross_layer", "mixed"], ids=["shared_last", "cross", "custom"]
)
@pytest.mark.parametrize("cell", ["gru", "gru_before", "lstm_proj", "nested3", "rnn"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_step_loops_with_deferred_gradients_equal_reference(
    checks: SimpleNamespace, always_defer: None, routing: str, cell: str, ragged: bool
) -> None:
    policies = {
        "shared_last": lambda: rk.routing.Shared(carry="last"),
        "cross_layer": "cross_layer",
        "mixed": checks.ScaledShared,
    }
    ref = checks.build(cell, policies[routing], "reference")
    fast_stack = checks.build(cell, policies[routing], "handbuilt")
    x, state = checks.inputs(ref)
    checks.same_run(ref, fast_stack, x, state, torch.tensor([3, 6, 1, 5]) if ragged else None)
