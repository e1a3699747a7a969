"""Hand-built fast paths: every policy × cell × lengths equals the reference path."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor

import recurrentkit as rk
from recurrentkit.executors import fast
from recurrentkit.executors.reference import ReferenceExecutor

POLICIES: dict[str, Any] = {
    "independent": "independent",
    "shared": "shared",
    "shared_last": lambda: rk.routing.Shared(carry="last"),
    "residual": "residual",
    "cross_layer": "cross_layer",
    "handoff": "handoff",
}
CELLS = [
    "gru",
    "gru_before",
    "lstm",
    "rnn",
    "nested",
    "nested3",
    "user",
    "user_split",
    "gru_subclass",
]
RAGGED = torch.tensor([3, 6, 1, 5])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("routing", POLICIES)
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("executor", ["handbuilt", "auto"])
def test_fast_equals_reference(
    checks: SimpleNamespace, cell: str, routing: str, ragged: bool, executor: str
) -> None:
    ref = checks.build(cell, POLICIES[routing], "reference")
    fast_stack = checks.build(cell, POLICIES[routing], executor)
    x, state = checks.inputs(ref)
    checks.same_run(ref, fast_stack, x, state, RAGGED if ragged else None)


@pytest.mark.parametrize("routing", POLICIES)
@pytest.mark.parametrize("cell", ["gru", "lstm", "nested"])
def test_eval_mode_with_dropout_set(checks: SimpleNamespace, routing: str, cell: str) -> None:
    ref = checks.build(cell, POLICIES[routing], "reference", dropout=0.4).eval()
    fast_stack = checks.build(cell, POLICIES[routing], "handbuilt", dropout=0.4).eval()
    x, state = checks.inputs(ref)
    checks.same_run(ref, fast_stack, x, state, RAGGED)


@pytest.mark.parametrize(
    "routing", ["independent", "shared_last", "residual", "cross_layer", "handoff"]
)
@pytest.mark.parametrize("executor", ["handbuilt", "auto"])
def test_training_dropout_draws_the_reference_masks(
    checks: SimpleNamespace, routing: str, executor: str
) -> None:
    """Where the fast path keeps the reference's order of dropout calls (every plan but
    shared-first's batching), one seed gives the same masks and the same result."""
    ref = checks.build("gru", POLICIES[routing], "reference", dropout=0.5)
    fast_stack = checks.build("gru", POLICIES[routing], executor, dropout=0.5)
    fast_stack.load_state_dict(ref.state_dict())
    x, _ = checks.inputs(ref)
    torch.manual_seed(3)
    y_ref, s_ref = ref(x)
    torch.manual_seed(3)
    y, s = fast_stack(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    for a, b in zip(checks.flat(s), checks.flat(s_ref)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    y_eval, _ = ref.eval()(x)
    assert not torch.allclose(y_ref, y_eval)  # dropout did act


class ScaledDrop:
    """A deterministic stand-in for dropout: layer k's output times 10 + k (not the top)."""

    @staticmethod
    def drop(self: ReferenceExecutor, layer: int, y: Tensor) -> Tensor:
        return y * (10.0 + layer) if layer < len(self.cells) - 1 else y


@pytest.mark.parametrize("cell", ["gru", "lstm", "nested"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_shared_first_applies_dropout_where_the_reference_does(
    checks: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, cell: str, ragged: bool
) -> None:
    """Shared routing (carry="first") batches the layers above the first over all steps,
    so dropout draws its masks in another order; where it applies is tested with a
    deterministic stand-in, and real dropout with rate 1 (every mask zero)."""
    monkeypatch.setattr(ReferenceExecutor, "drop", ScaledDrop.drop)
    ref = checks.build(cell, "shared", "reference", dropout=0.5)
    fast_stack = checks.build(cell, "shared", "handbuilt", dropout=0.5)
    x, state = checks.inputs(ref)
    checks.same_run(ref, fast_stack, x, state, RAGGED if ragged else None)
    monkeypatch.undo()
    ref = checks.build(cell, "shared", "reference", dropout=1.0)
    fast_stack = checks.build(cell, "shared", "handbuilt", dropout=1.0)
    checks.same_run(ref, fast_stack, x, state, RAGGED if ragged else None)


def test_shared_first_dropout_keeps_the_rate() -> None:
    """Statistical sanity of the batched masks: about p of layer 1's outputs are dropped."""
    torch.manual_seed(0)
    seen: list[Tensor] = []
    stack = rk.Stack(
        [rk.GRUCell(3, 64), rk.GRUCell(64, 64)], "shared", dropout=0.3, executor="handbuilt"
    )
    original = fast.FastExecutor.drop

    def spy(self: fast.FastExecutor, layer: int, y: Tensor) -> Tensor:
        out = original(self, layer, y)
        if layer == 0:
            seen.append(out)
        return out

    fast.FastExecutor.drop = spy  # type: ignore[method-assign]
    try:
        stack(torch.randn(16, 32, 3))
    finally:
        fast.FastExecutor.drop = original  # type: ignore[method-assign]
    (dropped,) = seen
    rate = (dropped == 0).double().mean().item()
    assert abs(rate - 0.3) < 0.02  # 32768 draws: 5 standard deviations ≈ 0.013


@pytest.mark.parametrize(
    "routing", ["independent", "shared", "shared_last", "cross_layer", "handoff"]
)
@pytest.mark.parametrize("cell", ["gru", "lstm", "nested", "gru_before"])
def test_plain_ops_path_equals_reference(
    checks: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, routing: str, cell: str
) -> None:
    """What runs under torch.compile tracing and torch.func transforms (no custom
    autograd functions, no torch._VF): the same plans on plain ops."""
    monkeypatch.setattr(fast, "plain_mode", lambda: True)
    ref = checks.build(cell, POLICIES[routing], "reference")
    fast_stack = checks.build(cell, POLICIES[routing], "auto")
    x, state = checks.inputs(ref)
    checks.same_run(ref, fast_stack, x, state, RAGGED)


def test_torch_func_transforms_run(checks: SimpleNamespace) -> None:
    """torch.func (vjp, jacrev) sees the plain-ops path and agrees with the reference."""
    ref = checks.build("lstm", "cross_layer", "reference", L=2)
    fast_stack = checks.build("lstm", "cross_layer", "auto", L=2)
    fast_stack.load_state_dict(ref.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64)

    def f(stack: rk.Stack) -> Any:
        return lambda x: stack(x)[0]

    jac_ref = torch.func.jacrev(f(ref))(x)
    jac = torch.func.jacrev(f(fast_stack))(x)
    torch.testing.assert_close(jac, jac_ref, rtol=0, atol=1e-10)


def test_packed_sequences_run_on_fast_paths(checks: SimpleNamespace) -> None:
    from torch.nn.utils.rnn import pack_padded_sequence

    ref = checks.build("gru_before", POLICIES["shared_last"], "reference")
    fast_stack = checks.build("gru_before", POLICIES["shared_last"], "handbuilt")
    fast_stack.load_state_dict(ref.state_dict())
    x, _ = checks.inputs(ref)
    packed = pack_padded_sequence(x, RAGGED, enforce_sorted=False)
    out_ref, s_ref = ref(packed)
    out, s = fast_stack(packed)
    torch.testing.assert_close(out.data, out_ref.data, rtol=0, atol=1e-10)
    for a, b in zip(checks.flat(s), checks.flat(s_ref)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("routing", POLICIES)
@pytest.mark.parametrize("cell", ["gru", "nested", "user"])
def test_one_layer_stacks(checks: SimpleNamespace, routing: str, cell: str) -> None:
    """One layer: every built-in policy is that layer over the sequence."""
    ref = checks.build(cell, POLICIES[routing], "reference", L=1)
    fast_stack = checks.build(cell, POLICIES[routing], "handbuilt", L=1)
    x, state = checks.inputs(ref)
    checks.same_run(ref, fast_stack, x, state, RAGGED)


PACKED_LENGTHS = {
    "unsorted": (RAGGED, False),
    "sorted": (torch.tensor([6, 5, 3, 1]), True),  # enforce_sorted: no sorted_indices
    "equal": (torch.tensor([6, 6, 6, 6]), False),
}


@pytest.mark.parametrize("cell", ["gru", "gru_before", "lstm_proj", "rnn", "nested", "user"])
@pytest.mark.parametrize(
    ("L", "routing"), [(1, "independent"), (1, "handoff"), (3, "independent"), (3, "shared")]
)
@pytest.mark.parametrize("layout", PACKED_LENGTHS)
@pytest.mark.parametrize("executor", ["handbuilt", "auto"])
def test_packed_rows_run_as_they_are(
    checks: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    cell: str,
    L: int,
    routing: str,
    layout: str,
    executor: str,
) -> None:
    """A PackedSequence runs on its own rows where a plan allows (no padding and packing
    again), and equals the reference path: outputs, states, every gradient."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from recurrentkit import stack as stack_module

    ref = checks.build(cell, routing, "reference", L=L)
    fast_stack = checks.build(cell, routing, executor, L=L)
    fast_stack.load_state_dict(ref.state_dict())
    x, state = checks.inputs(ref)  # (6, 4, 3)
    lengths, enforce_sorted = PACKED_LENGTHS[layout]
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    out_ref, s_ref = ref(packed, state)
    pads: list[int] = []
    pad = stack_module.pad_packed_sequence
    monkeypatch.setattr(
        stack_module, "pad_packed_sequence", lambda *a, **k: pads.append(1) or pad(*a, **k)
    )
    out, s = fast_stack(packed, state)
    # one layer under any built-in policy, or independent layers that each run on torch's
    # op or a kernel (every built-in cell; the user cell has neither)
    direct = cell != "user" and (L == 1 or routing == "independent")
    assert not pads if direct else pads == [1]
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    for a, b in (
        (out.sorted_indices, packed.sorted_indices),
        (out.unsorted_indices, packed.unsorted_indices),
    ):
        assert (a is None and b is None) or torch.equal(a, b)
    outs_ref, outs = [out_ref.data, *checks.flat(s_ref)], [out.data, *checks.flat(s)]
    for a, b in zip(outs_ref, outs):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
    cot = [torch.randn_like(t) for t in outs]
    wrt_ref = [x, *checks.flat(state), *ref.parameters()]
    wrt = [x, *checks.flat(state), *fast_stack.parameters()]
    loss_ref = sum((o * c).sum() for o, c in zip(outs_ref, cot))
    g_ref = torch.autograd.grad(loss_ref, wrt_ref, retain_graph=True, allow_unused=True)
    loss = sum((o * c).sum() for o, c in zip(outs, cot))
    g = torch.autograd.grad(loss, wrt, allow_unused=True)
    for a, b, w in zip(g_ref, g, wrt):  # None: unused by both (a nested cell's inner h)
        zero = torch.zeros_like(w)
        b, a = zero if b is None else b, zero if a is None else a
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)


TIED_CELLS = [
    "gru",
    "gru_before",
    "gru_nobias",
    "lstm",
    "lstm_nobias",
    "lstm_proj",
    "rnn",
    "rnn_relu",
    "nested",
    "nested3",
]


def count_tied(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the steps that ran on summed weights (``FastExecutor._tied_step`` hits)."""
    hits = [0]
    original = fast.FastExecutor._tied_step

    def spy(self: fast.FastExecutor, *args: Any) -> Any:
        out = original(self, *args)
        hits[0] += out is not None
        return out

    monkeypatch.setattr(fast.FastExecutor, "_tied_step", spy)
    return hits


@pytest.mark.parametrize("cell", TIED_CELLS)
@pytest.mark.parametrize(("routing", "steps"), [("shared", 2), ("shared_last", 12)])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_shared_layers_fed_their_own_h_run_on_summed_weights(
    checks: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    cell: str,
    routing: str,
    steps: int,
    ragged: bool,
) -> None:
    """Above layer 1, shared routing hands a layer one tensor as its input and as its
    ``h``: the hand-built path runs those steps as one matmul with ``W_ih + W_hh`` and
    still equals the reference, outputs, states and every gradient."""
    hits = count_tied(monkeypatch)
    ref = checks.build(cell, POLICIES[routing], "reference")
    fast_stack = checks.build(cell, POLICIES[routing], "handbuilt")
    x, state = checks.inputs(ref)
    checks.same_run(ref, fast_stack, x, state, RAGGED if ragged else None)
    # shared-first: layers 2 and 3 once over all rows; carry="last": 2 layers × 6 steps
    assert hits[0] == steps


@pytest.mark.parametrize("routing", ["shared", "shared_last"])
def test_summed_weights_only_where_input_is_h(
    checks: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, routing: str
) -> None:
    """Not under active dropout (the input is a dropped copy of ``h``), not for single
    steps (one step would pay for summing the weights), not for other policies."""
    hits = count_tied(monkeypatch)
    x, _ = checks.inputs(checks.build("gru", "independent", "reference"))
    checks.build("gru", POLICIES[routing], "handbuilt", dropout=0.5).train()(x)
    assert hits[0] == 0
    stack = checks.build("gru", POLICIES[routing], "handbuilt")
    stack.step(x[0], None)
    assert hits[0] == 0
    for other in ("independent", "residual", "cross_layer", "handoff"):
        checks.build("gru", POLICIES[other], "handbuilt")(x)
    assert hits[0] == 0
    checks.build("gru", POLICIES[routing], "handbuilt", dropout=0.5).eval()(x)
    assert hits[0] > 0


@pytest.mark.parametrize("routing", POLICIES)
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("plain", [False, True], ids=["eager", "plain_ops"])
def test_split_user_cells_project_whole_sequences(
    checks: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    routing: str,
    ragged: bool,
    plain: bool,
) -> None:
    """A user cell with ``input_projection``/``step_projected`` never has its own call
    run on the fast path; its input is projected once per layer whose whole input is
    known in advance (every layer under layer-major policies, layer 1 otherwise);
    results equal the reference's."""
    monkeypatch.setattr(fast, "plain_mode", lambda: plain)
    calls: dict[str, int] = {"forward": 0, "input_projection": 0}
    cls = checks.CELLS["user_split"]
    for name in calls:
        original = getattr(cls, name)

        def spy(self: Any, *args: Any, _name: str = name, _f: Any = original) -> Any:
            calls[_name] += 1
            return _f(self, *args)

        monkeypatch.setattr(cls, name, spy)
    ref = checks.build("user_split", POLICIES[routing], "reference")
    fast_stack = checks.build("user_split", POLICIES[routing], "handbuilt")
    x, state = checks.inputs(ref)
    fast_stack.load_state_dict(ref.state_dict())
    calls.update(forward=0, input_projection=0)
    fast_stack(x, state, lengths=RAGGED if ragged else None)
    if plain and ragged:  # plain ops with lengths: the reference's loop (see fast.py)
        assert calls["forward"] == 3 * 6 and calls["input_projection"] == 0
    else:
        assert calls["forward"] == 0
        layer_major = POLICIES[routing] in ("independent", "residual", "handoff")
        # else: layer 1 once, layers 2 and 3 at each of the 6 steps
        assert calls["input_projection"] == (3 if layer_major else 1 + 2 * 6)
    checks.same_run(ref, fast_stack, x, state, RAGGED if ragged else None)


def test_a_submodule_named_like_the_split_is_not_a_split(checks: SimpleNamespace) -> None:
    """``input_projection`` must be a method: a cell whose submodule has that name runs
    its own call."""

    class Cell(checks.LeakyCell):
        def __init__(self, i: int, h: int) -> None:
            super().__init__(i, h)
            self.input_projection = torch.nn.Linear(i, h)  # unrelated to the step

        def step_projected(self, gi: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
            raise AssertionError("not a split cell: must not be called")

    assert not rk.cells.splits_step(Cell(3, 5))
    assert rk.cells.splits_step(checks.CELLS["user_split"](3, 5))
    stack = rk.Stack([Cell(3, 5), Cell(5, 5)], "independent", executor="handbuilt")
    stack(torch.randn(4, 2, 3))


@pytest.mark.parametrize("executor", ["auto", "handbuilt"])
@pytest.mark.parametrize("packed", [False, True], ids=["lengths", "packed"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_independent_layers_on_packed_rows(
    checks: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    executor: str,
    packed: bool,
    training: bool,
) -> None:
    """Mixed lengths: an independent stack of built-in cells runs layer after layer on the
    packed rows (packed once); with active dropout it keeps the padded plan, whose masks
    are the reference's. Either way it equals the reference, dropout masks included."""
    from torch.nn.utils.rnn import pack_padded_sequence

    def build(ex: str) -> rk.Stack:
        torch.manual_seed(5)  # mixed cells: torch-form GRU, reset-before GRU (kernel only)
        cells = [rk.GRUCell(3, 5), rk.GRUCell(5, 5, reset="before"), rk.GRUCell(5, 5)]
        return rk.Stack(cells, "independent", executor=ex, dropout=0.5).double().train(training)

    chains: list[int] = []
    real = fast.FastExecutor.layers_on_rows
    monkeypatch.setattr(
        fast.FastExecutor,
        "layers_on_rows",
        lambda self, *a: chains.append(1) or real(self, *a),
    )
    ref, fast_stack = build("reference"), build(executor)
    x, state = checks.inputs(ref)
    lengths = torch.tensor([3, 6, 1, 5])
    kw = {} if packed else {"lengths": lengths}
    outs = []
    for stack in (ref, fast_stack):
        arg = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        torch.manual_seed(9)
        y, s = stack(arg, state, **kw)
        y = y.data if packed else y
        outs.append((y, *torch.autograd.grad(y.square().sum(), [x, *stack.parameters()])))
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
    assert chains == ([] if training else [1])
