"""Is a token model causal? A check by gradient connectivity (exact, no perturbation)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recurrentkit._validation import check_real, describe
from recurrentkit.analysis._model import check_ids, check_range, find_embedding, input_gradients
from recurrentkit.errors import InputTypeError

__all__ = ["connectivity_violation", "is_causal_by_connectivity"]


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
    [`recurrentkit.causality_violation`][recurrentkit.causality_violation], nothing is
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
