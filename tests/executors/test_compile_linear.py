"""torch.export of the linear-recurrence cells: minGRU/minLSTM trace with a free time
axis and batch; so does the LRU, its complex state carried as real pairs through torch's
scan (exported and run under ``torch.no_grad()``); tracing the LRU with gradients
(compile or export) is refused with one clear error."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import recurrentkit as rk
from recurrentkit.errors import UnsupportedError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DYNAMIC = {"x": {0: Dim("T", min=1), 1: Dim("B", min=1)}}


@pytest.mark.parametrize("routing", ["independent", "residual"])
@pytest.mark.parametrize("first", [rk.MinGRUCell, rk.MinLSTMCell])
def test_linear_cells_export_with_free_time_and_batch(routing: str, first: type) -> None:
    torch.manual_seed(0)
    stack = rk.Stack([first(4, 8), rk.GRUCell(8, 8)], routing).eval()
    program = torch.export.export(stack, (torch.randn(5, 3, 4),), dynamic_shapes=DYNAMIC)
    for steps, batch in [(1, 1), (5, 3), (64, 3)]:
        x = torch.randn(steps, batch, 4)
        got, got_state = program.module()(x)
        want, want_state = stack(x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        for g, w in zip(got_state, want_state):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_lru_exports_with_free_time_and_batch() -> None:
    torch.manual_seed(0)
    stack = rk.Stack([rk.LRUCell(4, 8), rk.LRUCell(8, 8)], "independent").eval().double()
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    with torch.no_grad():  # torch 2.13's scan cannot differentiate complex intermediates
        program = torch.export.export(stack, (x,), dynamic_shapes=DYNAMIC).module()
    for steps, batch in [(1, 1), (5, 3), (64, 3)]:
        x = torch.randn(steps, batch, 4, dtype=torch.float64)
        with torch.no_grad():
            got, got_state = program(x)
            want, want_state = stack(x)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
        for g, w in zip(got_state, want_state):
            assert g.is_complex()
            torch.testing.assert_close(g, w, atol=1e-12, rtol=0)


def test_lru_traces_under_no_grad_and_is_refused_with_gradients() -> None:
    torch.manual_seed(0)
    stack = rk.Stack([rk.LRUCell(4, 8), rk.GRUCell(8, 8)], "independent").eval()
    compiled = torch.compile(stack, backend="eager", dynamic=True)
    with torch.no_grad():
        for steps in (5, 9):
            x = torch.randn(steps, 3, 4)
            torch.testing.assert_close(compiled(x)[0], stack(x)[0], atol=1e-5, rtol=0)
    with pytest.raises(UnsupportedError, match="complex"):
        compiled(torch.randn(5, 3, 4))
    with pytest.raises(UnsupportedError, match="complex"):
        torch.export.export(stack, (torch.randn(5, 3, 4),), dynamic_shapes=DYNAMIC)
