"""torch.export of the linear-recurrence cells: minGRU/minLSTM trace with a free time
axis and batch; the LRU's complex state is refused with one clear error."""

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


def test_lru_is_refused_while_tracing() -> None:
    stack = rk.Stack([rk.LRUCell(4, 8), rk.GRUCell(8, 8)], "independent").eval()
    with pytest.raises(UnsupportedError, match="complex"):
        torch.export.export(stack, (torch.randn(5, 3, 4),), dynamic_shapes=DYNAMIC)
