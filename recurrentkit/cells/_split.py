"""Helpers for the split steps of the cells in this package (private).

A split step computes its products with the cell's own weights through the ``linear``
the executor passes (see :mod:`recurrentkit.cells.protocol`). Where a product needs only
some rows of a weight, :func:`weight_rows` asks ``linear`` for them: a ``linear`` that
keeps one view per weight and row range for a whole run (the fast executor's deferred
linear has ``rows(t, start, stop)``) hands back the same view object at every step, so
the view's gradient is deferred like a whole weight's; any other ``linear``
(``F.linear`` on the reference path, under ``torch.compile`` or torch.func) gets a plain
slice.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["weight_rows"]


def weight_rows(linear: Any, t: Tensor, start: int, stop: int) -> Tensor:
    """``t[start:stop]``: the run's one view where ``linear`` keeps views, else a slice."""
    rows = getattr(linear, "rows", None)
    if rows is None:
        return t[start:stop]
    return rows(t, start, stop)
