"""Where torch's fused recurrent op refuses an input, the same layers run on plain ops.

oneDNN has no bfloat16 LSTM on CPUs without AVX-512 (AVX2-only AMD EPYC, say): there
``torch._VF.lstm`` raises "could not create a primitive descriptor for the LSTM forward
propagation primitive" under ``torch.autocast("cpu", dtype=torch.bfloat16)``, and so
does ``nn.LSTM``. Tests must not depend on the CPU they run on, so most of them make the
op refuse on purpose: they swap the op ``torch_ops`` calls for one that raises oneDNN's
message whenever it would compute in bfloat16, and check that every path that calls it
(the multi-layer and per-layer sequence ops, packed rows, the drop-ins, the cell op of a
sampling step) computes what the plain ops compute, exactly, and the float32 function
to bfloat16's precision. The last tests run autocast on the real ops, whatever this CPU
supports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

import recurrentkit as rk
from recurrentkit.executors import torch_ops

ONEDNN = (
    "could not create a primitive descriptor for the LSTM forward propagation primitive. "
    "Run workload with environment variable ONEDNN_VERBOSE=all to get additional "
    "diagnostic information."
)
"""What oneDNN's LSTM says on a CPU without a bfloat16 kernel (torch 2.x)."""

BF16_TOL = 0.02  # bfloat16's precision at these sizes (as the autocast test in test_fused_steps)

CELLS: dict[str, Callable[[int, int], nn.Module]] = {
    "lstm": lambda i, h: rk.LSTMCell(i, h),
    "lstm_proj": lambda i, h: rk.LSTMCell(i, h + 4, proj_size=h),
    "gru": lambda i, h: rk.GRUCell(i, h),
    "rnn": lambda i, h: rk.RNNCell(i, h),
}
MODES = {"lstm": "LSTM", "lstm_proj": "LSTM", "gru": "GRU", "rnn": "RNN_TANH"}
DROPINS: dict[str, type[rk.nn.RecurrentBase]] = {"lstm": rk.LSTM, "gru": rk.GRU, "rnn": rk.RNN}


def _in_bf16(x: Tensor) -> bool:
    """Whether a fused op would compute on ``x`` in bfloat16 (its dtype, or autocast's)."""
    return torch.bfloat16 in (x.dtype, torch_ops._autocast_dtype(x.device.type))


@pytest.fixture(autouse=True)
def no_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no remembered refusal (nor leaves one behind)."""
    monkeypatch.setattr(torch_ops, "_refused", set())


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """torch's sequence and cell ops refuse bfloat16 as oneDNN does on a CPU without
    AVX-512; other dtypes run the real op. Counts the calls of each op (by mode, the
    cell ops as ``"<mode>_cell"``), refused or not."""
    seen: Counter[str] = Counter()
    for table, suffix in ((torch_ops._OPS, ""), (torch_ops._CELL_OPS, "_cell")):
        for mode, op in list(table.items()):

            def picky(*args: Any, _op: Any = op, _name: str = mode + suffix) -> Any:
                seen[_name] += 1
                if _in_bf16(args[0]):
                    raise RuntimeError(ONEDNN)
                return _op(*args)

            monkeypatch.setitem(table, mode, picky)
    return seen


def refused_under_bf16(op: str, x: Tensor) -> bool:
    """Whether a refusal of ``op`` is remembered for ``x`` under bfloat16 autocast (and
    not for ``x`` without autocast)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = torch_ops.refused(op, x)
    return under and not torch_ops.refused(op, x)


def stack(cell: str, routing: str, executor: str, widths: tuple[int, ...] = (16, 16)) -> rk.Stack:
    """A float32 stack over ``I = 8``, seeded so equal calls build equal stacks."""
    torch.manual_seed(3)
    cells = [CELLS[cell](8 if k == 0 else widths[k - 1], w) for k, w in enumerate(widths)]
    return rk.Stack(cells, routing, executor=executor).eval()


def flat(state: Any) -> list[Tensor]:
    """Every tensor of a nested tuple / list / state, in order."""
    if isinstance(state, Tensor):
        return [state]
    return [t for s in state for t in flat(s)]


def same(a: Any, b: Any) -> None:
    """Equal to the bit: tensors, or nested states of tensors."""
    ta, tb = flat(a), flat(b)
    assert len(ta) == len(tb)
    for u, v in zip(ta, tb):
        torch.testing.assert_close(v, u, rtol=0, atol=0)


# -- Stack: the multi-layer op, the per-layer op, lengths, packed rows ---------------------


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize(
    "routing, widths",
    [
        ("independent", (16, 16)),  # torch could hold it in one module: the multi-layer op
        ("independent", (16, 12)),  # different widths: the per-layer op, layer by layer
        ("residual", (16, 16)),  # the per-layer op under a layer-major policy
        ("handoff", (16, 16)),
    ],
)
def test_stack_runs_where_the_op_refuses_bfloat16(
    refusing: Counter[str], cell: str, routing: str, widths: tuple[int, ...]
) -> None:
    """Under bfloat16 autocast a refusing op leaves the stack on plain ops: the reference
    executor's outputs, states and gradients to the bit, the float32 function to
    bfloat16's precision."""
    ref, auto = stack(cell, routing, "reference", widths), stack(cell, routing, "auto", widths)
    x = torch.randn(5, 6, 8, requires_grad=True)
    y32, s32 = ref(x)
    results = []
    for s in (ref, auto):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, states = s(x)
        grads = torch.autograd.grad(y.float().square().sum(), [x, *s.parameters()])
        results.append((y, states, grads))
    assert refusing[MODES[cell]] >= 1 and refused_under_bf16(MODES[cell], x)
    calls = refusing[MODES[cell]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto(x)
    assert refusing[MODES[cell]] == calls  # remembered: not tried again
    (y_ref, s_ref, g_ref), (y, states, g) = results
    same((y_ref, s_ref, g_ref), (y, states, g))
    for a, b in zip([y32, *flat(s32)], [y, *flat(states)]):
        torch.testing.assert_close(b.float(), a, rtol=0, atol=BF16_TOL)
    assert all(t.isfinite().all() for t in g)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("widths", [(16, 16), (16, 12)], ids=["one_op", "per_layer"])
def test_stack_with_lengths_and_packed_input_where_the_op_refuses(
    refusing: Counter[str], cell: str, widths: tuple[int, ...]
) -> None:
    """Mixed lengths (the op's packed form) and PackedSequence input (packed rows as
    they are): the reference's outputs and final states, in the caller's batch order."""
    ref, auto = (
        stack(cell, "independent", "reference", widths),
        stack(cell, "independent", "auto", widths),
    )
    x = torch.randn(5, 4, 8)
    lengths = torch.tensor([3, 5, 1, 4])  # unsorted
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = ref(x, lengths=lengths)
        got = auto(x, lengths=lengths)
        got_packed, s_packed = auto(packed)
    assert refusing[MODES[cell]] >= 1
    same(want, got)
    y_packed = pack_padded_sequence(want[0], lengths, enforce_sorted=False)
    same(y_packed.data, got_packed.data)
    assert torch.equal(got_packed.batch_sizes, packed.batch_sizes)
    same(want[1], s_packed)


@pytest.mark.parametrize("cell", list(CELLS))
def test_sampling_steps_where_the_cell_op_refuses(refusing: Counter[str], cell: str) -> None:
    """``Stack.step`` without autograd (sampling) steps on torch's cell op; where it
    refuses, on the cell's own step: the reference's steps to the bit."""
    ref, auto = stack(cell, "independent", "reference"), stack(cell, "independent", "auto")
    x = torch.randn(4, 3, 8)
    runs = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for s in (ref, auto):
            state, ys = None, []
            for x_t in x:
                y, state = s.step(x_t, state)
                ys.append(y)
            runs.append((ys, state))
    if cell != "lstm_proj":  # (an LSTM with projection has no torch cell op)
        assert refusing[MODES[cell] + "_cell"] >= 1
    same(runs[0], runs[1])


def test_stack_in_training_drops_out_between_layers_as_the_op_would(
    refusing: Counter[str],
) -> None:
    """In training, the plain path draws the reference's masks between layers (not after
    the last), so with one seed it is the reference run: dropout acts as the op's."""
    cells = lambda: [rk.LSTMCell(8, 16), rk.LSTMCell(16, 16), rk.LSTMCell(16, 16)]  # noqa: E731
    torch.manual_seed(3)
    ref = rk.Stack(cells(), dropout=0.5, executor="reference")
    torch.manual_seed(3)
    auto = rk.Stack(cells(), dropout=0.5, executor="auto")
    x = torch.randn(5, 6, 8)
    lengths = torch.tensor([5, 2, 4, 5, 1, 3])
    runs = []
    for s in (ref, auto):
        torch.manual_seed(11)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs.append(s(x, lengths=lengths))
    assert refusing["LSTM"] >= 1
    same(runs[0], runs[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_eval, _ = auto.eval()(x, lengths=lengths)
    assert not torch.equal(y_eval, runs[1][0])  # dropout did act


# -- the drop-ins -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, kw",
    [
        ("lstm", {}),
        ("lstm", {"proj_size": 6}),
        ("lstm", {"bidirectional": True}),
        ("lstm", {"bidirectional": True, "proj_size": 6, "batch_first": True}),
        ("gru", {"bidirectional": True}),
        ("rnn", {"nonlinearity": "relu"}),
        ("rnn", {"bidirectional": True}),
    ],
)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_dropin_runs_where_the_op_refuses_bfloat16(
    refusing: Counter[str], kind: str, kw: dict[str, Any], packed: bool
) -> None:
    """``rk.LSTM(8, 16, 2)`` & co. under bfloat16 autocast where torch's op refuses: the
    drop-in's parts, as ``executor="handbuilt"`` runs them (outputs, states, gradients to
    the bit), and torch.nn's float32 function to bfloat16's precision."""
    torch.manual_seed(3)
    auto = DROPINS[kind](8, 16, 2, **kw)
    parts = DROPINS[kind](8, 16, 2, **kw, executor="handbuilt")
    parts.load_state_dict(auto.state_dict())
    theirs = auto.to_torch()
    B, T = 4, 5
    x = torch.randn((B, T, 8) if kw.get("batch_first") else (T, B, 8), requires_grad=True)
    lengths = torch.tensor([3, 5, 1, 4])

    def given() -> Any:
        if not packed:
            return x
        return pack_padded_sequence(x, lengths, batch_first=auto.batch_first, enforce_sorted=False)

    results = []
    for m in (parts, auto):
        inp = given()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, h_n = m(inp)
        y = y.data if packed else y
        grads = torch.autograd.grad(y.float().square().sum(), [x, *m.parameters()])
        results.append((y, h_n, grads))
    assert refusing[auto.mode] == 1 and refused_under_bf16(auto.mode, x)
    same(results[0], results[1])
    y32, h32 = theirs(given())
    y32 = y32.data if packed else y32
    torch.testing.assert_close(results[1][0].float(), y32, rtol=0, atol=BF16_TOL)
    for a, b in zip(flat(h32), flat(results[1][1])):
        torch.testing.assert_close(b.float(), a, rtol=0, atol=BF16_TOL)


@pytest.mark.parametrize("executor", ["handbuilt", "reference"])
@pytest.mark.parametrize(
    "kind, kw", [("rnn", {}), ("lstm", {"proj_size": 6})], ids=["rnn", "lstm_proj"]
)
def test_bidirectional_parts_run_under_autocast(
    executor: str, kind: str, kw: dict[str, Any]
) -> None:
    """A bidirectional drop-in's parts (what ``"auto"`` falls back to) run under bfloat16
    autocast, though a layer's output comes back in bfloat16 and the next layer's parts
    take the module's float32: torch.nn's function to bfloat16's precision."""
    torch.manual_seed(3)
    parts = DROPINS[kind](8, 16, 3, bidirectional=True, executor=executor, **kw)
    x = torch.randn(5, 4, 8)
    y32, h32 = parts.to_torch()(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h_n = parts(x)
    for a, b in zip([y32, *flat(h32)], [y, *flat(h_n)]):
        torch.testing.assert_close(b.float(), a, rtol=0, atol=BF16_TOL)


def test_dropin_in_bfloat16_where_the_op_refuses(refusing: Counter[str]) -> None:
    """A bfloat16 module (no autocast) is refused the same way, and runs its parts."""
    torch.manual_seed(3)
    auto = rk.LSTM(8, 16, 2).to(torch.bfloat16)
    parts = rk.LSTM(8, 16, 2, executor="handbuilt").to(torch.bfloat16)
    parts.load_state_dict(auto.state_dict())
    x = torch.randn(5, 4, 8, dtype=torch.bfloat16)
    same(parts(x), auto(x))
    assert refusing["LSTM"] == 1 and torch_ops.refused("LSTM", x)


# -- what is caught, and what is remembered ---------------------------------------------


def test_a_refusal_is_remembered_and_does_not_leak_into_float32(
    refusing: Counter[str],
) -> None:
    """The op is tried once per kind of input: a refused bfloat16 run is not retried, and
    float32 runs (another key) keep calling the op."""
    auto = stack("lstm", "independent", "auto")
    x = torch.randn(5, 6, 8)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto(x)
    assert refusing["LSTM"] == 1  # refused once, then not called again
    y32, _ = auto(x)
    assert refusing["LSTM"] == 2 and not torch_ops.refused("LSTM", x)
    calls = refusing["LSTM"]
    auto.executor = "reference"
    y_ref, _ = auto(x)
    assert refusing["LSTM"] == calls
    torch.testing.assert_close(y32, y_ref, rtol=1e-5, atol=1e-5)  # float32, on the op


def test_other_errors_of_the_op_propagate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a refusal falls back: any other error of the op reaches the caller as it is,
    and nothing is remembered."""

    def broken(*args: Any) -> Any:
        raise RuntimeError("input.size(-1) must be equal to input_size. Expected 8, got 9")

    monkeypatch.setitem(torch_ops._OPS, "LSTM", broken)
    monkeypatch.setitem(torch_ops._CELL_OPS, "LSTM", broken)
    x = torch.randn(5, 6, 8)
    with pytest.raises(RuntimeError, match="must be equal to input_size"):
        stack("lstm", "independent", "auto")(x)
    with pytest.raises(RuntimeError, match="must be equal to input_size"):
        rk.LSTM(8, 16, 2)(x)
    with pytest.raises(RuntimeError, match="must be equal to input_size"), torch.no_grad():
        stack("lstm", "independent", "auto").step(x[0])
    assert not torch_ops._refused


# -- the real ops, on whatever CPU runs the tests ---------------------------------------


def _torch_refuses(dtype: torch.dtype) -> bool:
    """Whether torch's own nn.LSTM refuses CPU autocast to ``dtype`` on this machine."""
    try:
        with torch.autocast("cpu", dtype=dtype):
            nn.LSTM(8, 16, 2)(torch.randn(5, 3, 8))
    except RuntimeError as error:
        assert "could not create a primitive" in str(error), error  # only the refusal
        return True
    return False


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_lstm_runs_under_cpu_autocast_on_any_cpu(dtype: torch.dtype) -> None:
    """rk.LSTM and an LSTM Stack run under CPU autocast whether or not this CPU's oneDNN
    has an LSTM for ``dtype`` (where torch's nn.LSTM refuses, they run on plain ops and
    remember the refusal), and compute the float32 function to ``dtype``'s precision."""
    torch.manual_seed(3)
    drop_in = rk.LSTM(8, 16, 2)
    lstm_stack = rk.Stack([rk.LSTMCell(8, 16), rk.LSTMCell(16, 16)])
    x = torch.randn(5, 3, 8)
    for m in (drop_in, lstm_stack):
        y32, _ = m(x)
        with torch.autocast("cpu", dtype=dtype):
            y, _ = m(x)
        torch.testing.assert_close(y.float(), y32, rtol=0, atol=BF16_TOL)
        y.float().square().sum().backward()
        assert all(p.grad is not None and p.grad.isfinite().all() for p in m.parameters())
    refuses = _torch_refuses(dtype)
    with torch.autocast("cpu", dtype=dtype):
        assert torch_ops.refused("LSTM", x) == refuses
