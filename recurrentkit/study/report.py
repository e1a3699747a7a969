r"""Render a study's results: run records → summary, Markdown tables, conclusions, figures.

The names study (`examples/names_memory_ablation.py`) trains and measures its runs and
keeps one *run record* per run: a JSON-ready dict with ``run``, ``model``, ``routing``,
``protocol``, ``seed``, ``layers``, ``params``, ``epochs``, ``status``, the losses, the
sample metrics, the PAD measurements, ``history`` and ``analysis`` (the script's
docstring lists every key). This module turns records into the report, and reads
nothing else, so a report can be rendered again from a saved ``results.json``:

- [`summarize_runs`][recurrentkit.study.report.summarize_runs] groups the seeds of each
  (model, routing, protocol) into mean ± 95% CI;
- [`compare_reach`][recurrentkit.study.report.compare_reach] states which policy (or
  model) reaches furthest back, from their far shares;
- a [`StudyReport`][recurrentkit.study.report.StudyReport] writes ``results.md`` (tables,
  conclusions stated from the numbers) and draws the loss curves and the memory figures,
  in one of two layouts: ``compare="routing"``, the study's (routing policies compared
  per model, with the original study's reference figures and the PAD-start protocol),
  or ``compare="model"``, a comparison of models (e.g. backbones) under each policy.

matplotlib is needed only for the figures, and imported when one is drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from recurrentkit._validation import check_choice, check_int, check_real, describe
from recurrentkit.analysis import RunAnalysis, analysis_tables, plot_comparison, plot_decay
from recurrentkit.errors import ConfigError, InputTypeError
from recurrentkit.study.data import PROTOCOLS
from recurrentkit.study.metrics import binomial_upper, mean_ci, paired_difference

__all__ = [
    "COMPARE",
    "OPTIONAL_METRICS",
    "PAIRED_METRICS",
    "SUMMARY_METRICS",
    "ModelInfo",
    "StudyReport",
    "compare_reach",
    "difference_verdict",
    "format_stat",
    "summarize_runs",
    "upgrade_results",
]

COMPARE = ("routing", "model")
"""The report layouts: ``"routing"`` compares the policies of each model (the study),
``"model"`` the models under each policy (e.g. backbones)."""

SUMMARY_METRICS: tuple[str, ...] = (
    "best_val_loss",
    "final_val_loss",
    "stepwise_val_loss",
    "leak_gap",
    "runaway_rate",
    "mean_length",
    "distinct2",
    "distinct3",
    "repetition",
    "novelty",
    "reproduction",
    "heldout_match",
    "first_letter_tv",
    "pad_sampled",
    "pad_grad_norm",
    "pad_embedding_drift",
    "best_epoch",
    "far_share",
    "future_share",
    "top1_accuracy",
    "top2_accuracy",
    "top3_accuracy",
)
"""The run-record keys [`summarize_runs`][recurrentkit.study.report.summarize_runs]
averages over seeds."""

OPTIONAL_METRICS: tuple[str, ...] = (
    "stepwise_val_loss_zero",
    "runaway_upper95",
    "loop_rate",
    "empty_rate",
    "novelty_nonempty",
)
"""Keys averaged like [`SUMMARY_METRICS`][recurrentkit.study.report.SUMMARY_METRICS]
where every run of a group has them (records written before they existed lack them)."""

PAIRED_METRICS: tuple[str, ...] = (
    "best_val_loss",
    "final_val_loss",
    "stepwise_val_loss",
    "runaway_rate",
    "mean_length",
    "repetition",
    "loop_rate",
    "far_share",
)
"""The metrics whose difference from ``independent`` each summary entry states, paired by
(seed, split seed): ``entry["vs_independent"][metric] = {"mean", "ci95", "n"}``."""

_RESULTS_KEYS = (
    "command", "preset", "device", "torch", "threads", "world_size", "wall_seconds", "data",
    "num_samples", "runs", "summary",
)  # fmt: skip
_GROUP_KEYS = ("seed", "layers", "params", "epochs")
_SAMPLE_STEPS = 20  # the samplers' length limit, as the study runs it


class ModelInfo(Protocol):
    """What a report states about one model (the study script's ``ModelSpec`` is one).

    Any object with these attributes will do: ``label`` (its name in tables), ``layers``,
    ``embed`` and ``hidden`` (sizes), ``dropout``, ``optimizer``, ``lr``, ``epochs`` (the
    default training length: the original's, for the original's models) and
    ``original_params`` (the original study's parameter count, ``None`` if it has none).
    """

    @property
    def label(self) -> str: ...

    @property
    def layers(self) -> int: ...

    @property
    def embed(self) -> int: ...

    @property
    def hidden(self) -> int: ...

    @property
    def dropout(self) -> float: ...

    @property
    def optimizer(self) -> str: ...

    @property
    def lr(self) -> float: ...

    @property
    def epochs(self) -> int: ...

    @property
    def original_params(self) -> int | None: ...


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Group completed runs by (model, routing, protocol): mean and 95% CI over seeds.

    A run counts when its ``status`` is ``"completed"`` and it was measured (it has a
    ``runaway_rate``); diverged or interrupted runs are left out. A ``None`` value (a
    NaN written to strict JSON) counts as NaN.

    Args:
        runs: run records, each with ``model``, ``routing``, ``protocol``, ``seed``,
            ``layers``, ``params``, ``epochs``, ``status`` and every key of
            [`SUMMARY_METRICS`][recurrentkit.study.report.SUMMARY_METRICS].

    Returns:
        One entry per group, in order of first appearance: ``model``, ``routing``,
        ``protocol``, ``layers``, ``params``, ``epochs`` (of the group's first run),
        ``n_seeds``, ``seeds`` and, per metric, ``{"mean": m, "ci95": half_width}``
        ([`mean_ci`][recurrentkit.study.metrics.mean_ci]: ``None`` with one seed).

    Raises:
        InputTypeError: ``runs`` not a sequence of mappings.
        ConfigError: a completed run that lacks a key.

    Example:
        >>> from recurrentkit.study.report import SUMMARY_METRICS, summarize_runs
        >>> base = {"model": "beta", "routing": "shared", "protocol": "seed", "layers": 2,
        ...         "params": 10, "epochs": 2, "status": "completed"}
        >>> runs = [{**base, **dict.fromkeys(SUMMARY_METRICS, v), "seed": s}
        ...         for s, v in [(0, 0.1), (1, 0.3)]]
        >>> [entry] = summarize_runs(runs)
        >>> entry["n_seeds"], round(entry["runaway_rate"]["mean"], 3)
        (2, 0.2)
    """
    if isinstance(runs, (str, Mapping)) or not isinstance(runs, Sequence):
        raise InputTypeError("runs", "a sequence of run records (dicts)", describe(runs))
    groups: dict[tuple[str, str, str, str], list[Mapping[str, Any]]] = {}
    first_epochs: dict[tuple[str, str, str, str], object] = {}
    for i, r in enumerate(runs):
        if not isinstance(r, Mapping):
            raise InputTypeError(f"runs[{i}]", "a run record (a dict)", describe(r))
        if r.get("status") == "completed" and "runaway_rate" in r:
            _require(f"runs[{i}]", r, ("model", "routing", "protocol"))
            key = (r["model"], r["routing"], r["protocol"], r.get("variant", ""))
            # runs of another length than the group's first are not seeds of it: their
            # own group, the length named as a variant
            epochs = first_epochs.setdefault(key, r.get("epochs"))
            if r.get("epochs") != epochs:
                key = (*key[:3], ", ".join(filter(None, (key[3], f"{r.get('epochs')} epochs"))))
            groups.setdefault(key, []).append(r)
    out = []
    for (m, rt, p, variant), rs in groups.items():
        for r in rs:
            _require(f"the run {r.get('run', (m, rt, p))!r}", r, (*_GROUP_KEYS, *SUMMARY_METRICS))
        entry: dict[str, Any] = {
            "model": m,
            "routing": rt,
            "protocol": p,
            "layers": rs[0]["layers"],
            "params": rs[0]["params"],
            "epochs": rs[0]["epochs"],
            "n_seeds": len(rs),
            "seeds": [r["seed"] for r in rs],
        }
        if variant:
            entry["variant"] = variant
        if any(r.get("split_seed", 0) != 0 for r in rs):
            entry["split_seeds"] = [r.get("split_seed", 0) for r in rs]
        optional = [k for k in OPTIONAL_METRICS if all(k in r for r in rs)]
        for k in (*SUMMARY_METRICS, *optional):
            mean, ci = mean_ci([math.nan if r[k] is None else float(r[k]) for r in rs])
            entry[k] = {"mean": mean, "ci95": ci}
        if all("runaways" in r and "samples" in r for r in rs):
            hits = sum(int(r["runaways"]) for r in rs)
            drawn = sum(int(r["samples"]) for r in rs)
            entry["runaway_pooled"] = {
                "runaways": hits,
                "samples": drawn,
                "upper95": binomial_upper(hits, drawn),
            }
        out.append(entry)
    _pair_with_independent(out, groups)
    return out


def _pair_key(r: Mapping[str, Any]) -> tuple[int, int]:
    return (int(r["seed"]), int(r.get("split_seed", 0)))


def _pair_with_independent(
    entries: list[dict[str, Any]],
    groups: Mapping[tuple[str, str, str, str], list[Mapping[str, Any]]],
) -> None:
    """Add ``vs_independent`` to each entry that has an ``independent`` group beside it:
    the paired difference of each of
    [`PAIRED_METRICS`][recurrentkit.study.report.PAIRED_METRICS]."""
    for e in entries:
        variant = e.get("variant", "")
        base = groups.get((e["model"], "independent", e["protocol"], variant))
        own = groups[(e["model"], e["routing"], e["protocol"], variant)]
        if e["routing"] == "independent" or base is None:
            continue
        paired: dict[str, Any] = {}
        for k in PAIRED_METRICS:
            a: dict[object, float] = {
                _pair_key(r): float(r[k]) for r in own if r.get(k) is not None
            }
            b: dict[object, float] = {
                _pair_key(r): float(r[k]) for r in base if r.get(k) is not None
            }
            if any(key in b for key in a):
                mean, ci, n = paired_difference(a, b)
                if math.isfinite(mean):
                    paired[k] = {"mean": mean, "ci95": ci, "n": n}
        if paired:
            e["vs_independent"] = paired


def difference_verdict(diff: Mapping[str, Any] | None) -> str:
    """How a paired difference reads: ``"one seed"`` (no interval), ``"no measurable
    difference"`` (its 95% interval contains 0) or ``"higher"`` / ``"lower"``.

    Example:
        >>> difference_verdict({"mean": -0.005, "ci95": 0.007, "n": 3})
        'no measurable difference'
        >>> difference_verdict({"mean": -0.02, "ci95": 0.007, "n": 3})
        'lower'
    """
    if diff is None or diff.get("ci95") is None:
        return "one seed"
    mean, ci = float(diff["mean"]), float(diff["ci95"])
    if mean - ci <= 0.0 <= mean + ci:
        return "no measurable difference"
    return "higher" if mean > 0 else "lower"


def upgrade_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """``results.json`` of schema ``/1`` read as schema ``/2`` (a copy; ``/2`` is returned
    as it is, copied).

    Schema ``/1`` records measured the step-wise loss from the zero state at the first
    letter: it becomes ``stepwise_val_loss_zero``, and ``stepwise_val_loss`` (carried as
    sampling carries it) is the same under the fixed protocol and unknown (``None``)
    under the seed protocol, whose sampler steps ``<PAD>`` first. Each record also gets
    ``samples`` (the file's ``num_samples``), ``runaways`` and ``runaway_upper95``, and
    the summary is computed again.
    """
    if not isinstance(results, Mapping):
        raise InputTypeError("results", "a mapping as results.json holds", describe(results))
    out = dict(results)
    if results.get("schema") != "names_memory_ablation/1" or "runs" not in results:
        return out
    n = results.get("num_samples")
    runs = []
    for r in results["runs"]:
        r = dict(r)
        if "stepwise_val_loss" in r and "stepwise_val_loss_zero" not in r:
            r["stepwise_val_loss_zero"] = r["stepwise_val_loss"]
            if r.get("protocol") != "fixed":
                r["stepwise_val_loss"] = None
        if isinstance(n, int) and r.get("runaway_rate") is not None and "runaways" not in r:
            r["samples"] = n
            r["runaways"] = round(float(r["runaway_rate"]) * n)
            r["runaway_upper95"] = binomial_upper(r["runaways"], n)
        runs.append(r)
    out["runs"] = runs
    out["summary"] = summarize_runs(runs)
    out["schema"] = "names_memory_ablation/2"
    return out


def _require(name: str, record: Mapping[str, Any], keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise ConfigError(name, "a record with the keys " + ", ".join(missing), "one without")


def format_stat(stat: Mapping[str, Any], digits: int = 3, *, pct: bool = False) -> str:
    """One summary cell as text: ``mean`` or ``mean ± ci95``.

    Args:
        stat: ``{"mean": m, "ci95": half_width or None}`` (a summary entry's metric).
        digits: decimals of a plain number.
        pct: show a share as a percentage with one decimal (``digits`` unused).

    Returns:
        E.g. ``"1.9258"``, ``"1.926 ± 0.012"``, ``"22.2%"``, ``"22.2% ± 1.5"``.

    Example:
        >>> from recurrentkit.study.report import format_stat
        >>> format_stat({"mean": 1.92583, "ci95": None}, 4)
        '1.9258'
        >>> format_stat({"mean": 0.2224, "ci95": 0.0151}, pct=True)
        '22.2% ± 1.5'
    """
    mean, ci = stat["mean"], stat["ci95"]
    if pct:
        s = f"{100 * mean:.1f}%"
        return s if ci is None else f"{s} ± {100 * ci:.1f}"
    s = f"{mean:.{digits}f}"
    return s if ci is None else f"{s} ± {ci:.{digits}f}"


def _missing(stat: Mapping[str, Any] | None) -> bool:
    return stat is None or stat.get("mean") is None or not math.isfinite(float(stat["mean"]))


def _opt(entry: Mapping[str, Any], key: str, digits: int = 3, *, pct: bool = False) -> str:
    """``format_stat`` of ``entry[key]``, or ``—`` where it was not measured."""
    stat = entry.get(key)
    if stat is None or _missing(stat):
        return "—"
    return format_stat(stat, digits, pct=pct)


def _runaway(entry: Mapping[str, Any]) -> str:
    """The runaway rate with its pooled one-sided 95% upper bound, e.g. ``0.7% (≤ 1.3%)``, or
    ``0 of 3,000 (≤ 0.10%)`` when no sample ran away."""
    pooled = entry.get("runaway_pooled")
    if pooled and pooled["runaways"] == 0:  # not "0 ± 0": none seen, and how few that bounds
        return f"0 of {pooled['samples']:,} (≤ {_pct_bound(pooled['upper95'])})"
    text = format_stat(entry["runaway_rate"], pct=True)
    if pooled:
        text += f" (≤ {_pct_bound(pooled['upper95'])})"
    return text


def _variant(record: Mapping[str, Any]) -> str:
    """`` [<variant>]`` for a run record or summary entry measured another way (sampling
    settings, training length), else ``""``: how every table names it."""
    return f" [{record['variant']}]" if record.get("variant") else ""


def _pct(x: float | None) -> str:
    """A share as a percentage with three significant digits; ``—`` for none."""
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.3g}%"


def _pct_bound(p: float) -> str:
    return f"{100 * p:.2f}%" if p < 0.01 else f"{100 * p:.1f}%"


def _diff_cell(
    diffs: Mapping[str, Mapping[str, Any]], key: str, digits: int = 4, scale: float = 1.0
) -> str:
    """A paired difference as text, e.g. ``-0.0052 ± 0.0070 (no measurable difference)``."""
    if key not in diffs:
        return "—"
    d = diffs[key]
    text = f"{scale * d['mean']:+.{digits}f}"
    if d["ci95"] is not None:
        text += f" ± {scale * d['ci95']:.{digits}f}"
    if difference_verdict(d) == "no measurable difference":
        text += " (no measurable difference)"
    return text


def _fmt_sci(stat: Mapping[str, Any]) -> str:
    mean, ci = stat["mean"], stat["ci95"]
    s = "0" if mean == 0 else f"{mean:.2e}"
    return s if ci is None else f"{s} ± {ci:.1e}"


Share = float | tuple[float, float | None]


def compare_reach(
    far_shares: Mapping[str, Share],
    *,
    far: int,
    future_shares: Mapping[str, float] | None = None,
    tie: float = 0.01,
    what: str = "policy",
) -> str:
    r"""One sentence saying which model reaches furthest back, from the numbers.

    The model with the largest far share (share of connectivity at distance
    $\ge$ ``far``) is named the furthest-reaching only if it is separated from the
    runner-up: by non-overlapping 95% confidence intervals when both have one, else by
    at least ``tie`` (an absolute share, 0.01 = one point). Otherwise the sentence says
    that none clearly does. Models that put connectivity on *later* inputs
    (``future_shares`` above zero) get a clause naming the leak.

    Args:
        far_shares: name → far share, or ``(mean, ci95 half-width or None)``; ``NaN``
            shares are left out.
        far: the distance the shares count from (for the text).
        future_shares: name → share of connectivity on later inputs.
        tie: the smallest difference that counts without confidence intervals.
        what: what the names are, for the text (``"policy"``, ``"model"``).

    Returns:
        A sentence (Markdown; names in backticks).

    Raises:
        ConfigError: no finite share, a negative ``tie``.

    Example:
        >>> from recurrentkit.study.report import compare_reach
        >>> print(compare_reach({"independent": 0.26, "handoff": 0.23}, far=3,
        ...                     future_shares={"handoff": 0.33}))
        `independent` reaches furthest back: 26.0% of its gradient connectivity lies 3 or more characters back, against 23.0% for `handoff` (no confidence intervals: 1 point or more count). `handoff` also puts 33.0% of its connectivity on later characters — inputs it reads under teacher forcing but a sampler never has (the leak).
    """  # noqa: E501
    check_int("far", far)
    check_real("tie", tie, minimum=0.0)
    stats: list[tuple[str, float, float | None]] = []
    for name, value in far_shares.items():
        mean, ci = value if isinstance(value, tuple) else (value, None)
        if mean is not None and not math.isnan(float(mean)):
            stats.append((str(name), float(mean), None if ci is None else float(ci)))
    if not stats:
        raise ConfigError("far_shares", "at least one finite far share", describe(far_shares))
    stats.sort(key=lambda s: -s[1])

    def pct(mean: float, ci: float | None) -> str:
        return f"{100 * mean:.1f}%" + ("" if ci is None else f" ± {100 * ci:.1f}")

    best = stats[0]
    where = f"{far} or more characters back"
    points = f"{100 * tie:g} point" + ("" if 100 * tie == 1 else "s")
    if len(stats) == 1:
        text = f"`{best[0]}`: {pct(best[1], best[2])} of its gradient connectivity lies {where}."
    else:
        second = stats[1]
        others = ", ".join(f"{pct(m, c)} for `{n}`" for n, m, c in stats[1:])
        with_ci = best[2] is not None and second[2] is not None
        if with_ci:
            clear = best[1] - (best[2] or 0.0) > second[1] + (second[2] or 0.0)
            why = "their 95% confidence intervals overlap"
        else:
            clear = best[1] - second[1] >= tie
            why = (
                f"the top two differ by less than {points}, too little to "
                "separate without confidence intervals"
            )
        if clear:
            how = "" if with_ci else f" (no confidence intervals: {points} or more count)"
            text = (
                f"`{best[0]}` reaches furthest back: {pct(best[1], best[2])} of its gradient "
                f"connectivity lies {where}, against {others}{how}."
            )
        else:
            listed = ", ".join(f"`{n}` {pct(m, c)}" for n, m, c in stats)
            text = (
                f"No {what} clearly reaches furthest back ({why}): the share of gradient "
                f"connectivity {where} is {listed}."
            )
    for name, share in (future_shares or {}).items():
        if share is not None and share > 0:
            text += (
                f" `{name}` also puts {100 * share:.1f}% of its connectivity on later "
                "characters — inputs it reads under teacher forcing but a sampler never has "
                "(the leak)."
            )
    return text


_PLAN_FLAGS = ("--models", "--routing", "--protocol", "--seeds", "--epochs")
"""Command-line flags that replace part of a preset's plan (the header says so)."""


@dataclass(frozen=True)
class StudyReport:
    """How to render one study's results, and the rendering.

    Two layouts, by ``compare``:

    - ``"routing"`` (the study): a models table with the original's epochs and parameter
      counts; per protocol, losses and sample metrics of every policy; the PAD-start
      protocol table; what the models remember; conclusions policy by policy (the leak,
      runaway, the original's claim, the protocol, the PAD flaw, memory reach); samples;
      loss curves; the original's figures (from the results' ``"original"``).
    - ``"model"`` (e.g. backbones at matched size): a models table; per (routing,
      protocol), one table of every model's parameters, losses, memory reach, accuracy
      and sample metrics; what the models remember; conclusions (memory reach, lowest
      loss); samples; loss curves.

    Attributes:
        models: model id (a run record's ``model``) → its
            [`ModelInfo`][recurrentkit.study.report.ModelInfo].
        description: the preset's description, for the header of results files that do
            not record theirs (a file's ``description``, written since the backbones
            preset grew, is its header's).
        unrecorded_description: the header's description for results files that record
            none, when the preset has changed since they were written (what it was then);
            ``None``: ``description``.
        compare: the layout, one of [`COMPARE`][recurrentkit.study.report.COMPARE].
        split_seed: the seed of the train/validation split (stated in the header).
        analysis_names: validation names whose connectivity each run measured.
        far: the distance ``far_share`` counts from.
        pad_grad_rows: training names the PAD gradient was measured on.

    Raises:
        InputTypeError: ``models`` not a mapping, arguments of the wrong type.
        ConfigError: no models, an unknown ``compare``, sizes below 1.

    Example:
        >>> from types import SimpleNamespace
        >>> from recurrentkit.study.report import SUMMARY_METRICS, StudyReport, summarize_runs
        >>> tiny = SimpleNamespace(label="tiny", layers=2, embed=8, hidden=16, dropout=0.1,
        ...     optimizer="adam", lr=1e-2, epochs=2, original_params=None)
        >>> report = StudyReport({"tiny": tiny}, "a smoke test")
        >>> base = {"model": "tiny", "protocol": "seed", "seed": 0, "layers": 2,
        ...         "params": 1900, "epochs": 2, "status": "completed",
        ...         **dict.fromkeys(SUMMARY_METRICS, 0.0)}
        >>> runs = [{**base, "routing": "independent"},
        ...         {**base, "routing": "handoff", "leak_gap": 0.2, "runaway_rate": 0.6}]
        >>> for line in report.conclusions(summarize_runs(runs), num_samples=50)[1:4]:
        ...     print(line)
        - **tiny `independent` (seed protocol, 2 epochs)**: step-wise and teacher-forced ...
        - **tiny `handoff` (seed protocol, 2 epochs)**: step-wise validation loss exceeds teacher-forced by +0.200 nats: ...
        - **The original's never-ending samples** (runaway rate ≥ 50%) are reproduced by: tiny `handoff` (seed, 60%).
    """  # noqa: E501

    models: Mapping[str, ModelInfo]
    description: str = ""
    compare: str = "routing"
    unrecorded_description: str | None = None
    split_seed: int = 0
    analysis_names: int = 256
    far: int = 3
    pad_grad_rows: int = 2048

    def __post_init__(self) -> None:
        if not isinstance(self.models, Mapping):
            raise InputTypeError(
                "models", "a mapping of model id to ModelInfo", describe(self.models)
            )
        if not self.models:
            raise ConfigError("models", "at least one model", "an empty mapping")
        if not isinstance(self.description, str):
            raise InputTypeError("description", "a str", describe(self.description))
        if self.unrecorded_description is not None and not isinstance(
            self.unrecorded_description, str
        ):
            raise InputTypeError(
                "unrecorded_description", "a str or None", describe(self.unrecorded_description)
            )
        check_choice("compare", self.compare, COMPARE)
        check_int("split_seed", self.split_seed, minimum=0)
        check_int("analysis_names", self.analysis_names)
        check_int("far", self.far)
        check_int("pad_grad_rows", self.pad_grad_rows)

    # -- pieces --------------------------------------------------------------------------

    def label(self, model: str) -> str:
        """The table name of model id ``model``.

        Raises:
            ConfigError: a model the report does not know.
        """
        info = self.models.get(model)
        if info is None:
            raise ConfigError("model", f"one of {', '.join(map(repr, self.models))}", repr(model))
        return info.label

    def _row(self, entry: Mapping[str, Any]) -> str:
        routing = entry["routing"]
        if entry["layers"] == 1:
            routing += " (1 layer: every policy is this model)"
        return f"{self.label(entry['model'])} | {routing}{_variant(entry)}"

    def comparison_groups(
        self, items: Sequence[Mapping[str, Any]]
    ) -> dict[tuple[str, str], dict[str, Mapping[str, Any]]]:
        """Runs (or summary entries) set side by side, as the figures and conclusions do.

        Args:
            items: run records or summary entries (``model``, ``routing``, ``protocol``).

        Returns:
            ``(file stem, title)`` → member → item. ``compare="routing"``: the policies
            (members) of each (model, protocol), stem ``"<model>_<protocol>"``;
            ``"model"``: the models' labels under each (routing, protocol), stem
            ``"<routing>_<protocol>"``. With several seeds, the last item of a member
            wins.
        """
        groups: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
        for it in items:
            m, r, p = it["model"], it["routing"], it["protocol"]
            if self.compare == "model":
                key, member = (f"{r}_{p}", f"{r} routing, {p} protocol"), self.label(m)
            else:
                key, member = (f"{m}_{p}", f"{self.label(m)}, {p} protocol"), r
            groups.setdefault(key, {})[member] = it
        return groups

    # -- conclusions ---------------------------------------------------------------------

    def conclusions(self, summary: Sequence[Mapping[str, Any]], num_samples: int) -> list[str]:
        """Sentences the numbers support (Markdown list items; thresholds in the text).

        Under ``compare="routing"``, policy by policy: whether step-wise and
        teacher-forced loss agree (a leak), runaway and the difference from
        ``independent``, whether the original's never-ending samples are reproduced
        (runaway ≥ 50%), whether causal shared memory supports the claim (≥ 20 points
        more runaway than independent: supports; < 5: does not), the protocol's effect,
        the PAD flaw; then which policy reaches furthest back. Under ``"model"``: which
        model reaches furthest back and which has the lowest step-wise loss. Both start
        with a caveat when a group has a single seed.

        Args:
            summary: entries of [`summarize_runs`][recurrentkit.study.report.summarize_runs].
            num_samples: samples drawn per run (for the text).

        Returns:
            The lines, in order.
        """
        lines: list[str] = []
        single = [e for e in summary if e["n_seeds"] <= 1]
        if single and len(single) == len(summary):
            lines.append(
                "Every figure comes from **one seed**: there is no confidence interval, so small "
                "differences (a few points of runaway rate, a few hundredths of a nat) are not "
                "evidence either way; run with `--seeds 0,1,2` to resolve them."
            )
        elif single:
            names = ", ".join(f"{self.label(e['model'])} `{e['routing']}`" for e in single)
            lines.append(
                f"Some groups come from **one seed** ({names}): their figures have no "
                "confidence interval, and small differences involving them are not evidence "
                "either way. Differences between groups of several seeds are read from their "
                "paired 95% intervals."
            )
        if self.compare == "routing":
            lines += self._policy_conclusions(summary, num_samples)
        lines += self._memory_conclusions(summary)
        return lines

    def _policy_conclusions(
        self, summary: Sequence[Mapping[str, Any]], num_samples: int
    ) -> list[str]:
        lines: list[str] = []
        by = {(e["model"], e["routing"], e["protocol"]): e for e in summary}
        for e in summary:
            if e["layers"] == 1:
                continue
            m, r, p = e["model"], e["routing"], e["protocol"]
            label = f"{self.label(m)} `{r}`{_variant(e)} ({p} protocol, {e['epochs']} epochs)"
            gap = e["leak_gap"]["mean"]
            run = e["runaway_rate"]["mean"]
            ind = by.get((m, "independent", p))
            parts = []
            if abs(gap) < 1e-3:
                parts.append(
                    f"step-wise and teacher-forced validation loss agree (gap {gap:+.1e} nats): "
                    "what it learned under teacher forcing is what sampling runs"
                )
            else:
                parts.append(
                    f"step-wise validation loss exceeds teacher-forced by {gap:+.3f} nats: its "
                    "teacher-forced loss was helped by inputs a sampler never has (a leak)"
                    if gap > 0
                    else f"step-wise validation loss is lower than teacher-forced by {-gap:.3f} "
                    "nats"
                )
            pooled = e.get("runaway_pooled")
            bound = f" (95% upper bound {_pct_bound(pooled['upper95'])})" if pooled else ""
            parts.append(f"runaway rate {100 * run:.1f}%{bound}")
            if ind is not None and r != "independent":
                d_run = run - ind["runaway_rate"]["mean"]
                d_rep = e["repetition"]["mean"] - ind["repetition"]["mean"]
                # the sampling-carried step-wise loss, or (runs before it) the zero-start one
                keys = ("stepwise_val_loss", "stepwise_val_loss_zero")
                loss_key = next(
                    (k for k in keys if not _missing(e.get(k)) and not _missing(ind.get(k))), None
                )
                d_loss = (
                    ""
                    if loss_key is None
                    else f", step-wise val loss {e[loss_key]['mean'] - ind[loss_key]['mean']:+.3f} "
                    "nats"
                )
                parts.append(
                    f"vs independent: runaway {100 * d_run:+.1f} points, repetition "
                    f"{100 * d_rep:+.1f} points, mean length {e['mean_length']['mean']:.2f} vs "
                    f"{ind['mean_length']['mean']:.2f}{d_loss}"
                )
                paired = e.get("vs_independent", {})
                read = [
                    f"{what} {difference_verdict(paired[k])}"
                    + (
                        f" ({paired[k]['mean'] * scale:+.{digits}f} ± "
                        f"{paired[k]['ci95'] * scale:.{digits}f}{unit} over {paired[k]['n']} "
                        "seeds)"
                    )
                    for k, what, scale, digits, unit in (
                        ("best_val_loss", "best validation loss:", 1.0, 4, " nats"),
                        ("runaway_rate", "runaway:", 100.0, 1, " points"),
                    )
                    if k in paired and paired[k]["ci95"] is not None
                ]
                if read:
                    parts.append("paired 95% intervals: " + "; ".join(read))
            lines.append(f"- **{label}**: " + "; ".join(parts) + ".")
        lines += self._claim_conclusions(summary, by)
        # The protocol.
        for e in summary:
            if e["protocol"] != "seed":
                continue
            other = by.get((e["model"], e["routing"], "fixed"))
            if other is None:
                continue
            lines.append(
                f"- **Protocol**, {self.label(e['model'])} `{e['routing']}`: the PAD start gives "
                f"a first-letter distribution {e['first_letter_tv']['mean']:.3f} (total "
                f"variation) away from the data's, the start token "
                f"{other['first_letter_tv']['mean']:.3f}; samples drawing `<PAD>`: "
                f"{e['pad_sampled']['mean']:.1f} vs {other['pad_sampled']['mean']:.1f} of each "
                f"{num_samples:,} (forbidden by construction under `fixed`); runaway "
                f"{100 * e['runaway_rate']['mean']:.1f}% vs "
                f"{100 * other['runaway_rate']['mean']:.1f}%. (Losses differ in what they count: "
                "`fixed` also predicts the first letter, so its loss is not comparable.)"
            )
        lines += self._pad_conclusion(summary)
        return lines

    def _claim_conclusions(
        self,
        summary: Sequence[Mapping[str, Any]],
        by: Mapping[tuple[str, str, str], Mapping[str, Any]],
    ) -> list[str]:
        """The original's claim: never-ending samples, and what shared memory has to do
        with them."""
        multi = [e for e in summary if e["layers"] > 1]
        if not multi:
            return []
        lines = []
        never = [e for e in multi if e["runaway_rate"]["mean"] >= 0.5]
        if never:
            who = ", ".join(
                f"{self.label(e['model'])} `{e['routing']}` ({e['protocol']}, "
                f"{100 * e['runaway_rate']['mean']:.0f}%)"
                for e in never
            )
            lines.append(
                f"- **The original's never-ending samples** (runaway rate ≥ 50%) are "
                f"reproduced by: {who}."
            )
        else:
            lines.append(
                "- **The original's never-ending samples are not reproduced** here: no policy "
                "reaches a 50% runaway rate at these training lengths."
            )
        for e in (e for e in multi if e["routing"] == "shared"):
            ind = by.get((e["model"], "independent", e["protocol"]))
            if ind is None:
                continue
            d = e["runaway_rate"]["mean"] - ind["runaway_rate"]["mean"]
            paired = e.get("vs_independent", {}).get("runaway_rate")
            reading = difference_verdict(paired)
            where = (
                f'{self.label(e["model"])} `shared` (`carry="first"`, {e["protocol"]} '
                f"protocol, {e['epochs']} epochs, {e['n_seeds']} seed"
                f"{'' if e['n_seeds'] == 1 else 's'})"
            )
            rates = (
                f"{100 * e['runaway_rate']['mean']:.1f}% vs independent "
                f"{100 * ind['runaway_rate']['mean']:.1f}%"
            )
            if reading == "no measurable difference":
                assert paired is not None
                lines.append(
                    f"- {where}: no measurable difference in runaway rate from independent "
                    f"({rates}; paired difference {100 * paired['mean']:+.1f} ± "
                    f"{100 * paired['ci95']:.1f} points, the interval contains 0), so this "
                    "model does not support the claim that sharing memory makes generation "
                    "run away."
                )
                continue
            verdict = (
                "supports" if d >= 0.2 else "does not support" if d < 0.05 else "weakly supports"
            )
            how = (
                "one seed: no paired interval"
                if paired is None or paired["ci95"] is None
                else f"paired difference {100 * paired['mean']:+.1f} ± "
                f"{100 * paired['ci95']:.1f} points"
            )
            lines.append(
                f"- {where}: causal shared memory {verdict} the claim that sharing memory "
                f"makes generation run away ({rates}; {how}; thresholds: ≥ 20 points "
                "supports, < 5 points does not)."
            )
        return lines

    def _pad_conclusion(self, summary: Sequence[Mapping[str, Any]]) -> list[str]:
        causal = [e for e in summary if e["routing"] != "handoff" or e["layers"] == 1]
        if not causal:
            return []
        zero = [e for e in causal if e["pad_grad_norm"]["mean"] == 0.0]
        leak_pad = [  # one entry per model and protocol: sampling variants share the model
            e
            for e in summary
            if e["routing"] == "handoff" and e["layers"] > 1 and not e.get("variant")
        ]
        text = (
            f"- **PAD flaw**: in {len(zero)} of {len(causal)} causal groups the gradient on the "
            "`<PAD>` embedding is exactly 0 and training never moves it"
        )
        if any(e["protocol"] == "seed" for e in zero):
            text += ", yet the seed protocol starts every sample from it"
        text += "."
        if leak_pad:
            text += (
                " Under `handoff` it is not zero ("
                + ", ".join(
                    f"{self.label(e['model'])} {e['protocol']}: {e['pad_grad_norm']['mean']:.2e}"
                    for e in leak_pad
                )
                + "): the padding after a name reaches the final state of the layer below, "
                "which the next layer starts from."
            )
        return [text]

    def _memory_conclusions(self, summary: Sequence[Mapping[str, Any]]) -> list[str]:
        """Which policy (or model) reaches furthest back, per comparison group."""
        lines = []
        for (_, title), members in self.comparison_groups(summary).items():
            if len(members) < 2:
                continue
            far = {k: (e["far_share"]["mean"], e["far_share"]["ci95"]) for k, e in members.items()}
            if not any(math.isfinite(mean) for mean, _ in far.values()):
                continue  # no name reaches `far` characters (a word list of short words)
            future = {k: e["future_share"]["mean"] for k, e in members.items()}
            what = "model" if self.compare == "model" else "policy"
            text = compare_reach(far, far=self.far, future_shares=future, what=what)
            lines.append(f"- **Memory reach**, {title}: {text}")
            if self.compare == "model":
                best = min(members, key=lambda k: members[k]["stepwise_val_loss"]["mean"])
                lines.append(
                    f"- **Backbones**, {title}: lowest step-wise validation loss: `{best}`; "
                    "step-wise validation loss / top-1 / top-3 accuracy: "
                    + "; ".join(
                        f"`{k}` {format_stat(e['stepwise_val_loss'], 4)} / "
                        f"{format_stat(e['top1_accuracy'], pct=True)} / "
                        f"{format_stat(e['top3_accuracy'], pct=True)}"
                        for k, e in members.items()
                    )
                    + " ("
                    + ", ".join(f"`{k}` {e['params']:,}" for k, e in members.items())
                    + " parameters)."
                )
        return lines

    # -- results.md ----------------------------------------------------------------------

    def markdown(self, results: Mapping[str, Any]) -> str:
        """``results.md``: header, models, results tables, what the models remember,
        conclusion, samples, loss curves (and, under ``compare="routing"``, the PAD-start
        protocol table and the original's figures).

        Args:
            results: what the study writes to ``results.json``: ``command``, ``preset``,
                ``device``, ``torch``, ``threads``, ``world_size``, ``wall_seconds``,
                ``data`` (``source``, ``train``, ``val``), ``num_samples``, ``runs``
                (records), ``summary`` (of
                [`summarize_runs`][recurrentkit.study.report.summarize_runs]), optionally
                ``plots``/``memory_plots`` (figure file names) and ``original`` (model id
                → ``epoch20_val_loss``, ``last_val_loss``, ``last_epoch``).

        Returns:
            The Markdown text, ending with a newline.

        Raises:
            InputTypeError: ``results`` not a mapping.
            ConfigError: a missing key, a model the report does not know.
        """
        if not isinstance(results, Mapping):
            raise InputTypeError("results", "a mapping as results.json holds", describe(results))
        _require("results", results, _RESULTS_KEYS)
        results = upgrade_results(results)
        study = self.compare == "routing"
        L = self._header(results) + self._models_table(results["summary"])
        if study:
            L += self._protocol_tables(results) + self._pad_table(results)
        else:
            L += self._comparison_tables(results)
        L += self._snapshot_section(results["runs"])
        L += self._reach_section(results["runs"])
        L += self._memory_section(results)
        L += self._conclusion_section(results)
        L += self._samples_section(results["runs"])
        if results.get("plots"):
            L.append("## Loss curves\n")
            L += [f"![{p}]({p})" for p in results["plots"]]
            L.append("")
        if study and results.get("original"):
            L += self._original_section(results["original"])
        L.append("The schema of `results.json` is described in the script's docstring.")
        return "\n".join(L) + "\n"

    def write_markdown(self, path: str | os.PathLike[str], results: Mapping[str, Any]) -> None:
        """Write [`markdown`][recurrentkit.study.report.StudyReport.markdown]'s text to
        ``path`` (UTF-8), atomically: a reader sees the old file or the new one, whole."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.markdown(results), encoding="utf-8")
        os.replace(tmp, path)

    def _header(self, results: Mapping[str, Any]) -> list[str]:
        if self.compare == "model":
            title = "# Recurrent backbones at matched size on the names — measured\n"
        else:
            title = "# Shared vs layer-wise memory in stacked GRUs — measured\n"
        d = results["data"]
        description = results.get("description") or (
            self.unrecorded_description or self.description
        )
        words = [w.split("=")[0] for w in str(results["command"]).split()]
        overrides = [f for f in _PLAN_FLAGS if f in words]
        if results.get("merged_from"):
            preset = "Merged from separate invocations: the runs are those below.  \n"
        elif overrides:
            preset = (
                f"Preset: `{results['preset']}`, its plan replaced by the command's "
                f"{', '.join(f'`{f}`' for f in overrides)}: the runs are those below.  \n"
            )
        else:
            preset = f"Preset: `{results['preset']}` — {description}.  \n"
        return [
            title,
            f"Command: `{results['command']}`  \n"
            + preset
            + f"Device: {results['device']}; torch {results['torch']}; "
            f"{results['threads']} CPU thread(s); {results['world_size']} process(es).  \n"
            f"Wall time: {results['wall_seconds']:.0f} s. Data: {d['source']} "
            f"({d['train']} training / {d['val']} validation names, "
            f"split seed {d.get('split_seed', self.split_seed)}"
            f"{', names deduplicated' if d.get('dedupe') else ''}).\n"
            + (
                f"Merged from {len(results['merged_from'])} results files: "
                + ", ".join(
                    f"`{Path(f).parent.name}/{Path(f).name}`" for f in results["merged_from"]
                )
                + ".\n"
                if results.get("merged_from")
                else ""
            ),
        ]

    def _models_table(self, summary: Sequence[Mapping[str, Any]]) -> list[str]:
        seen: dict[str, Mapping[str, Any]] = {}
        for e in summary:
            seen.setdefault(e["model"], e)
        L = ["## Models\n"]
        if self.compare == "routing":
            L.append(
                "| model | layers | embedding | hidden | dropout | optimizer | lr | epochs run "
                "| params (measured) | params (original) |"
            )
            L.append("|---|---|---|---|---|---|---|---|---|---|")
        else:
            L.append(
                "| model | layers | embedding | hidden | dropout | optimizer | lr | epochs "
                "| params |"
            )
            L.append("|---|---|---|---|---|---|---|---|---|")
        for m, e in seen.items():
            self.label(m)  # an unknown model is a ConfigError, not a KeyError
            s = self.models[m]
            row = (
                f"| {s.label} | {s.layers} | {s.embed} | {s.hidden} | {s.dropout} | {s.optimizer} "
                f"| {s.lr:g} "
            )
            if self.compare == "routing":
                orig = f"{s.original_params:,}" if s.original_params else "—"
                L.append(
                    row + f"| {e['epochs']} (original {s.epochs}) | {e['params']:,} | {orig} |"
                )
            else:
                L.append(row + f"| {e['epochs']} | {e['params']:,} |")
        L.append("")
        return L

    def _samples_text(self, num_samples: int) -> str:
        return (
            f"Over {num_samples:,} samples of at most {_SAMPLE_STEPS} characters: *runaway* = no "
            f"end token within {_SAMPLE_STEPS} steps"
        )

    def _protocol_tables(self, results: Mapping[str, Any]) -> list[str]:
        """The study's main tables: one per protocol, every policy's losses and samples."""
        L: list[str] = []
        summary = results["summary"]
        for protocol in PROTOCOLS:
            rows = [e for e in summary if e["protocol"] == protocol]
            if not rows:
                continue
            L.append(f"## Results, `{protocol}` protocol\n")
            L.append(
                "Mean ± 95% CI over seeds where a group has more than one (a bare number: one "
                "seed, no interval). Losses in nats per predicted character; "
                "*teacher-forced* runs whole validation names at once; *step-wise* feeds them "
                "one token at a time with the state carried exactly as the step sampler "
                "carries it (under the `seed` protocol a `<PAD>` step first; — where the run "
                "predates this measurement); *from zero* is step-wise from the zero state at "
                "the first letter (equal to teacher-forced for a causal policy: the leak "
                f"test). {self._samples_text(results['num_samples'])}, with its one-sided 95% "
                "upper bound (Clopper–Pearson, pooled over seeds) in brackets; *distinct-n* = "
                "distinct / total character n-grams over all samples; *repetition* = share "
                "of samples in which some 2- or 3-gram occurs 3+ times (overlapping); *loop* "
                "= share in which some substring of 2+ characters occurs 3+ times "
                "(non-overlapping); *empty* = share in which `.` was drawn first; *novelty* = "
                "share whose letters are not a training name (empty samples count as "
                "novel), *novelty (non-empty)* leaves them out and counts a sample that drew "
                "`<PAD>` as novel; *held-out match* = share "
                "equal to a validation name absent from training.\n"
            )
            L.append(
                "| model | routing | seeds | best val (epoch) | val, teacher-forced "
                "| val, step-wise | from zero | runaway | mean length | distinct-2 "
                "| distinct-3 | repetition | loop | empty | novelty | novelty (non-empty) "
                "| held-out match |"
            )
            L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for e in rows:
                L.append(
                    f"| {self._row(e)} | {e['n_seeds']} | {format_stat(e['best_val_loss'], 4)} "
                    f"({e['best_epoch']['mean']:.0f}) | {format_stat(e['final_val_loss'], 4)} "
                    f"| {_opt(e, 'stepwise_val_loss', 4)} "
                    f"| {_opt(e, 'stepwise_val_loss_zero', 4)} | {_runaway(e)} "
                    f"| {format_stat(e['mean_length'], 2)} | {format_stat(e['distinct2'])} "
                    f"| {format_stat(e['distinct3'])} | {format_stat(e['repetition'], pct=True)} "
                    f"| {_opt(e, 'loop_rate', pct=True)} | {_opt(e, 'empty_rate', pct=True)} "
                    f"| {format_stat(e['novelty'], pct=True)} "
                    f"| {_opt(e, 'novelty_nonempty', pct=True)} "
                    f"| {format_stat(e['heldout_match'], pct=True)} |"
                )
            L.append("")
            L += self._paired_table(rows)
        return L

    def _paired_table(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """Each policy's paired difference from ``independent`` (same seeds), if any."""
        paired = [e for e in rows if e.get("vs_independent")]
        if not paired:
            return []
        L = [
            "Difference from `independent`, paired by seed (this policy's run minus "
            "independent's run of the same seed and split), mean ± 95% CI over the pairs; "
            "an interval that contains 0 is *no measurable difference*; with one pair "
            "there is no interval.\n",
            "| model | routing | pairs | best val | val, teacher-forced | val, step-wise "
            "| runaway (points) | mean length | loop (points) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in paired:
            d = e["vs_independent"]
            n = max(v["n"] for v in d.values())
            L.append(
                f"| {self._row(e)} | {n} | {_diff_cell(d, 'best_val_loss')} "
                f"| {_diff_cell(d, 'final_val_loss')} | {_diff_cell(d, 'stepwise_val_loss')} "
                f"| {_diff_cell(d, 'runaway_rate', 1, 100.0)} "
                f"| {_diff_cell(d, 'mean_length', 2)} | {_diff_cell(d, 'loop_rate', 1, 100.0)} |"
            )
        L.append("")
        return L

    def _snapshot_section(self, runs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Sample metrics of the best-validation model and of each saved epoch, per run."""
        rows = []
        for r in runs:
            entries = list(r.get("saved_epochs") or [])
            best = r.get("best_checkpoint")
            if best and all(e["epoch"] != best["epoch"] for e in entries):
                entries.append(best)
            for e in sorted(entries, key=lambda e: e["epoch"]):
                rows.append((r, e, best is not None and e["epoch"] == best["epoch"]))
        if not rows:
            return []
        L = [
            "## Samples by checkpoint\n",
            "Sample metrics of the best-validation model (★) and of each epoch saved with "
            "`--save-epochs`, drawn as the run's samples were. *Runaway* with its one-sided "
            "95% upper bound; *loop* as above; *first letters*: the three most common, and "
            "the total-variation distance to the training names'.\n",
            "| run | epoch | val loss | runaway | mean length | loop | first-letter TV "
            "| first letters |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r, e, is_best in rows:
            top = sorted(e.get("first_letters", {}).items(), key=lambda kv: -kv[1])[:3]
            letters = ", ".join(f"{k} {100 * v:.0f}%" for k, v in top) or "—"
            val = "—" if e.get("val_loss") is None else f"{e['val_loss']:.4f}"
            run = r["run"] + _variant(r)
            L.append(
                f"| {run} | {e['epoch']}{' ★' if is_best else ''} | {val} "
                f"| {100 * e['runaway_rate']:.1f}% (≤ {_pct_bound(e['runaway_upper95'])}) "
                f"| {e['mean_length']:.2f} | {100 * e['loop_rate']:.1f}% "
                f"| {e['first_letter_tv']:.3f} | {letters} |"
            )
        L.append("")
        return L

    def _comparison_tables(self, results: Mapping[str, Any]) -> list[str]:
        """The model comparison's main tables: one per (routing, protocol), every model."""
        L: list[str] = []
        for (_, title), members in self.comparison_groups(results["summary"]).items():
            L.append(f"## Results, {title}\n")
            L.append(
                "Mean ± 95% CI over seeds (a bare number: one seed). Losses in nats per "
                "predicted character; *teacher-forced* runs whole validation names at once, "
                "*step-wise* feeds them one token at a time as sampling does (the two agree "
                f"for a causal model). *Far share*: share of gradient connectivity {self.far} "
                "or more characters back; *top-k*: next-character accuracy over every "
                "validation name (both explained under *What the models remember*). "
                f"{self._samples_text(results['num_samples'])}; *novelty* = share that is not "
                "a training name.\n"
            )
            L.append(
                "| model | params | seeds | best val (epoch) | val, teacher-forced "
                f"| val, step-wise | far share (d ≥ {self.far}) | top-1 | top-2 | top-3 "
                "| runaway | mean length | novelty |"
            )
            L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for name, e in members.items():
                L.append(
                    f"| {name} | {e['params']:,} | {e['n_seeds']} "
                    f"| {format_stat(e['best_val_loss'], 4)} ({e['best_epoch']['mean']:.0f}) "
                    f"| {format_stat(e['final_val_loss'], 4)} "
                    f"| {format_stat(e['stepwise_val_loss'], 4)} "
                    f"| {format_stat(e['far_share'], pct=True)} "
                    f"| {format_stat(e['top1_accuracy'], pct=True)} "
                    f"| {format_stat(e['top2_accuracy'], pct=True)} "
                    f"| {format_stat(e['top3_accuracy'], pct=True)} "
                    f"| {format_stat(e['runaway_rate'], pct=True)} "
                    f"| {format_stat(e['mean_length'], 2)} "
                    f"| {format_stat(e['novelty'], pct=True)} |"
                )
            L.append("")
        return L

    def _pad_table(self, results: Mapping[str, Any]) -> list[str]:
        L = ["## The PAD-start protocol\n"]
        L.append(
            "Under the `seed` protocol the first letter is never a target and sampling starts "
            "from `<PAD>`, an input whose every target is ignored. *PAD gradient*: norm of the "
            f"training loss's gradient on the `<PAD>` embedding row ({self.pad_grad_rows:,} "
            "training names, eval mode); *PAD drift*: how far training moved that row; "
            "*first-letter TV*: total variation between the samples' first letters and the "
            "training names'; *PAD drawn*: samples (of "
            f"{results['num_samples']:,}) in which `<PAD>` was sampled.\n"
        )
        L.append(
            "| model | routing | protocol | PAD gradient | PAD drift | first-letter TV "
            "| PAD drawn |"
        )
        L.append("|---|---|---|---|---|---|---|")
        for e in results["summary"]:
            L.append(
                f"| {self._row(e)} | {e['protocol']} | {_fmt_sci(e['pad_grad_norm'])} "
                f"| {format_stat(e['pad_embedding_drift'], 3)} "
                f"| {format_stat(e['first_letter_tv'])} | {format_stat(e['pad_sampled'], 1)} |"
            )
        L.append("")
        return L

    def _reach_section(self, runs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Streams only (runs with ``reach``): each run's stream loss and its share of
        connectivity at each distance of ``reach``."""
        runs = [r for r in runs if r.get("reach")]
        if not runs:
            return []
        dists = sorted({int(d) for r in runs for d in r["reach"]})
        L = [
            "## Memory reach on streams\n",
            "Names laid end to end in rows of tokens, the state carried from name to name "
            "within a row (no reset at a name's start). *Val loss*: teacher-forced, per "
            "character of the validation streams. *Share at d ≥ D*: the mean share of an "
            "output's gradient connectivity on inputs D or more tokens back, over the output "
            "positions that have inputs that far back (a name of the packaged list spans at "
            "most 16 tokens, its `<S>` and up to 15 letters, so inputs 16 or more back lie "
            "in earlier names). The accuracy by position below counts "
            "tokens of the row seen, not characters of a name.\n",
            "| run | params | val loss | " + " | ".join(f"share at d ≥ {d}" for d in dists) + " |",
            "|---|---|---|" + "---|" * len(dists),
        ]
        for r in runs:
            shares = " | ".join(_pct(r["reach"].get(str(d))) for d in dists)
            L.append(f"| {r['run']} | {r['params']:,} | {r['final_val_loss']:.4f} | {shares} |")
        L.append("")
        return L

    def _memory_section(self, results: Mapping[str, Any]) -> list[str]:
        """What the models remember: the definitions, (the study's) table by policy, the
        connectivity and accuracy tables of the lowest seed, the figures."""
        L = ["## What the models remember\n"]
        stream = any(r.get("reach") for r in results["runs"])
        rows = "stream rows" if stream else "names"
        L.append(
            "Gradient connectivity (Madsen, *Visualizing memorization in RNNs*, Distill "
            "2019): the norm of the gradient of each true next character's logit with respect "
            f"to every one-hot input, over {self.analysis_names} seeded validation {rows} in "
            "eval mode (`recurrentkit.analysis`). *Far share*: mean share of an output's "
            f"connectivity on inputs {self.far} or more {'tokens' if stream else 'characters'} "
            "back; *future share*: "
            "share on *later* inputs — exactly 0 for a causal policy, the teacher-forcing leak "
            "otherwise (shares count the future in the total). *Top-k*: next-character "
            f"accuracy over every validation {rows[:-1]}.\n"
        )
        if self.compare == "routing":  # the model comparison's main table holds these
            L.append(
                f"| model | routing | protocol | seeds | far share (d ≥ {self.far}) "
                "| future share | top-1 | top-2 | top-3 |"
            )
            L.append("|---|---|---|---|---|---|---|---|---|")
            for e in results["summary"]:
                L.append(
                    f"| {self._row(e)} | {e['protocol']} | {e['n_seeds']} "
                    f"| {format_stat(e['far_share'], pct=True)} "
                    f"| {format_stat(e['future_share'], pct=True)} "
                    f"| {format_stat(e['top1_accuracy'], pct=True)} "
                    f"| {format_stat(e['top2_accuracy'], pct=True)} "
                    f"| {format_stat(e['top3_accuracy'], pct=True)} |"
                )
            L.append("")
        runs = [r for r in results["runs"] if "analysis" in r]
        if runs:
            seed = min(r["seed"] for r in runs)
            analyses = {
                r["run"]: RunAnalysis.from_dict(r["analysis"]) for r in runs if r["seed"] == seed
            }
            L.append(
                f"Seed {seed}: mean share of connectivity at distance d = t − s (above), and "
                "top-1 accuracy by characters of the name seen (below; position 0 = only the "
                "start token; the `seed` protocol never predicts the first letter).\n"
            )
            L.append(analysis_tables(analyses))
            L.append("")
        memory_plots = results.get("memory_plots") or []
        L += [f"![{p}]({p})" for p in memory_plots]
        if memory_plots:
            L.append("")
        return L

    def _conclusion_section(self, results: Mapping[str, Any]) -> list[str]:
        L = ["## Conclusion\n"]
        if self.compare == "routing":
            L.append(
                "Written by the script from the numbers above (thresholds stated); the "
                "training lengths are this preset's, which may be far shorter than the "
                "original's.\n"
            )
        else:
            L.append("Written by the script from the numbers above (thresholds stated).\n")
        L += self.conclusions(results["summary"], results["num_samples"])
        L.append("")
        return L

    def _samples_section(self, runs: Sequence[Mapping[str, Any]]) -> list[str]:
        L = ["## Samples (first 12 of each run, seed 0)\n"]
        for r in runs:
            if r.get("seed") != min(x["seed"] for x in runs) or "examples" not in r:
                continue
            shown = ", ".join(f"`{t}`" if t else "`(empty)`" for t in r["examples"])
            L.append(f"- {r['run']}: {shown}")
        L.append("")
        return L

    def _original_section(self, original: Mapping[str, Mapping[str, Any]]) -> list[str]:
        figures = "; ".join(
            f"{self.label(m)} {o['epoch20_val_loss']} at epoch 20, {o['last_val_loss']} at "
            f"epoch {o['last_epoch']}"
            for m, o in original.items()
        )
        return [
            "## The original's figures\n",
            "Validation loss as the original printed it (one unseeded run; the figures usually "
            f"quoted are the epoch-20 prints): {figures}. It reported every shared-memory "
            "sample at the 20-character limit.\n",
        ]

    # -- figures -------------------------------------------------------------------------

    def plot_losses(
        self, directory: str | os.PathLike[str], runs: Sequence[Mapping[str, Any]]
    ) -> list[str]:
        """One PNG per (model, protocol), ``loss_<model>_<protocol>.png``: validation
        (solid) and training (dashed) loss by epoch for each run, a star at the final
        model's step-wise validation loss.

        Args:
            directory: where to write (an existing folder).
            runs: run records; those with a ``history`` are drawn.

        Returns:
            The file names written (relative to ``directory``); ``[]`` when matplotlib
            is not installed.
        """
        try:
            from matplotlib.figure import Figure
            from matplotlib.ticker import MaxNLocator
        except ImportError:
            return []
        groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        for r in runs:
            if r.get("history"):
                groups.setdefault((r["model"], r["protocol"]), []).append(r)
        names = []
        for (m, p), rs in groups.items():
            fig = Figure(figsize=(6, 4))
            ax = fig.subplots()
            for i, r in enumerate(rs):
                ep = [h["epoch"] for h in r["history"]]
                color = f"C{i % 10}"
                label = f"{r['routing']} s{r['seed']}"
                val = [h["val_loss"] for h in r["history"]]
                ax.plot(ep, val, "-o", color=color, label=f"{label} val")
                if r.get("stepwise_val_loss") is not None:
                    ax.plot(ep[-1], r["stepwise_val_loss"], "*", color=color, markersize=12)
                train = [h["train_loss"] for h in r["history"]]
                ax.plot(ep, train, "--", color=color, alpha=0.6, label=f"{label} train")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch (★: step-wise validation loss of the final model)")
            ax.set_ylabel("loss (nats / character)")
            ax.set_title(f"{self.label(m)}, {p} protocol")
            ax.legend(fontsize=7)
            fig.tight_layout()
            name = f"loss_{m}_{p}.png"
            fig.savefig(Path(directory) / name, dpi=110)
            names.append(name)
        return names

    def plot_memory(
        self, directory: str | os.PathLike[str], runs: Sequence[Mapping[str, Any]]
    ) -> list[str]:
        """Heatmaps, decay curves and accuracy by context per comparison group
        ([`plot_comparison`][recurrentkit.analysis.plot_comparison]), of the runs of the
        lowest seed that were analysed; for runs on streams (with ``reach``), also
        ``reach_<stem>.png``: their decay curves on a logarithmic axis, where the far
        tail shows.

        Args:
            directory: where to write.
            runs: run records; those with an ``analysis`` are drawn.

        Returns:
            The file names written (relative to ``directory``); ``[]`` when no run was
            analysed or matplotlib is not installed.
        """
        done = [r for r in runs if "analysis" in r]
        if not done:
            return []
        seed = min(r["seed"] for r in done)
        files: list[str] = []
        groups = self.comparison_groups([r for r in done if r["seed"] == seed])
        for (stem, title), members in groups.items():
            analyses = {k: RunAnalysis.from_dict(r["analysis"]) for k, r in members.items()}
            try:
                files += plot_comparison(analyses, directory, stem, title=title)
                if all(r.get("reach") for r in members.values()):
                    name = f"reach_{stem}.png"
                    decays = {k: a.decay for k, a in analyses.items()}
                    plot_decay(decays, path=Path(directory) / name, title=title, log_scale=True)
                    files.append(name)
            except ImportError:
                return []
        return files
