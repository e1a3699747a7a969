"""The kernels as torch.library custom ops (recurrentkit.executors.kernels.ops): what
torch.compile runs for a stack of built-in cells without lengths or resets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch._dynamo as dynamo
from torch import Tensor

from recurrentkit.executors.kernels import gru, lstm, nested_lstm, ops, rnn
from recurrentkit.executors.packing import Schedule

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, in inductor

KERNEL_CELLS = [
    "rnn",
    "rnn_relu",
    "gru",
    "gru_before",
    "gru_nobias",
    "lstm",
    "lstm_nobias",
    "lstm_proj",
    "nested",
    "nested3",
]
# policies whose compiled run is each layer's kernel (layer-major) or shared_first's
POLICIES = ["independent", "residual", "handoff", "shared"]
WIDE = ("residual", "shared")  # need a state as wide as the input: no LSTM projection


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    dynamo.reset()
    yield
    dynamo.reset()


def _random(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def _cases() -> dict[str, tuple[ops.Spec, list[Any]]]:
    """Each registered kernel op with arguments as its ``Function`` takes them."""
    T, B, H, P = 4, 3, 5, 3
    N, S = T * B, Schedule.of_uniform(T, B)
    r = _random
    d = 3
    return {
        "gru_after": (gru._AFTER_OP, [r(N, 3 * H), r(B, H), r(3 * H, H), r(3 * H), S]),
        "gru_before": (gru._BEFORE_OP, [r(N, 3 * H), r(B, H), r(3 * H, H), None, S]),
        "lstm": (lstm._LSTM_OP, [r(N, 4 * H), r(B, H), r(B, H), r(4 * H, H), None, S]),
        "lstm_proj": (lstm._LSTM_OP, [r(N, 4 * H), r(B, P), r(B, H), r(4 * H, P), r(P, H), S]),
        "rnn_relu": (rnn._RNN_OP, [r(N, H), r(B, H), r(H, H), True, S]),
        "nested3": (
            nested_lstm._NESTED_OP,
            [S, d, r(N, 4 * H), r(B, H), r(4 * H, H)]
            + [r(4 * H, 2 * H) for _ in range(d - 1)]
            + [r(4 * H), None]
            + [r(B, H) for _ in range(d)],
        ),
    }


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_opcheck_schema_fake_and_autograd_registration(name: str) -> None:
    """torch.library.opcheck: the schema, the fake implementation (shapes with symbolic
    sizes), the autograd registration and AOT dispatch with dynamic shapes."""
    spec, args = CASES[name]
    sig, tensors = ops._encode(args)
    torch.library.opcheck(ops._FORWARD, (spec.name, sig, tensors))


@pytest.mark.parametrize("name", list(CASES))
def test_the_op_equals_the_function_forward_and_gradcheck(name: str) -> None:
    """Through the custom ops, the kernel's outputs equal its ``Function``'s (eager), and
    the ops' registered backward passes gradcheck in float64."""
    spec, args = CASES[name]
    sig, tensors = ops._encode(args)
    n_out = spec.n_outputs(args)

    def through_op(*ts: Tensor) -> tuple[Tensor, ...]:
        return tuple(ops._FORWARD(spec.name, sig, list(ts))[:n_out])

    want = spec.fn.apply(*args)
    want = want if isinstance(want, tuple) else (want,)
    for a, b in zip(through_op(*tensors), want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.autograd.gradcheck(through_op, tuple(tensors))


def test_the_ops_refuse_a_layout_with_lengths() -> None:
    """The ops run the uniform layout only (the plans send lengths to the scan)."""
    spec, args = CASES["gru_after"]
    packed = Schedule((3, 2), 3, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
    with pytest.raises(AssertionError, match="uniform"):
        ops._encode([*args[:-1], packed])


def _graph_ops(module: Callable[..., Any], *args: Any) -> Counter[str]:
    """The call targets of the graph(s) torch.compile traces for ``module(*args)``."""
    found: Counter[str] = Counter()

    def backend(gm: torch.fx.GraphModule, example: Any) -> Any:
        found.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    torch.compile(module, fullgraph=True, backend=backend)(*args)
    return found


@pytest.mark.parametrize("routing", [*POLICIES, "cross_layer"])
def test_the_compiled_graph_holds_the_ops_and_no_scan(
    checks: SimpleNamespace, routing: str
) -> None:
    """The traced graph calls the forward op once per layer (shared: layer 1 only, the
    layers above are one batched step each; cross_layer: once, the whole run) and holds
    no time loop: its size does not grow with T."""
    stack = checks.build("gru", routing, "auto", L=3).eval()
    sizes, ops_per_run = [], 1 if routing in ("shared", "cross_layer") else 3
    for T in (4, 64):
        found = _graph_ops(stack, torch.randn(T, 2, 3, dtype=torch.float64))
        assert found["recurrentkit.kernel_forward.default"] == ops_per_run
        assert not any("scan" in target for target in found), found
        sizes.append(sum(found.values()))
        dynamo.reset()
    assert sizes[0] == sizes[1]


MATRIX = [(r, c) for r in POLICIES for c in KERNEL_CELLS if not (r in WIDE and c == "lstm_proj")]
MATRIX += [("cross_layer", c) for c in ("gru", "gru_nobias", "lstm", "lstm_nobias")]


@pytest.mark.parametrize(("routing", "cell"), MATRIX)
def test_compiled_kernel_ops_equal_eager(checks: SimpleNamespace, routing: str, cell: str) -> None:
    """AOTAutograd over the ops (forward and backward graphs, dynamic T and B) equals
    eager in float64 to 1e-10: outputs, final states and every gradient. Every kernel
    cell under every policy that runs on the ops (cross_layer: the cells its whole-run
    op takes)."""
    ref = checks.build(cell, routing, "auto", L=2)
    stack = checks.build(cell, routing, "auto", L=2)
    compiled = torch.compile(stack, fullgraph=True, dynamic=True, backend="aot_eager")
    for T, B in ((5, 3), (2, 2)):
        x, state = checks.inputs(ref, T=T, B=B)
        checks.same_run(ref, compiled, x, state)


@pytest.mark.parametrize(
    ("routing", "cell"),
    [
        ("independent", "lstm_proj"),
        ("shared", "gru"),
        ("handoff", "nested3"),
        ("residual", "rnn_relu"),
        ("cross_layer", "lstm"),
    ],
)
def test_inductor_kernel_ops_float32_equal_eager(
    checks: SimpleNamespace, routing: str, cell: str
) -> None:
    """Inductor (the default backend), float32, fullgraph: outputs and gradients within
    1e-5 of eager."""
    ref = checks.build(cell, routing, "auto", L=2).float()
    stack = checks.build(cell, routing, "auto", L=2).float()
    compiled = torch.compile(stack, fullgraph=True)
    x, state = checks.inputs(ref, T=6, B=3)
    x = x.detach().float().requires_grad_()
    state = tuple(
        torch.utils._pytree.tree_map(lambda s: s.detach().float().requires_grad_(), s)
        for s in state
    )
    checks.same_run(ref, compiled, x, state, tol=1e-5)
