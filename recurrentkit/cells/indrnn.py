"""The independently recurrent cell, IndRNN (Li et al. 2018)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from recurrentkit._validation import check_choice
from recurrentkit.cells.protocol import CellBase, make_bias, make_weight

__all__ = ["IndRNNCell"]

NONLINEARITIES = ("relu", "tanh")


class IndRNNCell(CellBase):
    r"""Independently recurrent cell (Li, Li, Cook, Zhu, Gao 2018, *Independently
    Recurrent Neural Network (IndRNN): Building A Longer and Deeper RNN*).

    $$
    h' = \phi(W_{ih} x + b_{ih} + w_{hh} \odot h + b_{hh}), \quad
    \phi \in \{\mathrm{relu}, \tanh\}
    $$

    The recurrent weight is a vector: each unit sees only its own past (units interact
    through the layers above). The output is ``h'`` and so is the new state. It equals
    an ``nn.RNNCell`` whose ``weight_hh`` is ``diag(w_hh)``.

    Args:
        input_size: ``I``, features of ``x``.
        hidden_size: ``H``, features of the state.
        bias: create ``bias_ih`` and ``bias_hh``.
        nonlinearity: ``"relu"`` (the paper's; the default) or ``"tanh"``.
        device: where to create the parameters.
        dtype: dtype of the parameters (floating point).

    Raises:
        ConfigError: a size below 1, an unknown ``nonlinearity``, an unknown device or a
            non-floating dtype.
        InputTypeError: a size that is not an int, a ``bias`` that is not a bool.

    Parameters: ``weight_ih`` ``(H, I)``, ``weight_hh`` ``(H,)`` (a vector),
    ``bias_ih`` ``(H,)``, ``bias_hh`` ``(H,)``; every one initialised
    ``U(-1/sqrt(H), 1/sqrt(H))`` as the other cells. The paper's constraint on
    ``|w_hh|`` is not applied: clip ``weight_hh`` yourself if you want it.

    Fast without a kernel: its split step has no product with a matrix at all (the
    recurrence is one fused multiply-add, ``addcmul``), so the ``linear`` it accepts has
    nothing to defer.

    Shape:
        - x: ``(B, I)`` or ``(I,)``; state: ``(B, H)`` or ``(H,)``.
        - output and new state: ``(B, H)`` or ``(H,)``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.IndRNNCell(3, 5)
        >>> y, h = cell(torch.randn(2, 3))
        >>> cell.weight_hh.shape, y.shape
        (torch.Size([5]), torch.Size([2, 5]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "relu",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.bias, factory = self._begin(input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        self.weight_ih = make_weight(hidden_size, input_size, factory)
        self.weight_hh = make_bias(hidden_size, factory)  # a vector (H,)
        if self.bias:
            self.bias_ih = make_bias(hidden_size, factory)
            self.bias_hh = make_bias(hidden_size, factory)
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def input_projection(self, x: Tensor) -> Tensor:
        """``(M, I)`` → ``(M, H)``: ``W_ih x + b_ih + b_hh`` (the biases only add)."""
        bias = None if self.bias_ih is None else self.bias_ih + self.bias_hh
        return F.linear(x, self.weight_ih, bias)

    def step_projected(
        self, gi: Tensor, state: Tensor, linear: Any = F.linear
    ) -> tuple[Tensor, Tensor]:
        """One step from ``gi = input_projection(x)`` ``(B, H)`` (``linear`` is unused:
        the recurrence has no matrix product)."""
        pre = torch.addcmul(gi, self.weight_hh, state)  # gi + w_hh ⊙ h
        h = torch.relu(pre) if self.nonlinearity == "relu" else torch.tanh(pre)
        return h, h

    def _step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.step_projected(self.input_projection(x), state)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity!r}, bias={self.bias}"
