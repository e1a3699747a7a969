"""The names memory ablation: its models, presets and run plans, one run, the run loop.

What ``examples/names_memory_ablation.py`` runs, as package code; the script parses its
command line and calls these. A study is:

- a [`Preset`][recurrentkit.study.ablation.Preset] (one of
  [`PRESETS`][recurrentkit.study.ablation.PRESETS]): groups of runs over the models of
  [`SPECS`][recurrentkit.study.ablation.SPECS] (the original's GRU-α/β/γ, a smoke-test
  model, the matched-size backbones), which
  [`plan_runs`][recurrentkit.study.ablation.plan_runs] turns into run keys
  ([`RunKey`][recurrentkit.study.ablation.RunKey]: model, routing, protocol, seed);
- the data: [`load_data`][recurrentkit.study.ablation.load_data] reads, subsets, splits
  (seeded, 80/20) and encodes the names under each protocol;
- each run: [`build_model`][recurrentkit.study.ablation.build_model],
  [`train_run`][recurrentkit.study.ablation.train_run] (train, resumably, then measure:
  [`evaluate_run`][recurrentkit.study.ablation.evaluate_run]) → one run record;
- [`run_study`][recurrentkit.study.ablation.run_study]: every run in turn, the records
  and their summary written to ``results.json`` and ``results.md``
  ([`make_report`][recurrentkit.study.ablation.make_report]) after each, the figures at
  the end. Under ``torchrun`` every process trains its share and rank 0 measures and
  writes.

The files' schema is described in the script's docstring.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

import recurrentkit as rk
from recurrentkit._validation import check_bool, check_choice, check_int, check_real, describe
from recurrentkit.analysis import analyse_run
from recurrentkit.errors import ConfigError
from recurrentkit.routing import LeakWarning
from recurrentkit.study import data, metrics
from recurrentkit.study.cells import StudyGRUCell
from recurrentkit.study.lm import CharLM, count_parameters
from recurrentkit.study.report import StudyReport, summarize_runs, upgrade_results
from recurrentkit.study.sample import (
    MODES,
    SAMPLERS,
    Sample,
    generate,
    stepwise_loss,
    teacher_forced_loss,
)
from recurrentkit.study.train import (
    TrainConfig,
    TrainingDiverged,
    fit,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "ALIASES",
    "ANALYSIS_NAMES",
    "BACKBONES",
    "FAR",
    "LIBRARY_CELLS",
    "MAX_LEN",
    "ORIGINAL",
    "PAD_GRAD_BATCH",
    "PRESETS",
    "ROUTINGS",
    "ROUTING_CHOICES",
    "SCHEMA",
    "SNAPSHOT_FORMAT",
    "SEED_ROUTINGS",
    "SPECS",
    "SPLIT_SEED",
    "STREAM_ANALYSIS_BATCH",
    "STREAM_ANALYSIS_ROWS",
    "STREAM_FAR",
    "STREAM_MODELS",
    "UNRECORDED_DESCRIPTIONS",
    "Group",
    "ModelSpec",
    "Preset",
    "RunKey",
    "Sampling",
    "build_model",
    "evaluate_run",
    "finish_distributed",
    "init_distributed",
    "load_data",
    "make_report",
    "merge_results",
    "pad_gradient_norm",
    "plan_runs",
    "rank",
    "run_specs",
    "routing_policy",
    "run_study",
    "sample_metrics",
    "split_words",
    "train_run",
    "write_results",
]

SCHEMA = "names_memory_ablation/2"
"""The ``"schema"`` of the ``results.json`` a study writes (``/1``: before the
sampling-carried step-wise loss; ``report.upgrade_results`` reads both)."""
SNAPSHOT_FORMAT = "recurrentkit.study.snapshot/1"
"""The ``"format"`` of a model snapshot (best epoch, ``--save-epochs``): the model's
``state_dict`` with its ``epoch`` and ``val_loss``, written by ``save_checkpoint``."""

ROUTINGS = ("independent", "shared", "handoff", "residual", "cross_layer")
ROUTING_CHOICES = (*ROUTINGS, "shared_last")
"""Every policy a run may use: :data:`ROUTINGS` (the presets' policies) and
``shared_last`` (``rk.routing.Shared(carry="last")``: one memory threaded through every
layer, the top layer's write carried to the next step)."""
MAX_LEN = 16
SPLIT_SEED = 0
PAD_GRAD_BATCH = 2048
ANALYSIS_NAMES = 256  # validation names whose gradient connectivity is measured per run
FAR = 3  # far_share counts connectivity at distance t - s >= FAR
STREAM_FAR = (16, 64)
"""On streams (a preset with ``stream_len``): the distances whose connectivity share a
run reports (``reach``); the first is also its ``far_share``'s. A packaged name spans
at most 16 tokens (``<S>`` and up to 15 letters): connectivity 16 or more tokens back
lies in earlier names."""
STREAM_ANALYSIS_ROWS = 64  # validation stream rows whose gradient connectivity is measured
STREAM_ANALYSIS_BATCH = 4
"""Stream rows per connectivity pass: a pass holds 256 sets of gradients of its rows (all
64 rows at once took 23 GB for the LRU and was killed for memory)."""


@dataclass(frozen=True)
class ModelSpec:
    """One of the original's models (or a backbone of the comparison), with its training
    settings. ``cell``: ``study_gru`` (the original's cell, dropout on the carried state),
    or a library cell (a key of :data:`LIBRARY_CELLS`; dropout between layers)."""

    name: str
    label: str
    layers: int
    embed: int
    hidden: int
    dropout: float
    layer_norm: bool
    optimizer: str
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int = 64
    original_params: int | None = None
    cell: str = "study_gru"


SPECS: dict[str, ModelSpec] = {
    "alpha": ModelSpec("alpha", "GRU-α", 1, 64, 128, 0.0, False, "adam", 1e-3, 0.0, 35,
                       original_params=79_772),
    "beta": ModelSpec("beta", "GRU-β", 2, 96, 256, 0.1, False, "adam", 5e-4, 0.0, 40,
                      original_params=675_996),
    "gamma": ModelSpec("gamma", "GRU-γ", 3, 128, 512, 0.2, True, "adamw", 3e-4, 0.01, 60,
                       original_params=4_155_420),
    # A smoke-test model (not in the original): seconds on a laptop.
    "tiny": ModelSpec("tiny", "tiny", 2, 8, 16, 0.1, False, "adam", 1e-2, 0.0, 2,
                      batch_size=32),
    # The backbones (not in the original): 2 layers each, embedding 64, Adam at 1e-3 for 8
    # epochs, hidden sizes chosen so every parameter count is within 1% of the GRU's
    # (136,415 under the fixed protocol; all of them lie in 136,051-137,104).
    "gru": ModelSpec("gru", "GRU", 2, 64, 110, 0.0, False, "adam", 1e-3, 0.0, 8, cell="gru"),
    "lstm": ModelSpec("lstm", "LSTM", 2, 64, 94, 0.0, False, "adam", 1e-3, 0.0, 8, cell="lstm"),
    "nlstm": ModelSpec("nlstm", "Nested LSTM (depth 2)", 2, 64, 64, 0.0, False, "adam", 1e-3,
                       0.0, 8, cell="nested_lstm"),
    "mgu": ModelSpec("mgu", "MGU", 2, 64, 137, 0.0, False, "adam", 1e-3, 0.0, 8, cell="mgu"),
    "cifg": ModelSpec("cifg", "CIFG LSTM", 2, 64, 110, 0.0, False, "adam", 1e-3, 0.0, 8,
                      cell="cifg"),
    "indrnn": ModelSpec("indrnn", "IndRNN (relu)", 2, 64, 321, 0.0, False, "adam", 1e-3, 0.0, 8,
                        cell="indrnn"),
    "ln_gru": ModelSpec("ln_gru", "LayerNorm GRU", 2, 64, 109, 0.0, False, "adam", 1e-3, 0.0, 8,
                        cell="ln_gru"),
    "ln_lstm": ModelSpec("ln_lstm", "LayerNorm LSTM", 2, 64, 93, 0.0, False, "adam", 1e-3, 0.0,
                         8, cell="ln_lstm"),
    "min_gru": ModelSpec("min_gru", "minGRU", 2, 64, 222, 0.0, False, "adam", 1e-3, 0.0, 8,
                         cell="min_gru"),
    "min_lstm": ModelSpec("min_lstm", "minLSTM", 2, 64, 177, 0.0, False, "adam", 1e-3, 0.0, 8,
                          cell="min_lstm"),
    "lru": ModelSpec("lru", "LRU", 2, 64, 132, 0.0, False, "adam", 1e-3, 0.0, 8, cell="lru"),
}  # fmt: skip
"""Model id → spec: the original's ``alpha``/``beta``/``gamma`` (GRU-α/β/γ), the smoke-test
``tiny``, and the matched-size backbones of :data:`BACKBONES`."""
BACKBONES = (
    "gru", "lstm", "nlstm", "mgu", "cifg", "indrnn", "ln_gru", "ln_lstm", "min_gru", "min_lstm",
    "lru",
)  # fmt: skip
"""The backbones preset's models, one per library cell, in its tables' order."""
STREAM_MODELS = ("gru", "lstm", "min_gru", "min_lstm", "lru")
"""The long preset's models: GRU and LSTM beside the linear-recurrence backbones."""
LIBRARY_CELLS: dict[str, Any] = {
    "gru": rk.GRUCell,
    "lstm": rk.LSTMCell,
    "nested_lstm": lambda i, h: rk.NestedLSTMCell(i, h, depth=2),
    "mgu": rk.MGUCell,
    "cifg": rk.CoupledLSTMCell,
    "indrnn": rk.IndRNNCell,  # relu, its default
    "ln_gru": rk.LayerNormGRUCell,
    "ln_lstm": rk.LayerNormLSTMCell,
    "min_gru": rk.MinGRUCell,
    "min_lstm": rk.MinLSTMCell,
    "lru": rk.LRUCell,  # complex diagonal state of width hidden, real output of width hidden
}
"""A backbone spec's ``cell`` → ``(input_size, hidden_size) -> cell``."""
ALIASES = {"α": "alpha", "β": "beta", "γ": "gamma"}

# The original's printed validation losses (epoch-20 prints and last epoch).
ORIGINAL = {
    "alpha": {"epoch20_val_loss": 1.8177, "last_val_loss": 1.8371, "last_epoch": 35},
    "beta": {"epoch20_val_loss": 1.7466, "last_val_loss": 1.7695, "last_epoch": 40},
    "gamma": {"epoch20_val_loss": 1.7780, "last_val_loss": 1.9268, "last_epoch": 60},
}


@dataclass(frozen=True)
class Group:
    """Runs of one model: which routing policies, under which protocols."""

    model: str
    routings: tuple[str, ...]
    protocols: tuple[str, ...]


@dataclass(frozen=True)
class Preset:
    """A named plan of runs. ``compare``: what its analysis figures set side by side
    (``"routing"``: the policies of each model; ``"model"``: the models under each policy).
    ``stream_len``: ``None`` (one padded row per name), or ``T``: the names laid end to end
    in rows of ``T`` tokens, the state carried from name to name within a row
    ([`load_data`][recurrentkit.study.ablation.load_data]). ``batch_size``: rows per
    training batch, overriding the models' own."""

    description: str
    groups: tuple[Group, ...]
    seeds: tuple[int, ...] = (0,)
    epochs: dict[str, int] | None = None
    num_samples: int = 1000
    max_names: int | None = None
    compare: str = "routing"
    stream_len: int | None = None
    batch_size: int | None = None


SEED_ROUTINGS = ("independent", "shared", "handoff")
_LONG = (
    "long context: GRU, LSTM, minGRU, minLSTM and LRU, 2 layers stacked independently, "
    "about 136k parameters each (matched within 0.3%), trained on the names laid end to "
    "end in streams of T = 256 tokens (the state carried from name to name within a row), "
    "rows of 16 per batch, 20 epochs, seed 0; validation loss per character on the "
    "validation streams and memory reach (connectivity shares at distance >= 16 and >= "
    "64); about 20-25 minutes of CPU time at 1 thread (training about 13, the "
    "connectivity analysis about 7); routing is independent only"
)
PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "α (seed and fixed protocol, 3 epochs) and β × independent/shared/handoff (seed "
        "protocol, 2 epochs), seed 0: about 5 minutes of CPU time",
        (Group("alpha", ("independent",), ("seed", "fixed")),
         Group("beta", SEED_ROUTINGS, ("seed",))),
        epochs={"alpha": 3, "beta": 2},
    ),
    "seed": Preset(
        "the original's models and settings exactly (35/40/60 epochs), independent/shared/"
        "handoff, seed protocol, seed 0 (γ takes hours on a CPU; GPU recommended)",
        (Group("alpha", ("independent",), ("seed",)),
         Group("beta", SEED_ROUTINGS, ("seed",)),
         Group("gamma", SEED_ROUTINGS, ("seed",))),
    ),
    "full": Preset(
        "the seed preset × all five policies × both protocols × seeds 0,1,2 (GPU recommended)",
        tuple(Group(m, ROUTINGS, data.PROTOCOLS) for m in ("alpha", "beta", "gamma")),
        seeds=(0, 1, 2),
    ),
    "tiny": Preset(
        "a smoke test in seconds: a 2-layer 16-unit model, 300 names, 2 epochs, "
        "independent and handoff",
        (Group("tiny", ("independent", "handoff"), ("seed",)),),
        num_samples=50,
        max_names=300,
    ),
    "backbones": Preset(
        "GRU, LSTM, Nested LSTM (depth 2), MGU, CIFG LSTM, IndRNN (relu), LayerNorm GRU, "
        "LayerNorm LSTM, minGRU, minLSTM and LRU, 2 layers stacked independently, about "
        "136k parameters each (matched within 1% of the GRU's), fixed protocol, 8 epochs, "
        "seed 0: the memorization comparison of Madsen (Distill 2019) on the names, about "
        "25 minutes at one thread (1,407 s measured on a 2-core CPU running other work); "
        "routing is independent only",
        tuple(Group(m, ("independent",), ("fixed",)) for m in BACKBONES),
        compare="model",
    ),
    "long": Preset(
        _LONG,
        tuple(Group(m, ("independent",), ("fixed",)) for m in STREAM_MODELS),
        compare="model",
        stream_len=256,
        batch_size=16,
        epochs=dict.fromkeys(STREAM_MODELS, 20),
    ),
}  # fmt: skip
"""Preset name → plan of runs: ``quick``, ``seed``, ``full``, ``tiny``, ``backbones``,
``long``."""
UNRECORDED_DESCRIPTIONS = {
    "backbones": "GRU, LSTM and Nested LSTM (depth 2), 2 layers stacked independently, about "
    "136k parameters each (matched within 0.5%), fixed protocol, 8 epochs, seed 0: the "
    "memorization comparison of Madsen (Distill 2019) on the names, about 5 minutes of "
    "CPU time; routing is independent only",
}
"""Preset name → its description before results files recorded theirs (the three-cell
``backbones`` preset), for the headers of files written then."""


@dataclass(frozen=True)
class RunKey:
    """One run: model id, routing policy, protocol, seed and split seed; ``id`` names its
    files (``-split<N>`` is appended when the split seed is not 0)."""

    model: str
    routing: str
    protocol: str
    seed: int
    split_seed: int = SPLIT_SEED

    @property
    def id(self) -> str:
        split = f"-split{self.split_seed}" if self.split_seed != SPLIT_SEED else ""
        return f"{self.model}-{self.routing}-{self.protocol}-s{self.seed}{split}"


@dataclass(frozen=True)
class Sampling:
    """How a run's samples are drawn (:func:`~recurrentkit.study.sample.generate`'s
    options): ``sampler`` (``"step"``, the default, or ``"prefix"``), ``temperature``,
    ``greedy`` (argmax decoding) and ``mode`` (``"eval"`` or ``"train"``: dropout on).

    Raises:
        ConfigError: an unknown sampler or mode, a temperature that is not > 0.
    """

    sampler: str = "step"
    temperature: float = 1.0
    greedy: bool = False
    mode: str = "eval"

    def __post_init__(self) -> None:
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("mode", self.mode, MODES)
        check_real("temperature", self.temperature, strict=True)
        check_bool("greedy", self.greedy)

    @property
    def label(self) -> str:
        """The variant's name in tables: ``""`` for the default (step, T = 1, eval)."""
        parts = []
        if self.sampler != "step":
            parts.append(f"{self.sampler} sampler")
        if self.greedy:
            parts.append("greedy")
        elif self.temperature != 1.0:
            parts.append(f"T={self.temperature:g}")
        if self.mode != "eval":
            parts.append(f"{self.mode} mode")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler,
            "temperature": self.temperature,
            "greedy": self.greedy,
            "mode": self.mode,
        }


# -- building ----------------------------------------------------------------------------


def routing_policy(routing: str) -> str | rk.routing.RoutingPolicy:
    """What ``Stack`` is given for a routing name of :data:`ROUTING_CHOICES`: the name
    itself, or ``Shared(carry="last")`` for ``"shared_last"``."""
    check_choice("routing", routing, ROUTING_CHOICES)
    return rk.routing.Shared(carry="last") if routing == "shared_last" else routing


def build_model(spec: ModelSpec, routing: str, protocol: str = "seed") -> CharLM:
    """The original's model: embedding → stacked ``StudyGRUCell``\\s → (LayerNorm) → head
    (a backbone spec stacks its library cell instead, with dropout between layers)."""
    sizes = [(spec.embed if k == 0 else spec.hidden, spec.hidden) for k in range(spec.layers)]
    policy = routing_policy(routing)
    if spec.cell == "study_gru":
        cells = [StudyGRUCell(i, h, spec.dropout) for i, h in sizes]
        stack = rk.Stack(cells, policy, batch_first=True)
    else:
        cells = [LIBRARY_CELLS[spec.cell](i, h) for i, h in sizes]
        stack = rk.Stack(cells, policy, dropout=spec.dropout, batch_first=True)
    return CharLM(stack, data.vocab_size(protocol), spec.embed, layer_norm=spec.layer_norm)


def plan_runs(
    preset: Preset,
    models: Sequence[str] | None = None,
    routings: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    split_seed: int = SPLIT_SEED,
) -> list[RunKey]:
    """The runs of a preset, or of the grid its overrides describe (every run on the
    train/validation split of ``split_seed``).

    Overriding models, routings or protocols turns the plan into the full grid of the
    given lists (the preset's lists fill in the rest). A one-layer model is the same
    model under every policy, so it runs under the first requested policy only.
    """
    groups = list(preset.groups)
    if models or routings or protocols:
        all_r = tuple(dict.fromkeys(r for g in groups for r in g.routings))
        all_p = tuple(dict.fromkeys(p for g in groups for p in g.protocols))
        all_m = tuple(dict.fromkeys(g.model for g in groups))
        groups = [
            Group(m, tuple(routings or all_r), tuple(protocols or all_p)) for m in (models or all_m)
        ]
    out = []
    for g in groups:
        rs = g.routings[:1] if SPECS[g.model].layers == 1 else g.routings
        for p in g.protocols:
            for r in rs:
                for s in seeds if seeds is not None else preset.seeds:
                    out.append(RunKey(g.model, r, p, s, split_seed))
    return out


# -- one run -----------------------------------------------------------------------------


def pad_gradient_norm(model: CharLM, x: torch.Tensor, y: torch.Tensor) -> float:
    """Norm of the training loss's gradient on the ``<PAD>`` embedding row (eval mode)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    device = model.embedding.weight.device
    _, loss = model(x.to(device), y.to(device))
    assert loss is not None
    loss.backward()
    grad = model.embedding.weight.grad
    value = 0.0 if grad is None else float(grad[data.PAD].norm())
    model.zero_grad(set_to_none=True)
    return value


def sample_metrics(
    model: CharLM,
    key: RunKey,
    sets: Mapping[str, Any],
    num_samples: int,
    sampling: Sampling | None = None,
) -> tuple[dict[str, Any], list[Sample]]:
    """Draw a run's samples and measure them.

    The samples start from ``<PAD>`` (seed protocol) or ``<S>`` (fixed; ``<PAD>`` and
    ``<S>`` forbidden), at most 20 steps, seeded by the run's seed, drawn as ``sampling``
    says (default: the step sampler, temperature 1, eval mode).

    Returns:
        ``(metrics, samples)``. ``metrics``: ``runaway_rate``, ``runaways`` (count),
        ``runaway_upper95`` (one-sided 95% Clopper–Pearson bound), ``mean_length``,
        ``distinct2``, ``distinct3``, ``repetition``, ``loop_rate``
        ([`has_loop`][recurrentkit.study.metrics.has_loop]), ``empty_rate`` (``.`` drawn
        first), ``novelty`` (of the letters, ``<PAD>`` draws dropped, over all samples:
        empty ones count as novel; kept as it was), ``novelty_nonempty`` (over the
        non-empty samples, ``<PAD>`` draws kept, so a sample that drew ``<PAD>`` is never
        a training name; ``None`` if all are empty), ``reproduction`` (share whose letters
        are a training name), ``heldout_match``, ``first_letters`` (the samples'
        first-letter distribution), ``first_letter_tv`` (its distance to the training
        names'), ``pad_sampled`` (samples that drew ``<PAD>``).
    """
    sampling = sampling or Sampling()
    fixed = key.protocol == "fixed"
    samples = generate(
        model,
        num_samples,
        start_token=data.START if fixed else data.PAD,
        forbid=(data.PAD, data.START) if fixed else (),
        max_steps=20,
        seed=key.seed,
        temperature=sampling.temperature,
        greedy=sampling.greedy,
        sampler=sampling.sampler,
        mode=sampling.mode,
    )
    texts = [s.text for s in samples]
    raws = [s.raw for s in samples]  # <PAD> draws kept (as "_"): such a sample is no name
    ended = [s.ended for s in samples]
    train_names = sets["train_names"]
    firsts = metrics.first_letter_distribution(texts)
    return {
        "runaway_rate": metrics.runaway_rate(ended),
        "samples": len(samples),
        "runaways": sum(1 for e in ended if not e),
        "runaway_upper95": metrics.runaway_upper(ended),
        "mean_length": metrics.mean_length(texts),
        "distinct2": metrics.distinct_n(texts, 2),
        "distinct3": metrics.distinct_n(texts, 3),
        "repetition": metrics.repetition_rate(texts),
        "loop_rate": metrics.loop_rate(texts),
        "empty_rate": metrics.empty_rate(raws),
        "novelty": metrics.novelty(texts, train_names),
        "novelty_nonempty": metrics.nonempty_novelty(raws, train_names),
        "reproduction": metrics.reproduction_rate(texts, train_names),
        "heldout_match": sum(t in sets["heldout_names"] for t in texts) / len(texts),
        "first_letters": firsts,
        "first_letter_tv": metrics.total_variation(firsts, sets["first_letters"]),
        "pad_sampled": sum(1 for s in samples if s.pad_count > 0),
    }, samples


def evaluate_run(
    model: CharLM,
    key: RunKey,
    sets: dict[str, Any],
    num_samples: int,
    pad_row_init: torch.Tensor,
    sampling: Sampling | None = None,
) -> tuple[dict[str, Any], list[Sample]]:
    """Every measurement of a trained model (losses, samples, metrics, the PAD flaw, what
    it remembers).

    On streams (``sets["stream_len"]`` set, see
    [`load_data`][recurrentkit.study.ablation.load_data]) the losses are over the
    validation stream rows, the connectivity is measured on
    :data:`STREAM_ANALYSIS_ROWS` of them with ``far_share`` counted from
    ``STREAM_FAR[0]``, and ``reach`` maps each distance ``d`` of :data:`STREAM_FAR` to
    the share of connectivity at distance ``>= d``
    ([`far_share_at`][recurrentkit.analysis.ConnectivityDecay.far_share_at]). The
    samples start from ``<S>`` and the zero state, as under the fixed protocol.

    Losses: ``final_val_loss`` (teacher-forced), ``stepwise_val_loss`` (one token at a
    time with the state carried exactly as the step sampler carries it: under the seed
    protocol a ``<PAD>`` step first), ``stepwise_val_loss_zero`` (one token at a time
    from the zero state at the first letter: the definition before schema ``/2``) and
    ``leak_gap`` = ``stepwise_val_loss_zero - final_val_loss`` (0 for a causal policy).
    The sample metrics are [`sample_metrics`][recurrentkit.study.ablation.sample_metrics]'s.
    """
    xv, yv = sets["val"]
    xt, yt = sets["train"]
    stream_len = sets.get("stream_len")
    tf = teacher_forced_loss(model, xv, yv)
    sw_zero = stepwise_loss(model, xv, yv)
    fixed = key.protocol == "fixed"
    # Under the fixed protocol x already starts with <S>, the sampler's first input.
    sw = sw_zero if fixed else stepwise_loss(model, xv, yv, start_token=data.PAD)
    measured, samples = sample_metrics(model, key, sets, num_samples, sampling)
    pad_row = model.embedding.weight.detach()[data.PAD].cpu()
    memory = analyse_run(
        model,
        xv,
        yv,
        first_position=0 if fixed else 1,
        names=STREAM_ANALYSIS_ROWS if stream_len else ANALYSIS_NAMES,
        seed=SPLIT_SEED,
        far=STREAM_FAR[0] if stream_len else FAR,
        vocab=data.itos,
        batch_size=STREAM_ANALYSIS_BATCH if stream_len else 256,
    )
    reach = {"reach": {str(d): memory.decay.far_share_at(d) for d in STREAM_FAR}}
    return {
        "final_val_loss": tf,
        "stepwise_val_loss": sw,
        "stepwise_val_loss_zero": sw_zero,
        "leak_gap": sw_zero - tf,
        **measured,
        "pad_grad_norm": pad_gradient_norm(model, xt[:PAD_GRAD_BATCH], yt[:PAD_GRAD_BATCH]),
        "pad_embedding_drift": float((pad_row - pad_row_init).norm()),
        **memory.summary(),
        **(reach if stream_len else {}),
        "analysis": memory.to_dict(),
    }, samples


def run_specs(
    preset: Preset, keys: Sequence[RunKey], epochs: int | None = None
) -> dict[str, ModelSpec]:
    """The spec of every model the runs use, with the training length they run for:
    ``epochs`` if given, else the preset's for that model, else the spec's own (and the
    preset's ``batch_size`` if it has one)."""
    return {
        m: replace(
            SPECS[m],
            epochs=epochs or (preset.epochs or {}).get(m, SPECS[m].epochs),
            batch_size=preset.batch_size or SPECS[m].batch_size,
        )
        for m in dict.fromkeys(k.model for k in keys)
    }


def load_data(
    path: str | os.PathLike[str] | None = None,
    protocols: Sequence[str] = data.PROTOCOLS,
    *,
    max_names: int | None = None,
    split_seed: int = SPLIT_SEED,
    dedupe: bool = False,
    stream_len: int | None = None,
) -> dict[str, Any]:
    """The names a study trains and measures on, split and encoded.

    The words of ``path`` (``None``: the packaged names), with repeats dropped if
    ``dedupe`` (first occurrence kept: 29,494 unique of the 32,033 packaged names, so
    that no validation name is also a training name), a subset of ``max_names`` of them
    (seeded by ``split_seed``) if given, split 80/20 (seeded by ``split_seed``) and
    encoded to ``MAX_LEN`` under each protocol. With ``stream_len = T`` (fixed protocol
    only) each split is instead laid end to end in rows of ``T`` tokens
    (:func:`~recurrentkit.study.data.encode_stream`: ``<S>`` + letters as inputs,
    letters + ``.`` as targets, name after name, whole names per row), and a model
    carries its state from one name to the next within a row; ``sets["fixed"]`` then
    holds ``"stream_len"`` too.

    Returns:
        ``{"data": {"source", "train", "val", "split_seed", "dedupe", "words"},
        <protocol>: {"train": (x, y), "val": (x, y)}, ..., "names": {"train_names",
        "heldout_names", "first_letters"}}`` (``words``: names read, before any
        subset or deduplication).

    Raises:
        ConfigError: a file :func:`~recurrentkit.study.data.load_words` refuses, or with
            fewer than 2 names (argument ``path``); a name too long for ``MAX_LEN``
            (argument ``words[i]``, from :func:`~recurrentkit.study.data.encode`);
            ``stream_len`` not ``None`` or an int ``>= MAX_LEN``, or with protocols other
            than ``("fixed",)``.
    """
    if stream_len is not None:
        check_int("stream_len", stream_len, minimum=MAX_LEN)
        if tuple(protocols) != ("fixed",):
            raise ConfigError("protocols", "('fixed',) with stream_len", describe(protocols))
    train, val = split_words(path, max_names=max_names, split_seed=split_seed, dedupe=dedupe)
    source = str(path) if path else "packaged names.txt"
    sets: dict[str, Any] = {"data": {"source": source, "train": len(train), "val": len(val)}}
    if split_seed != SPLIT_SEED or dedupe:  # the default data keeps its old description
        read = len(data.load_words(path))
        sets["data"].update(split_seed=split_seed, dedupe=dedupe, words=read)
    for p in protocols:
        sets[p] = {"train": data.encode(train, p, MAX_LEN), "val": data.encode(val, p, MAX_LEN)}
    if stream_len is not None:
        sets["data"]["stream_len"] = stream_len
        sets["fixed"] = {
            "train": data.encode_stream(train, stream_len),
            "val": data.encode_stream(val, stream_len),
            "stream_len": stream_len,
        }
    train_set = set(train)
    sets["names"] = {
        "train_names": train_set,
        "heldout_names": set(val) - train_set,
        "first_letters": metrics.first_letter_distribution(train),
    }
    return sets


def split_words(
    path: str | os.PathLike[str] | None = None,
    *,
    max_names: int | None = None,
    split_seed: int = SPLIT_SEED,
    dedupe: bool = False,
) -> tuple[list[str], list[str]]:
    """The training and validation names of :func:`load_data`, as words: those of
    ``path`` (``None``: the packaged names), each kept once if ``dedupe``, a subset of
    ``max_names`` of them if given, split 80/20 (subset and split seeded by ``split_seed``).

    Raises:
        ConfigError: as :func:`load_data`.
    """
    check_bool("dedupe", dedupe)
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
        raise ConfigError("split_seed", "an int >= 0", split_seed)
    words = data.load_words(path)
    if dedupe:
        words = list(dict.fromkeys(words))
    if max_names and max_names < len(words):
        g = torch.Generator().manual_seed(split_seed)
        words = [words[i] for i in torch.randperm(len(words), generator=g)[:max_names]]
    if len(words) < 2:
        raise ConfigError("path", "at least 2 names to split 80/20", len(words))
    return data.split(words, 0.8, seed=split_seed)


def train_run(
    key: RunKey,
    spec: ModelSpec,
    sets: Mapping[str, Any],
    *,
    out: str | os.PathLike[str],
    device: torch.device,
    num_samples: int,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    sampling: Sampling | None = None,
    save_epochs: Sequence[int] = (),
) -> tuple[str, dict[str, Any] | None]:
    """Build, train and (on rank 0) measure one run: ``(status, record)``, record ``None``
    on ranks other than 0.

    The checkpoint is ``<out>/checkpoints/<run>.pt`` (``resume=True`` continues from it;
    a finished run is measured again without training), the samples
    ``<out>/samples/<run>.tsv``. ``sets`` is what
    [`load_data`][recurrentkit.study.ablation.load_data] returns.

    Beside the checkpoint, model snapshots (:data:`SNAPSHOT_FORMAT`) are kept: the
    best-validation model, ``<run>.best.pt``, and the model after each epoch of
    ``save_epochs``, ``<run>.e<N>.pt``. The record gets their sample metrics:
    ``best_checkpoint`` (``epoch``, ``val_loss`` and
    [`sample_metrics`][recurrentkit.study.ablation.sample_metrics] of the best epoch's
    model; ``None`` when no snapshot of that epoch exists, e.g. a run trained before
    snapshots were kept) and ``saved_epochs`` (one such entry per epoch of
    ``save_epochs`` that has a snapshot, the last epoch from the final model).
    Snapshots change nothing in training: the run's figures are the same with or
    without them.
    """
    torch.manual_seed(key.seed)
    model = build_model(spec, key.routing, key.protocol).to(device)
    params = count_parameters(model)
    pad_row_init = model.embedding.weight.detach()[data.PAD].cpu().clone()
    xt, yt = sets[key.protocol]["train"]
    config = TrainConfig(
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        optimizer=spec.optimizer,
        weight_decay=spec.weight_decay,
        seed=key.seed,
        checkpoint=Path(out) / "checkpoints" / f"{key.id}.pt",
        progress=progress,
    )
    ckpt_dir = Path(out) / "checkpoints"
    keep = _Snapshots(model, ckpt_dir, key.id, tuple(save_epochs), resume)
    t0 = time.perf_counter()
    result = fit(
        model,
        (xt, yt),
        sets[key.protocol]["val"],
        config,
        resume=resume,
        log=log,
        on_epoch=keep,
    )
    seconds = time.perf_counter() - t0
    if rank() != 0:
        return result.status, None
    record: dict[str, Any] = {
        "run": key.id,
        "model": key.model,
        "routing": key.routing,
        "protocol": key.protocol,
        "seed": key.seed,
        "split_seed": key.split_seed,
        "variant": _variant(sampling, sets["data"]),
        "sampling": (sampling or Sampling()).to_dict(),
        "layers": spec.layers,
        "params": params,
        "epochs": spec.epochs,
        "status": result.status,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "history": result.history,
        "train_seconds": seconds,
    }
    if result.status != "completed":
        return result.status, record
    t1 = time.perf_counter()
    run_sets = {**sets[key.protocol], **sets["names"]}
    measured, samples = evaluate_run(model, key, run_sets, num_samples, pad_row_init, sampling)
    record.update(measured)
    last = len(result.history)
    final = {k: v for k, v in measured.items() if k in _SNAPSHOT_KEYS}

    def snapshot_entry(epoch: int) -> dict[str, Any] | None:
        val = result.history[epoch - 1]["val_loss"] if 0 < epoch <= last else None
        if epoch == last:
            return {"epoch": epoch, "val_loss": val, **final}
        saved = keep.load(epoch)
        if saved is None:
            return None
        return {
            "epoch": epoch,
            "val_loss": val,
            **sample_metrics(saved, key, run_sets, num_samples, sampling)[0],
        }

    record["best_checkpoint"] = snapshot_entry(result.best_epoch)
    record["saved_epochs"] = [
        e for e in (snapshot_entry(n) for n in sorted(set(save_epochs)) if n <= last) if e
    ]
    record["eval_seconds"] = time.perf_counter() - t1
    sample_dir = Path(out) / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    path = sample_dir / f"{key.id}.tsv"
    path.write_text("".join(f"{s.text}\t{int(s.ended)}\n" for s in samples))
    record["samples_file"] = str(path.relative_to(out))
    record["examples"] = [s.text for s in samples[:12]]
    return result.status, record


_SNAPSHOT_KEYS = (
    "runaway_rate", "samples", "runaways", "runaway_upper95", "mean_length", "distinct2",
    "distinct3", "repetition", "loop_rate", "empty_rate", "novelty", "novelty_nonempty",
    "reproduction", "heldout_match", "first_letters", "first_letter_tv", "pad_sampled",
)  # fmt: skip


def _variant(sampling: Sampling | None, data_info: Mapping[str, Any]) -> str:
    """The run's variant label: how it sampled and which data, ``""`` for the defaults
    (the summary keeps variants apart)."""
    parts = [(sampling or Sampling()).label]
    if data_info.get("dedupe"):
        parts.append("deduplicated names")
    return ", ".join(p for p in parts if p)


class _Snapshots:
    """``fit``'s ``on_epoch``: keeps ``<run>.best.pt`` (the best validation loss so far)
    and ``<run>.e<N>.pt`` for the epochs asked for (model weights only)."""

    def __init__(
        self, model: CharLM, folder: Path, run: str, epochs: tuple[int, ...], resume: bool
    ) -> None:
        self.model, self.folder, self.run, self.epochs = model, folder, run, epochs
        self.best = math.inf
        best = self.path("best")
        if resume and best.is_file():  # a resumed run continues the best it had
            self.best = float(load_checkpoint(best)["val_loss"])

    def path(self, tag: str) -> Path:
        return self.folder / f"{self.run}.{tag}.pt"

    def __call__(self, epoch: int, val_loss: float) -> None:
        payload = {
            "format": SNAPSHOT_FORMAT,
            "epoch": epoch,
            "val_loss": val_loss,
            "model": self.model.state_dict(),
        }
        if val_loss < self.best:
            self.best = val_loss
            save_checkpoint(self.path("best"), payload)
        if epoch in self.epochs:
            save_checkpoint(self.path(f"e{epoch}"), payload)

    def load(self, epoch: int) -> CharLM | None:
        """A copy of the model with the weights of ``epoch``'s snapshot (the best one or an
        ``e<N>`` one), or ``None`` if no snapshot of that epoch was kept."""
        for tag in ("best", f"e{epoch}"):
            path = self.path(tag)
            if path.is_file():
                saved = load_checkpoint(path)
                if saved.get("format") == SNAPSHOT_FORMAT and int(saved["epoch"]) == epoch:
                    model = copy.deepcopy(self.model)
                    model.load_state_dict(saved["model"])
                    return model
        return None


# -- reporting (rendering lives in recurrentkit.study.report) -------------------------


def make_report(preset: str) -> StudyReport:
    """The renderer of a preset's ``results.md`` and figures."""
    stream = PRESETS[preset].stream_len is not None
    return StudyReport(
        SPECS,
        PRESETS[preset].description,
        PRESETS[preset].compare,
        unrecorded_description=UNRECORDED_DESCRIPTIONS.get(preset),
        split_seed=SPLIT_SEED,
        analysis_names=STREAM_ANALYSIS_ROWS if stream else ANALYSIS_NAMES,
        far=STREAM_FAR[0] if stream else FAR,
        pad_grad_rows=PAD_GRAD_BATCH,
    )


def write_results(out: str | os.PathLike[str], results: dict[str, Any], start: float) -> None:
    """Update ``results``' wall time and summary, and write ``results.json`` (strict JSON:
    NaN and infinities as ``null``) and ``results.md`` in ``out``, each atomically."""
    out = Path(out)
    results["wall_seconds"] = time.perf_counter() - start
    results["summary"] = summarize_runs(results["runs"])
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(_finite(results), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, out / "results.json")
    make_report(results["preset"]).write_markdown(out / "results.md", results)


def _finite(o: Any) -> Any:
    """``o`` with every NaN/infinite float replaced by ``None`` (strict JSON)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


# -- the run loop ------------------------------------------------------------------------


def rank() -> int:
    """This process's rank in ``torch.distributed``'s process group; 0 without one."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_distributed(device: torch.device) -> int:
    """Start the process group when ``torchrun`` asked for several processes
    (``WORLD_SIZE > 1``) and none is started: ``nccl`` on CUDA (each process on its
    ``device``), ``gloo`` on CPU. Returns the number of processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = torch.distributed
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world


def finish_distributed() -> None:
    """Leave the process group, if one is started, once every process got here."""
    dist = torch.distributed
    if dist.is_initialized():
        # every rank waits for rank 0's report, then all leave together: a rank that
        # tears its gloo connections down while a peer still holds them can abort
        # (SIGABRT from an uncaught gloo IoException; seen twice in about ten test runs)
        dist.barrier()
        dist.destroy_process_group()


def run_study(
    preset: str,
    keys: Sequence[RunKey],
    specs: Mapping[str, ModelSpec],
    sets: Mapping[str, Any],
    *,
    out: str | os.PathLike[str],
    device: torch.device,
    num_samples: int,
    command: str,
    resume: bool = False,
    progress: bool = True,
    sampling: Sampling | None = None,
    save_epochs: Sequence[int] = (),
) -> int:
    """Train and measure every run in turn; write the results after each and the figures
    at the end.

    Each run's record joins ``results.json``'s ``"runs"``, and ``results.json`` and
    ``results.md`` are rewritten (so a stopped study leaves the runs it finished); a run
    that diverges is recorded as such and the study goes on; a Ctrl-C stops the study
    after writing the interrupted run's checkpoint (rerun with ``resume=True`` to
    continue). Under ``torchrun`` (a process group started, e.g. by
    [`init_distributed`][recurrentkit.study.ablation.init_distributed]) every process
    trains and only rank 0 measures, logs and writes. ``LeakWarning`` is silenced while
    it runs: the leak is what the study measures.

    Args:
        preset: the name of the preset (in ``PRESETS``) the runs come from.
        keys: the runs ([`plan_runs`][recurrentkit.study.ablation.plan_runs]).
        specs: model id → its spec as run
            ([`run_specs`][recurrentkit.study.ablation.run_specs]).
        sets: [`load_data`][recurrentkit.study.ablation.load_data]'s data.
        out: the output folder (created on rank 0).
        device: where to train.
        num_samples: samples drawn per run.
        command: the command line, for the report.
        resume: continue each run from its checkpoint in ``out``.
        progress: show progress bars.
        sampling: how samples are drawn (default: step sampler, temperature 1, eval).
        save_epochs: epochs after which a model snapshot is kept and measured
            ([`train_run`][recurrentkit.study.ablation.train_run]).

    Returns:
        The exit status: 0, 1 if a run diverged, 130 if interrupted.
    """
    dist = torch.distributed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    is_root = rank() == 0
    out = Path(out)
    if is_root:
        out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        if is_root:
            print(msg, flush=True)

    start = time.perf_counter()
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command,
        "preset": preset,
        "description": PRESETS[preset].description,
        "device": f"{device.type}"
        + (
            f" ({torch.cuda.get_device_name(device)})"
            if device.type == "cuda"
            else f" ({platform.machine()})"
        ),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "world_size": world,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": sets["data"],
        "num_samples": num_samples,
        "sampling": (sampling or Sampling()).to_dict(),
        "save_epochs": sorted(set(save_epochs)),
        "original": ORIGINAL,
        "runs": [],
        "summary": [],
        "plots": [],
        "memory_plots": [],
        "wall_seconds": 0.0,
    }
    status = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeakWarning)  # the leak is what the study measures
        for i, key in enumerate(keys, start=1):
            log(
                f"[{i}/{len(keys)}] {key.id}: {SPECS[key.model].label}, {key.routing} "
                f"routing, {key.protocol} protocol, {specs[key.model].epochs} epochs on "
                f"{device}"
            )
            try:
                run_status, record = train_run(
                    key,
                    specs[key.model],
                    sets,
                    out=out,
                    device=device,
                    num_samples=num_samples,
                    resume=resume,
                    progress=progress,
                    log=log,
                    sampling=sampling,
                    save_epochs=save_epochs,
                )
            except TrainingDiverged as e:
                log(f"{key.id}: {e}")
                run_status = "diverged"
                record = (
                    {
                        "run": key.id,
                        "model": key.model,
                        "routing": key.routing,
                        "protocol": key.protocol,
                        "seed": key.seed,
                        "split_seed": key.split_seed,
                        "status": "diverged",
                        "error": str(e),
                    }
                    if is_root
                    else None
                )
                status = 1
            if is_root and record is not None:
                results["runs"].append(record)
                if record.get("status") == "completed":
                    log(
                        f"    best val {record['best_val_loss']:.4f} (epoch "
                        f"{record['best_epoch']}), step-wise {record['stepwise_val_loss']:.4f}, "
                        f"runaway {100 * record['runaway_rate']:.1f}%, repetition "
                        f"{100 * record['repetition']:.1f}%, e.g. "
                        f"{', '.join(record['examples'][:5])}"
                    )
                write_results(out, results, start)
            if dist.is_initialized():
                dist.barrier()
            if run_status == "interrupted":
                log(f"stopped: rerun the same command with --resume to continue ({out})")
                status = 130
                break
    if is_root:
        report = make_report(preset)
        results["plots"] = report.plot_losses(out, results["runs"])
        results["memory_plots"] = report.plot_memory(out, results["runs"])
        write_results(out, results, start)
        log(
            f"wrote {out / 'results.md'} and {out / 'results.json'} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    return status


def merge_results(
    paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, command: str = ""
) -> dict[str, Any]:
    """One report from runs made in separate invocations: their records pooled, the
    summary (means, 95% CIs, paired differences) computed over all of them, and
    ``results.json`` and ``results.md`` written to ``out``.

    Records of schema ``/1`` are read as ``report.upgrade_results`` reads them. The
    merged file's ``preset`` is the first file's; ``merged_from`` lists the inputs (as
    given), ``wall_seconds`` is the sum of theirs, and ``num_samples``, ``data`` and the
    header fields come from the first file (a run's own ``num_samples``-based figures
    are its own). The figures are not redrawn (they live beside the inputs).

    Raises:
        ConfigError: fewer than one file, a file that is not a study's results, two
            records of the same run id, or inputs that differ in ``num_samples``.
    """
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Sequence) or not paths:
        raise ConfigError("paths", "one or more results.json files", describe(paths))
    loaded = []
    for path in paths:
        try:
            saved = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(
                "paths", "readable results.json files", f"{str(path)!r} ({e})"
            ) from None
        if not isinstance(saved, dict) or not str(saved.get("schema", "")).startswith(
            "names_memory_ablation/"
        ):
            raise ConfigError("paths", f"results.json files of schema {SCHEMA!r}", repr(str(path)))
        loaded.append(upgrade_results(saved))
    first = loaded[0]
    counts = {r["num_samples"] for r in loaded}
    if len(counts) > 1:
        raise ConfigError(
            "paths", "results drawn with one number of samples per run", sorted(counts)
        )
    runs: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for path, r in zip(paths, loaded):
        for record in r["runs"]:
            rid = f"{record['run']} [{record.get('variant', '')}]"
            if rid in seen:
                raise ConfigError(
                    "paths",
                    "each run in one file only",
                    f"run {record['run']!r} in both {seen[rid]!r} and {str(path)!r}",
                )
            seen[rid] = str(path)
            runs.append(record)
    merged = {
        **{k: v for k, v in first.items() if k not in ("runs", "summary", "plots", "memory_plots")},
        "schema": SCHEMA,
        "command": command or first["command"],
        "merged_from": [str(p) for p in paths],
        "runs": runs,
        "plots": [],
        "memory_plots": [],
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter() - sum(float(r.get("wall_seconds", 0.0)) for r in loaded)
    write_results(out, merged, start)
    return merged
