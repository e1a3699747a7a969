"""Cells whose recurrence is linear in the state: minGRU and minLSTM (Feng et al. 2024).

Their gates read the input only, so a step is ``h' = a ⊙ h + b`` with ``a`` and ``b``
computed from ``x``, and a whole sequence is one linear scan
(:func:`recurrentkit.scan.linear`) after one matrix product over every step.
:class:`LinearCellBase` holds the step; each cell gives its coefficients and output
(the declaration :func:`~recurrentkit.cells.scans_linearly` reads).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from recurrentkit.cells.protocol import CellBase, make_bias, make_weight

__all__ = ["LinearCellBase", "MinGRUCell", "MinLSTMCell", "positive"]


def positive(v: Tensor) -> Tensor:
    r"""minGRU's positive activation, continuous with a continuous slope at 0:

    $$
    g(v) = \begin{cases} v + \tfrac12 & v \ge 0 \\ \sigma(v) & v < 0 \end{cases}
    $$
    """
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


class LinearCellBase(CellBase):
    r"""Base of cells with a linear recurrence ``h' = a ⊙ h + b``, ``a, b`` from ``x`` only.

    Subclasses implement :meth:`input_projection`, :meth:`linear_coefficients` and
    :meth:`linear_output`; the step is

    $$
    (a, b) = \text{coefficients}(P x), \quad h' = a \odot h + b, \quad
    y = \text{output}(h', P x)
    $$

    with :math:`P x` the input projection (one matrix product, hoisted over a whole
    sequence by the fast executor, which then runs the layer as one
    :func:`recurrentkit.scan.linear`).

    Attributes:
        scan_method: the method of :func:`recurrentkit.scan.linear` the fast executor
            runs this layer's sequence with: ``"auto"`` (the default: ``"sequential"``
            on the CPU, ``"parallel"`` elsewhere), ``"sequential"``, ``"parallel"`` or
            ``"log"``. Steps are unaffected.
    """

    scan_method: str = "auto"

    @abstractmethod
    def input_projection(self, x: Tensor) -> Tensor:
        """``(M, I)`` → ``(M, G)``: the part of the step that multiplies ``x``."""

    @abstractmethod
    def linear_coefficients(self, gi: Tensor) -> tuple[Tensor, Tensor]:
        """``gi (..., G)`` → ``(a, b)``, each ``(..., N)`` (``a`` may broadcast)."""

    @abstractmethod
    def linear_output(self, h: Tensor, gi: Tensor) -> Tensor:
        """``h (..., N)`` and ``gi (..., G)`` → the output ``(..., O)``."""

    def step_projected(
        self, gi: Tensor, state: Tensor, linear: Any = F.linear
    ) -> tuple[Tensor, Tensor]:
        """One step from ``gi = input_projection(x)`` (``linear`` is unused: the
        recurrence has no matrix product)."""
        a, b = self.linear_coefficients(gi)
        h = torch.addcmul(b, a, state)  # a ⊙ h + b
        return self.linear_output(h, gi), h

    def _step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.step_projected(self.input_projection(x), state)


class _MinCell(LinearCellBase):
    """minGRU and minLSTM: ``weight_ih (gates·H, I)``, ``bias_ih``, output ``h'``."""

    gates: int

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
        self.weight_ih = make_weight(self.gates * hidden_size, input_size, factory)
        if self.bias:
            self.bias_ih = make_bias(self.gates * hidden_size, factory)
        else:
            self.register_parameter("bias_ih", None)
        self.reset_parameters()

    def input_projection(self, x: Tensor) -> Tensor:
        """``(M, I)`` → ``(M, gates·H)``: ``W_ih x + b_ih``."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def linear_output(self, h: Tensor, gi: Tensor) -> Tensor:
        """The output is the state ``h'``."""
        return h

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias}"


class MinGRUCell(_MinCell):
    r"""minGRU (Feng, Tung, Ahmed, Bengio, Hajimirsadeghi 2024, *Were RNNs All We
    Needed?*, arXiv 2410.01201): a GRU whose gates do not read the state; rows
    ``z | h̃``.

    $$
    \begin{aligned}
    z &= \sigma(W_z x + b_z) \\
    \tilde h &= g(W_h x + b_h), \qquad
        g(v) = v + \tfrac12 \ (v \ge 0), \quad \sigma(v) \ (v < 0) \\
    h' &= (1 - z) \odot h + z \odot \tilde h
    \end{aligned}
    $$

    The recurrence is linear in ``h`` (``a = 1 - z``, ``b = z ⊙ h̃``), so a
    :class:`~recurrentkit.Stack` under a layer-major policy runs a whole layer as one
    scan (:func:`recurrentkit.scan.linear`; plan ``"linear_scan"``). The positive
    ``g`` keeps states positive, as the paper's log-space form needs. The output is
    ``h'`` and so is the new state.

    Args:
        input_size: ``I``, features of ``x``.
        hidden_size: ``H``, features of the state.
        bias: create ``bias_ih``.
        device: where to create the parameters.
        dtype: dtype of the parameters (floating point).

    Raises:
        ConfigError: a size below 1, an unknown device or a non-floating dtype.
        InputTypeError: a size that is not an int, a ``bias`` that is not a bool.

    Parameters: ``weight_ih`` ``(2H, I)``, ``bias_ih`` ``(2H,)``, rows ``z | h̃``; no
    recurrent weight. Initialised ``U(-1/sqrt(H), 1/sqrt(H))`` as torch's cells.

    Shape:
        - x: ``(B, I)`` or ``(I,)``; state: ``(B, H)`` or ``(H,)``.
        - output and new state: ``(B, H)`` or ``(H,)``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.MinGRUCell(3, 5)
        >>> y, h = cell(torch.randn(2, 3))
        >>> y.shape, torch.equal(y, h), cell.weight_ih.shape
        (torch.Size([2, 5]), True, torch.Size([10, 3]))
    """

    gates = 2

    def linear_coefficients(self, gi: Tensor) -> tuple[Tensor, Tensor]:
        """``a = 1 - z``, ``b = z ⊙ h̃`` from ``gi (..., 2H)``."""
        i_z, i_h = gi.chunk(2, dim=-1)  # (..., H) each
        z = torch.sigmoid(i_z)
        return 1 - z, z * positive(i_h)

    def step_projected(
        self, gi: Tensor, state: Tensor, linear: Any = F.linear
    ) -> tuple[Tensor, Tensor]:
        """One step from ``gi = input_projection(x)``: ``h' = lerp(h, h̃, z)``, the
        recurrence ``(1 - z) ⊙ h + z ⊙ h̃`` in one op (``linear`` is unused)."""
        i_z, i_h = gi.chunk(2, dim=-1)  # (B, H) each
        h = torch.lerp(state, positive(i_h), torch.sigmoid(i_z))
        return h, h


class MinLSTMCell(_MinCell):
    r"""minLSTM (Feng, Tung, Ahmed, Bengio, Hajimirsadeghi 2024, *Were RNNs All We
    Needed?*, arXiv 2410.01201): an LSTM whose gates do not read the state, its forget
    and input gates normalised to sum to one; rows ``f | i | h̃``.

    $$
    \begin{aligned}
    f &= \sigma(W_f x + b_f), \qquad i = \sigma(W_i x + b_i) \\
    f' &= \frac{f}{f + i}, \qquad i' = \frac{i}{f + i} \\
    \tilde h &= g(W_h x + b_h) \\
    h' &= f' \odot h + i' \odot \tilde h
    \end{aligned}
    $$

    with ``g`` minGRU's positive activation (:class:`MinGRUCell`). Linear in ``h``
    (``a = f'``, ``b = i' ⊙ h̃``): one scan per layer under layer-major policies. There
    is no cell state: the output is ``h'`` and so is the new state.

    Args:
        input_size: ``I``, features of ``x``.
        hidden_size: ``H``, features of the state.
        bias: create ``bias_ih``.
        device: where to create the parameters.
        dtype: dtype of the parameters (floating point).

    Raises:
        ConfigError: a size below 1, an unknown device or a non-floating dtype.
        InputTypeError: a size that is not an int, a ``bias`` that is not a bool.

    Parameters: ``weight_ih`` ``(3H, I)``, ``bias_ih`` ``(3H,)``, rows ``f | i | h̃``;
    initialised ``U(-1/sqrt(H), 1/sqrt(H))``.

    Shape:
        - x: ``(B, I)`` or ``(I,)``; state: ``(B, H)`` or ``(H,)``.
        - output and new state: ``(B, H)`` or ``(H,)``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.MinLSTMCell(3, 5)
        >>> y, h = cell(torch.randn(2, 3))
        >>> y.shape, cell.weight_ih.shape
        (torch.Size([2, 5]), torch.Size([15, 3]))
    """

    gates = 3

    def linear_coefficients(self, gi: Tensor) -> tuple[Tensor, Tensor]:
        """``a = f'``, ``b = i' ⊙ h̃`` from ``gi (..., 3H)``."""
        i_f, i_i, i_h = gi.chunk(3, dim=-1)  # (..., H) each
        f, i = torch.sigmoid(i_f), torch.sigmoid(i_i)
        total = f + i
        return f / total, i / total * positive(i_h)
