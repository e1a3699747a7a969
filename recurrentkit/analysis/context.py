r"""Accuracy given context: top-k next-token accuracy by how much of the current name is seen."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from recurrentkit._validation import check_int, describe, shape_str
from recurrentkit.analysis._model import check_ids, check_range, logits_of, model_device
from recurrentkit.errors import ConfigError, InputTypeError, ShapeError

__all__ = ["ContextAccuracy", "context_accuracy"]


@dataclass(frozen=True)
class ContextAccuracy:
    """What [`context_accuracy`][recurrentkit.analysis.context_accuracy] returns.

    Attributes:
        k: the ``k`` of each accuracy row, increasing.
        positions: ``(P,)`` int64, ``0..P-1``: characters of the current name seen.
        accuracy: ``(len(k), P)`` float64; ``accuracy[i, p]`` is the share of targets
            at position ``p`` that are among the model's top ``k[i]`` classes (``NaN``
            where ``counts[p] == 0``).
        counts: ``(P,)`` int64, the targets scored at each position.
        overall: ``(len(k),)`` float64, top-``k`` accuracy over all scored targets.
    """

    k: tuple[int, ...]
    positions: Tensor
    accuracy: Tensor
    counts: Tensor
    overall: Tensor

    def at(self, k: int) -> Tensor:
        """The ``(P,)`` accuracy curve for one ``k`` (one of `k`)."""
        if k not in self.k:
            raise ConfigError("k", f"one of {self.k}", k)
        return self.accuracy[self.k.index(k)]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values for JSON: ``{"top1": [...], ...}`` (``NaN`` becomes ``None``)."""

        def num(x: Tensor) -> float | None:
            v = float(x)
            return None if math.isnan(v) else v

        out: dict[str, Any] = {
            "positions": [int(p) for p in self.positions],
            "counts": [int(c) for c in self.counts],
        }
        for i, k in enumerate(self.k):
            out[f"top{k}"] = [num(a) for a in self.accuracy[i]]
            out[f"overall_top{k}"] = num(self.overall[i])
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ContextAccuracy:
        """The result back from [`to_dict`][recurrentkit.analysis.ContextAccuracy.to_dict]'s
        output (e.g. read from a JSON file); ``None`` becomes ``NaN``.

        Example:
            >>> import torch
            >>> from recurrentkit.analysis import ContextAccuracy
            >>> d = {"positions": [0, 1], "counts": [2, 1], "top1": [0.5, None],
            ...      "overall_top1": 0.5}
            >>> ContextAccuracy.from_dict(d).to_dict() == d
            True
        """
        try:
            ks = tuple(sorted(int(key[3:]) for key in d if re.fullmatch(r"top\d+", key)))
            if not ks:
                raise KeyError("top<k>")
            rows = [[math.nan if v is None else float(v) for v in d[f"top{k}"]] for k in ks]
            overall = [d[f"overall_top{k}"] for k in ks]
            return cls(
                k=ks,
                positions=torch.tensor(list(d["positions"]), dtype=torch.int64),
                accuracy=torch.tensor(rows, dtype=torch.float64),
                counts=torch.tensor(list(d["counts"]), dtype=torch.int64),
                overall=torch.tensor(
                    [math.nan if v is None else float(v) for v in overall], dtype=torch.float64
                ),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                "d", "a mapping as ContextAccuracy.to_dict() returns", f"{describe(d)} ({err})"
            ) from None


@torch.no_grad()
def context_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    k: int | Sequence[int] = (1, 2, 3),
    *,
    first_position: int = 0,
    ignore_index: int = -100,
    batch_size: int = 512,
) -> ContextAccuracy:
    r"""Top-``k`` next-token accuracy as a function of how many characters are seen.

    Each row of ``x`` holds one name (padded); column ``i`` of the logits predicts
    ``y[:, i]``. The *position* of that prediction is the number of characters of
    the name the model has read, ``i + first_position``:

    - a start token first (``x = [start] + chars``, ``y = chars + [end]``, makemore's
      convention, the study's ``fixed`` protocol): ``first_position=0`` (the default);
      position 0 predicts the first letter from the start token alone.
    - the first letter first (``x = chars``, ``y = chars[1:] + [end]``, the study's
      ``seed`` protocol): ``first_position=1``; position 1 predicts the second letter
      from the first, and position 0 is never scored (its accuracy is ``NaN``) since
      the first letter is never a target.

    The end token counts as a target like any other. Targets equal to ``ignore_index``
    (padding) are skipped. Ties among logits are ordered by `torch.topk`.

    $$
    \text{acc}_k(p) = \frac{\#\{(n, i) : i + \text{first\_position} = p,\
        y_{n,i} \in \text{top}_k(z_{n,i})\}}{\#\{(n, i) : i + \text{first\_position} = p,\
        y_{n,i} \ne \text{ignore}\}}
    $$

    The model runs in its current mode (call ``model.eval()`` first) on the device of
    its parameters, ``batch_size`` rows at a time, without gradients.

    Args:
        model: maps token ids ``(B, T)`` to logits ``(B, T, V)`` or to a tuple whose
            first element is the logits.
        x: input ids ``(N, T)``.
        y: target ids ``(N, T)``, ``ignore_index`` where nothing is predicted.
        k: one ``k >= 1`` or several; each at most ``V``.
        first_position: characters already seen at column 0 (see above), ``>= 0``.
        ignore_index: the target value to skip.
        batch_size: rows per forward pass.

    Returns:
        A [`ContextAccuracy`][recurrentkit.analysis.ContextAccuracy]; positions run
            up to the last one scored.

    Shape:
        - x, y: ``(N, T)``.
        - accuracy: ``(len(k), P)`` with ``P <= T + first_position``.

    Raises:
        InputTypeError: ``x``/``y`` not integer tensors, ``k`` not ints, a model that
            returns no logits tensor.
        ShapeError: ``x``/``y`` not ``(N, T)`` of one shape, logits not ``(B, T, V)``.
        ConfigError: ``k`` outside ``1..V``, targets out of range, nothing to score, ids
            in ``x`` beyond the model's embedding (when it has exactly one).

    Examples:
        >>> import torch, torch.nn as nn
        >>> from recurrentkit.analysis import context_accuracy
        >>> model = nn.Embedding(4, 4)                   # logits = a table of the last id
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(4).roll(1, dims=1))   # predicts id + 1
        >>> x = torch.tensor([[0, 1, 2], [0, 2, 2]])
        >>> y = torch.tensor([[1, 2, 3], [3, 1, -100]])
        >>> acc = context_accuracy(model, x, y, k=1)
        >>> acc.at(1).tolist(), acc.counts.tolist()
        ([0.5, 0.5, 1.0], [2, 2, 1])
    """
    if not callable(model):
        raise InputTypeError("model", "a module mapping ids (B, T) to logits", describe(model))
    x = check_ids("x", x, ranks=(2,), layout="(N, T)")
    y = check_ids("y", y, ranks=(2,), layout="(N, T), the shape of x")
    if y.shape != x.shape:
        raise ShapeError("y", f"shape {shape_str(x.shape)} (that of x)", shape_str(y.shape))
    ks = _check_k(k)
    first_position = check_int("first_position", first_position, minimum=0)
    batch_size = check_int("batch_size", batch_size)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise InputTypeError("ignore_index", "an int", describe(ignore_index))
    scored = y != ignore_index  # (N, T)
    if not bool(scored.any()):
        raise ConfigError("y", f"at least one target other than {ignore_index}", "none")

    if isinstance(model, nn.Module):  # ids the model's one embedding cannot look up
        embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
        if len(embeddings) == 1:
            check_range("x", x, embeddings[0].num_embeddings, "the model's embedding size")
    N, T = x.shape
    P = T + first_position
    device = model_device(model) if isinstance(model, nn.Module) else None
    positions = torch.arange(T) + first_position  # (T,)
    counts = torch.zeros(P, dtype=torch.float64)
    hits = torch.zeros(len(ks), P, dtype=torch.float64)
    for lo in range(0, N, batch_size):
        xb, yb = x[lo : lo + batch_size], y[lo : lo + batch_size]  # (b, T)
        if device is not None:
            xb = xb.to(device)
        logits = logits_of(model(xb), xb.shape[0], T).cpu()  # (b, T, V)
        V = logits.shape[-1]
        if ks[-1] > V:
            raise ConfigError("k", f"values in 1..{V} (the number of logits V)", ks[-1])
        keep = scored[lo : lo + batch_size].cpu()  # (b, T)
        target = yb.cpu()[keep]  # (n,)
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= V):
            raise ConfigError(
                "y",
                f"ids in 0..{V - 1} (the number of logits V) or {ignore_index} to skip",
                f"ids in {int(target.min())}..{int(target.max())}",
            )
        top = logits[keep].topk(ks[-1], dim=-1).indices  # (n, k_max)
        found = (top == target[:, None]).cumsum(-1) > 0  # (n, k_max): hit within top j+1
        pos = positions.expand(keep.shape)[keep]  # (n,)
        counts += torch.bincount(pos, minlength=P).to(torch.float64)
        for i, kk in enumerate(ks):
            hits[i] += torch.bincount(pos, weights=found[:, kk - 1].double(), minlength=P)
    last = int(torch.nonzero(counts).max()) + 1
    counts, hits = counts[:last], hits[:, :last]
    accuracy = torch.where(counts > 0, hits / counts.clamp_min(1), torch.nan)
    overall = hits.sum(-1) / counts.sum()
    return ContextAccuracy(ks, torch.arange(last), accuracy, counts.to(torch.int64), overall)


def _check_k(k: object) -> tuple[int, ...]:
    values = [k] if isinstance(k, int) and not isinstance(k, bool) else k
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise InputTypeError("k", "an int >= 1 or a non-empty sequence of them", describe(k))
    return tuple(sorted({check_int("k", v) for v in values}))
