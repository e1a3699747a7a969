"""Small token models shared by the analysis tests (handed out as fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import recurrentkit as rk


class DelayCell(nn.Module):
    """A user cell on the protocol whose output is its input ``delay`` steps ago.

    The state is a shift register of ``delay`` slots of ``size`` features, slot 0 the
    newest input; weights are set by hand: ``y_t = R s_{t-1}`` reads the oldest slot,
    ``s_t = S s_{t-1} + W x_t`` shifts every slot down one and writes ``x_t`` to slot 0.
    So ``y_t = x_{t - delay}`` (zeros before that).
    """

    def __init__(self, size: int, delay: int) -> None:
        super().__init__()
        self.input_size = self.output_size = size
        n = size * delay
        shift = torch.zeros(n, n)
        shift[size:, : n - size] = torch.eye(n - size)  # slot j+1 <- slot j
        write = torch.zeros(n, size)
        write[:size] = torch.eye(size)  # slot 0 <- x_t
        read = torch.zeros(size, n)
        read[:, n - size :] = torch.eye(size)  # y_t <- slot delay-1
        self.weight_hh = nn.Parameter(shift)
        self.weight_ih = nn.Parameter(write)
        self.weight_hr = nn.Parameter(read)

    def initial_state(
        self, batch_size: int, *, device: Any = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        ref = self.weight_hh
        return torch.zeros(
            batch_size, ref.shape[0], device=device or ref.device, dtype=dtype or ref.dtype
        )

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if state is None:
            state = self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        y = state @ self.weight_hr.T  # (B, size): x_{t-delay}
        return y, state @ self.weight_hh.T + x @ self.weight_ih.T


class TokenLM(nn.Module):
    """Embedding -> Stack(batch_first) -> Linear, as a user would write it."""

    def __init__(self, embed: nn.Embedding, rnn: rk.Stack, head: nn.Linear, tuple_out=False):
        super().__init__()
        self.embed, self.rnn, self.head, self.tuple_out = embed, rnn, head, tuple_out

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> Any:
        h, _ = self.rnn(self.embed(idx))  # (B, T, H)
        logits = self.head(h)  # (B, T, V)
        if not self.tuple_out:
            return logits
        loss = (
            None
            if targets is None
            else nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        )
        return logits, loss


CELLS = {
    "gru": rk.GRUCell,
    "lstm": rk.LSTMCell,
    "rnn": rk.RNNCell,
    "nested_lstm": rk.NestedLSTMCell,
}


def make_lm(
    routing: str = "independent",
    *,
    cell: str = "gru",
    V: int = 6,
    E: int = 4,
    H: int = 4,
    layers: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    tuple_out: bool = False,
) -> TokenLM:
    """A tiny token model in eval mode (widths equal, so every policy accepts it)."""
    torch.manual_seed(seed)
    cells = [CELLS[cell](E if k == 0 else H, H) for k in range(layers)]
    stack = rk.Stack(cells, routing, batch_first=True)
    model = TokenLM(nn.Embedding(V, E), stack, nn.Linear(H, V), tuple_out=tuple_out)
    return model.to(dtype).eval()


def make_delay_lm(delays: list[int], *, V: int = 6, E: int = 3, seed: int = 0) -> TokenLM:
    """Embedding -> delay cells stacked independently -> Linear, float64."""
    torch.manual_seed(seed)
    stack = rk.Stack([DelayCell(E, d) for d in delays], "independent", batch_first=True)
    return TokenLM(nn.Embedding(V, E), stack, nn.Linear(E, V)).double().eval()


@pytest.fixture(scope="session")
def lm() -> Callable[..., TokenLM]:
    return make_lm


@pytest.fixture(scope="session")
def delay_lm() -> Callable[..., TokenLM]:
    return make_delay_lm


@pytest.fixture(scope="session")
def token_lm_class() -> type[TokenLM]:
    return TokenLM
