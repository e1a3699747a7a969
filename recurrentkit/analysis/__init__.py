"""What a recurrent model remembers: gradient connectivity and accuracy given context.

- [`connectivity`][recurrentkit.analysis.connectivity]: ``conn[t, s]``, how strongly
  input ``s`` moves the target logit at output ``t`` (Madsen, "Visualizing
  memorization in RNNs", Distill 2019);
- [`connectivity_decay`][recurrentkit.analysis.connectivity_decay]: that matrix
  summarised by distance ``t - s``, with the share of it that reaches ``far`` back;
- [`context_accuracy`][recurrentkit.analysis.context_accuracy]: top-``k`` next-token
  accuracy by characters seen;
- [`is_causal_by_connectivity`][recurrentkit.analysis.is_causal_by_connectivity] and
  [`connectivity_violation`][recurrentkit.analysis.connectivity_violation]: a
  causality check on the same gradients;
  [`check_causal`][recurrentkit.analysis.check_causal] and
  [`causality_violation`][recurrentkit.analysis.causality_violation] (also
  ``rk.check_causal``, ``rk.causality_violation``): one by perturbation, for any sequence
  model (both pairs in ``recurrentkit.analysis.causality``);
- [`analyse_run`][recurrentkit.analysis.analyse_run]: all of it for one trained model on
  held-out rows, as one JSON-ready [`RunAnalysis`][recurrentkit.analysis.RunAnalysis];
  [`analysis_tables`][recurrentkit.analysis.analysis_tables] and
  [`plot_comparison`][recurrentkit.analysis.plot_comparison] compare several;
- [`plot_connectivity`][recurrentkit.analysis.plot_connectivity],
  [`plot_decay`][recurrentkit.analysis.plot_decay],
  [`plot_context_accuracy`][recurrentkit.analysis.plot_context_accuracy]: figures
  (matplotlib, optional).

All of them but the perturbation check take a *token model*: any module mapping ids
``(B, T)`` to logits ``(B, T, V)`` (or to ``(logits, ...)``) that embeds the ids with one
``nn.Embedding``.
"""

from recurrentkit.analysis.causality import (
    causality_violation,
    check_causal,
    connectivity_violation,
    is_causal_by_connectivity,
)
from recurrentkit.analysis.context import ContextAccuracy, context_accuracy
from recurrentkit.analysis.decay import ConnectivityDecay, connectivity_decay
from recurrentkit.analysis.gradients import REDUCTIONS, WRT, connectivity
from recurrentkit.analysis.plots import plot_connectivity, plot_context_accuracy, plot_decay
from recurrentkit.analysis.report import (
    RunAnalysis,
    analyse_run,
    analysis_tables,
    fixed_subset,
    plot_comparison,
)

__all__ = [
    "REDUCTIONS",
    "WRT",
    "ConnectivityDecay",
    "ContextAccuracy",
    "RunAnalysis",
    "analyse_run",
    "analysis_tables",
    "causality_violation",
    "check_causal",
    "connectivity",
    "connectivity_decay",
    "connectivity_violation",
    "context_accuracy",
    "fixed_subset",
    "is_causal_by_connectivity",
    "plot_comparison",
    "plot_connectivity",
    "plot_context_accuracy",
    "plot_decay",
]
