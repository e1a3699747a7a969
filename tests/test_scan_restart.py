"""``_scan.scan``'s ``restart`` (resets as masks inside the loop, what a traced loop runs)
equals the eager resets (rows cut into segments), for every causal policy."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

import recurrentkit as rk
from recurrentkit._scan import Restart
from recurrentkit.executors import ReferenceExecutor

CAUSAL = ["independent", "shared", "residual", "cross_layer"]


@given(
    routing=st.sampled_from(CAUSAL),
    lstm=st.booleans(),
    T=st.integers(1, 6),
    B=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_restart_masks_equal_segments(routing: str, lstm: bool, T: int, B: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cell = rk.LSTMCell if lstm else rk.GRUCell
    stack = rk.Stack([cell(3, 4), cell(4, 4)], routing, executor="reference").double()
    x = torch.randn(T, B, 3, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.rand(T, B, generator=g) < 0.3
    state = stack.initial_state(B, dtype=torch.float64)
    state = tuple(rk.state.map(lambda t: torch.randn_like(t), s) for s in state)
    y_ref, s_ref = stack(x, state, lengths=lengths, resets=mask)
    ex = ReferenceExecutor(tuple(stack.cells), 0.0, False)
    ex.restart = Restart(mask, stack.initial_state(1, dtype=torch.float64))
    y, s = stack.routing.run(ex, x, state, lengths)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    for a, b in zip(s, s_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
