r"""The original study's GRU cell, written as a *user* cell on the cell protocol.

It subclasses nothing from recurrentkit: a plain :class:`torch.nn.Module` with
``initial_state``, ``forward(x, state)``, ``input_size`` and ``output_size`` is all a
:class:`~recurrentkit.Stack` needs. The study uses it to reproduce the original
models' parameter counts exactly (79,772 / 675,996 / 4,155,420).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from recurrentkit._validation import (
    allocate,
    check_device,
    check_dtype,
    check_int,
    check_nonempty,
    check_probability,
    check_state,
    check_tensor,
)

__all__ = ["StudyGRUCell"]


class StudyGRUCell(nn.Module):
    r"""The GRU cell of "Shared vs layer-wise memory in stacked GRUs", as its code has it.

    $$
    \begin{aligned}
    r &= \sigma(W_{rx} x + b_{rx} + W_{rh} h + b_r) \\
    z &= \sigma(W_{zx} x + b_{zx} + W_{zh} h + b_z) \\
    \tilde h &= \tanh(W_x x + b_x + W_h (r \odot h)) \\
    h' &= \text{drop}\big((1 - z) \odot h + z \odot \tilde h\big)
    \end{aligned}
    $$

    Input projections carry a bias, hidden projections do not, plus the separate
    biases :math:`b_r, b_z`; the reset gate acts before the matmul; and, unlike
    torch, :math:`z` weighs the *candidate*. In training mode dropout is applied to
    the new hidden state, which is both the output passed up and the state carried to
    the next step (one mask for both).

    Parameters (rows ``r | z | n`` like torch): ``weight_ih`` ``(3H, I)``, ``bias_ih``
    ``(3H,)``, ``weight_hh`` ``(3H, H)`` (no hidden bias), ``bias_r`` ``(H,)``,
    ``bias_z`` ``(H,)`` — ``3IH + 3H^2 + 5H`` in all. Initialisation as
    ``nn.Linear``: weights and ``bias_ih`` ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in));
    ``bias_r`` and ``bias_z`` start at zero.

    Args:
        input_size: ``I``.
        hidden_size: ``H``.
        dropout: probability of zeroing a unit of the new hidden state (training only).

    Shape:
        - x: ``(B, I)``; state: ``(B, H)`` (``None`` means zeros).
        - output and new state: ``(B, H)``, the same tensor.

    Example:
        >>> import torch, recurrentkit as rk
        >>> from recurrentkit.study.cells import StudyGRUCell
        >>> cell = StudyGRUCell(64, 128)
        >>> sum(p.numel() for p in cell.parameters())
        74368
        >>> stack = rk.Stack([StudyGRUCell(8, 16), StudyGRUCell(16, 16)], "shared")
        >>> y, state = stack(torch.randn(5, 2, 8))
        >>> y.shape
        torch.Size([5, 2, 16])
    """

    def __init__(self, input_size: int, hidden_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size)
        self.hidden_size = check_int("hidden_size", hidden_size)
        self.output_size = self.hidden_size
        self.dropout = check_probability("dropout", dropout)
        H = hidden_size

        def empty(*shape: int) -> Tensor:  # a size too large to allocate: a clear error
            return allocate("input_size, hidden_size", shape, lambda: torch.empty(*shape))

        self.weight_ih = nn.Parameter(empty(3 * H, input_size))
        self.bias_ih = nn.Parameter(empty(3 * H))
        self.weight_hh = nn.Parameter(empty(3 * H, H))
        self.bias_r = nn.Parameter(torch.zeros(H))
        self.bias_z = nn.Parameter(torch.zeros(H))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default initialisation per projection; ``b_r = b_z = 0``."""
        bound_x = 1.0 / math.sqrt(self.input_size)
        bound_h = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight_ih, -bound_x, bound_x)
        nn.init.uniform_(self.bias_ih, -bound_x, bound_x)
        nn.init.uniform_(self.weight_hh, -bound_h, bound_h)
        nn.init.zeros_(self.bias_r)
        nn.init.zeros_(self.bias_z)

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Zeros of shape ``(B, H)``, on the parameters' device and dtype by default."""
        check_int("batch_size", batch_size)
        device = check_device("device", device)
        dtype = check_dtype("dtype", dtype)
        return allocate(
            "batch_size",
            (batch_size, self.hidden_size),
            lambda: torch.zeros(
                batch_size,
                self.hidden_size,
                device=device if device is not None else self.weight_ih.device,
                dtype=dtype if dtype is not None else self.weight_ih.dtype,
            ),
        )

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Tensor]:
        """One step: ``x (B, I)``, ``state (B, H)`` → ``(h', h')``."""
        H = self.hidden_size
        I = self.input_size  # noqa: E741
        check_tensor("x", x, ranks=(2,), size_last=I, like=self.weight_ih, layout=f"(B, {I})")
        check_nonempty("x", x, [0], ["batch"])
        if state is not None:  # a user cell checks its own input (a Stack checks it too)
            template = torch.empty(x.shape[0], H, device="meta", dtype=x.dtype)
            state = check_state("state", state, template, device=x.device)
        h = state if state is not None else self.initial_state(x.shape[0], dtype=x.dtype)
        i_r, i_z, i_n = F.linear(x, self.weight_ih, self.bias_ih).split(H, dim=1)  # (B, H) each
        h_r, h_z = F.linear(h, self.weight_hh[: 2 * H]).split(H, dim=1)  # (B, H) each
        r = torch.sigmoid(i_r + h_r + self.bias_r)
        z = torch.sigmoid(i_z + h_z + self.bias_z)
        n = torch.tanh(i_n + F.linear(r * h, self.weight_hh[2 * H :]))  # (B, H)
        h_new = h + z * (n - h)  # = (1 - z) * h + z * n
        if self.training and self.dropout > 0:
            h_new = F.dropout(h_new, self.dropout, training=True)
        return h_new, h_new

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, dropout={self.dropout}"
