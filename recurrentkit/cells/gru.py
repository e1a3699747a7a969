"""The GRU cell, in torch's reset-after form or Cho et al.'s reset-before form."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from recurrentkit._validation import check_bool, check_choice, check_int, factory_kwargs
from recurrentkit.cells.protocol import CellBase

__all__ = ["GRUCell"]

RESETS = ("after", "before")


class GRUCell(CellBase):
    r"""Gated recurrent unit, rows ``r | z | n`` as in torch.nn.GRUCell.

    $$
    \begin{aligned}
    r &= \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\
    z &= \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
    n &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn}))
        \quad\text{(reset="after", torch/cuDNN)} \\
    n &= \tanh(W_{in} x + b_{in} + W_{hn} (r \odot h) + b_{hn})
        \quad\text{(reset="before", Cho et al. 2014)} \\
    h' &= (1 - z) \odot n + z \odot h
    \end{aligned}
    $$

    The output is ``h'`` and so is the new state.

    Args:
        input_size: ``I``, features of ``x``.
        hidden_size: ``H``, features of the state.
        bias: create ``bias_ih`` and ``bias_hh``.
        reset: ``"after"`` (torch's form, the default) or ``"before"``.
        device: where to create the parameters.
        dtype: dtype of the parameters (floating point).

    Raises:
        ConfigError: a size below 1, an unknown ``reset``, an unknown device or a
            non-floating dtype.
        InputTypeError: a size that is not an int, a ``bias`` that is not a bool.

    Parameters (torch.nn.GRUCell's names): ``weight_ih`` ``(3H, I)``, ``weight_hh``
    ``(3H, H)``, ``bias_ih`` ``(3H,)``, ``bias_hh`` ``(3H,)``, rows ``r | z | n``.

    Shape:
        - x: ``(B, I)`` or ``(I,)``; state: ``(B, H)`` or ``(H,)``.
        - output and new state: ``(B, H)`` or ``(H,)``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.GRUCell(3, 5, reset="before")
        >>> y, h = cell(torch.randn(2, 3))
        >>> torch.equal(y, h)
        True
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        reset: str = "after",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size)
        self.hidden_size = check_int("hidden_size", hidden_size)
        self.output_size = self.hidden_size
        self.reset = check_choice("reset", reset, RESETS)
        self.bias = check_bool("bias", bias)
        factory: dict[str, Any] = factory_kwargs(device, dtype)
        self._make_gate_parameters(3 * hidden_size, hidden_size, self.bias, factory)
        self.reset_parameters()

    def _step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        H = self.hidden_size
        gi = F.linear(x, self.weight_ih, self.bias_ih)  # (B, 3H)
        i_r, i_z, i_n = gi.split(H, dim=1)
        if self.reset == "after":
            gh = F.linear(state, self.weight_hh, self.bias_hh)  # (B, 3H)
            h_r, h_z, h_n = gh.split(H, dim=1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
        else:
            w_rz, w_n = self.weight_hh[: 2 * H], self.weight_hh[2 * H :]
            b_rz = None if self.bias_hh is None else self.bias_hh[: 2 * H]
            b_n = None if self.bias_hh is None else self.bias_hh[2 * H :]
            h_r, h_z = F.linear(state, w_rz, b_rz).split(H, dim=1)  # (B, H) each
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + F.linear(r * state, w_n, b_n))
        h = n + z * (state - n)  # = (1 - z) * n + z * h
        return h, h

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reset={self.reset!r}, bias={self.bias}"
