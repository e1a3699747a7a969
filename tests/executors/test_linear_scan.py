"""The ``linear_scan`` layer plan: linear-recurrence layers as one scan over the sequence.

Under the layer-major policies (independent, residual, handoff) every MinGRU, MinLSTM
and LRU layer runs as one :func:`recurrentkit.scan.linear`; the fast executor equals the
reference in float64 (outputs, final states, gradients of the input, the initial states
and every parameter), with lengths, resets, packed input and mixed stacks; explain names
the plan and the method ``"auto"`` picked; step-major policies step and say why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence

import recurrentkit as rk
from recurrentkit._validation import map_state

D = torch.float64
TOL = 1e-10
T, B, I, H = 7, 4, 3, 5

LAYERS: dict[str, Callable[[int, int], Any]] = {
    "min_gru": lambda i, h: rk.MinGRUCell(i, h),
    "min_lstm": lambda i, h: rk.MinLSTMCell(i, h, bias=False),
    "lru": lambda i, h: rk.LRUCell(i, h, state_size=4, r_min=0.3),
    "min_gru+gru": lambda i, h: rk.MinGRUCell(i, h) if i == I else rk.GRUCell(i, h),
    "gru+min_lstm": lambda i, h: rk.GRUCell(i, h) if i == I else rk.MinLSTMCell(i, h),
    "lstm+lru": lambda i, h: rk.LSTMCell(i, h) if i == I else rk.LRUCell(i, h),
}


def build(kind: str, policy: str, executor: str, L: int = 2, **kw: Any) -> rk.Stack:
    torch.manual_seed(99)
    cells = [LAYERS[kind](I if k == 0 else H, H) for k in range(L)]
    return rk.Stack(cells, policy, executor=executor, **kw).to(D)


def flat(state: Any) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    return [t for s in state for t in flat(s)]


def run_and_grads(
    stack: rk.Stack, x: Tensor, state: Any, cots: list[Tensor] | None, **kw: Any
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    y, s = stack(x, state, **kw)
    outs = [y, *flat(s)]
    if cots is None:
        cots = [torch.randn_like(t) for t in outs]
    loss = sum((o * c.conj()).real.sum() for o, c in zip(outs, cots))
    wrt = [x, *flat(state), *stack.parameters()]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return outs, [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)], cots


def same(kind: str, policy: str, **kw: Any) -> None:
    ref, fast = build(kind, policy, "reference"), build(kind, policy, "auto")
    torch.manual_seed(5)
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    state = map_state(lambda t: torch.randn_like(t).requires_grad_(), ref.initial_state(B))
    outs_ref, g_ref, cots = run_and_grads(ref, x, state, None, **kw)
    outs_fast, g_fast, _ = run_and_grads(fast, x, state, cots, **kw)
    for a, b in zip(outs_ref, outs_fast, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=TOL)
    for a, b in zip(g_ref, g_fast, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=TOL)


def policies(kind: str) -> list[str]:
    return ["independent", "residual"] + ([] if "lru" in kind else ["handoff"])


@pytest.mark.parametrize("kind", list(LAYERS))
def test_the_scan_plan_equals_the_reference(kind: str) -> None:
    lengths = torch.tensor([7, 2, 5, 1])
    for policy in policies(kind):
        same(kind, policy)
        same(kind, policy, lengths=lengths)


@pytest.mark.parametrize("kind", ["min_gru", "lru", "min_gru+gru"])
def test_the_scan_plan_equals_the_reference_with_resets_and_packed_input(kind: str) -> None:
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[3, 0] = resets[1, 2] = resets[5, 2] = True
    same(kind, "independent", resets=resets, lengths=torch.tensor([7, 6, 7, 3]))
    ref, fast = build(kind, "independent", "reference"), build(kind, "independent", "auto")
    x = torch.randn(T, B, I, dtype=D)
    packed = pack_padded_sequence(x, torch.tensor([7, 5, 4, 2]))
    (y_ref, s_ref), (y_fast, s_fast) = ref(packed), fast(packed)
    torch.testing.assert_close(y_fast.data, y_ref.data, rtol=0, atol=TOL)
    for a, b in zip(flat(s_ref), flat(s_fast), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=TOL)
    assert "linear_scan" in (fast.explain(x, resets=resets).layers or ())


@pytest.mark.parametrize("method", ["sequential", "parallel", "log"])
def test_every_scan_method_equals_the_reference(method: str) -> None:
    ref, fast = (
        build("min_gru", "independent", "reference"),
        build("min_gru", "independent", "auto"),
    )
    for cell in fast.cells:
        cell.scan_method = method
    x = torch.randn(T, B, I, dtype=D)
    e = fast.explain(x)
    assert e.layers == ("linear_scan", "linear_scan")
    assert f"layer 0 scans with method {method!r}" in e.why
    lengths = torch.tensor([7, 2, 5, 1])
    for kw in ({}, {"lengths": lengths}):
        (y_ref, s_ref), (y_fast, s_fast) = ref(x, **kw), fast(x, **kw)
        for a, b in zip([y_ref, *s_ref], [y_fast, *s_fast], strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=TOL)


def test_explain_says_what_auto_picked() -> None:
    stack = build("min_gru+gru", "independent", "auto")
    e = stack.explain(torch.randn(T, B, I, dtype=D))
    assert e.plan == "layer_by_layer"
    assert e.layers == ("linear_scan", "torch_op")
    assert "layer 0 scans with method 'auto' -> 'sequential'" in e.why
    one = rk.Stack([rk.LRUCell(3, 4)], "independent")
    e = one.explain(torch.randn(5, 2, 3))
    assert (e.plan, e.layers) == ("one_layer", ("linear_scan",))


@pytest.mark.parametrize("policy", ["shared", "cross_layer"])
def test_step_major_policies_step_and_say_why(policy: str) -> None:
    stack = build("min_gru", policy, "auto")
    e = stack.explain(torch.randn(T, B, I, dtype=D))
    assert "linear_scan" not in (e.layers or ())
    assert "linear-recurrence layers step" in e.why and "step-major" in e.why
    same("min_gru", policy)
    same("min_gru", policy, lengths=torch.tensor([7, 2, 5, 1]))


def test_one_step_and_a_step_loop_equal_the_scan() -> None:
    stack = build("lru", "residual", "auto")
    x = torch.randn(T, B, I, dtype=D)
    y, s = stack(x)
    state, ys = None, []
    for t in range(T):
        y_t, state = stack.step(x[t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys), y, rtol=0, atol=TOL)
    for a, b in zip(s, state, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=TOL)


def test_tracing_falls_back_to_steps() -> None:
    """Under torch.func the hand-written scan does not run: the split step does."""
    stack = build("min_gru", "independent", "auto")
    x = torch.randn(T, B, I, dtype=D)
    params = dict(stack.named_parameters())
    y = torch.func.functional_call(stack, params, (x,))[0]
    torch.testing.assert_close(y, stack(x)[0], rtol=0, atol=TOL)
    jac = torch.func.jacrev(lambda x: torch.func.functional_call(stack, params, (x,))[0])(x[:2])
    assert jac.shape == (2, B, H, 2, B, I)


@pytest.mark.parametrize("make", [rk.MinGRUCell, rk.MinLSTMCell])
def test_the_fused_coefficients_equal_the_cells_own(make: type) -> None:
    """The plan's fused (a, b) op against the cell's autograd equations, values and
    gradients, with exact zeros in gi (where the positive activation switches)."""
    from recurrentkit.executors.kernels.linear import linear_coefficients

    cell = make(3, 4).to(D)
    gi = torch.randn(5, 2, cell.weight_ih.shape[0], dtype=D)
    gi[0, 0] = 0.0
    gi.requires_grad_()
    cots = [torch.randn(5, 2, 4, dtype=D) for _ in range(2)]
    got, want = linear_coefficients(cell, gi), cell.linear_coefficients(gi)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)
    (g_got,) = torch.autograd.grad(got, gi, cots)
    (g_want,) = torch.autograd.grad(want, gi, cots)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=TOL)
    smooth = torch.randn(3, 2, cell.weight_ih.shape[0], dtype=D, requires_grad=True)  # no kink
    assert torch.autograd.gradcheck(lambda t: linear_coefficients(cell, t), (smooth,))
