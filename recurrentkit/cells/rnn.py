"""The Elman RNN cell, torch.nn.RNNCell's equations and parameter names."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from recurrentkit._validation import check_choice
from recurrentkit.cells.protocol import CellBase

__all__ = ["RNNCell"]

NONLINEARITIES = ("tanh", "relu")


class RNNCell(CellBase):
    r"""Elman RNN cell.

    $$
    h' = \phi(W_{ih} x + b_{ih} + W_{hh} h + b_{hh}), \quad \phi \in \{\tanh, \mathrm{relu}\}
    $$

    The output is ``h'`` and so is the new state.

    Args:
        input_size: ``I``, features of ``x``.
        hidden_size: ``H``, features of the state.
        bias: create ``bias_ih`` and ``bias_hh``.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        device: where to create the parameters.
        dtype: dtype of the parameters (floating point).

    Raises:
        ConfigError: a size below 1, an unknown ``nonlinearity``, an unknown device or a
            non-floating dtype.
        InputTypeError: a size that is not an int, a ``bias`` that is not a bool.

    Parameters (torch.nn.RNNCell's names): ``weight_ih`` ``(H, I)``, ``weight_hh``
    ``(H, H)``, ``bias_ih`` ``(H,)``, ``bias_hh`` ``(H,)``.

    Shape:
        - x: ``(B, I)`` or ``(I,)``; state: ``(B, H)`` or ``(H,)``.
        - output and new state: ``(B, H)`` or ``(H,)``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.RNNCell(3, 5)
        >>> y, h = cell(torch.randn(2, 3))
        >>> y.shape, h.shape
        (torch.Size([2, 5]), torch.Size([2, 5]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.bias, factory = self._begin(input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        self._make_gate_parameters(hidden_size, hidden_size, self.bias, factory)
        self.reset_parameters()

    def _step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.step_projected(self.input_projection(x), state)

    def input_projection(self, x: Tensor) -> Tensor:
        """The split step's part that reads ``x`` only: ``W_ih x + b_ih``, ``(M, H)``."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def step_projected(
        self, gi: Tensor, state: Tensor, linear: Callable[..., Tensor] = F.linear
    ) -> tuple[Tensor, Tensor]:
        """The rest of a step from ``gi = input_projection(x)`` ``(B, H)``, the product
        with ``weight_hh`` through ``linear`` (see :mod:`recurrentkit.cells.protocol`)."""
        pre = gi + linear(state, self.weight_hh, self.bias_hh)  # (B, H)
        h = torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)
        return h, h

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity!r}, bias={self.bias}"
