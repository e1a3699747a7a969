r"""Gradient connectivity: how strongly each input token moves each output logit.

Madsen's "Visualizing memorization in RNNs" (Distill, 2019) measures what a recurrent
model remembers by differentiating the logit of the desired output at position
$t$ with respect to the input at every position $s$. This module computes
that matrix for any token model (see [`connectivity`][recurrentkit.analysis.connectivity]).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from recurrentkit._validation import check_choice, check_int, describe, shape_str
from recurrentkit.analysis._model import check_ids, check_range, find_embedding, input_gradients
from recurrentkit.errors import InputTypeError, ShapeError

__all__ = ["REDUCTIONS", "WRT", "connectivity"]

REDUCTIONS = ("norm", "sq_sum")
"""How a gradient vector becomes one number: its L2 norm, or its sum of squares."""

WRT = ("one_hot", "embedding")
"""What the gradient is taken with respect to: the one-hot input, or the embedded vector."""


def connectivity(
    model: nn.Module,
    tokens: Tensor,
    *,
    targets: Tensor | None = None,
    embedding: nn.Embedding | str | None = None,
    reduce: str = "norm",
    wrt: str = "one_hot",
    ignore_index: int = -100,
    batch_size: int | None = 256,
    vectorize: bool = True,
) -> Tensor:
    r"""The gradient connectivity matrix ``conn[t, s]`` of a token model.

    For output position $t$, input position $s$, logits $z_t$ and
    target class $k_t$:

    $$
    \text{conn}[t, s]
      = \left\lVert \frac{\partial z_{t, k_t}}{\partial o_s} \right\rVert_2
      = \left\lVert E \, \frac{\partial z_{t, k_t}}{\partial e_s} \right\rVert_2 ,
    \qquad e_s = E^\top o_s = E[x_s]
    $$

    where $o_s \in \{0, 1\}^V$ is the one-hot input at $s$,
    $E \in \mathbb{R}^{V \times D}$ the embedding matrix and $e_s$ the
    embedded input. The logits are pre-softmax. The gradient is taken with respect to
    the embedding's output (the one-hot vector is not part of the graph) and mapped
    back through $E$ by the chain rule, as the article's code does; it covers
    all $V$ entries of $o_s$, not only the entry of the token present.

    ``reduce="norm"`` (the default) is the article's formula, the L2 norm above.
    ``reduce="sq_sum"`` is what the article's code computes, the sum of squares
    $\lVert\cdot\rVert_2^2$. ``wrt="embedding"`` skips the mapping through
    $E$ and measures $\lVert \partial z_{t,k_t} / \partial e_s \rVert$
    (the usual saliency norm; it equals the one-hot version when $E$ has
    orthonormal columns).

    Cost: one forward pass and the gradients of ``T`` output positions per batch
    chunk. With ``vectorize=True`` (the default) these are one batched backward pass
    (``is_grads_batched``, a ``vmap`` over the backward graph), holding ``T`` sets of
    gradients at once; with ``vectorize=False``, or when the batched pass fails (an
    operation without a batching rule, out of memory), ``T`` sequential backward
    passes, each about the cost of a training step's. Both give the same numbers.
    ``batch_size`` bounds memory. Batch rows are separated by summing them before
    differentiating, which is exact when the model treats rows independently (every
    [`Stack`][recurrentkit.Stack] does; batch norm in training mode does not).

    The model runs in its current mode: call ``model.eval()`` first if it has dropout.
    Parameters receive no ``.grad``; the call works under ``torch.no_grad()`` too.

    Args:
        model: maps token ids ``(B, T)`` to logits ``(B, T, V)``, or to a tuple whose
            first element is the logits (``(logits, loss)``); contains the
            ``nn.Embedding`` the tokens enter through, called once per forward pass on
            the ids as given (or transposed, ``(T, B)``, for a time-major model).
        tokens: token ids ``(T,)`` or ``(B, T)``.
        targets: the class whose logit is differentiated at each position, same shape
            as ``tokens``; ``None`` means the model's own top class at each position.
            Positions equal to ``ignore_index`` give a zero row.
        embedding: the ``nn.Embedding`` the tokens enter through, or its attribute path
            in ``model`` (``"embed"``); ``None`` finds it when the model has exactly one.
        reduce: ``"norm"`` (L2 norm, default) or ``"sq_sum"`` (sum of squares).
        wrt: ``"one_hot"`` (default, the article's) or ``"embedding"``.
        ignore_index: the target value that marks a position to skip.
        batch_size: rows per forward pass (``None``: all at once); bounds memory,
            never changes the result.
        vectorize: one batched backward pass instead of ``T`` sequential ones.

    Returns:
        ``conn``, indexed ``[t, s]`` (output position, input position), ``>= 0``,
            on the device of ``tokens``, in the model's floating dtype. A causal
            model's ``conn`` is exactly zero above the diagonal.

    Shape:
        - tokens: ``(T,)`` or ``(B, T)``; targets: the same.
        - returns: ``(T, T)`` or ``(B, T, T)``.

    Raises:
        InputTypeError: ``tokens``/``targets`` not integer tensors, ``model`` or
            ``embedding`` of the wrong kind, a model that returns no logits tensor.
        ShapeError: ``tokens`` not ``(T,)``/``(B, T)``, ``targets`` of another shape,
            logits not ``(B, T, V)``.
        ConfigError: no or several embeddings (and none named), an embedding the
            forward pass does not call once on the ids, ids or targets out of range,
            an unknown ``reduce``/``wrt``.

    Examples:
        >>> import torch, torch.nn as nn, recurrentkit as rk
        >>> from recurrentkit.analysis import connectivity
        >>> class CharLM(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed = nn.Embedding(5, 4)
        ...         self.rnn = rk.Stack([rk.GRUCell(4, 8)], batch_first=True)
        ...         self.head = nn.Linear(8, 5)
        ...     def forward(self, idx):                      # (B, T) -> (B, T, V)
        ...         return self.head(self.rnn(self.embed(idx))[0])
        >>> conn = connectivity(CharLM().eval(), torch.tensor([1, 3, 2, 4]))
        >>> conn.shape
        torch.Size([4, 4])
        >>> bool((conn.triu(1) == 0).all()), bool((conn.diagonal() > 0).all())
        (True, True)
    """
    check_choice("reduce", reduce, REDUCTIONS)
    check_choice("wrt", wrt, WRT)
    emb = find_embedding(model, embedding)
    tokens = check_ids("tokens", tokens, ranks=(1, 2), layout="(T,) or (B, T)")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise InputTypeError("ignore_index", "an int", describe(ignore_index))
    if targets is not None:
        targets = check_ids("targets", targets, ranks=(1, 2), layout="the shape of tokens")
        if targets.shape != tokens.shape:
            raise ShapeError(
                "targets",
                f"shape {shape_str(tokens.shape)} (that of tokens)",
                shape_str(targets.shape),
            )
    if batch_size is not None:
        check_int("batch_size", batch_size)
    if not isinstance(vectorize, bool):
        raise InputTypeError("vectorize", "a bool", describe(vectorize))
    unbatched = tokens.dim() == 1
    device = tokens.device
    ids = tokens.unsqueeze(0) if unbatched else tokens  # (B, T)
    tgt = None if targets is None else (targets.unsqueeze(0) if unbatched else targets)
    ids = ids.to(emb.weight.device)
    check_range("tokens", ids, emb.num_embeddings, "the embedding's num_embeddings")

    weight = emb.weight.detach()  # (V, D)

    def reduce_grad(grad: Tensor) -> Tensor:  # (..., D) -> (...)
        if wrt == "one_hot":
            grad = grad @ weight.T  # (..., V): d z / d o_s
        if reduce == "norm":
            return torch.linalg.vector_norm(grad, dim=-1)
        return grad.square().sum(-1)

    B = ids.shape[0]
    step = B if batch_size is None else batch_size
    chunks = []
    for lo in range(0, B, step):
        chunk_tgt = None if tgt is None else tgt[lo : lo + step].to(ids.device)
        pick = _target_logit(chunk_tgt, ignore_index)
        chunks.append(
            input_gradients(model, ids[lo : lo + step], emb, pick, reduce_grad, vectorize=vectorize)
        )
    conn = torch.cat(chunks).to(device)  # (B, T, T)
    return conn[0] if unbatched else conn


def _target_logit(targets: Tensor | None, ignore_index: int) -> Callable[[Tensor], Tensor]:
    """logits ``(B, T, V)`` → the target's logit ``(B, T)`` (zero where ignored)."""

    def pick(logits: Tensor) -> Tensor:
        V = logits.shape[-1]
        if targets is None:
            tgt = logits.detach().argmax(-1)  # (B, T): the model's own top class
            keep = torch.ones_like(tgt, dtype=logits.dtype)
        else:
            keep_mask = targets != ignore_index
            check_range("targets", targets[keep_mask], V, "the number of logits V", ignore_index)
            tgt = torch.where(keep_mask, targets, torch.zeros_like(targets))
            keep = keep_mask.to(logits.dtype)
        return logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) * keep  # (B, T)

    return pick
