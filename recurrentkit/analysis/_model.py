"""How the analysis tools talk to a token model: find its embedding, run it, read its logits.

Private module. A *token model* maps token ids ``(B, T)`` to logits ``(B, T, V)``, or
to a tuple whose first element is the logits (makemore's ``(logits, loss)``), and
contains the `torch.nn.Embedding` the ids enter through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from recurrentkit._validation import describe, shape_str
from recurrentkit.errors import ConfigError, DeviceError, InputTypeError, ShapeError

__all__ = [
    "EmbeddingTap",
    "check_ids",
    "check_range",
    "find_embedding",
    "input_gradients",
    "logits_of",
    "model_device",
]


def find_embedding(model: nn.Module, embedding: nn.Embedding | str | None = None) -> nn.Embedding:
    """The ``nn.Embedding`` the token ids enter ``model`` through.

    Args:
        model: the token model.
        embedding: ``None`` to find it (there must be exactly one ``nn.Embedding`` in
            ``model``), the module itself, or its attribute path inside ``model``
            (``"embed"``, ``"encoder.tokens"``).

    Raises:
        InputTypeError: ``model`` is not an ``nn.Module``, or ``embedding`` is neither
            ``None``, a string nor an ``nn.Embedding`` (or the path names another kind).
        ConfigError: no ``nn.Embedding`` or several in ``model``, or a path that names
            nothing.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(
            "model", "an nn.Module mapping token ids (B, T) to logits (B, T, V)", describe(model)
        )
    if embedding is None:
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
        if len(found) == 1:
            return found[0][1]
        kind = type(model).__name__
        if not found:
            raise ConfigError(
                "embedding",
                "an nn.Embedding inside model (the layer token ids enter through); "
                "pass embedding= if the model embeds another way",
                f"none in {kind}",
            )
        names = ", ".join(repr(n) for n, _ in found)
        raise ConfigError(
            "embedding",
            "exactly one nn.Embedding inside model, or embedding= naming the one the "
            "tokens enter through",
            f"{len(found)} in {kind}: {names}",
        )
    if isinstance(embedding, str):
        try:
            module = model.get_submodule(embedding)
        except AttributeError:
            raise ConfigError(
                "embedding", f"the path of a submodule of {type(model).__name__}", repr(embedding)
            ) from None
        if not isinstance(module, nn.Embedding):
            raise InputTypeError(
                "embedding", "the path of an nn.Embedding", f"{embedding!r}, a {describe(module)}"
            )
        return module
    if not isinstance(embedding, nn.Embedding):
        raise InputTypeError(
            "embedding", "None, an nn.Embedding or its attribute path", describe(embedding)
        )
    return embedding


def check_ids(name: str, ids: object, *, ranks: tuple[int, ...], layout: str) -> Tensor:
    """An integer (not bool) tensor of one of ``ranks`` with no empty dimension, as int64
    (``nn.Embedding`` takes no other integer dtype but int32)."""
    if not isinstance(ids, Tensor):
        raise InputTypeError(name, f"an integer tensor of shape {layout}", describe(ids))
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise InputTypeError(name, f"an integer tensor of shape {layout}", ids.dtype)
    if ids.dim() not in ranks:
        raise ShapeError(name, f"shape {layout}", shape_str(ids.shape))
    if any(s == 0 for s in ids.shape):
        raise ShapeError(name, f"shape {layout} with no empty dimension", shape_str(ids.shape))
    if ids.is_meta:
        raise DeviceError(name, "a tensor with values (on the CPU or the model's device)", "meta")
    return ids.long()


def check_range(
    name: str, ids: Tensor, size: int, what: str, ignore_index: int | None = None
) -> None:
    """Every id in ``0..size-1`` (``what`` names ``size`` in the message)."""
    if ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= size:
        also = f" (or {ignore_index} to skip a position)" if ignore_index is not None else ""
        raise ConfigError(name, f"ids in 0..{size - 1} ({what}){also}", f"ids in {lo}..{hi}")


def logits_of(result: Any, batch: int, steps: int) -> Tensor:
    """The logits ``(B, T, V)`` in what the model returned (a tensor or a tuple)."""
    logits = result[0] if isinstance(result, (tuple, list)) and len(result) > 0 else result
    expected = f"logits of shape ({batch}, {steps}, V) (or a tuple whose first element is them)"
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise InputTypeError("model(tokens)", expected, describe(logits))
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (batch, steps):
        raise ShapeError("model(tokens)", expected, shape_str(logits.shape))
    return logits


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (``None`` if it has neither)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


class EmbeddingTap:
    """While active, the embedding's output is replaced by a leaf tensor that records gradients.

    Use as a context manager around one forward call; afterwards `leaf` is the
    embedding output ``(B, T, D)`` (gradients are taken with respect to it) and
    `transposed` says whether the model embedded the ids time-major ``(T, B)``.
    """

    def __init__(self, embedding: nn.Embedding) -> None:
        self.embedding = embedding
        self.calls: list[tuple[Tensor, Tensor]] = []
        self.transposed = False
        self._handle: Any = None

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        leaf = output.detach().requires_grad_(True)
        self.calls.append((args[0], leaf))
        return leaf.clone()  # the model may modify it in place; the leaf stays intact

    def __enter__(self) -> EmbeddingTap:
        self._handle = self.embedding.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def leaf(self, ids: Tensor) -> Tensor:
        """The embedding output of the one call on ``ids (B, T)`` (checked)."""
        if not self.calls:
            raise ConfigError(
                "embedding",
                "the nn.Embedding that model(tokens) calls on the token ids",
                "an embedding the forward pass never called (a model that indexes the "
                "weight itself, e.g. F.embedding, cannot be analysed)",
            )
        if len(self.calls) > 1:
            raise ConfigError(
                "embedding",
                "an nn.Embedding called once per forward pass (on the token ids)",
                f"{len(self.calls)} calls",
            )
        seen, leaf = self.calls[0]
        seen = seen.to(ids.device)
        if seen.shape == ids.shape and torch.equal(seen, ids):
            self.transposed = False
        elif seen.shape == ids.T.shape and torch.equal(seen, ids.T):
            self.transposed = True
        else:
            raise ConfigError(
                "embedding",
                f"an nn.Embedding called on the token ids as given, {shape_str(ids.shape)} "
                "or transposed",
                f"a call on ids of shape {shape_str(seen.shape)} that differ from the tokens",
            )
        return leaf


def input_gradients(
    model: nn.Module,
    ids: Tensor,
    embedding: nn.Embedding,
    pick: Callable[[Tensor], Tensor],
    reduce: Callable[[Tensor], Tensor],
    *,
    vectorize: bool = True,
) -> Tensor:
    """``reduce(d pick(logits)[:, t] / d embedded[:, s, :])`` for every ``t``, ``s``.

    One forward pass, then the gradient of each output position's scalar: batch rows
    are summed, which separates them as long as the model treats rows independently.
    With ``vectorize``, the ``T`` backward passes run as one batched backward pass
    (``torch.autograd.grad(..., is_grads_batched=True)``, i.e. ``vmap`` over the
    backward graph); if that raises (an operation without a batching rule, memory),
    it falls back to ``T`` sequential backward passes, which give the same numbers.

    Args:
        model: the token model.
        ids: ``(B, T)`` token ids on the embedding's device.
        embedding: the module ``ids`` enter through.
        pick: logits ``(B, T, V)`` → the scalar per position to differentiate ``(B, T)``.
        reduce: a gradient ``(..., D)`` → its magnitude ``(...)``.
        vectorize: try one batched backward pass first.

    Returns:
        ``(B, T_out, T_in)``.
    """
    B, T = ids.shape
    tap = EmbeddingTap(embedding)
    with torch.enable_grad():
        with tap:
            result = model(ids)
        logits = logits_of(result, B, T)  # (B, T, V)
        leaf = tap.leaf(ids)  # (B, T, D) or (T, B, D)
        chosen = pick(logits)  # (B, T)
        out = logits.new_zeros(B, T, T)
        if not chosen.requires_grad:  # the logits do not depend on the embedding at all
            return out
        if vectorize:
            one_hot = torch.eye(T, dtype=chosen.dtype, device=chosen.device)  # (T_out, T)
            try:
                (grad,) = torch.autograd.grad(
                    chosen,
                    leaf,
                    grad_outputs=one_hot[:, None, :].expand(T, B, T),  # (T_out, B, T)
                    is_grads_batched=True,
                    retain_graph=True,
                    allow_unused=True,
                )  # (T_out, B, T_in, D) or (T_out, T_in, B, D)
            except RuntimeError:
                pass  # no batching rule for some operation, or out of memory: loop below
            else:
                if grad is None:
                    return out
                if tap.transposed:
                    grad = grad.transpose(1, 2)
                return reduce(grad.transpose(0, 1)).detach()  # (B, T_out, T_in)
        for t in range(T):
            (grad,) = torch.autograd.grad(
                chosen[:, t].sum(), leaf, retain_graph=t < T - 1, allow_unused=True
            )
            if grad is None:
                continue
            if tap.transposed:
                grad = grad.transpose(0, 1)  # (B, T_in, D)
            out[:, t] = reduce(grad)
    return out.detach()
