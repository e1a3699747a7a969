"""check_causal / causality_violation: every policy but handoff is causal."""

from __future__ import annotations

import pytest
import torch

import recurrentkit as rk

D = torch.float64


def stack(routing: str | rk.RoutingPolicy, cell=rk.GRUCell, **kw) -> rk.Stack:
    torch.manual_seed(0)
    cells = [cell(3, 4, dtype=D), cell(4, 4, dtype=D), cell(4, 4, dtype=D)]
    return rk.Stack(cells, routing, **kw).eval()


CAUSAL = ["independent", "shared", "residual", "cross_layer"]


@pytest.mark.parametrize("cell", [rk.GRUCell, rk.LSTMCell, rk.NestedLSTMCell])
@pytest.mark.parametrize("routing", CAUSAL)
def test_causal_policies_pass(routing: str, cell: type) -> None:
    x = torch.randn(6, 2, 3, dtype=D)
    model = stack(routing, cell)
    assert model.routing.causal
    assert rk.causality_violation(model, x) == 0.0
    assert rk.check_causal(model, x)


def test_shared_carry_last_is_causal() -> None:
    assert rk.check_causal(stack(rk.routing.Shared("last")), torch.randn(5, 2, 3, dtype=D))


@pytest.mark.parametrize("cell", [rk.GRUCell, rk.LSTMCell])
def test_handoff_fails_under_teacher_forcing(cell: type) -> None:
    x = torch.randn(6, 2, 3, dtype=D)
    model = stack("handoff", cell)
    assert not model.routing.causal
    violation = rk.causality_violation(model, x)
    assert violation > 1e-3
    assert not rk.check_causal(model, x)
    assert not rk.check_causal(model, x, atol=violation / 2)
    assert rk.check_causal(model, x, atol=violation)
    # One layer has no one to hand off to: causal.
    assert rk.check_causal(rk.Stack([rk.GRUCell(3, 4, dtype=D)], "handoff").eval(), x)


def test_time_dim_follows_batch_first_and_can_be_given() -> None:
    x = torch.randn(2, 6, 3, dtype=D)  # (B, T, I)
    assert rk.check_causal(stack("independent", batch_first=True), x)
    assert not rk.check_causal(stack("handoff", batch_first=True), x)
    # A plain function: time on axis 1 given explicitly, also as a negative axis.
    causal = lambda t: torch.cumsum(t, dim=1)  # noqa: E731
    acausal = lambda t: torch.flip(t, dims=[1])  # noqa: E731
    assert rk.check_causal(causal, x, time_dim=1)
    assert rk.check_causal(causal, x, time_dim=-2)
    assert not rk.check_causal(acausal, x, time_dim=1)
    # Nothing mixes along axis 0, so it counts as causal; a reversed sum along axis 2 does not.
    assert rk.check_causal(causal, x, time_dim=0)
    assert not rk.check_causal(lambda t: t.flip(2).cumsum(2), x, time_dim=2)


def test_deterministic_and_leaves_the_model_alone() -> None:
    model = stack("handoff")
    x = torch.randn(5, 2, 3, dtype=D)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert rk.causality_violation(model, x) == rk.causality_violation(model, x)
    assert rk.causality_violation(model, x, seed=1) != rk.causality_violation(model, x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not model.training


def test_bad_arguments() -> None:
    model = stack("independent")
    with pytest.raises(rk.ConfigError, match=r"time_dim: expected an axis of x.*got 3"):
        rk.check_causal(model, torch.randn(4, 2, 3, dtype=D), time_dim=3)
    with pytest.raises(rk.InputTypeError, match=r"time_dim: expected an int"):
        rk.check_causal(model, torch.randn(4, 2, 3, dtype=D), time_dim=1.0)  # type: ignore[arg-type]
    with pytest.raises(rk.ConfigError, match=r"sequence length.*expected an int >= 2, got 1"):
        rk.check_causal(model, torch.randn(1, 2, 3, dtype=D))
    with pytest.raises(rk.InputTypeError, match=r"x: expected a floating-point tensor"):
        rk.check_causal(model, torch.ones(4, 2, 3, dtype=torch.long))
    with pytest.raises(rk.ShapeError, match=r"x: expected shape rank 2 or rank 3"):
        rk.check_causal(model, torch.randn(4, dtype=D))
