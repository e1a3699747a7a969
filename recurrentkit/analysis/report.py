r"""One trained token model analysed for a report: connectivity decay, accuracy by context.

[`analyse_run`][recurrentkit.analysis.analyse_run] bundles what a study reports about a
model's memory: the [`connectivity_decay`][recurrentkit.analysis.connectivity_decay] of a
fixed, seeded subset of validation rows, the
[`context_accuracy`][recurrentkit.analysis.context_accuracy] of all of them, and the
connectivity matrix of one example row for a heatmap, as one
[`RunAnalysis`][recurrentkit.analysis.RunAnalysis] that round-trips through JSON.
[`analysis_tables`][recurrentkit.analysis.analysis_tables] sets several analyses side by
side in Markdown tables; [`plot_comparison`][recurrentkit.analysis.plot_comparison] draws
the heatmaps, decay curves and accuracy curves of several runs side by side.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recurrentkit._validation import check_choice, check_int, describe, shape_str
from recurrentkit.analysis._model import check_ids
from recurrentkit.analysis.context import ContextAccuracy, context_accuracy
from recurrentkit.analysis.decay import ConnectivityDecay, connectivity_decay
from recurrentkit.analysis.gradients import REDUCTIONS, connectivity
from recurrentkit.analysis.plots import (
    LEGEND_INSIDE,
    plot_connectivity,
    plot_context_accuracy,
    plot_decay,
)
from recurrentkit.errors import ConfigError, InputTypeError, ShapeError

__all__ = [
    "RunAnalysis",
    "analyse_run",
    "analysis_tables",
    "fixed_subset",
    "plot_comparison",
]

EXAMPLE_MIN_SEEN = 6
"""The default example row is the first of the subset whose last target comes after at
least this many characters seen (a name of 6+ characters under either study protocol)."""


def fixed_subset(n: int, size: int, *, seed: int = 0) -> Tensor:
    """Sorted indices of a seeded random subset of ``range(n)``: the same rows on every call.

    Args:
        n: how many rows there are, ``>= 1``.
        size: how many to keep, ``>= 1``; ``size >= n`` keeps every row.
        seed: the seed of the permutation (a generator of its own: the global random
            state is neither used nor changed).

    Returns:
        ``(min(size, n),)`` int64 indices, increasing.

    Raises:
        InputTypeError: arguments that are not ints.
        ConfigError: ``n`` or ``size`` below 1, a negative seed.

    Example:
        >>> from recurrentkit.analysis import fixed_subset
        >>> fixed_subset(10, 4, seed=0).tolist() == fixed_subset(10, 4, seed=0).tolist()
        True
        >>> fixed_subset(3, 8).tolist()
        [0, 1, 2]
    """
    n = check_int("n", n)
    size = check_int("size", size)
    seed = check_int("seed", seed, minimum=0)
    if size >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:size].sort().values


@dataclass(frozen=True)
class RunAnalysis:
    """What [`analyse_run`][recurrentkit.analysis.analyse_run] returns.

    Attributes:
        decay: the connectivity decay of the subset's rows (targets: the true next token).
        context: top-``k`` accuracy by characters seen, over every row given.
        names: rows in the connectivity subset.
        context_names: rows the accuracy was computed over (every row given).
        subset_seed: the seed that chose them (see
            [`fixed_subset`][recurrentkit.analysis.fixed_subset]).
        reduce: how each gradient became one number (``"norm"`` or ``"sq_sum"``).
        example_index: the row of ``x`` shown in the heatmap.
        example: ``(L, L)`` connectivity of that row, cropped to its ``L`` scored
            positions (the padding after them is left out).
        example_inputs: the ``L`` input tokens of the row, as labels.
        example_outputs: the ``L`` targets of the row, as labels.
        seconds: wall time of the analysis.
    """

    decay: ConnectivityDecay
    context: ContextAccuracy
    names: int
    context_names: int
    subset_seed: int
    reduce: str
    example_index: int
    example: Tensor
    example_inputs: tuple[str, ...]
    example_outputs: tuple[str, ...]
    seconds: float

    def summary(self) -> dict[str, float]:
        """The scalars a results table shows: ``far_share``, ``future_share`` and
        ``top{k}_accuracy`` (over all positions) for each ``k``."""
        out = {"far_share": self.decay.far_share, "future_share": self.decay.future_share}
        for i, k in enumerate(self.context.k):
            out[f"top{k}_accuracy"] = float(self.context.overall[i])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values for JSON (``NaN`` becomes ``None``)."""
        return {
            "names": self.names,
            "subset_seed": self.subset_seed,
            "reduce": self.reduce,
            "targets": "the true next token",
            "context_names": self.context_names,
            "decay": self.decay.to_dict(),
            "context_accuracy": self.context.to_dict(),
            "example": {
                "index": self.example_index,
                "inputs": list(self.example_inputs),
                "outputs": list(self.example_outputs),
                "connectivity": self.example.to(torch.float64).tolist(),
            },
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunAnalysis:
        """The analysis back from [`to_dict`][recurrentkit.analysis.RunAnalysis.to_dict]'s
        output (e.g. one run's ``"analysis"`` in a results file).

        Raises:
            ConfigError: a mapping that lacks a field or holds the wrong kind of value.
        """
        try:
            ex = d["example"]
            return cls(
                decay=ConnectivityDecay.from_dict(d["decay"]),
                context=ContextAccuracy.from_dict(d["context_accuracy"]),
                names=int(d["names"]),
                context_names=int(d["context_names"]),
                subset_seed=int(d["subset_seed"]),
                reduce=str(d["reduce"]),
                example_index=int(ex["index"]),
                example=torch.tensor(ex["connectivity"], dtype=torch.float64),
                example_inputs=tuple(str(s) for s in ex["inputs"]),
                example_outputs=tuple(str(s) for s in ex["outputs"]),
                seconds=float(d["seconds"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                "d", "a mapping as RunAnalysis.to_dict() returns", f"{describe(d)} ({err})"
            ) from None


def analyse_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    first_position: int = 0,
    names: int = 256,
    seed: int = 0,
    far: int = 3,
    k: int | Sequence[int] = (1, 2, 3),
    example: int | None = None,
    vocab: Sequence[str] | None = None,
    reduce: str = "norm",
    ignore_index: int = -100,
    batch_size: int | None = 256,
) -> RunAnalysis:
    r"""Analyse a trained token model on held-out rows: how far back it reaches, and how
    its accuracy grows with context.

    - **Connectivity decay** over ``names`` rows chosen by
      [`fixed_subset`][recurrentkit.analysis.fixed_subset] (the same rows for every model
      given the same ``x`` and ``seed``): [`connectivity`][recurrentkit.analysis.connectivity]
      of each row's true targets ``y`` (positions equal to ``ignore_index`` are left out),
      summarised by [`connectivity_decay`][recurrentkit.analysis.connectivity_decay] with
      ``far``. The decay's ``far_share`` is the mean share of connectivity at distance
      $t - s \ge \text{far}$; ``future_share``, the share on later inputs, is exactly
      zero for a causal model and measures the leak of one that is not.
    - **Accuracy by context** over *every* row of ``x`` (one forward pass, as cheap as a
      validation loss): [`context_accuracy`][recurrentkit.analysis.context_accuracy] with
      ``first_position`` (0 when a start token comes first, 1 when the first letter
      does).
    - **One example** for a heatmap: the connectivity of row ``example`` of ``x``,
      cropped to its scored positions.

    The model runs in eval mode (its mode is restored afterwards), without parameter
    gradients, on the device of its parameters.

    Args:
        model: a token model: ids ``(B, T)`` → logits ``(B, T, V)`` or ``(logits, ...)``,
            with one ``nn.Embedding``.
        x: input ids ``(N, T)``.
        y: target ids ``(N, T)``, ``ignore_index`` where nothing is predicted.
        first_position: characters already seen at column 0 (see
            [`context_accuracy`][recurrentkit.analysis.context_accuracy]).
        names: rows in the connectivity subset, ``>= 1`` (all if ``>= N``).
        seed: the subset's seed, ``>= 0``.
        far: the distance ``far_share`` counts from, ``>= 1``.
        k: the top-``k`` accuracies to compute.
        example: the row of ``x`` for the heatmap; ``None``: the first row of the subset
            whose last target is predicted after at least 6 characters seen (column +
            ``first_position``), so the same name under either protocol; the row reaching
            furthest if none does.
        vocab: id → label (e.g. ``["<PAD>", ".", "a", ...]``) for the example's axes;
            ``None``: the ids as text.
        reduce: ``"norm"`` (default) or ``"sq_sum"``, as in
            [`connectivity`][recurrentkit.analysis.connectivity].
        ignore_index: the target value that marks padding.
        batch_size: rows per connectivity pass (bounds memory: a pass holds ``T`` sets
            of gradients of ``batch_size`` rows), as in
            [`connectivity`][recurrentkit.analysis.connectivity].

    Returns:
        A [`RunAnalysis`][recurrentkit.analysis.RunAnalysis].

    Shape:
        - x, y: ``(N, T)``.
        - example connectivity: ``(L, L)``, ``L`` the example row's scored positions.

    Raises:
        InputTypeError: ``model`` not an ``nn.Module``, ``x``/``y`` not integer tensors,
            arguments of the wrong type.
        ShapeError: ``x``/``y`` not ``(N, T)`` of one shape, an example row out of range.
        ConfigError: bad ``names``/``seed``/``far``/``k``/``reduce``, an example row with
            no targets, ids the model cannot embed.

    Example:
        >>> import torch, torch.nn as nn, recurrentkit as rk
        >>> from recurrentkit.analysis import analyse_run
        >>> class TokenLM(nn.Module):                   # (logits, loss), as makemore-style
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed = nn.Embedding(5, 4)
        ...         self.rnn = rk.Stack([rk.GRUCell(4, 8)], batch_first=True)
        ...         self.head = nn.Linear(8, 5)
        ...     def forward(self, idx):                 # (B, T) -> ((B, T, V), no loss)
        ...         return self.head(self.rnn(self.embed(idx))[0]), None
        >>> _ = torch.manual_seed(0)
        >>> model = TokenLM()
        >>> x = torch.randint(1, 5, (20, 6))                       # (N, T)
        >>> y = torch.cat([x[:, 1:], torch.zeros(20, 1, dtype=torch.long)], 1)
        >>> a = analyse_run(model, x, y, names=8, far=2)
        >>> a.names, a.decay.future_share, a.example.shape
        (8, 0.0, torch.Size([6, 6]))
        >>> sorted(a.summary())
        ['far_share', 'future_share', 'top1_accuracy', 'top2_accuracy', 'top3_accuracy']
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError("model", "an nn.Module mapping ids (B, T) to logits", describe(model))
    x = check_ids("x", x, ranks=(2,), layout="(N, T)")
    y = check_ids("y", y, ranks=(2,), layout="(N, T), the shape of x")
    if y.shape != x.shape:
        raise ShapeError("y", f"shape {shape_str(x.shape)} (that of x)", shape_str(y.shape))
    names = check_int("names", names)
    seed = check_int("seed", seed, minimum=0)
    far = check_int("far", far)
    check_choice("reduce", reduce, REDUCTIONS)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise InputTypeError("ignore_index", "an int", describe(ignore_index))
    N = x.shape[0]
    scored = (y != ignore_index).cpu()  # (N, T)
    rows = fixed_subset(N, names, seed=seed)  # (n,)
    first_position = check_int("first_position", first_position, minimum=0)
    example = _pick_example(example, scored, rows, first_position)
    labels = _labeller(vocab)

    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        context = context_accuracy(
            model, x, y, k, first_position=first_position, ignore_index=ignore_index
        )
        conn = connectivity(
            model,
            x[rows],
            targets=y[rows],
            reduce=reduce,
            ignore_index=ignore_index,
            batch_size=batch_size,
        )  # (n, T, T)
        decay = connectivity_decay(conn, far=far)
        L = int(scored[example].nonzero().max()) + 1
        one = connectivity(
            model, x[example], targets=y[example], reduce=reduce, ignore_index=ignore_index
        )  # (T, T)
    finally:
        model.train(was_training)
    return RunAnalysis(
        decay=decay,
        context=context,
        names=int(rows.numel()),
        context_names=N,
        subset_seed=seed,
        reduce=reduce,
        example_index=example,
        example=one[:L, :L].detach().to("cpu", torch.float64),  # (L, L)
        example_inputs=tuple(labels(int(i)) for i in x[example, :L]),
        example_outputs=tuple(labels(int(i)) for i in y[example, :L]),
        seconds=time.perf_counter() - start,
    )


def _pick_example(example: int | None, scored: Tensor, rows: Tensor, first_position: int) -> int:
    """The heatmap's row: checked if given, else chosen from the subset."""
    N, T = scored.shape
    if example is None:
        column = torch.arange(1, T + 1)  # (T,)
        seen = (scored[rows] * column).amax(-1) - 1 + first_position  # (n,): at the last target
        enough = (seen >= min(EXAMPLE_MIN_SEEN, int(seen.max()))).nonzero()
        example = int(rows[int(enough[0])])
    elif isinstance(example, bool) or not isinstance(example, int):
        raise InputTypeError("example", "an int row index or None", describe(example))
    elif not 0 <= example < N:
        raise ShapeError("example", f"a row index in 0..{N - 1}", example)
    if not bool(scored[example].any()):
        raise ConfigError("example", "a row with at least one target", f"row {example}, none")
    return example


def _labeller(vocab: Sequence[str] | None) -> Any:
    if vocab is None:
        return str
    if isinstance(vocab, str) or not isinstance(vocab, Sequence):
        raise InputTypeError("vocab", "a sequence of labels, one per id", describe(vocab))

    def label(i: int) -> str:
        return str(vocab[i]) if 0 <= i < len(vocab) else str(i)

    return label


def analysis_tables(
    analyses: Mapping[str, RunAnalysis],
    *,
    max_distance: int = 6,
    max_position: int = 8,
    k: int = 1,
    label: str = "run",
) -> str:
    """Two Markdown tables: connectivity share by distance, top-``k`` accuracy by position.

    Args:
        analyses: row label → analysis.
        max_distance: the last distance ``t - s`` shown (``0..max_distance``).
        max_position: the last number of characters seen shown.
        k: which accuracy (one the analyses were computed with).
        label: the first column's heading.

    Returns:
        Markdown text; ``—`` where a value is undefined (no output reaches that far, no
        target at that position).

    Raises:
        ConfigError: no analyses, a ``k`` they lack, negative limits.

    Example:
        >>> import torch
        >>> from recurrentkit.analysis import analysis_tables
        >>> from recurrentkit.analysis import ContextAccuracy, RunAnalysis, connectivity_decay
        >>> ctx = ContextAccuracy((1,), torch.arange(2), torch.tensor([[0.5, 1.0]],
        ...     dtype=torch.float64), torch.tensor([2, 1]), torch.tensor([2 / 3]))
        >>> a = RunAnalysis(connectivity_decay(torch.eye(2)), ctx, 1, 1, 0, "norm", 0,
        ...                 torch.eye(2), ("a", "b"), ("b", "."), 0.0)
        >>> print(analysis_tables({"eye": a}, max_distance=2, max_position=1))
        | run | d = 0 | d = 1 | d = 2 |
        |---|---|---|---|
        | eye | 1.000 | 0.000 | — |
        <BLANKLINE>
        | run | 0 | 1 |
        |---|---|---|
        | eye | 50.0% | 100.0% |
    """
    if not isinstance(analyses, Mapping) or not analyses:
        raise ConfigError("analyses", "a non-empty mapping of name to RunAnalysis", analyses)
    max_distance = check_int("max_distance", max_distance, minimum=0)
    max_position = check_int("max_position", max_position, minimum=0)

    def cell(values: Tensor, i: int, pct: bool) -> str:
        if i >= len(values) or math.isnan(float(values[i])):
            return "—"
        v = float(values[i])
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"

    def table(heads: list[str], rows: list[tuple[str, Tensor]], pct: bool) -> list[str]:
        lines = [f"| {label} | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        for name, values in rows:
            lines.append(
                f"| {name} | " + " | ".join(cell(values, i, pct) for i in range(len(heads))) + " |"
            )
        return lines

    decay = table(
        [f"d = {d}" for d in range(max_distance + 1)],
        [(name, a.decay.curve) for name, a in analyses.items()],
        pct=False,
    )
    accuracy = table(
        [str(p) for p in range(max_position + 1)],
        [(name, a.context.at(k)) for name, a in analyses.items()],
        pct=True,
    )
    return "\n".join([*decay, "", *accuracy])


COMPARISON_COLUMNS = 4
"""Heatmap panels per row in [`plot_comparison`][recurrentkit.analysis.plot_comparison]."""


def plot_comparison(
    analyses: Mapping[str, RunAnalysis],
    directory: str | os.PathLike[str],
    stem: str,
    *,
    title: str = "",
) -> list[str]:
    """Three figures comparing runs: example heatmaps, decay curves, accuracy by context.

    Writes, in ``directory``:

    - ``connectivity_<stem>.png``: one heatmap panel per run, at most
      ``COMPARISON_COLUMNS`` (4) a row
      ([`plot_connectivity`][recurrentkit.analysis.plot_connectivity] of its example row;
      give every run the same example to compare them);
    - ``decay_<stem>.png``: the runs' decay curves on one axis
      ([`plot_decay`][recurrentkit.analysis.plot_decay]; beyond ``LEGEND_INSIDE`` (6) runs
      its legend sits beside the axes, as in the next figure);
    - ``context_<stem>.png``: top-1 and top-``k_max`` accuracy by characters seen
      ([`plot_context_accuracy`][recurrentkit.analysis.plot_context_accuracy]).

    Args:
        analyses: name (the legend and panel title) → analysis.
        directory: where to write (created if missing).
        stem: the file names' common part, e.g. ``"beta_seed"``.
        title: added to each figure's title.

    Returns:
        The three file names (relative to ``directory``).

    Raises:
        ConfigError: no analyses.
        InputTypeError: a value that is not a ``RunAnalysis``.
        ImportError: matplotlib is not installed.
    """
    if not isinstance(analyses, Mapping) or not analyses:
        raise ConfigError("analyses", "a non-empty mapping of name to RunAnalysis", analyses)
    for name, a in analyses.items():
        if not isinstance(a, RunAnalysis):
            raise InputTypeError(f"analyses[{name!r}]", "a RunAnalysis", describe(a))
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('plotting needs matplotlib: pip install "recurrentkit[study]"') from err
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    prefix = f"{title}: " if title else ""
    files = [f"connectivity_{stem}.png", f"decay_{stem}.png", f"context_{stem}.png"]

    n = len(analyses)
    cols = min(n, COMPARISON_COLUMNS)
    rows = -(-n // cols)
    side = max(3.0, 0.32 * max(a.example.shape[0] for a in analyses.values()) + 1.6)
    fig = Figure(figsize=(cols * (side + 0.8), rows * side + 0.4), layout="constrained")
    panels = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (name, a) in zip(panels, analyses.items()):
        plot_connectivity(
            a.example, a.example_inputs, outputs=a.example_outputs, ax=ax, title=str(name)
        )
    for ax in panels[n:]:
        ax.set_axis_off()
    fig.suptitle(f"{prefix}gradient connectivity of one validation name")
    fig.savefig(out / files[0], dpi=110)

    # Many runs: wider figures, the legends beside the axes (plot_decay's rule).
    wide = 2.5 if n > LEGEND_INSIDE else 0.0
    far = next(iter(analyses.values())).decay.far
    fig = Figure(figsize=(6.0 + wide, 4.0), layout="constrained")
    plot_decay({name: a.decay for name, a in analyses.items()}, ax=fig.add_subplot())
    fig.suptitle(f"{prefix}connectivity by distance (far share: d ≥ {far})")  # over the legend
    fig.savefig(out / files[1], dpi=150)

    k_max = max(next(iter(analyses.values())).context.k)
    ks = sorted({1, k_max})
    fig = Figure(figsize=((6.0 + wide) * len(ks), 4.0), layout="constrained")
    results = {name: a.context for name, a in analyses.items()}
    for ax, kk in zip(fig.subplots(1, len(ks), squeeze=False)[0], ks):
        plot_context_accuracy(results, k=kk, ax=ax, title=f"{prefix}top-{kk} accuracy")
    fig.savefig(out / files[2], dpi=110)
    return files
