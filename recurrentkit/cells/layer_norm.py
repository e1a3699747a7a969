"""Layer-normalised GRU and LSTM cells (Ba, Kiros, Hinton 2016)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from recurrentkit.cells.lstm import LSTMState
from recurrentkit.cells.protocol import CellBase, make_bias, make_weight

__all__ = ["LayerNormGRUCell", "LayerNormLSTMCell"]


def _plus(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """``a + b`` of two optional shifts (both present or both absent)."""
    return None if a is None or b is None else a + b


class LayerNormGRUCell(CellBase):
    r"""GRU in torch's reset-after form with layer normalisation of both projections
    (Ba, Kiros, Hinton 2016, *Layer Normalization*, arXiv 1607.06450), rows ``r | z | n``.

    $$
    \begin{aligned}
    g_i &= \mathrm{LN}_{ih}(W_{ih} x) + b_{ih}, \qquad
    g_h = \mathrm{LN}_{hh}(W_{hh} h) + b_{hh} \\
    r &= \sigma(g_{i,r} + g_{h,r}), \qquad z = \sigma(g_{i,z} + g_{h,z}) \\
    n &= \tanh(g_{i,n} + r \odot g_{h,n}) \\
    h' &= (1 - z) \odot n + z \odot h
    \end{aligned}
    $$

    where each :math:`\mathrm{LN}` normalises all ``3H`` gate rows of one product
    together (one mean and variance per batch row) and applies its own gain and shift
    (``nn.LayerNorm(3H)``, ``eps = 1e-5``). The output is ``h'`` and so is the new state.

    Args:
        input_size: ``I``, features of ``x``.
        hidden_size: ``H``, features of the state.
        bias: create ``bias_ih``, ``bias_hh`` and the layer norms' shifts; with
            ``False`` the cell has no additive parameter at all (``nn.LayerNorm(...,
            bias=False)``).
        device: where to create the parameters.
        dtype: dtype of the parameters (floating point).

    Raises:
        ConfigError: a size below 1, an unknown device or a non-floating dtype.
        InputTypeError: a size that is not an int, a ``bias`` that is not a bool.

    Parameters: ``weight_ih`` ``(3H, I)``, ``weight_hh`` ``(3H, H)``, ``bias_ih``,
    ``bias_hh`` ``(3H,)`` (torch.nn.GRUCell's, initialised as torch does), then
    ``ln_ih`` and ``ln_hh``, two ``nn.LayerNorm(3H)`` (``ln_ih.weight``, ``ln_ih.bias``,
    ...; gains 1, shifts 0).

    Fast without a kernel: its split step takes the executor's ``linear`` (one recurrent
    product with the whole ``weight_hh`` per step, its gradient deferred).

    Shape:
        - x: ``(B, I)`` or ``(I,)``; state: ``(B, H)`` or ``(H,)``.
        - output and new state: ``(B, H)`` or ``(H,)``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.LayerNormGRUCell(3, 5)
        >>> y, h = cell(torch.randn(2, 3))
        >>> y.shape, cell.ln_hh.normalized_shape
        (torch.Size([2, 5]), (15,))
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
        G = 3 * hidden_size
        self._make_gate_parameters(G, hidden_size, self.bias, factory)
        self.ln_ih = nn.LayerNorm(G, bias=self.bias, **factory)
        self.ln_hh = nn.LayerNorm(G, bias=self.bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The weights and biases ``U(-1/sqrt(H), 1/sqrt(H))``; the layer norms' gains 1,
        shifts 0."""
        super().reset_parameters()
        self.ln_ih.reset_parameters()
        self.ln_hh.reset_parameters()

    def input_projection(self, x: Tensor) -> Tensor:
        """``(M, I)`` → ``(M, 3H)``: ``LN_ih(W_ih x) + b_ih``."""
        ln = self.ln_ih
        return F.layer_norm(
            F.linear(x, self.weight_ih),
            ln.normalized_shape,
            ln.weight,
            _plus(ln.bias, self.bias_ih),
        )

    def step_projected(
        self, gi: Tensor, state: Tensor, linear: Any = F.linear
    ) -> tuple[Tensor, Tensor]:
        """One step from ``gi = input_projection(x)`` ``(B, 3H)``; the recurrent product
        through ``linear``."""
        ln, H = self.ln_hh, self.hidden_size
        gh = F.layer_norm(
            linear(state, self.weight_hh),
            ln.normalized_shape,
            ln.weight,
            _plus(ln.bias, self.bias_hh),
        )  # (B, 3H)
        i_rz, i_n = gi.split([2 * H, H], dim=1)
        h_rz, h_n = gh.split([2 * H, H], dim=1)  # (one backward node per split)
        r, z = torch.sigmoid(i_rz + h_rz).chunk(2, dim=1)
        n = torch.tanh(torch.addcmul(i_n, r, h_n))
        h = torch.lerp(n, state, z)  # (1 - z) n + z h
        return h, h

    def _step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.step_projected(self.input_projection(x), state)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias}"


class LayerNormLSTMCell(CellBase):
    r"""LSTM with layer normalisation of both projections and of the memory read out
    (Ba, Kiros, Hinton 2016, *Layer Normalization*, arXiv 1607.06450), rows
    ``i | f | g | o`` as torch.nn.LSTM.

    $$
    \begin{aligned}
    i, f, g, o &= \text{split}_4\big(\mathrm{LN}_{ih}(W_{ih} x)
        + \mathrm{LN}_{hh}(W_{hh} h) + b\big) \\
    c' &= \sigma(f) \odot c + \sigma(i) \odot \tanh(g) \\
    h' &= \sigma(o) \odot \tanh(\mathrm{LN}_c(c'))
    \end{aligned}
    $$

    ``LN_ih`` and ``LN_hh`` normalise all ``4H`` gate rows of one product together,
    ``LN_c`` the ``H`` units of the memory; each has its own gain and shift
    (``nn.LayerNorm``, ``eps = 1e-5``). The state keeps the memory ``c'`` itself (not
    normalised). The output is ``h'``; the state is :class:`~recurrentkit.LSTMState`
    ``(h', c')``.

    Args:
        input_size: ``I``, features of ``x``.
        hidden_size: ``H``, features of ``h`` and ``c``.
        bias: create ``bias`` and the layer norms' shifts; with ``False`` the cell has
            no additive parameter at all (``nn.LayerNorm(..., bias=False)``).
        device: where to create the parameters.
        dtype: dtype of the parameters (floating point).

    Raises:
        ConfigError: a size below 1, an unknown device or a non-floating dtype.
        InputTypeError: a size that is not an int, a ``bias`` that is not a bool.

    Parameters: ``weight_ih`` ``(4H, I)``, ``weight_hh`` ``(4H, H)``, ``bias`` ``(4H,)``
    (one bias: a second would only add to it; ``U(-1/sqrt(H), 1/sqrt(H))`` as torch's
    cells), then ``ln_ih``, ``ln_hh`` (``nn.LayerNorm(4H)``) and ``ln_c``
    (``nn.LayerNorm(H)``), gains 1, shifts 0.

    Fast without a kernel: its split step takes the executor's ``linear`` (one recurrent
    product with the whole ``weight_hh`` per step, its gradient deferred).

    Shape:
        - x: ``(B, I)`` or ``(I,)``.
        - state: ``LSTMState(h (B, H), c (B, H))``, unbatched without ``B``.
        - output: ``(B, H)`` or ``(H,)``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.LayerNormLSTMCell(3, 5)
        >>> y, (h, c) = cell(torch.randn(2, 3))
        >>> y.shape, cell.bias.shape
        (torch.Size([2, 5]), torch.Size([20]))
    """

    bias: Tensor | None  # (a parameter here, not a flag)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        has_bias, factory = self._begin(input_size, hidden_size, bias, device, dtype)
        G = 4 * hidden_size
        self.weight_ih = make_weight(G, input_size, factory)
        self.weight_hh = make_weight(G, hidden_size, factory)
        if has_bias:
            self.bias = make_bias(G, factory)
        else:
            self.register_parameter("bias", None)
        self.ln_ih = nn.LayerNorm(G, bias=has_bias, **factory)
        self.ln_hh = nn.LayerNorm(G, bias=has_bias, **factory)
        self.ln_c = nn.LayerNorm(hidden_size, bias=has_bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The weights and ``bias`` ``U(-1/sqrt(H), 1/sqrt(H))``; the layer norms' gains
        1, shifts 0."""
        super().reset_parameters()
        for ln in (self.ln_ih, self.ln_hh, self.ln_c):
            ln.reset_parameters()

    def _zero_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LSTMState:
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return LSTMState(zeros, zeros.clone())

    def input_projection(self, x: Tensor) -> Tensor:
        """``(M, I)`` → ``(M, 4H)``: ``LN_ih(W_ih x) + b``."""
        ln = self.ln_ih
        return F.layer_norm(
            F.linear(x, self.weight_ih), ln.normalized_shape, ln.weight, _plus(ln.bias, self.bias)
        )

    def step_projected(
        self, gi: Tensor, state: LSTMState, linear: Any = F.linear
    ) -> tuple[Tensor, LSTMState]:
        """One step from ``gi = input_projection(x)`` ``(B, 4H)``; the recurrent product
        through ``linear``."""
        h, c = state
        ln, ln_c, H = self.ln_hh, self.ln_c, self.hidden_size
        gates = gi + F.layer_norm(
            linear(h, self.weight_hh), ln.normalized_shape, ln.weight, ln.bias
        )
        if_, g, o = gates.split([2 * H, H, H], dim=1)  # (one backward node)
        i, f = torch.sigmoid(if_).chunk(2, dim=1)
        c = torch.addcmul(f * c, i, torch.tanh(g))  # σ(f) c + σ(i) tanh(g)
        c_n = F.layer_norm(c, ln_c.normalized_shape, ln_c.weight, ln_c.bias)
        h = torch.sigmoid(o) * torch.tanh(c_n)
        return h, LSTMState(h, c)

    def _step(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        return self.step_projected(self.input_projection(x), state)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias is not None}"
