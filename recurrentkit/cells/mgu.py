"""The minimal gated unit (Zhou et al. 2016): a GRU with one gate."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from recurrentkit.cells._split import weight_rows
from recurrentkit.cells.protocol import CellBase

__all__ = ["MGUCell"]


class MGUCell(CellBase):
    r"""Minimal gated unit (Zhou, Wu, Zhang, Zhou 2016, *Minimal Gated Unit for
    Recurrent Neural Networks*, arXiv 1603.09420), rows ``f | n``.

    $$
    \begin{aligned}
    f &= \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf}) \\
    n &= \tanh(W_{in} x + b_{in} + W_{hn} (f \odot h) + b_{hn}) \\
    h' &= (1 - f) \odot h + f \odot n
    \end{aligned}
    $$

    The one gate ``f`` both resets the state the candidate ``n`` reads (as a
    reset-before GRU's ``r``) and mixes the new state (as ``1 - z``). The output is
    ``h'`` and so is the new state. It equals ``GRUCell(reset="before")`` with ``r``'s
    rows set to ``f``'s and ``z``'s to ``-f``'s (``σ(-a) = 1 - σ(a)``).

    Args:
        input_size: ``I``, features of ``x``.
        hidden_size: ``H``, features of the state.
        bias: create ``bias_ih`` and ``bias_hh``.
        device: where to create the parameters.
        dtype: dtype of the parameters (floating point).

    Raises:
        ConfigError: a size below 1, an unknown device or a non-floating dtype.
        InputTypeError: a size that is not an int, a ``bias`` that is not a bool.

    Parameters (torch.nn's naming): ``weight_ih`` ``(2H, I)``, ``weight_hh`` ``(2H, H)``,
    ``bias_ih`` ``(2H,)``, ``bias_hh`` ``(2H,)``, rows ``f | n``; initialised
    ``U(-1/sqrt(H), 1/sqrt(H))`` as torch's cells.

    Fast without a kernel: its split step (``input_projection``, ``step_projected``)
    takes the executor's ``linear``. The two recurrent products read different inputs
    (``h`` and ``f ⊙ h``), so each uses its row block of ``weight_hh``: one view per
    block for a whole run where ``linear`` keeps views (the fast executor's does, so both
    blocks' gradients are deferred to one product each), a slice otherwise.

    Shape:
        - x: ``(B, I)`` or ``(I,)``; state: ``(B, H)`` or ``(H,)``.
        - output and new state: ``(B, H)`` or ``(H,)``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.MGUCell(3, 5)
        >>> y, h = cell(torch.randn(2, 3))
        >>> y.shape, torch.equal(y, h)
        (torch.Size([2, 5]), True)
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
        self._make_gate_parameters(2 * hidden_size, hidden_size, self.bias, factory)
        self.reset_parameters()

    def input_projection(self, x: Tensor) -> Tensor:
        """``(M, I)`` → ``(M, 2H)``: ``W_ih x + b_ih + b_hh`` (both biases only add, so
        ``b_hh`` is added here once instead of at every step)."""
        bias = None if self.bias_ih is None else self.bias_ih + self.bias_hh
        return F.linear(x, self.weight_ih, bias)

    def step_projected(
        self, gi: Tensor, state: Tensor, linear: Any = F.linear
    ) -> tuple[Tensor, Tensor]:
        """One step from ``gi = input_projection(x)`` ``(B, 2H)``; products through
        ``linear``."""
        H = self.hidden_size
        i_f, i_n = gi.split(H, dim=1)  # (B, H) each
        f = torch.sigmoid(i_f + linear(state, weight_rows(linear, self.weight_hh, 0, H)))
        n = torch.tanh(i_n + linear(f * state, weight_rows(linear, self.weight_hh, H, 2 * H)))
        h = torch.lerp(state, n, f)  # (1 - f) h + f n
        return h, h

    def _step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.step_projected(self.input_projection(x), state)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias}"
