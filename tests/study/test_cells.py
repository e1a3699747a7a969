"""The original study's GRU cell: its equations, parameter count and dropout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import recurrentkit as rk
from recurrentkit.study.cells import StudyGRUCell


class Reference(nn.Module):
    """The issue's equations with one nn.Linear per projection, as the original wrote them."""

    def __init__(self, I: int, H: int) -> None:  # noqa: E741
        super().__init__()
        self.W_rx, self.W_zx, self.W_x = nn.Linear(I, H), nn.Linear(I, H), nn.Linear(I, H)
        self.W_rh = nn.Linear(H, H, bias=False)
        self.W_zh = nn.Linear(H, H, bias=False)
        self.W_h = nn.Linear(H, H, bias=False)
        self.b_r, self.b_z = nn.Parameter(torch.randn(H)), nn.Parameter(torch.randn(H))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        r = torch.sigmoid(self.W_rx(x) + self.W_rh(h) + self.b_r)
        z = torch.sigmoid(self.W_zx(x) + self.W_zh(h) + self.b_z)
        cand = torch.tanh(self.W_x(x) + self.W_h(r * h))
        return (1 - z) * h + z * cand


def copy_into(cell: StudyGRUCell, ref: Reference) -> None:
    with torch.no_grad():
        cell.weight_ih.copy_(torch.cat([ref.W_rx.weight, ref.W_zx.weight, ref.W_x.weight]))
        cell.bias_ih.copy_(torch.cat([ref.W_rx.bias, ref.W_zx.bias, ref.W_x.bias]))
        cell.weight_hh.copy_(torch.cat([ref.W_rh.weight, ref.W_zh.weight, ref.W_h.weight]))
        cell.bias_r.copy_(ref.b_r)
        cell.bias_z.copy_(ref.b_z)


@given(I=st.integers(1, 6), H=st.integers(1, 6), B=st.integers(1, 4))
def test_equations_match_the_original(I: int, H: int, B: int) -> None:  # noqa: E741
    torch.manual_seed(I * 100 + H * 10 + B)
    ref = Reference(I, H).double()
    cell = StudyGRUCell(I, H).double()
    copy_into(cell, ref)
    x, h = torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    y, s = cell(x, h)
    torch.testing.assert_close(y, ref(x, h), rtol=0, atol=1e-12)
    assert y is s
    # The parameter count is the original's: 3IH + 3H^2 + 5H.
    assert sum(p.numel() for p in cell.parameters()) == 3 * I * H + 3 * H * H + 5 * H
    assert sum(p.numel() for p in ref.parameters()) == 3 * I * H + 3 * H * H + 5 * H


def test_z_weighs_the_candidate() -> None:
    cell = StudyGRUCell(2, 3).double()
    x, h = torch.randn(1, 2, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    with torch.no_grad():
        cell.bias_z.fill_(-50.0)  # z -> 0: keep the old state
    torch.testing.assert_close(cell(x, h)[0], h)
    with torch.no_grad():
        cell.bias_z.fill_(50.0)  # z -> 1: take the candidate, which is in (-1, 1)
    assert not torch.allclose(cell(x, h)[0], h)


def test_dropout_acts_on_the_carried_state_in_training_only() -> None:
    torch.manual_seed(0)
    cell = StudyGRUCell(4, 64, dropout=0.5)
    x, h = torch.randn(8, 4), torch.randn(8, 64)
    cell.eval()
    y_eval, _ = cell(x, h)
    cell.train()
    y, s = cell(x, h)
    assert y is s  # one mask: what is passed up is what is carried
    zeroed = y == 0
    assert 0.3 < zeroed.float().mean() < 0.7
    torch.testing.assert_close(y[~zeroed], 2 * y_eval[~zeroed])


def test_defaults_and_errors() -> None:
    cell = StudyGRUCell(3, 5)
    assert cell.initial_state(2).shape == (2, 5)
    x = torch.randn(2, 3)
    assert torch.equal(cell(x)[0], cell(x, torch.zeros(2, 5))[0])  # no state means zeros
    assert not cell.bias_r.detach().any() and not cell.bias_z.detach().any()
    with pytest.raises(rk.ConfigError):
        StudyGRUCell(3, 5, dropout=1.5)
    with pytest.raises(rk.ConfigError):
        StudyGRUCell(0, 5)


@pytest.mark.parametrize("routing", ["independent", "shared", "residual", "cross_layer"])
def test_a_user_cell_steps_like_it_runs_in_any_causal_stack(routing: str) -> None:
    torch.manual_seed(0)
    stack = rk.Stack([StudyGRUCell(3, 4), StudyGRUCell(4, 4)], routing).double().eval()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    y, _ = stack(x)
    state = None
    for t in range(5):
        y_t, state = stack.step(x[t], state)
        torch.testing.assert_close(y_t, y[t], rtol=0, atol=1e-12)
