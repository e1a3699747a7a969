"""Dispatch: layers that are exactly torch layers run on torch's fused op, and agree."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

import recurrentkit as rk
from recurrentkit._validation import map_state
from recurrentkit.executors import fast
from recurrentkit.executors.kernels.gru import GRUKernel
from recurrentkit.executors.reference import ReferenceExecutor
from recurrentkit.executors.torch_ops import fusable, torch_mode

TORCH_FORM = ["rnn", "rnn_relu", "gru", "gru_nobias", "lstm", "lstm_nobias", "lstm_proj"]
LAYER_MAJOR = ["independent", "residual", "handoff"]


def test_torch_mode_names_exactly_the_torch_layers(checks: SimpleNamespace) -> None:
    assert torch_mode(rk.RNNCell(2, 3)) == "RNN_TANH"
    assert torch_mode(rk.RNNCell(2, 3, nonlinearity="relu")) == "RNN_RELU"
    assert torch_mode(rk.GRUCell(2, 3)) == "GRU"
    assert torch_mode(rk.LSTMCell(2, 4, proj_size=3)) == "LSTM"
    assert torch_mode(rk.GRUCell(2, 3, reset="before")) is None
    assert torch_mode(rk.NestedLSTMCell(2, 3)) is None
    assert torch_mode(checks.GRUSubclass(2, 3)) is None
    assert torch_mode(checks.LeakyCell(2, 3)) is None


@pytest.mark.parametrize("cell", TORCH_FORM)
@pytest.mark.parametrize("routing", LAYER_MAJOR)
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dispatched_equals_reference(
    checks: SimpleNamespace, cell: str, routing: str, ragged: bool, mode: str
) -> None:
    dropout = 0.0 if mode == "train" else 0.5  # eval: dropout is off whatever its rate
    ref = checks.build(cell, routing, "reference", dropout=dropout).train(mode == "train")
    fused = checks.build(cell, routing, "auto", dropout=dropout).train(mode == "train")
    x, state = checks.inputs(ref)
    lengths = torch.tensor([3, 6, 1, 5]) if ragged else None
    checks.same_run(ref, fused, x, state, lengths)


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"torch": 0, "torch_stack": 0, "torch_rows": 0, "kernel": 0, "reference": 0}

    def count(name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(fast, "run_torch_layer", count("torch", fast.run_torch_layer))
    monkeypatch.setattr(fast, "run_torch_layers", count("torch_stack", fast.run_torch_layers))
    monkeypatch.setattr(fast, "run_torch_rows", count("torch_rows", fast.run_torch_rows))
    monkeypatch.setattr(GRUKernel, "sequence", count("kernel", GRUKernel.sequence))
    monkeypatch.setattr(
        ReferenceExecutor, "run_layer", count("reference", ReferenceExecutor.run_layer)
    )
    return calls


@pytest.mark.parametrize(
    ("executor", "expected"),
    [
        ("auto", {"torch": 0, "torch_stack": 1, "torch_rows": 0, "kernel": 0, "reference": 0}),
        ("handbuilt", {"torch": 0, "torch_stack": 0, "torch_rows": 0, "kernel": 3, "reference": 0}),
        ("reference", {"torch": 0, "torch_stack": 0, "torch_rows": 0, "kernel": 0, "reference": 3}),
    ],
)
def test_the_switch_selects_the_path(
    checks: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, executor: str, expected: dict
) -> None:
    calls = _spy(monkeypatch)
    stack = checks.build("gru", "independent", executor)
    assert stack.executor == executor
    stack(torch.randn(4, 2, 3, dtype=torch.float64))
    assert calls == expected
    stack.executor = "reference"  # settable afterwards
    calls.update(torch=0, torch_stack=0, kernel=0, reference=0)
    stack(torch.randn(4, 2, 3, dtype=torch.float64))
    assert calls == {"torch": 0, "torch_stack": 0, "torch_rows": 0, "kernel": 0, "reference": 3}


def test_an_unknown_executor_is_a_config_error(checks: SimpleNamespace) -> None:
    with pytest.raises(rk.ConfigError, match="executor"):
        checks.build("gru", "independent", "cudnn")
    stack = checks.build("gru", "independent", "auto")
    with pytest.raises(rk.ConfigError, match="executor"):
        stack.executor = "fused"


def test_reset_before_and_user_layers_mix_with_dispatched_ones(
    checks: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dispatch is per layer: a torch-form layer on torch's op beside others that are not."""
    calls = _spy(monkeypatch)
    torch.manual_seed(0)
    cells = [rk.GRUCell(3, 5), rk.GRUCell(5, 5, reset="before"), checks.LeakyCell(5, 5)]
    ref = rk.Stack(cells, "residual", executor="reference").double()
    fused = rk.Stack(
        [rk.GRUCell(3, 5), rk.GRUCell(5, 5, reset="before"), checks.LeakyCell(5, 5)], "residual"
    ).double()
    x, state = checks.inputs(ref)
    checks.same_run(ref, fused, x, state, torch.tensor([2, 6, 6, 1]))
    # `fused`: layer 0 on torch's op, layer 1 on the GRU kernel, the user layer on the
    # reference loop; `ref`: its three layers on the reference loop.
    assert calls == {"torch": 1, "torch_stack": 0, "torch_rows": 0, "kernel": 1, "reference": 1 + 3}


def test_fusable_needs_what_torchs_layers_share() -> None:
    def modes(cells: list[nn.Module]) -> list[str | None]:
        return [torch_mode(c) for c in cells]

    same = [rk.GRUCell(3, 5), rk.GRUCell(5, 5)]
    assert fusable(same, modes(same)) == "GRU"
    for cells in (
        [rk.GRUCell(3, 5), rk.GRUCell(5, 4)],  # hidden sizes differ
        [rk.GRUCell(3, 5), rk.GRUCell(5, 5, bias=False)],  # biases differ
        [rk.LSTMCell(3, 5, proj_size=2), rk.LSTMCell(2, 5)],  # projections differ
        [rk.GRUCell(3, 5), rk.RNNCell(5, 5)],  # modes differ
        [rk.GRUCell(3, 5), rk.GRUCell(5, 5, reset="before")],  # not a torch layer
    ):
        assert fusable(cells, modes(cells)) is None


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_unfusable_independent_layers_dispatch_one_by_one(
    checks: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, ragged: bool
) -> None:
    """Widths torch cannot fuse (H 5 then 4): each layer on torch's op, still exact
    (with lengths, on the packed rows: packed once for all layers)."""

    def build(executor: str) -> rk.Stack:
        torch.manual_seed(3)
        cells = [rk.LSTMCell(3, 5), rk.LSTMCell(5, 4), rk.LSTMCell(4, 4, proj_size=2)]
        return rk.Stack(cells, executor=executor).double()

    ref, fused = build("reference"), build("auto")
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    state = map_state(lambda t: torch.randn_like(t).requires_grad_(), ref.initial_state(4))
    calls = _spy(monkeypatch)
    checks.same_run(ref, fused, x, state, torch.tensor([3, 6, 1, 5]) if ragged else None)
    assert calls["torch_rows" if ragged else "torch"] == 3 and calls["torch_stack"] == 0


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_dispatched_dropout_is_torchs(kind: str) -> None:
    """Training-mode dropout between layers: the same masks as torch.nn for one seed."""
    torch.manual_seed(0)
    module = getattr(nn, kind)(3, 5, num_layers=3, dropout=0.5).double()
    cell = rk.GRUCell if kind == "GRU" else rk.LSTMCell
    stacks = {
        ex: rk.Stack([cell(3 if k == 0 else 5, 5) for k in range(3)], dropout=0.5, executor=ex)
        for ex in ("auto", "reference")
    }
    for stack in stacks.values():
        with torch.no_grad():
            for k, c in enumerate(stack.cells):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(c, name).copy_(getattr(module, f"{name}_l{k}"))
        stack.double()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    torch.manual_seed(7)
    y_torch, _ = module(x)
    for stack in stacks.values():
        torch.manual_seed(7)
        y, _ = stack(x)
        torch.testing.assert_close(y, y_torch, rtol=0, atol=1e-12)
    y_no_dropout, _ = module.eval()(x)
    assert not torch.allclose(y_torch, y_no_dropout)  # dropout did act


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_float32_fused_op_equals_reference(checks: SimpleNamespace, cell: str) -> None:
    """float32: on CPU torch runs LSTM on oneDNN; both paths agree to float32 precision."""
    ref = checks.build(cell, "independent", "reference").float()
    fused = checks.build(cell, "independent", "auto").float()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(8, 4, 3, requires_grad=True)
    y_ref, _ = ref(x)
    y, _ = fused(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)
