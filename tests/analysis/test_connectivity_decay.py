"""connectivity_decay(): hand-made matrices with known summaries, delay models, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recurrentkit as rk
from recurrentkit.analysis import ConnectivityDecay, connectivity, connectivity_decay
from recurrentkit.errors import ConfigError


def test_hand_made_matrix() -> None:
    conn = torch.tensor(
        [
            [2.0, 0.0, 0.0, 0.0],  # all at d=0
            [1.0, 3.0, 0.0, 0.0],  # 3/4 at d=0, 1/4 at d=1
            [0.0, 0.0, 0.0, 0.0],  # zero row: left out
            [1.0, 1.0, 0.0, 2.0],  # 1/2 at d=0, 1/4 at d=2, 1/4 at d=3
        ]
    )
    d = connectivity_decay(conn, far=2)
    assert isinstance(d, ConnectivityDecay)
    assert d.counts.tolist() == [3, 2, 1, 1]
    torch.testing.assert_close(
        d.curve, torch.tensor([(1 + 0.75 + 0.5) / 3, 0.25 / 2, 0.25, 0.25], dtype=torch.float64)
    )
    assert d.far_share == 0.5  # only row t=3 has inputs 2 back: 1/4 + 1/4
    assert d.future_share == 0.0 and d.rows == 3 and d.far == 2


def test_future_mass_and_batches_pool() -> None:
    causal = torch.eye(3)
    leaky = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # row 0 sees s=1
    d = connectivity_decay(torch.stack([causal, leaky]), far=1)
    assert d.rows == 6
    assert math.isclose(d.future_share, 0.5 / 6)
    assert math.isclose(float(d.curve[0]), (3 + 0.5 + 2) / 6)
    assert d.far_share == 0.0
    assert d.curve.sum() < 1


def test_lengths_leave_out_rows() -> None:
    conn = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]] * 2)
    full = connectivity_decay(conn, far=1)
    short = connectivity_decay(conn, far=1, lengths=torch.tensor([3, 2]))
    assert full.rows == 6 and short.rows == 5
    assert short.counts.tolist() == [5, 3, 1]
    assert math.isclose(short.far_share, (0.5 + 0.0 + 0.5) / 3)  # rows (0,1), (0,2), (1,1)
    assert math.isclose(full.far_share, (0.5 + 0.0) * 2 / 4)


def test_delay_model_reaches_exactly_its_delay(delay_lm) -> None:
    conn = connectivity(delay_lm([3]), torch.randint(0, 6, (4, 9)))
    near = connectivity_decay(conn, far=3)
    assert near.far_share == 1.0 and near.future_share == 0.0
    assert near.curve[3] == 1.0 and bool((near.curve[[0, 1, 2, 4, 5]] == 0).all())
    assert connectivity_decay(conn, far=4).far_share == 0.0


def test_handoff_has_future_share(lm) -> None:
    x = torch.randint(0, 6, (2, 6), generator=torch.Generator().manual_seed(0))
    assert connectivity_decay(connectivity(lm("independent"), x)).future_share == 0.0
    assert connectivity_decay(connectivity(lm("handoff"), x)).future_share > 1e-4


def test_nan_where_nothing_to_average_and_to_dict() -> None:
    d = connectivity_decay(torch.eye(2), far=3)
    assert math.isnan(d.far_share)
    out = d.to_dict()
    assert out["far_share"] is None and out["curve"] == [1.0, 0.0] and out["counts"] == [2, 1]
    empty = connectivity_decay(torch.zeros(3, 3))
    assert empty.rows == 0 and bool(empty.curve.isnan().all()) and math.isnan(empty.future_share)


def test_bad_input() -> None:
    with pytest.raises(rk.ShapeError, match="conn"):
        connectivity_decay(torch.zeros(2, 3))
    with pytest.raises(rk.ShapeError, match="conn"):
        connectivity_decay(torch.zeros(3))
    with pytest.raises(rk.InputTypeError, match="conn"):
        connectivity_decay(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(rk.ConfigError, match="conn"):
        connectivity_decay(-torch.eye(3))
    with pytest.raises(rk.ConfigError, match="far"):
        connectivity_decay(torch.eye(3), far=0)
    with pytest.raises(rk.ShapeError, match="lengths"):
        connectivity_decay(torch.eye(3)[None], lengths=torch.tensor([4]))
    with pytest.raises(rk.ShapeError, match="lengths"):
        connectivity_decay(torch.eye(3)[None], lengths=torch.tensor([1, 2]))
    with pytest.raises(rk.InputTypeError, match="lengths"):
        connectivity_decay(torch.eye(3)[None], lengths=torch.tensor([1.0]))


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 9),
    far=st.integers(1, 10),
    seed=st.integers(0, 2**16),
    causal=st.booleans(),
)
def test_far_share_at_is_far_share_recomputed_with_that_far(
    B: int, T: int, far: int, seed: int, causal: bool
) -> None:
    g = torch.Generator().manual_seed(seed)
    conn = torch.rand(B, T, T, generator=g, dtype=torch.float64)
    conn = conn * (torch.rand(B, T, T, generator=g) > 0.3)  # zero entries, some zero rows
    if causal:
        conn = conn.tril()
    direct = connectivity_decay(conn, far=far).far_share
    derived = connectivity_decay(conn, far=1).far_share_at(far)
    if math.isnan(direct):
        assert math.isnan(derived)
    else:
        assert math.isclose(derived, direct, rel_tol=1e-12, abs_tol=1e-15)


def test_far_share_at_checks_far_and_survives_json() -> None:
    d = connectivity_decay(torch.eye(4) + torch.eye(4).roll(-3, dims=1).tril(-1))
    assert d.far_share_at(3) == 0.5  # only t=3 reaches 3 back: half its mass
    assert math.isnan(d.far_share_at(4))  # beyond the curve
    assert ConnectivityDecay.from_dict(d.to_dict()).far_share_at(3) == 0.5
    with pytest.raises(ConfigError) as err:
        d.far_share_at(0)
    assert err.value.argument == "far"
