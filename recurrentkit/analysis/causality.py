"""Is a model causal? Two checks: by perturbation (any model), by gradient (token models).

- [`causality_violation`][recurrentkit.analysis.causality_violation] and
  [`check_causal`][recurrentkit.analysis.check_causal] (also ``rk.causality_violation``
  and ``rk.check_causal``): replace the inputs from ``t`` on by random values and watch
  the outputs before ``t``; for any sequence model with floating inputs.
- [`connectivity_violation`][recurrentkit.analysis.connectivity_violation] and
  [`is_causal_by_connectivity`][recurrentkit.analysis.is_causal_by_connectivity]:
  differentiate a token model's outputs with respect to its embedded inputs; exact, no
  perturbation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from recurrentkit._validation import check_int, check_real, check_tensor, describe
from recurrentkit.analysis._model import check_ids, check_range, find_embedding, input_gradients
from recurrentkit.errors import ConfigError, DeviceError, InputTypeError

__all__ = [
    "causality_violation",
    "check_causal",
    "connectivity_violation",
    "is_causal_by_connectivity",
]


def _outputs(result: Any) -> Tensor:
    return result[0] if isinstance(result, tuple) else result


@torch.no_grad()
def causality_violation(
    model: Callable[[Tensor], Any],
    x: Tensor,
    *,
    time_dim: int | None = None,
    scale: float = 1.0,
    seed: int = 0,
) -> float:
    """How much outputs before ``t`` change when inputs at ``t`` and after change.

    For each ``t = 1..T-1``, the inputs at positions ``>= t`` are replaced by random
    values and the model re-run; the result is the largest absolute change seen in any
    output at a position ``< t``. A causal model gives exactly ``0.0`` (up to the
    arithmetic of a kernel that batches work differently).

    Args:
        model: maps ``x`` to outputs, or to a tuple whose first element is the outputs
            (as :class:`~recurrentkit.Stack` does). Run in its current mode: call
            ``model.eval()`` first if it has dropout.
        x: a floating input with a time axis of length ``T >= 2``.
        time_dim: the time axis of ``x`` and of the outputs; defaults to ``1`` if the
            model has ``batch_first=True``, else ``0``.
        scale: standard deviation of the replacement inputs.
        seed: seed of the replacement inputs (the check is deterministic).

    Returns:
        The largest change, a float ``>= 0``.

    Raises:
        ShapeError: ``x`` of rank below 2 or above 5.
        ConfigError: ``time_dim`` not an axis of ``x`` (negative axes count from the end),
            a time axis shorter than 2, a NaN or infinite value in ``x`` (it would spread
            into every perturbed output and hide the change), ``scale <= 0``.
        InputTypeError: an integer ``x``, a non-int ``time_dim`` or ``seed``, a ``model``
            that is not callable.
        DeviceError: ``x`` on the meta device (it has no values).

    Example:
        >>> import torch, recurrentkit as rk
        >>> cells = [rk.GRUCell(3, 4), rk.GRUCell(4, 4)]
        >>> causality_violation(rk.Stack(cells, "independent"), torch.randn(6, 2, 3))
        0.0
    """
    if not callable(model):
        raise InputTypeError("model", "a callable such as an nn.Module", describe(model))
    check_tensor("x", x, ranks=(2, 3, 4, 5))
    if x.is_meta:
        raise DeviceError("x", "a tensor with values (on any device but meta)", "meta")
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("x", "finite values", f"{int((~torch.isfinite(x)).sum())} NaN or inf")
    scale = check_real("scale", scale, strict=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputTypeError("seed", "an int", describe(seed))
    if time_dim is None:
        time_dim = 1 if getattr(model, "batch_first", False) else 0
    if isinstance(time_dim, bool) or not isinstance(time_dim, int):
        raise InputTypeError("time_dim", "an int (an axis of x) or None", describe(time_dim))
    if not -x.dim() <= time_dim < x.dim():
        raise ConfigError("time_dim", f"an axis of x, in {-x.dim()}..{x.dim() - 1}", time_dim)
    time_dim %= x.dim()
    T = x.shape[time_dim]
    check_int("x.shape[time_dim] (sequence length)", T, minimum=2)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    base = _outputs(model(x))
    worst = 0.0
    for t in range(1, T):
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device) * scale
        keep = (torch.arange(T, device=x.device) < t).to(x.dtype)
        keep = keep.reshape([T if d == time_dim else 1 for d in range(x.dim())])
        perturbed = x * keep + noise * (1 - keep)
        out = _outputs(model(perturbed))
        past = out.narrow(time_dim, 0, t) - base.narrow(time_dim, 0, t)
        worst = max(worst, float(past.abs().max()))
    return worst


def check_causal(
    model: Callable[[Tensor], Any],
    x: Tensor,
    *,
    time_dim: int | None = None,
    atol: float = 0.0,
) -> bool:
    """``True`` if :func:`causality_violation` is at most ``atol`` (a float ``>= 0``).

    Example:
        >>> import torch, recurrentkit as rk
        >>> cells = [rk.GRUCell(3, 3), rk.GRUCell(3, 3)]
        >>> check_causal(rk.Stack(cells, "handoff").eval(), torch.randn(6, 2, 3))
        False
    """
    atol = check_real("atol", atol)
    return causality_violation(model, x, time_dim=time_dim) <= atol


def connectivity_violation(
    model: nn.Module,
    tokens: Tensor,
    *,
    embedding: nn.Embedding | str | None = None,
    seed: int = 0,
) -> float:
    r"""The largest gradient from an input to an *earlier* output of a token model.

    The scalar differentiated at each position is a random projection of the whole
    logit vector, $w^\top z_t$ with $w \sim \mathcal{N}(0, I_V)$ (fixed by
    ``seed``), so a dependence of *any* logit on a later input shows up (almost
    surely), not only the top class's. Gradients are taken with respect to the
    embedded inputs $e_s$:

    $$
    \text{violation} = \max_{b,\; s > t}
        \left\lVert \frac{\partial\, w^\top z_{b,t}}{\partial e_{b,s}} \right\rVert_2
    $$

    A causal model gives exactly ``0.0``: no path in its graph leads from a later input
    to an earlier output, so autograd returns exact zeros. Unlike
    [`causality_violation`][recurrentkit.analysis.causality_violation], nothing is
    perturbed; the cost is that of [`connectivity`][recurrentkit.analysis.connectivity].
    The model runs in its current mode.

    Args:
        model: a token model (see [`connectivity`][recurrentkit.analysis.connectivity]).
        tokens: token ids ``(T,)`` or ``(B, T)``.
        embedding: the ``nn.Embedding`` the tokens enter through, or its path;
            ``None`` finds it.
        seed: seed of the projection $w$.

    Returns:
        The largest above-diagonal gradient norm, a float ``>= 0``.

    Raises:
        RecurrentKitError: those of [`connectivity`][recurrentkit.analysis.connectivity]
            (ids that are not ``(T,)``/``(B, T)`` integers or out of range, no or several
            embeddings, logits not ``(B, T, V)``).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputTypeError("seed", "an int", describe(seed))
    emb = find_embedding(model, embedding)
    tokens = check_ids("tokens", tokens, ranks=(1, 2), layout="(T,) or (B, T)")
    ids = (tokens.unsqueeze(0) if tokens.dim() == 1 else tokens).to(emb.weight.device)
    check_range("tokens", ids, emb.num_embeddings, "the embedding's num_embeddings")
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def pick(logits: Tensor) -> Tensor:  # (B, T, V) -> (B, T)
        w = torch.randn(logits.shape[-1], generator=gen, dtype=torch.float64)
        return logits @ w.to(logits.device, logits.dtype)

    def norm(grad: Tensor) -> Tensor:  # (B, T_in, D) -> (B, T_in)
        return torch.linalg.vector_norm(grad, dim=-1)

    conn = input_gradients(model, ids, emb, pick, norm)  # (B, T, T)
    return float(conn.triu(1).max())


def is_causal_by_connectivity(
    model: nn.Module,
    tokens: Tensor,
    *,
    embedding: nn.Embedding | str | None = None,
    atol: float = 0.0,
) -> bool:
    """``True`` if no output depends on a later input (the violation is at most ``atol``).

    The violation is [`connectivity_violation`][recurrentkit.analysis.connectivity_violation]:
    the largest gradient norm from an input to an earlier output, over a random
    projection of all logits. The handoff policy fails this under teacher forcing.

    Args:
        model: a token model (see [`connectivity`][recurrentkit.analysis.connectivity]),
            in the mode to check (``eval()`` for teacher forcing without dropout).
        tokens: token ids ``(T,)`` or ``(B, T)``.
        embedding: the ``nn.Embedding`` the tokens enter through, or its path;
            ``None`` finds it.
        atol: the largest violation still called causal, ``>= 0``.

    Returns:
        Whether the model is causal on these tokens.

    Raises:
        RecurrentKitError: those of
            [`connectivity_violation`][recurrentkit.analysis.connectivity_violation], and an
            ``atol`` that is not a number ``>= 0``.

    Examples:
        >>> import torch, torch.nn as nn, recurrentkit as rk
        >>> from recurrentkit.analysis import is_causal_by_connectivity
        >>> class TokenLM(nn.Module):
        ...     def __init__(self, routing):
        ...         super().__init__()
        ...         self.embed = nn.Embedding(5, 4)
        ...         cells = [rk.GRUCell(4, 6), rk.GRUCell(6, 6)]
        ...         self.rnn = rk.Stack(cells, routing, batch_first=True)
        ...         self.head = nn.Linear(6, 5)
        ...     def forward(self, idx):                      # (B, T) -> (B, T, V)
        ...         return self.head(self.rnn(self.embed(idx))[0])
        >>> tokens = torch.tensor([[1, 2, 3, 4, 0]])
        >>> is_causal_by_connectivity(TokenLM("independent").eval(), tokens)
        True
        >>> is_causal_by_connectivity(TokenLM("handoff").eval(), tokens)  # teacher forcing
        False
    """
    atol = check_real("atol", atol)
    return connectivity_violation(model, tokens, embedding=embedding) <= atol
