"""Every executor on every device this machine has: the CPU, and a CUDA GPU where there is
one (there the fast paths run on cuDNN and the hand-written ops on CUDA tensors).

The fast executors equal the reference executor on the same device in float64, and the
drop-ins equal torch.nn there: outputs, final states and every gradient. On a machine
without a GPU only the CPU cases run; on one with a GPU, ``pytest
tests/executors/test_devices.py -k cuda`` is the equivalence check of the GPU path.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

import recurrentkit as rk
from recurrentkit._validation import map_state

D = torch.float64
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
POLICIES: dict[str, Any] = {name: name for name in rk.routing.POLICIES}  # the built-ins
POLICIES["shared_last"] = lambda: rk.routing.Shared(carry="last")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("routing", list(POLICIES))
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("executor", ["auto", "handbuilt"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_fast_executors_equal_reference_on_device(
    checks: SimpleNamespace, device: str, routing: str, cell: str, executor: str, ragged: bool
) -> None:
    ref = checks.build(cell, POLICIES[routing], "reference").to(device)
    fast = checks.build(cell, POLICIES[routing], executor).to(device)
    x, state = checks.inputs(ref, T=6, B=4)
    x = x.detach().to(device).requires_grad_()
    state = map_state(lambda t: t.detach().to(device).requires_grad_(), state)
    lengths = torch.tensor([3, 6, 1, 5]) if ragged else None
    checks.same_run(ref, fast, x, state, lengths)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["GRU", "LSTM", "RNN"])
def test_dropins_equal_torch_nn_on_device(device: str, kind: str) -> None:
    torch.manual_seed(0)
    ref = getattr(nn, kind)(3, 5, num_layers=2).to(device, D)
    ours = getattr(rk, kind)(3, 5, num_layers=2).to(device, D)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 4, 3, dtype=D, device=device, requires_grad=True)
    results = []
    for module in (ref, ours):
        y, h = module(x)
        hs = list(h) if isinstance(h, tuple) else [h]
        cot = torch.linspace(-1, 1, y.numel(), dtype=D, device=device).view_as(y)
        loss = (y * cot).sum() + sum((t * t).sum() for t in hs)
        grads = torch.autograd.grad(loss, [x, *module.parameters()])
        results.append([y, *hs, *grads])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
