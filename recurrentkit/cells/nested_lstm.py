"""The Nested LSTM cell (Moniz & Krueger 2017): an LSTM whose memory update is an inner LSTM."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from recurrentkit._validation import check_int
from recurrentkit.cells.lstm import LSTMCell
from recurrentkit.cells.protocol import CellBase

__all__ = ["NestedLSTMCell", "NestedLSTMState"]


class NestedLSTMState(NamedTuple):
    """State of a :class:`NestedLSTMCell`.

    Attributes:
        h: outer hidden state ``(B, H)``.
        c: outer memory ``(B, H)``, the inner cell's last hidden state.
        inner: the inner cell's state (an ``LSTMState`` at depth 2, a
            ``NestedLSTMState`` deeper).
    """

    h: Tensor
    c: Tensor
    inner: Any


class NestedLSTMCell(CellBase):
    r"""Nested LSTM (Moniz & Krueger 2017, arXiv 1801.10308).

    The outer gates use torch.nn.LSTM's layout and row order ``i | f | g | o``; the
    memory update ``c' = f ⊙ c + i ⊙ g`` of an LSTM is replaced by an inner cell:

    $$
    \begin{aligned}
    i, f, g, o &= \text{split}(W_{ih} x + b_{ih} + W_{hh} h + b_{hh}) \\
    \tilde x &= \sigma(i) \odot g \qquad \text{(identity on } g\text{, as in the paper)} \\
    \tilde h &= \sigma(f) \odot c \\
    (c', s'_{inner}) &= \text{inner}(\tilde x, s_{inner} \text{ with } h := \tilde h) \\
    h' &= \sigma(o) \odot \tanh(c')
    \end{aligned}
    $$

    ``inner`` is an ``LSTMCell(H, H)`` at ``depth=2`` and a
    ``NestedLSTMCell(H, H, depth - 1)`` deeper. There is no constant forget bias.
    The ``h`` field of the incoming inner state is not read: it is replaced by
    ``σ(f) ⊙ c``.

    Args:
        input_size: ``I``, features of ``x``.
        hidden_size: ``H``, features of every state at every depth.
        depth: number of nested memories, ``>= 2``.
        bias: create biases (at every depth) or none at all.
        device: where to create the parameters.
        dtype: dtype of the parameters (floating point).

    Raises:
        ConfigError: a size below 1, ``depth < 2``, an unknown device or a
            non-floating dtype.
        InputTypeError: a size that is not an int, a ``bias`` that is not a bool.

    Parameters: ``weight_ih`` ``(4H, I)``, ``weight_hh`` ``(4H, H)``, ``bias_ih``,
    ``bias_hh`` ``(4H,)``, and the inner cell's under ``inner.``.

    Shape:
        - x: ``(B, I)`` or ``(I,)``; output: ``(B, H)``.
        - state: ``NestedLSTMState(h (B, H), c (B, H), inner)``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.NestedLSTMCell(3, 6, depth=3)
        >>> y, state = cell(torch.randn(2, 3))
        >>> type(state.inner).__name__, type(state.inner.inner).__name__
        ('NestedLSTMState', 'LSTMState')
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        depth: int = 2,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.bias, factory = self._begin(input_size, hidden_size, bias, device, dtype)
        self.depth = check_int("depth", depth, minimum=2)
        self._make_gate_parameters(4 * hidden_size, hidden_size, self.bias, factory)
        self.inner: LSTMCell | NestedLSTMCell
        if depth == 2:
            self.inner = LSTMCell(hidden_size, hidden_size, bias=bias, **factory)
        else:
            self.inner = NestedLSTMCell(hidden_size, hidden_size, depth - 1, bias=bias, **factory)
        self.reset_parameters()

    def _zero_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> NestedLSTMState:
        def zeros() -> Tensor:
            return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)

        return NestedLSTMState(zeros(), zeros(), self.inner._zero_state(batch_size, device, dtype))

    def _step(self, x: Tensor, state: NestedLSTMState) -> tuple[Tensor, NestedLSTMState]:
        h, c, inner_state = state
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(
            h, self.weight_hh, self.bias_hh
        )  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)
        inner_x = torch.sigmoid(i) * g  # (B, H)
        inner_h = torch.sigmoid(f) * c  # (B, H)
        c, inner_state = self.inner._step(inner_x, inner_state._replace(h=inner_h))
        h = torch.sigmoid(o) * torch.tanh(c)  # (B, H)
        return h, NestedLSTMState(h, c, inner_state)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, depth={self.depth}, bias={self.bias}"
