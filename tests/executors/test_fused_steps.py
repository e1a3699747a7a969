"""The fused step ops of eager step loops: one op per GRU/LSTM step, one per cross_layer
mixing, each with a hand-written backward, equal to the reference loop in float64."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.autograd import Function

import recurrentkit as rk
from recurrentkit.executors import deferred
from recurrentkit.executors.cross_layer import mix as cross_mix
from recurrentkit.executors.cross_layer import run as cross_run
from recurrentkit.executors.kernels import gru as gru_kernels
from recurrentkit.executors.kernels import lstm as lstm_kernels

D = torch.float64
OPS: dict[str, type[Function]] = {
    "gru_step": gru_kernels._GRUStepAfter,
    "lstm_step": lstm_kernels._LSTMStep,
    "mix": cross_mix._Mix,
    "cross_run": cross_run._CrossRun,
}


def force_step_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cross_layer`` on the step loop instead of its whole-run op."""
    monkeypatch.setattr(cross_run, "applies", lambda policy, cells: False)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts the forward calls of each fused op."""
    seen: Counter[str] = Counter()
    for name, op in OPS.items():
        forward = op.forward

        def counted(*args: Any, _f: Any = forward, _n: str = name) -> Any:
            seen[_n] += 1
            return _f(*args)

        monkeypatch.setattr(op, "forward", staticmethod(counted))
    yield seen


@pytest.fixture(params=[False, True], ids=["per_step", "deferred"])
def defer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways a fused op's weight gradient is made: per step, or one matmul at the end."""
    if request.param:
        monkeypatch.setattr(deferred, "MIN_NUMEL", 0)  # the test weights are tiny
    return bool(request.param)


POLICIES = {
    "shared_last": lambda: rk.routing.Shared(carry="last"),
    "cross_layer": "cross_layer",
}


@pytest.mark.parametrize("routing", [*POLICIES, "user_policy"])
@pytest.mark.parametrize("cell", ["gru", "gru_nobias", "lstm", "lstm_nobias"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_step_loops_on_fused_ops_equal_reference(
    checks: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    calls: Counter[str],
    defer: bool,
    routing: str,
    cell: str,
    ragged: bool,
) -> None:
    policy = checks.ScaledShared if routing == "user_policy" else POLICIES[routing]
    ref = checks.build(cell, policy, "reference")
    fast = checks.build(cell, policy, "handbuilt")
    x, state = checks.inputs(ref)
    lengths = torch.tensor([3, 6, 1, 5]) if ragged else None
    if routing == "cross_layer":
        checks.same_run(ref, fast, x, state, lengths)  # the whole-run op (cross_layer/test_run.py)
        assert calls["cross_run"] == 1 and calls["gru_step"] == calls["lstm_step"] == 0
        assert calls["mix"] == 0
        force_step_loop(monkeypatch)
    checks.same_run(ref, fast, x, state, lengths)
    step_op = "gru_step" if cell.startswith("gru") else "lstm_step"
    assert calls[step_op] > 0, "the fused cell step never ran"
    assert (calls["mix"] > 0) == (routing == "cross_layer")


def mixed_widths_stack(executor: str, dropout: float = 0.0) -> rk.Stack:
    """cross_layer over cells of three widths and two kinds (GRU, LSTM)."""
    torch.manual_seed(7)
    cells = [rk.GRUCell(3, 4), rk.LSTMCell(4, 6), rk.GRUCell(6, 5)]
    return rk.Stack(cells, "cross_layer", executor=executor, dropout=dropout).to(D)


def test_cross_layer_mixing_over_mixed_widths(
    checks: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, calls: Counter[str], defer: bool
) -> None:
    force_step_loop(monkeypatch)
    ref, fast = mixed_widths_stack("reference"), mixed_widths_stack("handbuilt")
    x, state = checks.inputs(ref, T=5, B=3)
    checks.same_run(ref, fast, x, state)
    checks.same_run(ref, fast, x, state, torch.tensor([5, 2, 4]))
    assert calls["mix"] == 2 * 5 * 3  # two runs x 5 steps x 3 layers


def test_cross_layer_dropout_draws_the_reference_masks(checks: SimpleNamespace) -> None:
    ref, fast = mixed_widths_stack("reference", 0.4), mixed_widths_stack("handbuilt", 0.4)
    fast.load_state_dict(ref.state_dict())
    x, state = checks.inputs(ref, T=5, B=3)
    outs = []
    for stack in (ref, fast):
        torch.manual_seed(11)
        y, _ = stack(x, state)
        (g,) = torch.autograd.grad(y.square().sum(), x)
        outs.append((y, g))
    for a, b in zip(outs[0], outs[1]):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)


def test_repeated_backward_through_fused_ops(checks: SimpleNamespace, defer: bool) -> None:
    """Two backward passes through one graph give twice one pass's gradients."""
    ref = checks.build("gru", "cross_layer", "reference")
    fast = checks.build("gru", "cross_layer", "handbuilt")
    x, state = checks.inputs(ref)
    once = torch.autograd.grad(ref(x, state)[0].square().sum(), list(ref.parameters()))
    loss = fast(x, state)[0].square().sum()
    loss.backward(retain_graph=True)
    loss.backward()
    for p, g in zip(fast.parameters(), once):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, 2 * g, rtol=0, atol=1e-10)


def test_sampling_steps_run_the_fused_arithmetic(
    checks: SimpleNamespace, calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without autograd (sampling), the hand-built executor steps on the same arithmetic,
    called directly (no autograd op)."""
    plain: Counter[str] = Counter()
    for module, name in ((gru_kernels, "_step_after"), (cross_mix, "_mix_states")):
        fn = getattr(module, name)

        def counted(*args: Any, _f: Any = fn, _n: str = name) -> Any:
            plain[_n] += 1
            return _f(*args)

        monkeypatch.setattr(module, name, counted)
    stack = checks.build("gru", "cross_layer", "handbuilt")
    ref = checks.build("gru", "cross_layer", "reference")
    x = torch.randn(4, 3, dtype=D)
    with torch.no_grad():
        y, s = stack.step(x)
        y_ref, s_ref = ref.step(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    assert plain == {"_step_after": 3, "_mix_states": 3} and not calls


def _gradcheck(fn: Any, *args: Tensor) -> None:
    inputs = tuple(a.requires_grad_() for a in args)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8)


def test_gru_step_op_gradcheck() -> None:
    torch.manual_seed(0)
    B, H = 3, 4
    gi, h = torch.randn(B, 3 * H, dtype=D), torch.randn(B, H, dtype=D)
    w, b = torch.randn(3 * H, H, dtype=D), torch.randn(3 * H, dtype=D)
    op = gru_kernels._GRUStepAfter.apply
    _gradcheck(lambda gi, h, w, b: op(gi, h, w, b, None, w.detach().t()), gi, h, w, b)


def test_lstm_step_op_gradcheck() -> None:
    torch.manual_seed(0)
    B, H = 3, 4
    gi = torch.randn(B, 4 * H, dtype=D)
    h, c = torch.randn(B, H, dtype=D), torch.randn(B, H, dtype=D)
    w, b = torch.randn(4 * H, H, dtype=D), torch.randn(4 * H, dtype=D)
    op = lstm_kernels._LSTMStep.apply
    _gradcheck(lambda gi, h, c, w, b: op(gi, h, c, w, b, None, w.detach().t()), gi, h, c, w, b)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_mix_op_gradcheck(k: int) -> None:
    torch.manual_seed(0)
    B, widths, I = 3, (2, 4, 3), 5
    others = sum(widths) - widths[k]
    u, h_all = torch.randn(B, I, dtype=D), torch.randn(B, sum(widths), dtype=D)
    w_in, w_state = torch.randn(2, I, dtype=D), torch.randn(2, sum(widths), dtype=D)
    U = torch.randn(widths[k], others, dtype=D)
    op = cross_mix._Mix.apply
    _gradcheck(
        lambda u, h, w_in, w_state, U: op(u, h, w_in, w_state, U, k, widths, None, U.detach().t()),
        u,
        h_all,
        w_in,
        w_state,
        U,
    )


WIDE = 20  # a batch from which products use a contiguous copy of each weight's transpose


@pytest.mark.parametrize(
    "routing", ["independent", "residual", "shared_last", "cross_layer", "user_policy"]
)
@pytest.mark.parametrize("cell", ["gru", "gru_before", "lstm", "lstm_proj", "rnn", "nested"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_wide_batches_on_transposed_copies_equal_reference(
    checks: SimpleNamespace, defer: bool, routing: str, cell: str, ragged: bool
) -> None:
    policy = checks.ScaledShared if routing == "user_policy" else POLICIES.get(routing, routing)
    ref = checks.build(cell, policy, "reference")
    fast = checks.build(cell, policy, "handbuilt")
    x, state = checks.inputs(ref, B=WIDE)
    lengths = torch.randint(1, x.shape[0] + 1, (WIDE,)) if ragged else None
    checks.same_run(ref, fast, x, state, lengths)


def test_a_step_loop_copies_each_weight_once(
    checks: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deferred, "MIN_NUMEL", 0)
    copied: list[tuple[int, ...]] = []
    real = deferred.transposed

    def spy(weight: Tensor, rows: int) -> Tensor:
        copied.append(tuple(weight.shape))
        return real(weight, rows)

    monkeypatch.setattr(deferred, "transposed", spy)
    force_step_loop(monkeypatch)
    stack = checks.build("gru", "cross_layer", "handbuilt")
    x, state = checks.inputs(stack, B=WIDE)
    stack(x, state)[0].sum().backward()
    # W_hh of 3 layers, W_ih of layers 2 and 3 (layer 1's is hoisted), U of 3 layers
    assert sorted(copied) == sorted([(15, 5)] * 5 + [(5, 10)] * 3)
    copied.clear()
    with torch.no_grad():
        stack.step(x[0], state)  # single steps keep the transposed views
    assert copied == []


@pytest.mark.parametrize("routing", ["shared_last", "cross_layer"])
def test_second_order_gradients_through_torch_func(checks: SimpleNamespace, routing: str) -> None:
    """torch.func runs the plain plan, so second-order gradients match the reference's."""
    policy = POLICIES[routing]
    ref = checks.build("gru", policy, "reference")
    fast = checks.build("gru", policy, "handbuilt")
    x = torch.randn(4, 3, 3, dtype=D)

    def second(stack: rk.Stack) -> Tensor:
        def loss(x: Tensor) -> Tensor:
            return stack(x)[0].square().sum()

        return torch.func.grad(lambda x: torch.func.grad(loss)(x).square().sum())(x)

    torch.testing.assert_close(second(fast), second(ref), rtol=0, atol=1e-10)


@pytest.mark.parametrize("routing", ["independent", "shared_last", "cross_layer"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_step_by_step_training_gradients_equal_reference(
    checks: SimpleNamespace, defer: bool, routing: str, cell: str
) -> None:
    """``Stack.step`` with autograd on (a hand-written training loop) runs the fused ops
    one step per call; its gradients equal the reference's."""
    policy = POLICIES.get(routing, routing)
    ref = checks.build(cell, policy, "reference")
    fast = checks.build(cell, policy, "handbuilt")
    x, state = checks.inputs(ref)
    grads = []
    for stack in (ref, fast):
        s, loss = state, torch.zeros((), dtype=D)
        for x_t in x:
            y_t, s = stack.step(x_t, s)
            loss = loss + y_t.square().sum()
        grads.append(torch.autograd.grad(loss, [x, *stack.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "routing", ["independent", "shared", "shared_last", "residual", "cross_layer"]
)
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn", "nested"])
@pytest.mark.parametrize("executor", ["auto", "handbuilt"])
def test_autocast_runs_the_plans_on_plain_ops(
    checks: SimpleNamespace, calls: Counter[str], routing: str, cell: str, executor: str
) -> None:
    """Under CPU autocast (bfloat16) every plan runs, on ops autocast converts, and
    agrees with the float32 reference to bfloat16's precision."""

    def build(ex: str) -> rk.Stack:
        torch.manual_seed(3)
        policy = POLICIES.get(routing, routing)
        cells = [checks.CELLS[cell](8 if k == 0 else 16, 16) for k in range(2)]
        return rk.Stack(cells, policy() if callable(policy) else policy, executor=ex)

    ref, fast = build("reference"), build(executor)
    x = torch.randn(5, 20, 8)
    y_ref, _ = ref(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = fast(x)
    torch.testing.assert_close(y.float(), y_ref, rtol=0, atol=0.02)
    y.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in fast.parameters())
    assert not calls, "a hand-written op ran under autocast"


@pytest.mark.parametrize("routing", ["independent", "shared_last", "cross_layer"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_inference_runs_equal_reference(checks: SimpleNamespace, routing: str, cell: str) -> None:
    """Whole sequences without autograd (inference) take the fused arithmetic directly,
    on the transposed copies at a wide batch."""
    policy = POLICIES.get(routing, routing)
    ref = checks.build(cell, policy, "reference")
    fast = checks.build(cell, policy, "handbuilt")
    x, state = checks.inputs(ref, B=WIDE)
    with torch.no_grad():
        checks.same_run(ref, fast, x, state)
        checks.same_run(ref, fast, x, state, torch.randint(1, x.shape[0] + 1, (WIDE,)))
