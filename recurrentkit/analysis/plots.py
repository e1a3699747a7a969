"""Figures for the analysis results: connectivity heatmaps, decay curves, accuracy by context.

matplotlib is an optional dependency (``pip install "recurrentkit[study]"``), imported
inside each function. Figures are built with `matplotlib.figure.Figure`, not
pyplot: they hold no global state, need no backend and no closing, and display in a
notebook when returned.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from recurrentkit._validation import check_int, check_tensor, describe, shape_str
from recurrentkit.analysis.context import ContextAccuracy
from recurrentkit.analysis.decay import ConnectivityDecay
from recurrentkit.errors import ConfigError, InputTypeError, ShapeError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_connectivity", "plot_context_accuracy", "plot_decay"]

PathLike = str | os.PathLike[str]


def plot_connectivity(
    conn: Tensor,
    inputs: str | Sequence[str],
    *,
    outputs: str | Sequence[str] | None = None,
    path: PathLike | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    cmap: str = "Blues",
) -> Figure:
    r"""A heatmap of one sequence's connectivity, characters on the axes.

    Coloured as in the article: each output position's row is divided by its own
    maximum, so every row's strongest input is full colour and the shading shows how
    the model spreads its attention over the past (absolute scale is lost):

    $$ \text{shade}[t, s] = \text{conn}[t, s] \,/\, \max_{s'} \text{conn}[t, s'] $$

    Args:
        conn: ``(T, T)`` connectivity of one sequence, indexed ``[t, s]``.
        inputs: the ``T`` input tokens as text (a string of ``T`` characters, or ``T``
            labels such as ``"<s>"``), shown along the x axis.
        outputs: labels of the ``T`` output positions (e.g. the targets), along the
            y axis; defaults to ``inputs`` (row ``t`` is the prediction made after
            reading input ``t``).
        path: where to save the figure (format from the suffix); parent folders are
            created. ``None``: not saved.
        title: the axes' title.
        ax: draw into these axes instead of a new figure.
        cmap: a matplotlib colour map.

    Returns:
        The figure (``ax.figure`` when ``ax`` is given).

    Shape:
        - conn: ``(T, T)``.

    Raises:
        ShapeError: ``conn`` not ``(T, T)``, labels not ``T`` long.
        ImportError: matplotlib is not installed.

    Examples:
        >>> import torch
        >>> from recurrentkit.analysis import plot_connectivity
        >>> conn = torch.tensor([[1.0, 0.0, 0.0], [0.5, 2.0, 0.0], [0.1, 0.3, 0.2]])
        >>> fig = plot_connectivity(conn, ".ab", outputs="ab.")
        >>> fig.axes[0].images[0].get_array().max(axis=1).tolist()
        [1.0, 1.0, 1.0]
    """
    check_tensor("conn", conn, ranks=(2,), layout="(T, T)")
    T = conn.shape[0]
    if conn.shape[1] != T:
        raise ShapeError("conn", "shape (T, T) (one sequence)", shape_str(conn.shape))
    x_labels = _labels("inputs", inputs, T)
    y_labels = x_labels if outputs is None else _labels("outputs", outputs, T)
    c = conn.detach().to("cpu", torch.float64)
    peak = c.max(dim=1, keepdim=True).values  # (T, 1)
    shade = torch.where(peak > 0, c / torch.where(peak > 0, peak, 1.0), 0.0)  # (T, T)

    side = max(3.0, 0.32 * T + 1.6)
    fig, ax = _figure(ax, (side + 0.8, side))
    image = ax.imshow(shade.numpy(), cmap=cmap, vmin=0.0, vmax=1.0, aspect="equal")
    ax.set_xticks(range(T), x_labels)
    ax.set_yticks(range(T), y_labels)
    ax.set_xlabel("input s")
    ax.set_ylabel("output t")
    ax.tick_params(top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.xaxis.set_label_position("top")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="connectivity / row max")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_decay(
    decays: Mapping[str, ConnectivityDecay | Tensor],
    *,
    path: PathLike | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    max_distance: int | None = None,
    log_scale: bool = False,
) -> Figure:
    """Decay curves of several models on one axis: mean normalised connectivity by distance.

    Args:
        decays: model name → [`ConnectivityDecay`][recurrentkit.analysis.ConnectivityDecay] (its
            ``far_share``, and a non-zero ``future_share``, are added to the legend) or a
            1-D curve indexed by distance.
        path: where to save the figure; ``None``: not saved.
        title: the axes' title.
        ax: draw into these axes instead of a new figure.
        max_distance: the last distance shown (default: all).
        log_scale: a logarithmic y axis (zero values are not drawn).

    Returns:
        The figure.

    Raises:
        ConfigError: no curves.
        InputTypeError: a value that is neither a decay nor a 1-D tensor.
        ImportError: matplotlib is not installed.

    Examples:
        >>> import torch
        >>> from recurrentkit.analysis import connectivity_decay, plot_decay
        >>> near = connectivity_decay(torch.eye(4))
        >>> fig = plot_decay({"near": near, "flat": torch.full((4,), 0.25)})
        >>> labels = [line.get_label() for line in fig.axes[0].get_lines()]
        >>> print(*labels, sep="; ")
        near (far share 0.00); flat
    """
    if not isinstance(decays, Mapping) or not decays:
        raise ConfigError("decays", "a non-empty mapping of name to decay", describe(decays))
    if max_distance is not None:
        check_int("max_distance", max_distance, minimum=0)
    fig, ax = _figure(ax, (6.0, 4.0))
    for i, (name, value) in enumerate(decays.items()):
        label = str(name)
        if isinstance(value, ConnectivityDecay):
            curve = value.curve
            notes = []
            if value.far_share == value.far_share:  # not NaN
                notes.append(f"far share {value.far_share:.2f}")
            if value.future_share > 0:
                notes.append(f"future share {value.future_share:.2f}")
            if notes:
                label = f"{name} ({', '.join(notes)})"
        elif isinstance(value, Tensor) and value.dim() == 1:
            curve = value
        else:
            raise InputTypeError(
                f"decays[{name!r}]", "a ConnectivityDecay or a 1-D tensor", describe(value)
            )
        y = curve.detach().to("cpu", torch.float64)
        if max_distance is not None:
            y = y[: max_distance + 1]
        ax.plot(range(len(y)), y.numpy(), marker="o", markersize=3, label=label, **_style(i))
    ax.set_xlabel("distance t - s")
    ax.set_ylabel("mean share of connectivity")
    if log_scale:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    _legend(ax, len(decays))
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_context_accuracy(
    results: Mapping[str, ContextAccuracy],
    *,
    k: int = 1,
    path: PathLike | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Top-``k`` accuracy by characters seen, several models on one axis.

    Args:
        results: model name → [`ContextAccuracy`][recurrentkit.analysis.ContextAccuracy].
        k: which top-``k`` curve to draw (one the results were computed with).
        path: where to save the figure; ``None``: not saved.
        title: the axes' title.
        ax: draw into these axes instead of a new figure.

    Returns:
        The figure.

    Raises:
        ConfigError: no results, or a ``k`` a result lacks.
        InputTypeError: a value that is not a ``ContextAccuracy``.
        ImportError: matplotlib is not installed.
    """
    if not isinstance(results, Mapping) or not results:
        raise ConfigError("results", "a non-empty mapping of name to ContextAccuracy", results)
    fig, ax = _figure(ax, (6.0, 4.0))
    for i, (name, res) in enumerate(results.items()):
        if not isinstance(res, ContextAccuracy):
            raise InputTypeError(f"results[{name!r}]", "a ContextAccuracy", describe(res))
        acc = res.at(k)
        ax.plot(
            res.positions.numpy(), acc.numpy(), marker="o", markersize=3, label=str(name),
            **_style(i),
        )  # fmt: skip
    ax.set_xlabel("characters of the name seen")
    ax.set_ylabel(f"top-{k} accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    _legend(ax, len(results))
    if title:
        ax.set_title(title)
    return _save(fig, path)


_LINESTYLES = ("-", "--", ":", "-.")
LEGEND_INSIDE = 6
"""Curves on one axis up to which the legend sits inside the axes; beyond, to their right."""


def _style(i: int) -> dict[str, Any]:
    """The ``i``-th curve's colour and line style: the ten default colours, then the same
    colours dashed, dotted, ... so that no two of up to 40 curves look alike."""
    return {"color": f"C{i % 10}", "linestyle": _LINESTYLES[(i // 10) % len(_LINESTYLES)]}


def _legend(ax: Axes, n: int) -> None:
    if n <= LEGEND_INSIDE:
        ax.legend()
    else:  # many curves: beside the axes, so that the legend hides none of them
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")


def _labels(name: str, labels: object, T: int) -> list[str]:
    if isinstance(labels, str):
        items = list(labels)
    elif isinstance(labels, Sequence) and all(isinstance(s, str) for s in labels):
        items = list(labels)
    else:
        raise InputTypeError(name, f"a string of {T} characters or {T} labels", describe(labels))
    if len(items) != T:
        raise ShapeError(name, f"{T} labels (T, one per position)", len(items))
    return items


def _figure(ax: Any, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('plotting needs matplotlib: pip install "recurrentkit[study]"') from err
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig: Figure, path: PathLike | None) -> Figure:
    if path is not None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=150)
    return fig
