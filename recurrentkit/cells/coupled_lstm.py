"""The LSTM with coupled input and forget gates, CIFG (Greff et al. 2017)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from recurrentkit.cells.lstm import LSTMState
from recurrentkit.cells.protocol import CellBase

__all__ = ["CoupledLSTMCell"]


class CoupledLSTMCell(CellBase):
    r"""LSTM with coupled input and forget gates (CIFG: Greff, Srivastava, Koutník,
    Steunebrink, Schmidhuber 2017, *LSTM: A Search Space Odyssey*), rows ``f | g | o``.

    $$
    \begin{aligned}
    f, g, o &= \text{split}_3(W_{ih} x + b_{ih} + W_{hh} h + b_{hh}) \\
    c' &= \sigma(f) \odot c + (1 - \sigma(f)) \odot \tanh(g) \\
    h' &= \sigma(o) \odot \tanh(c')
    \end{aligned}
    $$

    The input gate is ``1 - σ(f)``: one gate fewer than :class:`~recurrentkit.LSTMCell`
    (``3H`` gate rows instead of ``4H``). The output is ``h'``; the state is
    :class:`~recurrentkit.LSTMState` ``(h', c')``. It equals an
    ``nn.LSTMCell`` whose input-gate rows are the negated forget-gate rows
    (``σ(-a) = 1 - σ(a)``).

    Args:
        input_size: ``I``, features of ``x``.
        hidden_size: ``H``, features of ``h`` and ``c``.
        bias: create ``bias_ih`` and ``bias_hh``.
        device: where to create the parameters.
        dtype: dtype of the parameters (floating point).

    Raises:
        ConfigError: a size below 1, an unknown device or a non-floating dtype.
        InputTypeError: a size that is not an int, a ``bias`` that is not a bool.

    Parameters (torch.nn's naming): ``weight_ih`` ``(3H, I)``, ``weight_hh`` ``(3H, H)``,
    ``bias_ih`` ``(3H,)``, ``bias_hh`` ``(3H,)``, rows ``f | g | o``; initialised
    ``U(-1/sqrt(H), 1/sqrt(H))`` as torch's cells.

    Fast without a kernel: its split step takes the executor's ``linear`` (one recurrent
    product with the whole ``weight_hh`` per step, its gradient deferred).

    Shape:
        - x: ``(B, I)`` or ``(I,)``.
        - state: ``LSTMState(h (B, H), c (B, H))``, unbatched without ``B``.
        - output: ``(B, H)`` or ``(H,)``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.CoupledLSTMCell(3, 5)
        >>> y, (h, c) = cell(torch.randn(2, 3))
        >>> y.shape, c.shape
        (torch.Size([2, 5]), torch.Size([2, 5]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.bias, factory = self._begin(input_size, hidden_size, bias, device, dtype)
        self._make_gate_parameters(3 * hidden_size, hidden_size, self.bias, factory)
        self.reset_parameters()

    def _zero_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LSTMState:
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return LSTMState(zeros, zeros.clone())

    def input_projection(self, x: Tensor) -> Tensor:
        """``(M, I)`` → ``(M, 3H)``: ``W_ih x + b_ih + b_hh`` (the biases only add)."""
        bias = None if self.bias_ih is None else self.bias_ih + self.bias_hh
        return F.linear(x, self.weight_ih, bias)

    def step_projected(
        self, gi: Tensor, state: LSTMState, linear: Any = F.linear
    ) -> tuple[Tensor, LSTMState]:
        """One step from ``gi = input_projection(x)`` ``(B, 3H)``; the recurrent product
        through ``linear``."""
        h, c = state
        gates = gi + linear(h, self.weight_hh)  # (B, 3H)
        f, g, o = gates.split(self.hidden_size, dim=1)  # (one backward node, not three)
        c = torch.lerp(torch.tanh(g), c, torch.sigmoid(f))  # σ(f) c + (1 - σ(f)) tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, LSTMState(h, c)

    def _step(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        return self.step_projected(self.input_projection(x), state)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias}"
