"""The linear recurrent unit, LRU (Orvieto et al. 2023): a diagonal complex recurrence."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from recurrentkit._validation import check_int, check_real, factory_kwargs
from recurrentkit.cells.linear import LinearCellBase
from recurrentkit.cells.protocol import make_bias, make_weight
from recurrentkit.errors import ConfigError

__all__ = ["LRUCell", "complex_dtype"]


def _traced() -> bool:
    """Whether torch.compile or torch.export is tracing (strides are then symbolic, and
    complex views cannot be differentiated)."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of a real one's precision (``float64`` → ``complex128``, else
    ``complex64``)."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class LRUCell(LinearCellBase):
    r"""Linear recurrent unit (Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De 2023,
    *Resurrecting Recurrent Neural Networks for Long Sequences*, arXiv 2303.06349), the
    recurrence at the core of Griffin / RecurrentGemma.

    $$
    \begin{aligned}
    \lambda &= \exp(-\exp(\nu) + i \exp(\theta)), \qquad
        \gamma = \sqrt{1 - |\lambda|^2} \\
    h' &= \lambda \odot h + \gamma \odot (B x) \\
    y &= \operatorname{Re}(C h') + D x
    \end{aligned}
    $$

    ``λ`` is a diagonal complex decay, ``|λ| < 1`` by construction (stable for any
    ``ν``); ``γ`` normalises the state's scale. The state is complex, ``(B, N)``; the
    output is real, ``(B, H)``. ``D`` is diagonal ``(H,)`` when ``input_size ==
    hidden_size``, a dense ``(H, I)`` matrix otherwise.

    Linear in ``h`` (``a = λ``, ``b = γ ⊙ B x``): one scan per layer under layer-major
    policies. Policies that pass a state from one layer to another (``shared``,
    ``cross_layer``, ``handoff``) refuse it with a
    :class:`~recurrentkit.errors.ConfigError`: its complex state is in its own
    diagonal basis (:func:`~recurrentkit.routing.base.check_real_states`).

    Args:
        input_size: ``I``, features of ``x``.
        hidden_size: ``H``, features of the output.
        state_size: ``N``, complex features of the state (default ``hidden_size``).
        r_min: smallest initial ``|λ|``, in ``[0, r_max)``.
        r_max: largest initial ``|λ|``, in ``(r_min, 1]``.
        max_phase: largest initial phase of ``λ``, ``> 0``.
        device: where to create the parameters.
        dtype: dtype of the parameters (floating point; the state is its complex
            counterpart, ``float64`` → ``complex128``, else ``complex64``).

    Raises:
        ConfigError: a size below 1, radii outside ``0 <= r_min < r_max <= 1``, a
            ``max_phase <= 0``, an unknown device or a non-floating dtype.
        InputTypeError: a size that is not an int, a radius or phase that is not a number.

    Parameters (all real): ``nu_log (N,)`` and ``theta_log (N,)`` (``λ``'s log-log
    radius and log phase); ``weight_ih (2N, I)``, rows ``Re B_k, Im B_k`` interleaved
    (row ``2k`` is ``Re B_k``); ``weight_out (H, 2N)``, columns ``Re C_k, -Im C_k``
    interleaved (so that ``Re(C h)`` is ``weight_out`` times ``h``'s real and imaginary
    parts, interleaved as torch stores them); ``weight_skip`` (``D``), ``(H,)``
    or ``(H, I)``. Initialised as the paper: ``|λ|`` uniform on the ring
    ``r_min <= |λ| <= r_max`` (by area), phase uniform in ``[0, max_phase]``,
    ``B ~ N(0, 1/(2I))`` per part, ``C ~ N(0, 1/(2N))`` per part, ``D ~ N(0, 1)``
    (``N(0, 1/I)`` dense).

    Shape:
        - x: ``(B, I)`` or ``(I,)``; state: complex ``(B, N)`` or ``(N,)``.
        - output: ``(B, H)`` or ``(H,)``; new state: complex ``(B, N)`` or ``(N,)``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.LRUCell(3, 5, state_size=8)
        >>> y, h = cell(torch.randn(2, 3))
        >>> y.shape, h.shape, h.dtype
        (torch.Size([2, 5]), torch.Size([2, 8]), torch.complex64)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        state_size: int | None = None,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._set_sizes(input_size, hidden_size)
        self.state_size = hidden_size if state_size is None else check_int("state_size", state_size)
        self.r_min = check_real("r_min", r_min)
        self.r_max = check_real("r_max", r_max)
        if not self.r_min < self.r_max <= 1.0:
            raise ConfigError("r_min, r_max", "0 <= r_min < r_max <= 1", (r_min, r_max))
        self.max_phase = check_real("max_phase", max_phase, strict=True)
        N = self.state_size
        factory: dict[str, Any] = factory_kwargs(device, dtype)
        self.nu_log = make_bias(N, factory)
        self.theta_log = make_bias(N, factory)
        self.weight_ih = make_weight(2 * N, input_size, factory)
        self.weight_out = make_weight(hidden_size, 2 * N, factory)
        if input_size == hidden_size:
            self.weight_skip = make_bias(hidden_size, factory)
        else:
            self.weight_skip = make_weight(hidden_size, input_size, factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation (see the class docstring)."""
        with torch.no_grad():
            u1, u2 = torch.rand_like(self.nu_log), torch.rand_like(self.theta_log)
            # |λ|² uniform in [r_min², r_max²]; ν = log(-log|λ|), kept finite at |λ| = 1
            r2 = u1 * (self.r_max**2 - self.r_min**2) + self.r_min**2
            tiny = torch.finfo(r2.dtype).tiny
            self.nu_log.copy_(torch.log((-0.5 * torch.log(r2.clamp_min(tiny))).clamp_min(tiny)))
            self.theta_log.copy_(torch.log((self.max_phase * u2).clamp_min(tiny)))
            nn.init.normal_(self.weight_ih, std=1 / math.sqrt(2 * self.input_size))
            nn.init.normal_(self.weight_out, std=1 / math.sqrt(2 * self.state_size))
            std = 1.0 if self.weight_skip.dim() == 1 else 1 / math.sqrt(self.input_size)
            nn.init.normal_(self.weight_skip, std=std)

    def decay(self) -> tuple[Tensor, Tensor]:
        """``(λ, γ)``: the complex decay ``(N,)`` and the real normalisation ``(N,)``."""
        radius_rate = torch.exp(self.nu_log)  # -log|λ|
        lam = torch.polar(torch.exp(-radius_rate), torch.exp(self.theta_log))
        gamma = torch.sqrt(-torch.expm1(-2 * radius_rate))  # sqrt(1 - |λ|²)
        return lam, gamma

    def input_projection(self, x: Tensor) -> Tensor:
        """``(M, I)`` → ``(M, 2N + H)``: ``γ ⊙ B x`` as (real, imaginary) pairs, then
        ``D x``. ``γ`` scales ``B``'s rows (an ``(2N, I)`` product, not a
        ``(M, N)`` one), so ``b`` is a view of this and nothing of it is kept for the
        backward but the matrix product's input."""
        bx = F.linear(x, self._scaled()[1])  # (M, 2N)
        skip = (
            x * self.weight_skip if self.weight_skip.dim() == 1 else F.linear(x, self.weight_skip)
        )
        return torch.cat([bx, skip], dim=-1)

    def linear_coefficients(self, gi: Tensor) -> tuple[Tensor, Tensor]:
        """``a = λ (N,)`` (broadcast), ``b = γ ⊙ B x`` ``(..., N)`` complex."""
        N = self.state_size
        pairs = gi.split([2 * N, self.hidden_size], dim=-1)[0].unflatten(-1, (N, 2))
        viewable = all(st % 2 == 0 for st in pairs.stride()[:-1])
        if not _traced() and viewable and pairs.storage_offset() % 2 == 0:
            b = torch.view_as_complex(pairs)  # a view: nothing copied, nothing kept
        else:  # (an odd row stride, 2N + H odd; or traced, where strides are symbolic)
            b = torch.complex(pairs[..., 0], pairs[..., 1])
        return self._scaled()[0], b

    def _scaled(self) -> tuple[Tensor, Tensor]:
        """``(λ, B's rows scaled by γ)``; kept between calls without autograd (sampling
        steps) while the parameters they come from are unchanged (same tensors, same
        version: an optimiser step or ``load_state_dict`` changes it)."""
        params = (self.nu_log, self.theta_log, self.weight_ih)
        keep = not (
            torch.is_grad_enabled() or _traced() or torch._C._are_functorch_transforms_active()
        )
        if not keep:  # (a traced call must not write the module: no side effects)
            lam, gamma = self.decay()
            return lam, self.weight_ih * gamma.repeat_interleave(2)[:, None]
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        cached = self.__dict__.get("_scaled_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        lam, gamma = self.decay()
        out = (lam, self.weight_ih * gamma.repeat_interleave(2)[:, None])  # (N,), (2N, I)
        self.__dict__["_scaled_cache"] = (key, out)
        return out

    def linear_output(self, h: Tensor, gi: Tensor) -> Tensor:
        """``Re(C h) + D x`` ``(..., H)`` from the complex state ``h (..., N)``: one
        product with ``h``'s (real, imaginary) pairs, a view of ``h`` (a copy while
        traced: torch 2.13's functionalisation cannot differentiate the view)."""
        skip = gi.split([2 * self.state_size, self.hidden_size], dim=-1)[1]
        if _traced():
            pairs = torch.stack((h.real, h.imag), dim=-1)
        else:
            pairs = torch.view_as_real(h)
        return F.linear(pairs.flatten(-2), self.weight_out) + skip

    def _zero_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Complex zeros ``(B, N)``."""
        return torch.zeros(batch_size, self.state_size, device=device, dtype=complex_dtype(dtype))

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, state_size={self.state_size}, "
            f"r_min={self.r_min}, r_max={self.r_max}, max_phase={self.max_phase:.4g}"
        )
