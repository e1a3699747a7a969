"""The regularisers: Zoneout, RecurrentDropout, WeightDrop.

Their masks: fresh at every step (zoneout), fixed for a sequence across steps and
``Stack.step`` calls (recurrent dropout), one per call of the wrapped module (weight
drop); eval behaviour exact; reproducible under ``torch.manual_seed``; gradients reach
the raw weights; gradcheck in float64. Their equality with the reference executor under
every policy is in test_backbones_executors.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

import recurrentkit as rk
from recurrentkit._validation import map_state

D = torch.float64
B, I, H = 64, 3, 32


def flat(state: Any) -> list[Tensor]:
    return [state] if isinstance(state, Tensor) else [t for s in state for t in flat(s)]


def random_state(cell: nn.Module, batch: int = B) -> Any:
    return map_state(torch.randn_like, cell.initial_state(batch))


# -- Zoneout ------------------------------------------------------------------------------


def test_zoneout_keeps_each_unit_or_takes_the_new_one_with_a_fresh_mask_each_step() -> None:
    torch.manual_seed(0)
    inner = rk.LSTMCell(I, H, dtype=D)
    cell = rk.Zoneout(inner, p=0.3, p_cell=0.6)
    x, s = torch.randn(4, B, I, dtype=D), random_state(inner)
    kept_h, kept_c = [], []
    for t in range(4):
        _, bare = inner(x[t], s)
        y, new = cell(x[t], s)
        assert isinstance(new, rk.LSTMState) and torch.equal(y, new.h)
        for old_f, bare_f, new_f, kept in (
            (s.h, bare.h, new.h, kept_h),
            (s.c, bare.c, new.c, kept_c),
        ):
            keep = new_f == old_f
            assert torch.equal(torch.where(keep, old_f, bare_f), new_f)  # old or new, exactly
            assert not (old_f == bare_f).any()  # (so "kept" is unambiguous)
            kept.append(keep)
        s = new
    n = B * H
    for kept, p in ((kept_h, 0.3), (kept_c, 0.6)):
        for k in kept:  # each mask ~ Bernoulli(p): within 5 standard deviations
            assert abs(k.double().mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5
        assert not torch.equal(kept[0], kept[1])  # a fresh mask at each step
    assert not torch.equal(kept_h[0], kept_c[0])  # h and c have masks of their own


def test_zoneout_in_eval_mode_is_the_expectation() -> None:
    torch.manual_seed(1)
    inner = rk.CoupledLSTMCell(I, H, dtype=D)
    cell = rk.Zoneout(inner, p=0.25, p_cell=0.7).eval()
    x, s = torch.randn(B, I, dtype=D), random_state(inner)
    state = torch.get_rng_state()
    y, new = cell(x, s)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn
    _, bare = inner(x, s)
    torch.testing.assert_close(new.h, 0.25 * s.h + 0.75 * bare.h, rtol=0, atol=1e-15)
    torch.testing.assert_close(new.c, 0.7 * s.c + 0.3 * bare.c, rtol=0, atol=1e-15)
    assert torch.equal(y, new.h)


def test_zoneout_is_reproducible_under_manual_seed() -> None:
    torch.manual_seed(2)
    stack = rk.Stack([rk.Zoneout(rk.MGUCell(I, H), 0.5), rk.Zoneout(rk.GRUCell(H, H), 0.5)])
    x = torch.randn(5, 4, I)
    torch.manual_seed(7)
    y1, _ = stack(x)
    torch.manual_seed(7)
    y2, _ = stack(x)
    y3, _ = stack(x)
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)


@pytest.mark.parametrize("executor", ["auto", "handbuilt", "reference"])
@pytest.mark.parametrize("policy", ["independent", "shared", "cross_layer"])
def test_zoneout_extremes_under_every_plan_with_lengths(policy: str, executor: str) -> None:
    """In training, with lengths: p = 1 keeps every state as it was (each step's output
    is the initial h), p = 0 is the bare cell."""
    torch.manual_seed(3)
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(5, 3, I, dtype=D)
    cells = [rk.MGUCell(I, 4), rk.LayerNormLSTMCell(4, 4)]
    if policy != "independent":
        cells = [rk.MGUCell(I, 4), rk.MGUCell(4, 4)]
    frozen = rk.Stack([rk.Zoneout(c, 1.0) for c in cells], policy, executor=executor).double()
    state = map_state(torch.randn_like, frozen.initial_state(3))
    y, final = frozen(x, state, lengths=lengths)
    top_h = state[-1] if isinstance(state[-1], Tensor) else state[-1].h
    mask = torch.arange(5)[:, None] < lengths[None, :]
    if policy != "cross_layer":  # (cross_layer mixes other layers into h before the cell)
        want = torch.where(mask[..., None], top_h.expand(5, 3, 4), torch.zeros(()))
        if policy == "shared":
            want = torch.where(mask[..., None], state[0].expand(5, 3, 4), torch.zeros(()))
        torch.testing.assert_close(y, want, rtol=0, atol=0)
        if policy == "independent":
            assert all(torch.equal(a, b) for a, b in zip(flat(final), flat(state)))
    bare = rk.Stack(copy.deepcopy(cells), policy, executor=executor).double()
    open_ = rk.Stack([rk.Zoneout(c, 0.0) for c in copy.deepcopy(cells)], policy, executor=executor)
    open_ = open_.double()
    open_.load_state_dict({k: v for k, v in frozen.state_dict().items()})
    bare.load_state_dict({k.replace(".cell.", "."): v for k, v in frozen.state_dict().items()})
    y_open, _ = open_(x, state, lengths=lengths)
    y_bare, _ = bare(x, state, lengths=lengths)
    torch.testing.assert_close(y_open, y_bare, rtol=0, atol=1e-12)


def test_zoneout_on_a_recurrent_dropout_state_zones_h_and_c_and_keeps_the_mask() -> None:
    torch.manual_seed(4)
    inner = rk.RecurrentDropout(rk.LSTMCell(I, H, dtype=D), 0.5)
    cell = rk.Zoneout(inner, p=0.5, p_cell=0.0)
    s = inner.initial_state(B)
    s = s._replace(state=random_state(inner.cell))
    torch.manual_seed(5)
    y, new = cell(torch.randn(B, I, dtype=D), s)
    assert isinstance(new, rk.RecurrentDropoutState) and torch.equal(new.mask, s.mask)
    assert 0 < (new.h == s.h).double().mean() < 1  # h zoned
    assert not (new.c == s.c).any()  # p_cell = 0: c is always the new one
    assert torch.equal(y, new.h)


def test_zoneout_state_none_and_unbatched_input() -> None:
    torch.manual_seed(6)
    cell = rk.Zoneout(rk.LSTMCell(I, H), 0.2).eval()
    x = torch.randn(I)
    y, s = cell(x)
    y_b, s_b = cell(x[None], cell.initial_state(1))
    assert y.shape == (H,) and torch.equal(y, y_b[0]) and torch.equal(s.c, s_b.c[0])


def test_zoneout_split_step_is_its_call() -> None:
    """Also around a cell with no split step (its call, on an identity projection)."""
    for inner in (rk.MGUCell(I, H, dtype=D), rk.LSTMCell(I, H, dtype=D)):
        cell = rk.Zoneout(inner, 0.4)
        assert rk.cells.splits_step(cell) and rk.cells.takes_linear(cell)
        x, s = torch.randn(B, I, dtype=D), random_state(inner)
        torch.manual_seed(8)
        y1, s1 = cell(x, s)
        torch.manual_seed(8)
        y2, s2 = cell.step_projected(cell.input_projection(x), s)
        assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(flat(s1), flat(s2)))


@given(
    p=st.floats(0.0, 1.0),
    batch=st.integers(1, 6),
    hidden=st.integers(1, 6),
    lstm=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_for_every_p_and_shape_zoneout_is_old_or_new_and_its_expectation_in_eval(
    p: float, batch: int, hidden: int, lstm: bool, seed: int
) -> None:
    torch.manual_seed(seed)
    inner = (rk.LSTMCell if lstm else rk.IndRNNCell)(2, hidden, dtype=D)
    cell = rk.Zoneout(inner, p)
    x, s = torch.randn(batch, 2, dtype=D), random_state(inner, batch)
    _, bare = inner(x, s)
    _, new = cell(x, s)
    for old_f, bare_f, new_f in zip(flat(s), flat(bare), flat(new)):
        assert torch.equal(new_f, torch.where(new_f == old_f, old_f, bare_f))
        if p == 1.0:
            assert torch.equal(new_f, old_f)
    cell.eval()
    _, mean = cell(x, s)
    for old_f, bare_f, mean_f in zip(flat(s), flat(bare), flat(mean)):
        torch.testing.assert_close(mean_f, p * old_f + (1 - p) * bare_f, rtol=0, atol=1e-14)


def test_zoneout_checks_its_arguments() -> None:
    with pytest.raises(rk.ConfigError, match=r"^p: expected a float in \[0, 1\], got 1.5$"):
        rk.Zoneout(rk.GRUCell(2, 3), 1.5)
    with pytest.raises(rk.ConfigError, match=r"^p_cell: expected a float in \[0, 1\]"):
        rk.Zoneout(rk.LSTMCell(2, 3), 0.1, p_cell=-0.1)
    with pytest.raises(rk.InputTypeError, match=r"^cell: expected an nn.Module following"):
        rk.Zoneout(nn.Linear(2, 3), 0.1)

    class Hless(nn.Module):
        def initial_state(self, batch_size: int, **kw: Any) -> tuple[Tensor, Tensor]:
            return (torch.zeros(batch_size, 3), torch.zeros(batch_size, 3))

    with pytest.raises(rk.ConfigError, match=r"^cell: expected a cell whose state is a tensor"):
        rk.Zoneout(Hless(), 0.1)


# -- RecurrentDropout ------------------------------------------------------------------------


def test_the_mask_is_drawn_with_the_state_as_nn_dropout_draws() -> None:
    cell = rk.RecurrentDropout(rk.LSTMCell(I, H), 0.3)
    torch.manual_seed(9)
    s = cell.initial_state(B)
    torch.manual_seed(9)
    want = nn.Dropout(0.3)(torch.ones(B, H))
    assert torch.equal(s.mask, want)
    assert set(s.mask.unique().tolist()) == {0.0, torch.tensor(1 / 0.7).item()}
    assert torch.equal(s.state.h, torch.zeros(B, H)) and torch.equal(s.c, torch.zeros(B, H))
    cell.eval()
    before = torch.get_rng_state()
    assert torch.equal(cell.initial_state(B).mask, torch.ones(B, H))  # eval: none drawn
    assert torch.equal(torch.get_rng_state(), before)


def test_one_mask_for_every_step_of_a_sequence_on_h_only() -> None:
    """Each step is the cell on ``(h ⊙ m, c)`` with the sequence's one mask; the state the
    cell returns is not masked."""
    torch.manual_seed(10)
    inner = rk.LSTMCell(I, H, dtype=D)
    cell = rk.RecurrentDropout(inner, 0.5)
    s = cell.initial_state(B)
    m = s.mask
    x = torch.randn(5, B, I, dtype=D)
    ref = rk.LSTMState(torch.randn(B, H, dtype=D), torch.randn(B, H, dtype=D))
    s = s._replace(state=ref)
    for t in range(5):
        y, s = cell(x[t], s)
        y_ref, ref = inner(x[t], rk.LSTMState(ref.h * m, ref.c))
        assert torch.equal(s.mask, m) and torch.equal(y, y_ref)
        assert torch.equal(s.state.h, ref.h) and torch.equal(s.state.c, ref.c)


def test_the_mask_stays_across_stack_step_calls_and_differs_per_layer() -> None:
    torch.manual_seed(11)
    stack = rk.Stack(
        [rk.RecurrentDropout(rk.GRUCell(I, H), 0.5), rk.RecurrentDropout(rk.MGUCell(H, H), 0.5)]
    ).double()
    x = torch.randn(6, B, I, dtype=D)
    torch.manual_seed(12)
    y_t, s = stack.step(x[0])  # state None: drawn here
    masks = [layer.mask for layer in s]
    assert not torch.equal(masks[0], masks[1])  # a mask per layer
    ys = [y_t]
    for t in range(1, 6):
        y_t, s = stack.step(x[t], s)
        ys.append(y_t)
        assert all(torch.equal(a.mask, m) for a, m in zip(s, masks))
    torch.manual_seed(12)
    y, final = stack(x)  # the same draw, made by forward's initial state
    torch.testing.assert_close(torch.stack(ys), y, rtol=0, atol=1e-12)
    assert all(torch.equal(a.mask, m) for a, m in zip(final, masks))


def test_recurrent_dropout_in_eval_mode_is_the_bare_cell() -> None:
    torch.manual_seed(13)
    inner = rk.CoupledLSTMCell(I, H, dtype=D)
    cell = rk.RecurrentDropout(inner, 0.5).eval()
    s = rk.RecurrentDropoutState(random_state(inner), torch.zeros(B, H, dtype=D))  # a mask
    x = torch.randn(B, I, dtype=D)
    y, new = cell(x, s)
    y_bare, bare = inner(x, s.state)
    assert torch.equal(y, y_bare) and torch.equal(new.c, bare.c) and torch.equal(new.h, bare.h)


def test_recurrent_dropout_extremes() -> None:
    torch.manual_seed(14)
    inner = rk.RNNCell(I, H, dtype=D)
    x, h = torch.randn(B, I, dtype=D), torch.randn(B, H, dtype=D)
    dropped_all = rk.RecurrentDropout(inner, 1.0)
    s = dropped_all.initial_state(B)
    assert torch.equal(s.mask, torch.zeros(B, H, dtype=D))
    assert torch.equal(dropped_all(x, s._replace(state=h))[0], inner(x, torch.zeros_like(h))[0])
    none = rk.RecurrentDropout(inner, 0.0)
    assert torch.equal(none.initial_state(B).mask, torch.ones(B, H, dtype=D))
    assert torch.equal(none(x, none.initial_state(B)._replace(state=h))[0], inner(x, h)[0])


def test_the_state_reads_as_the_wrapped_state_for_routing() -> None:
    """``.h`` and the wrapped fields read through; ``_replace(h=...)`` (cross_layer's
    mixing) replaces the wrapped state's ``h``."""
    h, c, m = torch.randn(2, 3), torch.randn(2, 3), torch.ones(2, 3)
    s = rk.RecurrentDropoutState(rk.LSTMState(h, c), m)
    assert s.h is h and s.c is c and s.mask is m
    h2 = torch.randn(2, 3)
    s2 = s._replace(h=h2)
    assert isinstance(s2, rk.RecurrentDropoutState) and s2.state == (h2, c) and s2.mask is m
    assert isinstance(s2.state, rk.LSTMState)
    t = rk.RecurrentDropoutState(h, m)
    assert t.h is h and t._replace(h=h2).state is h2
    with pytest.raises(AttributeError):
        _ = t.c
    with pytest.raises(ValueError):
        t._replace(c=h2)
    assert rk.routing.base.state_h(s) is h
    assert rk.routing.base.with_state_h(s, h2).state.h is h2


def test_recurrent_dropout_split_step_is_its_call() -> None:
    for inner in (rk.IndRNNCell(I, H, dtype=D), rk.GRUCell(I, H, dtype=D)):
        cell = rk.RecurrentDropout(inner, 0.4)
        assert rk.cells.splits_step(cell)
        x = torch.randn(B, I, dtype=D)
        s = cell.initial_state(B)._replace(state=random_state(inner))
        y1, s1 = cell(x, s)
        y2, s2 = cell.step_projected(cell.input_projection(x), s)
        assert torch.equal(y1, y2) and torch.equal(s1.h, s2.h)


@given(
    p=st.floats(0.0, 0.95),
    batch=st.integers(1, 6),
    hidden=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_for_every_p_and_shape_the_mask_is_zero_or_scaled(
    p: float, batch: int, hidden: int, seed: int
) -> None:
    torch.manual_seed(seed)
    inner = rk.MGUCell(2, hidden, dtype=D)
    cell = rk.RecurrentDropout(inner, p)
    s = cell.initial_state(batch)
    assert s.mask.shape == (batch, hidden)
    assert bool(((s.mask == 0) | (s.mask == 1 / (1 - p))).all())
    x, h = torch.randn(batch, 2, dtype=D), torch.randn(batch, hidden, dtype=D)
    y, _ = cell(x, s._replace(state=h))
    assert torch.equal(y, inner(x, h * s.mask)[0])


def test_recurrent_dropout_checks_its_arguments() -> None:
    with pytest.raises(rk.ConfigError, match=r"^p: expected a float in \[0, 1\]"):
        rk.RecurrentDropout(rk.GRUCell(2, 3), 2)
    with pytest.raises(rk.InputTypeError, match=r"^p: expected a float in \[0, 1\]"):
        rk.RecurrentDropout(rk.GRUCell(2, 3), "0.1")
    cell = rk.RecurrentDropout(rk.GRUCell(2, 3), 0.1)
    with pytest.raises(rk.InputTypeError, match=r"^state: expected a RecurrentDropoutState"):
        cell(torch.randn(4, 2), torch.randn(4, 3))
    y, s = cell(torch.randn(4, 2), (torch.zeros(4, 3), torch.ones(4, 3)))  # a plain pair
    assert isinstance(s, rk.RecurrentDropoutState)
    stack = rk.Stack([cell])
    with pytest.raises(rk.StateError, match=r"^state\[0\].mask: expected shape \(4, 3\)"):
        stack(torch.randn(5, 4, 2), ((torch.zeros(4, 3), torch.ones(4, 2)),))


# -- WeightDrop ------------------------------------------------------------------------------


def dropped_copy(module: nn.Module, names: tuple[str, ...], p: float, seed: int) -> nn.Module:
    """A copy of ``module`` whose named weights are replaced by ``F.dropout`` of them,
    drawn from ``seed`` in ``names``' order: what one WeightDrop call must compute."""
    torch.manual_seed(seed)
    twin = copy.deepcopy(module)
    with torch.no_grad():
        for n in names:
            twin.get_parameter(n).copy_(F.dropout(module.get_parameter(n), p, training=True))
    return twin


@pytest.mark.parametrize("executor", ["auto", "handbuilt", "reference"])
def test_one_mask_per_call_of_a_stack_for_every_step(executor: str) -> None:
    torch.manual_seed(15)
    stack = rk.Stack([rk.LSTMCell(I, H), rk.MGUCell(H, H)], "residual", executor=executor).double()
    model = rk.WeightDrop(stack, 0.5)
    assert model.targets == ("cells.0.weight_hh", "cells.1.weight_hh")
    x, lengths = torch.randn(7, 5, I, dtype=D), torch.tensor([7, 3, 5, 1, 7])
    twin = dropped_copy(stack, model.targets, 0.5, seed=16)
    torch.manual_seed(16)
    y, s = model(x, lengths=lengths)
    y_twin, s_twin = twin(x, lengths=lengths)
    torch.testing.assert_close(y, y_twin, rtol=0, atol=1e-12)  # the same weights at every step
    y2, _ = model(x, lengths=lengths)
    assert not torch.equal(y, y2)  # a new mask per call


@pytest.mark.parametrize("executor", ["auto", "handbuilt"])
def test_weight_drop_on_drop_ins_and_torch_modules(executor: str) -> None:
    torch.manual_seed(17)
    x = torch.randn(6, 3, I)
    for module in (
        rk.LSTM(I, H, num_layers=2, executor=executor),
        rk.GRU(I, H, num_layers=2, bidirectional=True, executor=executor),
        nn.LSTM(I, H, num_layers=2),
    ):
        model = rk.WeightDrop(module, 0.3)
        suffixes = (
            ("_l0", "_l1", "_l0_reverse", "_l1_reverse")
            if "GRU" in type(module).__name__
            else ("_l0", "_l1")
        )
        assert set(model.targets) == {f"weight_hh{s}" for s in suffixes}
        twin = dropped_copy(module, model.targets, 0.3, seed=18)
        torch.manual_seed(18)
        torch.testing.assert_close(model(x)[0], twin(x)[0], rtol=1e-6, atol=1e-6)


def test_gradients_reach_the_raw_weights_through_the_mask() -> None:
    torch.manual_seed(19)
    stack = rk.Stack([rk.GRUCell(I, H), rk.GRUCell(H, H)], "cross_layer").double()
    model = rk.WeightDrop(stack, 0.5, weights=("cells.1.weight_hh", "weight_ih"))
    assert model.targets == ("cells.0.weight_ih", "cells.1.weight_ih", "cells.1.weight_hh")
    twin = dropped_copy(stack, model.targets, 0.5, seed=20)
    x = torch.randn(5, 4, I, dtype=D)
    torch.manual_seed(20)
    model(x)[0].sum().backward()
    twin(x)[0].sum().backward()
    for n in model.targets:
        raw, dropped = stack.get_parameter(n), twin.get_parameter(n)
        scale = dropped.detach() / raw.detach()  # the mask: 0 or 1 / (1 - p)
        assert set(scale.unique().round(decimals=9).tolist()) <= {0.0, 2.0}
        torch.testing.assert_close(raw.grad, dropped.grad * scale, rtol=0, atol=1e-12)
        assert (raw.grad[scale == 0] == 0).all() and raw.grad.abs().sum() > 0
    torch.testing.assert_close(
        stack.get_parameter("cells.0.weight_hh").grad,
        twin.get_parameter("cells.0.weight_hh").grad,
        rtol=0,
        atol=1e-12,
    )  # a weight not named: untouched


def test_weight_drop_in_eval_mode_is_the_module_and_leaves_the_weights_alone() -> None:
    torch.manual_seed(21)
    stack = rk.Stack([rk.LSTMCell(I, H)])
    model = rk.WeightDrop(stack, 0.5)
    raw = {k: v.clone() for k, v in stack.state_dict().items()}
    x = torch.randn(4, 2, I)
    model(x)  # training: dropped weights used, the module's own untouched
    assert all(torch.equal(raw[k], v) for k, v in stack.state_dict().items())
    assert list(model.state_dict()) == [f"module.{k}" for k in raw]
    model.eval()
    before = torch.get_rng_state()
    assert torch.equal(model(x)[0], stack(x)[0])
    assert torch.equal(torch.get_rng_state(), before)


def test_weight_drop_is_reproducible_and_a_wrapped_cell_is_a_cell() -> None:
    cell = rk.WeightDrop(rk.MGUCell(I, H), 0.5)
    assert (cell.input_size, cell.output_size) == (I, H)
    assert cell.initial_state(2).shape == (2, H)
    assert cell.targets == ("weight_hh",)
    x = torch.randn(2, I)
    torch.manual_seed(22)
    y1, _ = cell(x, torch.randn(2, H))
    torch.manual_seed(22)
    y2, _ = cell(x, torch.randn(2, H))
    assert torch.equal(y1, y2)
    nested = rk.WeightDrop(rk.NestedLSTMCell(I, H, depth=3), 0.1)
    assert nested.targets == ("weight_hh", "inner.weight_hh", "inner.inner.weight_hh")


def test_weight_drop_checks_its_arguments() -> None:
    cell = rk.GRUCell(2, 3)
    with pytest.raises(rk.ConfigError, match=r"^weights: expected names of the module's param"):
        rk.WeightDrop(cell, 0.1, weights=("weight_hhh",))
    with pytest.raises(rk.ConfigError, match=r"^weights: expected at least one parameter name"):
        rk.WeightDrop(cell, 0.1, weights=())
    with pytest.raises(rk.InputTypeError, match=r"^weights: expected a parameter name or a seq"):
        rk.WeightDrop(cell, 0.1, weights=[1])
    with pytest.raises(rk.InputTypeError, match=r"^module: expected an nn.Module"):
        rk.WeightDrop(lambda x: x, 0.1)  # type: ignore[arg-type]
    with pytest.raises(rk.ConfigError, match=r"^p: expected a float in \[0, 1\]"):
        rk.WeightDrop(cell, -1)
    assert rk.WeightDrop(cell, 0.1, weights="bias_hh").targets == ("bias_hh",)


# -- gradcheck -------------------------------------------------------------------------------


def gradcheck_seeded(module: nn.Module, x: Tensor, state: Any, steps: int = 2) -> None:
    """gradcheck of ``steps`` steps w.r.t. x, the state and every parameter, each
    evaluation drawing its masks from one seed."""
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    leaves = [t.detach().clone().requires_grad_() for t in flat(state)]

    def unflat(template: Any, it: Any) -> Any:
        if isinstance(template, Tensor):
            return next(it)
        return type(template)(*(unflat(s, it) for s in template))

    def f(x: Tensor, *args: Tensor) -> tuple[Tensor, ...]:
        torch.manual_seed(23)
        p = dict(zip(names, args[: len(names)]))
        s = unflat(state, iter(args[len(names) :]))
        ys = []
        for t in range(steps):
            y, s = functional_call(module, p, (x[t], s))
            ys.append(y)
        return (*ys, *flat(s))

    assert torch.autograd.gradcheck(f, (x, *params, *leaves), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_zoneout_and_recurrent_dropout(training: bool) -> None:
    torch.manual_seed(24)
    x = torch.randn(2, 3, 2, dtype=D)
    z = rk.Zoneout(rk.LSTMCell(2, 3, dtype=D), 0.4, p_cell=0.3).train(training)
    gradcheck_seeded(z, x, random_state(z, 3))
    r = rk.RecurrentDropout(rk.MGUCell(2, 3, dtype=D), 0.4).train(training)
    s = r.initial_state(3)._replace(state=torch.randn(3, 3, dtype=D))
    gradcheck_seeded(r, x, s)


def test_gradcheck_weight_drop() -> None:
    torch.manual_seed(25)
    module = rk.WeightDrop(
        rk.CoupledLSTMCell(2, 3, dtype=D), 0.4, weights=("weight_hh", "weight_ih")
    )
    gradcheck_seeded(module, torch.randn(2, 3, 2, dtype=D), random_state(module.module, 3))
