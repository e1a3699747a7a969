r"""How far back a model reaches: connectivity as a function of distance, and one scalar."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from recurrentkit._validation import check_int, check_tensor, describe, shape_str
from recurrentkit.errors import ConfigError, DeviceError, InputTypeError, ShapeError

__all__ = ["ConnectivityDecay", "connectivity_decay"]


@dataclass(frozen=True)
class ConnectivityDecay:
    """What [`connectivity_decay`][recurrentkit.analysis.connectivity_decay] returns.

    Attributes:
        curve: ``(T,)`` float64; ``curve[d]`` is the mean share of an output position's
            connectivity that lies at distance ``d = t - s`` (``NaN`` where no row
            reaches that far).
        counts: ``(T,)`` int64; how many output positions were averaged at each ``d``.
        far: the distance threshold of ``far_share``.
        far_share: mean share of connectivity at distance ``>= far``, over the output
            positions that have inputs that far back (``NaN`` if none has).
        future_share: mean share of connectivity on *later* inputs (``s > t``); exactly
            ``0.0`` for a causal model.
        rows: the number of output positions used (non-zero rows within ``lengths``).
    """

    curve: Tensor
    counts: Tensor
    far: int
    far_share: float
    future_share: float
    rows: int

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values for JSON (``NaN`` becomes ``None``)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "curve": [num(float(v)) for v in self.curve],
            "counts": [int(v) for v in self.counts],
            "far": self.far,
            "far_share": num(self.far_share),
            "future_share": num(self.future_share),
            "rows": self.rows,
        }

    def far_share_at(self, far: int) -> float:
        r"""``far_share`` as [`connectivity_decay`][recurrentkit.analysis.connectivity_decay]
        would give it with another ``far``, from the curve and counts alone.

        Each output position at ``t >= far`` puts its mass at distances ``far..t`` on the
        curve's points ``d >= far``, and ``counts[far]`` is the number of such positions:

        $$
        \text{far\_share}(D) = \frac{\sum_{d \ge D} \text{curve}(d)\,\text{counts}(d)}
            {\text{counts}(D)}
        $$

        Args:
            far: the distance that counts as far, ``>= 1``.

        Returns:
            The mean share of connectivity at distance ``>= far``; ``NaN`` if no output
            position has inputs that far back (``far`` beyond the curve included).

        Raises:
            InputTypeError: ``far`` not an int.
            ConfigError: ``far < 1``.

        Example:
            >>> import torch
            >>> from recurrentkit.analysis import connectivity_decay
            >>> conn = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
            >>> connectivity_decay(conn).far_share_at(2)
            0.5
        """
        far = check_int("far", far, minimum=1)
        T = int(self.curve.numel())
        if far >= T or int(self.counts[far]) == 0:
            return math.nan
        mass = (self.curve[far:].nan_to_num(0.0) * self.counts[far:]).sum()
        return float(mass / int(self.counts[far]))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConnectivityDecay:
        """The decay back from [`to_dict`][recurrentkit.analysis.ConnectivityDecay.to_dict]'s
        output (e.g. read from a JSON file); ``None`` becomes ``NaN``.

        Example:
            >>> import torch
            >>> from recurrentkit.analysis import ConnectivityDecay, connectivity_decay
            >>> d = connectivity_decay(torch.eye(3))
            >>> ConnectivityDecay.from_dict(d.to_dict()).to_dict() == d.to_dict()
            True
        """
        try:
            return cls(
                curve=torch.tensor(_nan_list(d["curve"]), dtype=torch.float64),
                counts=torch.tensor(list(d["counts"]), dtype=torch.int64),
                far=int(d["far"]),
                far_share=_nan(d["far_share"]),
                future_share=_nan(d["future_share"]),
                rows=int(d["rows"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                "d", "a mapping as ConnectivityDecay.to_dict() returns", f"{describe(d)} ({err})"
            ) from None


def _nan(x: object) -> float:
    """``None`` → ``NaN``; a number → float."""
    return math.nan if x is None else float(cast(float, x))


def _nan_list(xs: Iterable[object]) -> list[float]:
    return [_nan(x) for x in xs]


def connectivity_decay(
    conn: Tensor, *, far: int = 3, lengths: Tensor | None = None
) -> ConnectivityDecay:
    r"""Summarise a connectivity matrix by distance: a decay curve and a far-reach share.

    Each output position's row is normalised to sum to one, then averaged over every
    output position (and batch row) at each distance $d = t - s$:

    $$
    \bar c_{t,s} = \frac{c_{t,s}}{\sum_{s'} c_{t,s'}}, \qquad
    \text{curve}(d) = \operatorname*{mean}_{(b,t):\ t \ge d} \bar c_{t,t-d}, \qquad
    \text{far\_share} = \operatorname*{mean}_{(b,t):\ t \ge \text{far}}
        \sum_{s \le t - \text{far}} \bar c_{t,s}
    $$

    ``far_share`` averages only output positions that *have* inputs ``far`` back, so
    short prefixes do not dilute it. Rows whose connectivity is all zero (e.g. targets
    set to ``ignore_index`` in [`connectivity`][recurrentkit.analysis.connectivity]) are left
    out, as are rows at or past ``lengths``. The normalisation includes later inputs,
    so for a non-causal model ``sum(curve)`` falls short of one by about
    ``future_share``.

    Args:
        conn: connectivity ``(T, T)`` or ``(B, T, T)``, indexed ``[t, s]``, ``>= 0``
            (from [`connectivity`][recurrentkit.analysis.connectivity], either reduction).
        far: the distance that counts as far, ``>= 1``.
        lengths: optional ``(B,)`` integer lengths (each in ``1..T``); output
            positions ``t >= lengths[b]`` are left out.

    Returns:
        A [`ConnectivityDecay`][recurrentkit.analysis.ConnectivityDecay].

    Shape:
        - conn: ``(T, T)`` or ``(B, T, T)``; lengths: ``(B,)``.
        - curve, counts: ``(T,)``.

    Raises:
        InputTypeError: ``conn`` not a floating tensor, ``lengths`` not integers.
        ShapeError: ``conn`` not square in its last two dimensions, ``lengths`` of the
            wrong shape or out of ``1..T``.
        ConfigError: negative or non-finite connectivity, ``far < 1``.
        DeviceError: ``conn`` on the meta device (it has no values).

    Examples:
        >>> import torch
        >>> from recurrentkit.analysis import connectivity_decay
        >>> conn = torch.tensor([[1.0, 0.0, 0.0],      # each output sees only itself...
        ...                      [0.0, 1.0, 0.0],
        ...                      [1.0, 0.0, 1.0]])     # ...but the last also sees t - 2
        >>> d = connectivity_decay(conn, far=2)
        >>> d.curve.tolist(), d.far_share, d.future_share
        ([0.8333333333333334, 0.0, 0.5], 0.5, 0.0)
    """
    check_tensor("conn", conn, ranks=(2, 3), layout="(T, T) or (B, T, T)")
    if conn.shape[-1] != conn.shape[-2]:
        raise ShapeError("conn", "shape (T, T) or (B, T, T)", shape_str(conn.shape))
    far = check_int("far", far, minimum=1)
    if conn.is_meta:
        raise DeviceError("conn", "a tensor with values (on any device but meta)", "meta")
    c = (conn.unsqueeze(0) if conn.dim() == 2 else conn).detach().to("cpu", torch.float64)
    B, T = c.shape[0], c.shape[-1]
    if not bool(torch.isfinite(c).all()):
        bad = int((~torch.isfinite(c)).sum())
        raise ConfigError("conn", "finite connectivity values >= 0", f"{bad} NaN or infinite")
    if bool((c < 0).any()):
        raise ConfigError("conn", "connectivity values >= 0", f"a minimum of {float(c.min())}")
    total = c.sum(-1)  # (B, T)
    valid = total > 0  # (B, T)
    if lengths is not None:
        valid = valid & _length_mask(lengths, B, T)
    norm = c / torch.where(valid, total, torch.ones_like(total)).unsqueeze(-1)  # (B, T, T)
    norm = norm * valid.unsqueeze(-1)
    weight = valid.to(torch.float64)  # (B, T)

    curve = torch.full((T,), math.nan, dtype=torch.float64)
    counts = torch.zeros(T, dtype=torch.int64)
    for d in range(T):
        at_d = torch.diagonal(norm, offset=-d, dim1=1, dim2=2)  # (B, T - d): rows t = d..T-1
        n = int(valid[:, d:].sum())
        counts[d] = n
        if n:
            curve[d] = at_d.sum() / n

    ones = torch.ones(T, T, dtype=torch.bool)
    far_mass = (norm * torch.tril(ones, diagonal=-far)).sum(-1)  # (B, T)
    has_far = weight * (torch.arange(T) >= far).to(torch.float64)  # (B, T)
    n_far = float(has_far.sum())
    far_share = float((far_mass * has_far).sum() / n_far) if n_far else math.nan
    future = (norm * torch.triu(ones, diagonal=1)).sum(-1)  # (B, T)
    n_rows = int(valid.sum())
    future_share = float(future.sum() / n_rows) if n_rows else math.nan
    return ConnectivityDecay(curve, counts, far, far_share, future_share, n_rows)


def _length_mask(lengths: object, B: int, T: int) -> Tensor:
    """``mask[b, t] = t < lengths[b]`` after checking ``lengths``."""
    if (
        not isinstance(lengths, Tensor)
        or lengths.is_floating_point()
        or lengths.dtype == torch.bool
        or lengths.dim() != 1
    ):
        raise InputTypeError("lengths", f"an integer tensor of shape ({B},)", describe(lengths))
    if lengths.shape[0] != B:
        raise ShapeError("lengths", f"shape ({B},) (one length per row of conn)", lengths.shape[0])
    lengths = lengths.cpu()
    if bool((lengths < 1).any()) or bool((lengths > T).any()):
        raise ShapeError("lengths", f"values in 1..{T} (T)", lengths.tolist())
    return torch.arange(T)[None, :] < lengths[:, None]
