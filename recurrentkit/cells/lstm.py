"""The LSTM cell, torch.nn.LSTM's equations, gate order and parameter names (with projection)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from recurrentkit._validation import check_int
from recurrentkit.cells.protocol import CellBase, make_weight
from recurrentkit.errors import ConfigError

__all__ = ["LSTMCell", "LSTMState"]


class LSTMState(NamedTuple):
    """State of an :class:`LSTMCell`, in torch's order.

    Attributes:
        h: hidden state ``(B, P)`` with ``P = proj_size`` if set, else ``(B, H)``.
        c: cell memory ``(B, H)``.
    """

    h: Tensor
    c: Tensor


class LSTMCell(CellBase):
    r"""Long short-term memory cell, rows ``i | f | g | o`` as in torch.nn.LSTM.

    $$
    \begin{aligned}
    i, f, g, o &= \text{split}(W_{ih} x + b_{ih} + W_{hh} h + b_{hh}) \\
    c' &= \sigma(f) \odot c + \sigma(i) \odot \tanh(g) \\
    h' &= \sigma(o) \odot \tanh(c') \qquad
    \text{or } h' = W_{hr} (\sigma(o) \odot \tanh(c')) \text{ with proj\_size}
    \end{aligned}
    $$

    The output is ``h'``; the state is ``LSTMState(h', c')``.

    Args:
        input_size: ``I``, features of ``x``.
        hidden_size: ``H``, features of the memory ``c``.
        bias: create ``bias_ih`` and ``bias_hh``.
        proj_size: ``P``; if ``> 0``, ``h`` is projected to ``P < H`` features by
            ``weight_hr`` (torch.nn.LSTM's ``proj_size``).
        device: where to create the parameters.
        dtype: dtype of the parameters (floating point).

    Raises:
        ConfigError: a size below 1, ``proj_size`` not in ``0..hidden_size-1``, an
            unknown device or a non-floating dtype.
        InputTypeError: a size that is not an int, a ``bias`` that is not a bool.

    Parameters (torch's names): ``weight_ih`` ``(4H, I)``, ``weight_hh`` ``(4H, P or H)``,
    ``bias_ih`` ``(4H,)``, ``bias_hh`` ``(4H,)``, ``weight_hr`` ``(P, H)`` if projected.

    Shape:
        - x: ``(B, I)`` or ``(I,)``.
        - state: ``LSTMState(h (B, P or H), c (B, H))``, unbatched without ``B``.
        - output: ``(B, P or H)``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.LSTMCell(3, 8, proj_size=4)
        >>> y, (h, c) = cell(torch.randn(2, 3))
        >>> y.shape, c.shape
        (torch.Size([2, 4]), torch.Size([2, 8]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.bias, factory = self._begin(input_size, hidden_size, bias, device, dtype)
        self.proj_size = check_int("proj_size", proj_size, minimum=0)
        if proj_size >= hidden_size:
            raise ConfigError(
                "proj_size", f"0 (no projection) or an int < hidden_size={hidden_size}", proj_size
            )
        self.output_size = proj_size or hidden_size
        self._make_gate_parameters(4 * hidden_size, self.output_size, self.bias, factory)
        if proj_size:
            self.weight_hr = make_weight(proj_size, hidden_size, factory)
        else:
            self.register_parameter("weight_hr", None)
        self.reset_parameters()

    def _zero_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LSTMState:
        return LSTMState(
            torch.zeros(batch_size, self.output_size, device=device, dtype=dtype),
            torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype),
        )

    def _step(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        return self.step_projected(self.input_projection(x), state)

    def input_projection(self, x: Tensor) -> Tensor:
        """The split step's part that reads ``x`` only: ``W_ih x + b_ih``, ``(M, 4H)``."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def step_projected(
        self, gi: Tensor, state: LSTMState, linear: Callable[..., Tensor] = F.linear
    ) -> tuple[Tensor, LSTMState]:
        """The rest of a step from ``gi = input_projection(x)`` ``(B, 4H)``, its products
        with ``weight_hh`` (and ``weight_hr``) through ``linear`` (see
        :mod:`recurrentkit.cells.protocol`): what a subclass that keeps the equations
        runs on (the split-step plan), and the reference's own step."""
        h, c = state
        gates = gi + linear(h, self.weight_hh, self.bias_hh)  # (B, 4H)
        h, c = lstm_gates(gates, c)  # (B, H) each
        if self.weight_hr is not None:
            h = linear(h, self.weight_hr)  # (B, P)
        return h, LSTMState(h, c)

    def extra_repr(self) -> str:
        proj = f", proj_size={self.proj_size}" if self.proj_size else ""
        return f"{super().extra_repr()}{proj}, bias={self.bias}"


def lstm_gates(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """An LSTM step from its pre-activations, on plain autograd ops: the
    :class:`LSTMCell` equations after the products that read ``x`` and ``h``.

    Args:
        gates: ``(B, 4H)``, ``W_ih x + b_ih + W_hh h + b_hh``, rows ``i | f | g | o``.
        c: ``(B, H)``, the previous memory.

    Returns:
        ``(σ(o) ⊙ tanh(c'), c')``, both ``(B, H)``, with
        ``c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g)`` (the projection, if any, is the caller's).

    The one place these gates are written on differentiable ops: :class:`LSTMCell`'s
    step (the reference) and the fast executor's LSTM step on projected input
    (:class:`~recurrentkit.executors.kernels.lstm.LSTMKernel`) both call it. It lives
    here, beside the equations, because it needs nothing but autograd ops; the fast
    executor's in-place forms (no autograd) are in
    :mod:`recurrentkit.executors.kernels.lstm`.
    """
    i, f, g, o = gates.chunk(4, dim=1)  # (B, H) each, before activation
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # (B, H)
    return torch.sigmoid(o) * torch.tanh(c), c
