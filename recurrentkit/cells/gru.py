"""The GRU cell, in torch's reset-after form or Cho et al.'s reset-before form."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from recurrentkit._validation import check_choice
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
        self.bias, factory = self._begin(input_size, hidden_size, bias, device, dtype)
        self.reset = check_choice("reset", reset, RESETS)
        self._make_gate_parameters(3 * hidden_size, hidden_size, self.bias, factory)
        self.reset_parameters()

    def _step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.step_projected(self.input_projection(x), state)

    def input_projection(self, x: Tensor) -> Tensor:
        """The split step's part that reads ``x`` only: ``W_ih x + b_ih``, ``(M, 3H)``."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def step_projected(
        self, gi: Tensor, state: Tensor, linear: Callable[..., Tensor] = F.linear
    ) -> tuple[Tensor, Tensor]:
        """The rest of a step from ``gi = input_projection(x)`` ``(B, 3H)``, its products
        with ``weight_hh`` through ``linear`` (see :mod:`recurrentkit.cells.protocol`).
        The built-in class runs on its kernel; this is what a subclass that keeps the
        equations runs on (the split-step plan), and the reference's own step."""
        H = self.hidden_size
        i_rz, i_n = gi.split_with_sizes((2 * H, H), dim=1)
        if self.reset == "after":
            gh = linear(state, self.weight_hh, self.bias_hh)  # (B, 3H)
            h_rz, h_n = gh.split_with_sizes((2 * H, H), dim=1)
            h = gru_gates(i_rz + h_rz, i_n, state, h_n)
        else:  # the two row blocks of W_hh, as one view each per run where linear keeps them
            rows = getattr(linear, "rows", _slice)
            w_rz, w_n = rows(self.weight_hh, 0, 2 * H), rows(self.weight_hh, 2 * H, 3 * H)
            b = self.bias_hh
            b_rz = None if b is None else rows(b, 0, 2 * H)
            b_n = None if b is None else rows(b, 2 * H, 3 * H)
            h = gru_gates(i_rz + linear(state, w_rz, b_rz), i_n, state, None, w_n, b_n, linear)
        return h, h

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reset={self.reset!r}, bias={self.bias}"


def _slice(t: Tensor, start: int, stop: int) -> Tensor:
    """``t[start:stop]`` (rows)."""
    return t[start:stop]


def gru_gates(
    a_rz: Tensor,
    i_n: Tensor,
    h: Tensor,
    h_n: Tensor | None,
    w_n: Tensor | None = None,
    b_n: Tensor | None = None,
    linear: Callable[..., Tensor] = F.linear,
) -> Tensor:
    """A GRU step's new state from its pre-activations, on plain autograd ops: the
    :class:`GRUCell` equations after the products that read ``x`` and ``h``.

    Args:
        a_rz: ``(B, 2H)``, the reset and update gates before the sigmoid: rows
            ``r | z`` of ``W_ih x + b_ih + W_hh h + b_hh``.
        i_n: ``(B, H)``, ``W_in x + b_in``.
        h: ``(B, H)``, the previous state.
        h_n: ``(B, H)``, ``W_hn h + b_hn`` (reset-after); ``None`` for reset-before,
            whose ``W_hn (r ⊙ h) + b_hn`` is made here as ``linear(r * h, w_n, b_n)``.
        w_n, b_n: reset-before only: ``W_hn`` ``(H, H)`` and ``b_hn`` (or ``None``).
        linear: ``F.linear``'s signature, for that product (the fast executor passes
            its deferred linear in step loops).

    Returns:
        ``h' = n + z ⊙ (h - n)`` ``(B, H)``.

    The one place these gates are written on differentiable ops: :class:`GRUCell`'s
    step (the reference) and the fast executor's GRU step on projected input
    (:class:`~recurrentkit.executors.kernels.gru.GRUKernel`, step loops, ``torch.compile``)
    both call it. It lives here, beside the equations, because it needs nothing but
    autograd ops; the fast executor's in-place forms (no autograd) are in
    :mod:`recurrentkit.executors.kernels.gru`.
    """
    r, z = torch.sigmoid(a_rz).chunk(2, dim=1)  # (B, H) each
    if h_n is None:  # reset-before: W_hn (r ⊙ h) + b_hn
        n = torch.tanh(i_n + linear(r * h, w_n, b_n))
    else:  # reset-after: r ⊙ (W_hn h + b_hn)
        n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)  # = (1 - z) * n + z * h
