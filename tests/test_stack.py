"""Stack: time loop, stepping, state layout, batch layouts."""

from __future__ import annotations

import pytest
import torch

import recurrentkit as rk

CAUSAL = ["independent", "shared", "residual", "cross_layer"]


def make(routing: str, cell=rk.GRUCell, H: int = 5, L: int = 3, **kw) -> rk.Stack:
    cells = [cell(4 if k == 0 else H, H) for k in range(L)]
    return rk.Stack(cells, routing, **kw).double()


@pytest.mark.parametrize("routing", CAUSAL)
@pytest.mark.parametrize("cell", [rk.GRUCell, rk.LSTMCell, rk.RNNCell, rk.NestedLSTMCell])
def test_stepping_equals_whole_sequence(routing: str, cell: type) -> None:
    torch.manual_seed(0)
    stack = make(routing, cell)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    y, final = stack(x)
    state = None
    for t in range(x.shape[0]):
        y_t, state = stack.step(x[t], state)
        torch.testing.assert_close(y_t, y[t], rtol=0, atol=1e-12)
    flat = [t for s in final for t in (s if isinstance(s, tuple) else (s,))]
    assert len(final) == 3
    assert flat


def test_batch_first_and_unbatched_match_time_major() -> None:
    torch.manual_seed(0)
    stack = make("shared")
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    y, _ = stack(x)
    bf = make("shared", batch_first=True)
    bf.load_state_dict(stack.state_dict())
    y_bf, _ = bf(x.transpose(0, 1))
    torch.testing.assert_close(y_bf.transpose(0, 1), y)
    y0, s0 = stack(x[:, 0])
    torch.testing.assert_close(y0, y[:, 0])
    assert s0[0].shape == (5,)


def test_handoff_is_not_causal_and_others_are() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 2, 4, dtype=torch.float64)
    for routing in CAUSAL:
        assert rk.check_causal(make(routing).eval(), x)
    assert not rk.check_causal(make("handoff").eval(), x)
