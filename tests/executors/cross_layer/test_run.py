"""``cross_layer`` over GRU and LSTM layers as one whole-run op, equal to the reference
loop in float64: outputs, final states and every gradient."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import recurrentkit as rk
from recurrentkit.executors import packing
from recurrentkit.executors.cross_layer import run as cross_run
from recurrentkit.executors.packing import schedule

D = torch.float64
STACKS = {  # cell kinds bottom first ("g": reset-after GRU, "l": LSTM) and widths
    "gru3": ("ggg", (4, 6, 5)),
    "gru2": ("gg", (5, 5)),
    "lstm2": ("ll", (4, 4)),
    "lstm3": ("lll", (5, 3, 4)),
    "mixed": ("lgl", (5, 4, 6)),
}


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the whole-run op's forward calls."""
    seen: list[int] = []
    forward = cross_run._CrossRun.forward

    def counted(*args: Any) -> Any:
        seen.append(1)
        return forward(*args)

    monkeypatch.setattr(cross_run._CrossRun, "forward", staticmethod(counted))
    yield seen


@pytest.fixture(params=[256, 1, 7], ids=["one_chunk", "chunk_per_step", "chunks_of_7_rows"])
def chunk_rows(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many rows the backward adds up its weight gradients over at a time (the
    test runs have at most 24 rows: the default is one chunk)."""
    monkeypatch.setattr(packing, "CHUNK_ROWS", request.param)
    return int(request.param)


def cross_stack(executor: str, stack: str = "gru3", bias: bool = True, **kw: Any) -> rk.Stack:
    kinds, widths = STACKS[stack]
    torch.manual_seed(3)
    cells = [
        (rk.GRUCell if kind == "g" else rk.LSTMCell)(
            3 if k == 0 else widths[k - 1], widths[k], bias=bias
        )
        for k, kind in enumerate(kinds)
    ]
    return rk.Stack(cells, "cross_layer", executor=executor, **kw).to(D)


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("executor", ["handbuilt", "auto"])
def test_whole_run_op_equals_reference(
    checks: SimpleNamespace,
    runs: list[int],
    chunk_rows: int,
    stack: str,
    bias: bool,
    ragged: bool,
    executor: str,
) -> None:
    ref, fast = cross_stack("reference", stack, bias), cross_stack(executor, stack, bias)
    x, state = checks.inputs(ref, T=6, B=4)
    checks.same_run(ref, fast, x, state, torch.tensor([3, 6, 1, 5]) if ragged else None)
    assert runs == [1]


@pytest.mark.parametrize("stack", ["gru3", "mixed"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_wide_batch_on_transposed_weights(
    checks: SimpleNamespace, runs: list[int], chunk_rows: int, stack: str, ragged: bool
) -> None:
    """20 rows: the op multiplies by contiguous transposed copies of the weights."""
    ref, fast = cross_stack("reference", stack), cross_stack("handbuilt", stack)
    x, state = checks.inputs(ref, T=5, B=20)
    lengths = torch.randint(1, 6, (20,), generator=torch.Generator().manual_seed(0))
    checks.same_run(ref, fast, x, state, lengths if ragged else None)
    assert runs == [1]


@pytest.mark.parametrize("stack", ["gru3", "mixed"])
@pytest.mark.parametrize("use", ["outputs", "final_states", "one_final_field"])
def test_gradients_from_some_results_only(
    checks: SimpleNamespace, chunk_rows: int, stack: str, use: str
) -> None:
    """Outputs nobody uses get no gradient (None in the backward), and the rest is exact."""
    ref, fast = cross_stack("reference", stack), cross_stack("handbuilt", stack)
    fast.load_state_dict(ref.state_dict())
    x, state = checks.inputs(ref, T=5, B=3)
    grads = []
    for s in (ref, fast):
        y, final = s(x, state, lengths=torch.tensor([5, 2, 4]))
        last = final[0] if isinstance(final[0], torch.Tensor) else final[0].c  # an LSTM's c
        loss = {
            "outputs": y.square().sum(),
            "final_states": sum((t * t.cos()).sum() for t in checks.flat(final)),
            "one_final_field": last.sum(),
        }[use]
        grads.append(torch.autograd.grad(loss, [x, *checks.flat(state), *s.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)


def test_frozen_parameters_get_no_gradient(checks: SimpleNamespace) -> None:
    ref, fast = cross_stack("reference", "mixed"), cross_stack("handbuilt", "mixed")
    x, state = checks.inputs(ref, T=4, B=3)
    grads = []
    for stack in (ref, fast):
        stack.routing.requires_grad_(False)
        stack.cells[1].weight_ih.requires_grad_(False)
        stack.cells[0].bias_hh.requires_grad_(False)  # folded into the hoisted projection
        trainable = [p for p in stack.parameters() if p.requires_grad]
        loss = stack(x, state)[0].square().sum()
        grads.append(torch.autograd.grad(loss, [x, *checks.flat(state), *trainable]))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
    fast(x, state)[0].sum().backward()
    assert all(p.grad is None for p in fast.routing.parameters())
    assert fast.cells[1].weight_ih.grad is None and fast.cells[1].weight_hh.grad is not None
    assert fast.cells[0].bias_hh.grad is None and fast.cells[0].bias_ih.grad is not None


@pytest.mark.parametrize("stack", ["gru3", "mixed"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_inference_without_autograd(
    checks: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    runs: list[int],
    stack: str,
    mode: str,
) -> None:
    """Without grad mode the op's arithmetic runs directly: no autograd op, and none of
    the backward's factors made."""
    applied: list[int] = []
    apply = cross_run._CrossRun.apply
    monkeypatch.setattr(cross_run._CrossRun, "apply", lambda *a: applied.append(1) or apply(*a))
    ref, fast = cross_stack("reference", stack), cross_stack("handbuilt", stack)
    x, state = checks.inputs(ref, T=5, B=20)
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        checks.same_run(ref, fast, x, state, torch.randint(1, 6, (20,)))
    assert runs == [1] and applied == []


def test_repeated_backward(checks: SimpleNamespace) -> None:
    """Two backward passes through one graph give twice one pass's gradients."""
    fast = cross_stack("handbuilt", "mixed")
    x, state = checks.inputs(fast, T=4, B=3)
    once = torch.autograd.grad(fast(x, state)[0].square().sum(), list(fast.parameters()))
    loss = fast(x, state)[0].square().sum()
    loss.backward(retain_graph=True)
    loss.backward()
    for p, g in zip(fast.parameters(), once):
        torch.testing.assert_close(p.grad, 2 * g, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kinds", ["gg", "ll", "gl"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_gradcheck(chunk_rows: int, kinds: str, ragged: bool) -> None:
    """The op's hand-written backward against finite differences, every input."""
    widths = (3, 2)
    cells = [
        (rk.GRUCell if kind == "g" else rk.LSTMCell)(3 if k == 0 else 3, widths[k])
        for k, kind in enumerate(kinds)
    ]
    stack = rk.Stack(cells, "cross_layer").to(D)
    T, B = 3, 3
    sched = schedule(torch.randn(T, B, 3, dtype=D), torch.tensor([3, 1, 2]) if ragged else None)
    N = sched.total
    names = tuple("gru" if kind == "g" else "lstm" for kind in kinds)
    G = 3 if kinds[0] == "g" else 4
    xp = torch.randn(N, 3, dtype=D, requires_grad=True)
    gi = torch.randn(N, G * widths[0], dtype=D, requires_grad=True)
    h0 = [torch.randn(B, w, dtype=D, requires_grad=True) for w in widths]
    c0 = [torch.randn(B, w, dtype=D, requires_grad=True) for w, k in zip(widths, kinds) if k == "l"]
    layout: list[torch.Tensor | None] = []  # the op's per-layer parameters, None where absent
    for k, cell in enumerate(stack.cells):
        layout += [cell.weight_ih if k else None, cell.bias_ih if k else None]
        folded = k == 0 and kinds[0] == "l"  # the bottom LSTM's gi carries both biases
        layout += [cell.weight_hh, None if folded else cell.bias_hh]
        layout += stack.routing.layer_weights(k)
    params = [p.detach().clone().requires_grad_() for p in layout if p is not None]
    n_in = 2 + len(h0) + len(c0)

    def op(*args: Any) -> Any:
        it = iter(args[n_in:])
        flat = [None if p is None else next(it) for p in layout]
        return cross_run._CrossRun.apply(sched, names, *args[:n_in], *flat)

    assert torch.autograd.gradcheck(op, (xp, gi, *h0, *c0, *params))


def test_applies_to_gru_and_lstm_cross_layer_only() -> None:
    gru, lstm = [rk.GRUCell(3, 4), rk.GRUCell(4, 4)], rk.LSTMCell(4, 4)
    assert cross_run.applies(rk.routing.CrossLayer(), gru)
    assert cross_run.applies(rk.routing.CrossLayer(), [gru[0], lstm])
    assert not cross_run.applies(rk.routing.CrossLayer(), gru[:1])
    assert not cross_run.applies(
        rk.routing.CrossLayer(), [gru[0], rk.GRUCell(4, 4, reset="before")]
    )
    assert not cross_run.applies(rk.routing.CrossLayer(), [gru[0], rk.LSTMCell(4, 4, proj_size=2)])
    assert not cross_run.applies(rk.routing.CrossLayer(), [gru[0], rk.RNNCell(4, 4)])
    assert not cross_run.applies(rk.routing.Independent(), gru)

    class Same(rk.routing.CrossLayer):  # inherits the equations, so the declaration
        pass

    class Changed(rk.routing.CrossLayer):  # new equations: no wiring unless declared
        def step(self, executor, x, states):  # type: ignore[no-untyped-def]
            return super().step(executor, x, states)

    assert cross_run.applies(Same(), gru)
    assert not cross_run.applies(Changed(), gru)


@pytest.mark.parametrize("stack", ["gru3", "mixed"])
def test_active_dropout_runs_the_step_loop(
    checks: SimpleNamespace, runs: list[int], stack: str
) -> None:
    """Dropout masks are drawn per step as the reference draws them: the op (which has no
    dropout) runs in eval mode or without dropout only."""
    ref = cross_stack("reference", stack, dropout=0.3)
    fast = cross_stack("handbuilt", stack, dropout=0.3)
    fast.load_state_dict(ref.state_dict())
    x, state = checks.inputs(ref, T=4, B=3)
    outs = []
    for s in (ref, fast):
        torch.manual_seed(5)
        outs.append(s(x, state)[0])
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-10)
    assert runs == []
    ref.eval(), fast.eval()
    checks.same_run(ref, fast, x, state)
    assert runs == [1]


def test_functional_transforms_run_plain_ops(checks: SimpleNamespace, runs: list[int]) -> None:
    """Under torch.func the executor runs plain ops (no custom autograd op)."""
    fast = cross_stack("handbuilt", "mixed")
    x, state = checks.inputs(fast, T=3, B=2)
    params = dict(fast.named_parameters())
    torch.func.grad(lambda p: torch.func.functional_call(fast, p, (x, state))[0].sum())(params)
    assert runs == []
