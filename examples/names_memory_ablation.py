"""Shared vs layer-wise memory in stacked GRUs: the reference study, reproduced and measured.

The original study trained three GRU language models on 32,033 names (GRU-α/β/γ:
1/2/3 layers) with each layer's memory either its own (*independent*) or threaded
through the layers (*shared*), and reported that shared memory makes samples repeat
forever. This script reproduces its models exactly (same cell, parameter counts,
optimisers, sampling) and measures what it never did: step-wise vs teacher-forced
validation loss, runaway rate, diversity, repetition, novelty, and the flaw of its
PAD-start protocol, over several seeds; and, with `recurrentkit.analysis`, how far back
each model reaches (gradient connectivity) and how its accuracy grows with context. The
``backbones`` preset turns the same measurements on GRU, LSTM and Nested LSTM stacks of
matched size (Madsen's "Visualizing memorization in RNNs" comparison, on the names).

Run ``python examples/names_memory_ablation.py --help`` for the options, e.g.::

    python examples/names_memory_ablation.py --preset quick --out runs/quick
    python examples/names_memory_ablation.py --preset seed --dry-run
    python examples/names_memory_ablation.py --preset backbones --out runs/backbones
    torchrun --nproc_per_node 2 examples/names_memory_ablation.py --preset tiny --out runs/t

Outputs in ``--out``:

- ``results.json`` — ``{"schema": "names_memory_ablation/1", "command", "preset", "device",
  "wall_seconds", "original", "runs": [...], "summary": [...]}``. Each run holds
  ``run`` (its id), ``model``, ``routing``, ``protocol``, ``seed``, ``layers``, ``params``,
  ``epochs``, ``status``, ``best_epoch``, ``best_val_loss``, ``final_val_loss``
  (teacher-forced, last epoch), ``stepwise_val_loss`` (last epoch, fed one token at a
  time), ``leak_gap`` (step-wise minus teacher-forced), ``runaway_rate``,
  ``mean_length``, ``distinct2``, ``distinct3``, ``repetition``, ``novelty``,
  ``reproduction`` (share equal to a training name), ``heldout_match`` (share equal to
  a validation name absent from training), ``first_letter_tv`` (total variation
  between the samples' and the training names' first letters), ``pad_sampled`` (samples
  in which ``<PAD>`` was drawn), ``pad_grad_norm`` (norm of the loss gradient on the
  PAD embedding row), ``pad_embedding_drift`` (how far training moved that row),
  ``history`` (per-epoch ``train_loss``/``val_loss``/``seconds``), ``train_seconds``,
  ``eval_seconds``, ``examples`` (the first samples) and ``samples_file``; and what the
  model remembers (`recurrentkit.analysis.analyse_run`, eval mode): ``far_share`` (mean
  share of gradient connectivity at distance t - s >= 3, over 256 seeded validation
  names), ``future_share`` (share on *later* inputs: 0 for a causal policy, the leak
  under ``handoff``), ``top1_accuracy``/``top2_accuracy``/``top3_accuracy`` (next-character
  accuracy over every validation name) and ``analysis`` =
  ``RunAnalysis.to_dict()``: ``names``, ``subset_seed``, ``reduce``, ``context_names``,
  ``decay`` (``curve`` by distance, ``counts``, ``far``, ``far_share``, ``future_share``,
  ``rows``), ``context_accuracy`` (``positions`` = characters seen, ``counts``,
  ``top1``/``top2``/``top3`` by position, ``overall_top1``...), ``example`` (``index``,
  ``inputs``, ``outputs``, ``connectivity`` [t][s] of one fixed validation name) and
  ``seconds``. Each ``summary`` entry groups the seeds of one (model, routing, protocol):
  ``n_seeds`` and, per metric,
  ``{"mean": m, "ci95": half_width or null}`` (Student's t; null with one seed).
- ``results.md`` — the tables (with mean ± 95% CI over seeds) and a conclusion
  written from the numbers, rendered from the run records by
  `recurrentkit.study.report` (``StudyReport``; the ``backbones`` preset gets its own
  layout: one table of the cells' size, losses, reach and accuracy, no original reference).
- ``samples/<run>.tsv`` — every sample (``text<TAB>ended``), ``loss_<model>_<protocol>.png``
  — loss curves, ``connectivity_<group>.png`` / ``decay_<group>.png`` /
  ``context_<group>.png`` — heatmaps of one name, decay curves and accuracy by context
  comparing the runs of a group (the policies of one model, or for ``backbones`` the
  cells), ``checkpoints/<run>.pt`` — resumable checkpoints.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import torch

import recurrentkit as rk
from recurrentkit.analysis import analyse_run
from recurrentkit.errors import RecurrentKitError
from recurrentkit.routing import LeakWarning
from recurrentkit.study import data, metrics
from recurrentkit.study.cells import StudyGRUCell
from recurrentkit.study.lm import CharLM, count_parameters
from recurrentkit.study.report import StudyReport, summarize_runs
from recurrentkit.study.sample import Sample, generate, stepwise_loss, teacher_forced_loss
from recurrentkit.study.train import TrainConfig, TrainingDiverged, fit

PROG = "names_memory_ablation.py"
ROUTINGS = ("independent", "shared", "handoff", "residual", "cross_layer")
MAX_LEN = 16
SPLIT_SEED = 0
PAD_GRAD_BATCH = 2048
ANALYSIS_NAMES = 256  # validation names whose gradient connectivity is measured per run
FAR = 3  # far_share counts connectivity at distance t - s >= FAR


@dataclass(frozen=True)
class ModelSpec:
    """One of the original's models (or a backbone of the comparison), with its training
    settings. ``cell``: ``study_gru`` (the original's cell, dropout on the carried state),
    or a library cell (``gru``, ``lstm``, ``nested_lstm`` of depth 2; dropout between
    layers)."""

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
    # The backbones (not in the original): 2 layers each, hidden sizes chosen so the
    # parameter counts match within 0.5% (136,211-136,861 under the fixed protocol).
    "gru": ModelSpec("gru", "GRU", 2, 64, 110, 0.0, False, "adam", 1e-3, 0.0, 8, cell="gru"),
    "lstm": ModelSpec("lstm", "LSTM", 2, 64, 94, 0.0, False, "adam", 1e-3, 0.0, 8, cell="lstm"),
    "nlstm": ModelSpec("nlstm", "Nested LSTM (depth 2)", 2, 64, 64, 0.0, False, "adam", 1e-3,
                       0.0, 8, cell="nested_lstm"),
}  # fmt: skip
BACKBONES = ("gru", "lstm", "nlstm")
LIBRARY_CELLS: dict[str, Any] = {
    "gru": rk.GRUCell,
    "lstm": rk.LSTMCell,
    "nested_lstm": lambda i, h: rk.NestedLSTMCell(i, h, depth=2),
}
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
    (``"routing"``: the policies of each model; ``"model"``: the models under each policy)."""

    description: str
    groups: tuple[Group, ...]
    seeds: tuple[int, ...] = (0,)
    epochs: dict[str, int] | None = None
    num_samples: int = 1000
    max_names: int | None = None
    compare: str = "routing"


SEED_ROUTINGS = ("independent", "shared", "handoff")
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
        "GRU, LSTM and Nested LSTM (depth 2), 2 layers stacked independently, about 136k "
        "parameters each (matched within 0.5%), fixed protocol, 8 epochs, seed 0: the "
        "memorization comparison of Madsen (Distill 2019) on the names, about 5 minutes of "
        "CPU time; routing is independent only",
        tuple(Group(m, ("independent",), ("fixed",)) for m in BACKBONES),
        compare="model",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class RunKey:
    model: str
    routing: str
    protocol: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.model}-{self.routing}-{self.protocol}-s{self.seed}"


# -- building ----------------------------------------------------------------------------


def build_model(spec: ModelSpec, routing: str, protocol: str = "seed") -> CharLM:
    """The original's model: embedding → stacked ``StudyGRUCell``\\s → (LayerNorm) → head
    (a backbone spec stacks its library cell instead, with dropout between layers)."""
    sizes = [(spec.embed if k == 0 else spec.hidden, spec.hidden) for k in range(spec.layers)]
    if spec.cell == "study_gru":
        cells = [StudyGRUCell(i, h, spec.dropout) for i, h in sizes]
        stack = rk.Stack(cells, routing, batch_first=True)
    else:
        cells = [LIBRARY_CELLS[spec.cell](i, h) for i, h in sizes]
        stack = rk.Stack(cells, routing, dropout=spec.dropout, batch_first=True)
    return CharLM(stack, data.vocab_size(protocol), spec.embed, layer_norm=spec.layer_norm)


def plan_runs(
    preset: Preset,
    models: Sequence[str] | None = None,
    routings: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[RunKey]:
    """The runs of a preset, or of the grid its overrides describe.

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
                    out.append(RunKey(g.model, r, p, s))
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


def evaluate_run(
    model: CharLM,
    key: RunKey,
    sets: dict[str, Any],
    num_samples: int,
    pad_row_init: torch.Tensor,
) -> tuple[dict[str, Any], list[Sample]]:
    """Every measurement of a trained model (losses, samples, metrics, the PAD flaw, what
    it remembers)."""
    xv, yv = sets["val"]
    xt, yt = sets["train"]
    tf = teacher_forced_loss(model, xv, yv)
    sw = stepwise_loss(model, xv, yv)
    fixed = key.protocol == "fixed"
    samples = generate(
        model,
        num_samples,
        start_token=data.START if fixed else data.PAD,
        forbid=(data.PAD, data.START) if fixed else (),
        max_steps=20,
        seed=key.seed,
    )
    texts = [s.text for s in samples]
    train_names = sets["train_names"]
    heldout = sets["heldout_names"]
    first_data = sets["first_letters"]
    pad_row = model.embedding.weight.detach()[data.PAD].cpu()
    memory = analyse_run(
        model,
        xv,
        yv,
        first_position=0 if fixed else 1,
        names=ANALYSIS_NAMES,
        seed=SPLIT_SEED,
        far=FAR,
        vocab=data.itos,
    )
    return {
        "final_val_loss": tf,
        "stepwise_val_loss": sw,
        "leak_gap": sw - tf,
        "runaway_rate": metrics.runaway_rate([s.ended for s in samples]),
        "mean_length": metrics.mean_length(texts),
        "distinct2": metrics.distinct_n(texts, 2),
        "distinct3": metrics.distinct_n(texts, 3),
        "repetition": metrics.repetition_rate(texts),
        "novelty": metrics.novelty(texts, train_names),
        "reproduction": metrics.reproduction_rate(texts, train_names),
        "heldout_match": sum(t in heldout for t in texts) / len(texts),
        "first_letter_tv": metrics.total_variation(
            metrics.first_letter_distribution(texts), first_data
        ),
        "pad_sampled": sum(1 for s in samples if s.pad_count > 0),
        "pad_grad_norm": pad_gradient_norm(model, xt[:PAD_GRAD_BATCH], yt[:PAD_GRAD_BATCH]),
        "pad_embedding_drift": float((pad_row - pad_row_init).norm()),
        **memory.summary(),
        "analysis": memory.to_dict(),
    }, samples


def train_run(
    key: RunKey,
    spec: ModelSpec,
    sets: dict[str, Any],
    args: argparse.Namespace,
    device: torch.device,
    num_samples: int,
    log: Any,
) -> tuple[str, dict[str, Any] | None]:
    """Build, train and (on rank 0) measure one run: ``(status, record)``, record ``None``
    on ranks other than 0."""
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
        checkpoint=Path(args.out) / "checkpoints" / f"{key.id}.pt",
        progress=not args.no_progress,
    )
    t0 = time.perf_counter()
    result = fit(model, (xt, yt), sets[key.protocol]["val"], config, resume=args.resume, log=log)
    seconds = time.perf_counter() - t0
    if _rank() != 0:
        return result.status, None
    record: dict[str, Any] = {
        "run": key.id,
        "model": key.model,
        "routing": key.routing,
        "protocol": key.protocol,
        "seed": key.seed,
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
    measured, samples = evaluate_run(
        model, key, {**sets[key.protocol], **sets["names"]}, num_samples, pad_row_init
    )
    record.update(measured)
    record["eval_seconds"] = time.perf_counter() - t1
    sample_dir = Path(args.out) / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    path = sample_dir / f"{key.id}.tsv"
    path.write_text("".join(f"{s.text}\t{int(s.ended)}\n" for s in samples))
    record["samples_file"] = str(path.relative_to(args.out))
    record["examples"] = [s.text for s in samples[:12]]
    return result.status, record


# -- reporting (rendering lives in recurrentkit.study.report) -------------------------


def make_report(preset: str) -> StudyReport:
    """The renderer of a preset's ``results.md`` and figures."""
    return StudyReport(
        SPECS,
        PRESETS[preset].description,
        PRESETS[preset].compare,
        split_seed=SPLIT_SEED,
        analysis_names=ANALYSIS_NAMES,
        far=FAR,
        pad_grad_rows=PAD_GRAD_BATCH,
    )


# -- the command line --------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def _list_of(kind: str, choices: Sequence[str], aliases: dict[str, str] | None = None) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        items = [(aliases or {}).get(t, t) for t in items]
        bad = [t for t in items if t not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {', '.join(map(repr, bad)) or '(empty)'}; choose a comma-"
                f"separated list of {', '.join(choices)}"
            )
        return tuple(dict.fromkeys(items))

    return parse


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1,2, got {text!r}"
        ) from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"expected integers >= 0 such as 0,1,2, got {text!r}")
    return tuple(dict.fromkeys(seeds))


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def make_parser() -> argparse.ArgumentParser:
    presets = "\n".join(f"  {k}: {p.description}" for k, p in PRESETS.items())
    models = "\n".join(
        f"  {s.name}: {s.label}, {s.layers} layer(s), E {s.embed}, H {s.hidden}, dropout "
        f"{s.dropout}, {s.optimizer} lr {s.lr:g}, {s.epochs} epochs"
        for s in SPECS.values()
    )
    p = _Parser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Reproduce 'shared vs layer-wise memory in stacked GRUs' and measure it: "
            "train character-level name models under several state-routing policies, "
            "then report validation loss (teacher-forced and step-wise), runaway rate, "
            "diversity, repetition, novelty and the PAD-start protocol's flaw."
        ),
        epilog=(
            f"presets:\n{presets}\n\nmodels:\n{models}\n\n"
            "routing policies (recurrentkit.routing):\n"
            "  independent  one memory per layer (nn.GRU's stacking)\n"
            "  shared       each layer starts from the state the layer below just wrote "
            "(the original's\n               snippet read as a step loop; causal)\n"
            "  handoff      each layer starts from the *final* state of the layer below "
            "(leaks the future\n               under teacher forcing)\n"
            "  residual     independent + residual connections\n"
            "  cross_layer  gated feedback between layers (Chung et al. 2015)\n\n"
            "protocols:\n"
            "  seed   the original's: x = name, y = name[1:] + '.', sampling starts from <PAD>\n"
            "  fixed  a start token: x = <S> + name, y = name + '.', sampling starts from <S>\n\n"
            "Scale out with: torchrun --nproc_per_node N examples/names_memory_ablation.py ...\n"
            "Stop with Ctrl-C (a checkpoint is written); continue with --resume."
        ),
    )
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="quick",
        help="which plan of runs (default: quick)",
    )
    p.add_argument(
        "--models",
        type=_list_of("model", tuple(SPECS), ALIASES),
        help="comma-separated models, e.g. alpha,beta (overrides the preset)",
    )
    p.add_argument(
        "--routing",
        type=_list_of("routing policy", ROUTINGS),
        help="comma-separated routing policies (overrides the preset)",
    )
    p.add_argument(
        "--protocol",
        type=_list_of("protocol", data.PROTOCOLS),
        help="seed, fixed or seed,fixed (overrides the preset)",
    )
    p.add_argument("--seeds", type=_seeds, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--epochs", type=_positive, help="epochs for every model (overrides)")
    p.add_argument("--samples", type=_positive, help="samples per run (default 1000)")
    p.add_argument(
        "--max-names", type=_positive, help="use a seeded random subset of this many names"
    )
    p.add_argument(
        "--data", type=Path, help="a newline-separated word list (a-z); default: the packaged names"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/names_memory_ablation"),
        help="output folder (default: runs/names_memory_ablation)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: cuda when available, else cpu",
    )
    p.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="torch CPU threads per process (default 1: robust when cores are shared, where "
        "extra threads can make training several times slower; on an idle machine 2 threads "
        "train β about 1.4x and γ about 2x faster)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue runs from their checkpoints in --out"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="build every model and print one JSON line per run; no training",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


class UsageError(Exception):
    """A bad argument found after parsing (one line, no traceback)."""


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _device(choice: str) -> torch.device:
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu or auto")
    use_cuda = cuda and choice in ("auto", "cuda")
    if use_cuda and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device("cuda" if use_cuda else "cpu")


def _load_sets(args: argparse.Namespace, protocols: Sequence[str]) -> dict[str, Any]:
    try:
        words = data.load_words(args.data)
    except RecurrentKitError as e:
        raise UsageError(f"--data: expected {e.expected}, got {e.got}") from None
    source = str(args.data) if args.data else "packaged names.txt"
    if args.max_names and args.max_names < len(words):
        g = torch.Generator().manual_seed(SPLIT_SEED)
        words = [words[i] for i in torch.randperm(len(words), generator=g)[: args.max_names]]
    if len(words) < 2:
        raise UsageError(f"--data: expected at least 2 names to split 80/20, got {len(words)}")
    train, val = data.split(words, 0.8, seed=SPLIT_SEED)
    sets: dict[str, Any] = {"data": {"source": source, "train": len(train), "val": len(val)}}
    for p in protocols:
        try:
            sets[p] = {"train": data.encode(train, p, MAX_LEN), "val": data.encode(val, p, MAX_LEN)}
        except RecurrentKitError as e:
            raise UsageError(f"--data: {e.got} — expected {e.expected}") from None
    train_set = set(train)
    sets["names"] = {
        "train_names": train_set,
        "heldout_names": set(val) - train_set,
        "first_letters": metrics.first_letter_distribution(train),
    }
    return sets


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    preset = PRESETS[args.preset]
    if preset.compare == "model" and args.routing and args.routing != ("independent",):
        raise UsageError(
            f"--routing {','.join(args.routing)}: the {args.preset} preset compares cells "
            "under independent routing only (their parameter counts are matched for it); "
            "drop --routing, or pick the models with --models under another preset"
        )
    keys = plan_runs(preset, args.models, args.routing, args.protocol, args.seeds)
    if not keys:
        raise UsageError("the options select no runs; check --models/--routing/--protocol")
    specs = {
        m: replace(
            SPECS[m],
            epochs=args.epochs or (preset.epochs or {}).get(m, SPECS[m].epochs),
        )
        for m in dict.fromkeys(k.model for k in keys)
    }
    if args.dry_run:
        for k in keys:
            model = build_model(specs[k.model], k.routing, k.protocol)
            print(
                json.dumps(
                    {
                        "model": k.model,
                        "routing": k.routing,
                        "protocol": k.protocol,
                        "seed": k.seed,
                        "params": count_parameters(model),
                        "epochs": specs[k.model].epochs,
                    }
                )
            )
        return 0
    torch.set_num_threads(args.threads)
    device = _device(args.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = torch.distributed
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = _rank()
    args.max_names = args.max_names or preset.max_names
    num_samples = args.samples or preset.num_samples
    sets = _load_sets(args, tuple(dict.fromkeys(k.protocol for k in keys)))
    out: Path = args.out
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        if rank == 0:
            print(msg, flush=True)

    warnings.simplefilter("ignore", LeakWarning)  # the leak is what the study measures
    start = time.perf_counter()
    results: dict[str, Any] = {
        "schema": "names_memory_ablation/1",
        "command": " ".join(shlex.quote(a) for a in ["python", f"examples/{PROG}", *argv]),
        "preset": args.preset,
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
        "original": ORIGINAL,
        "runs": [],
        "summary": [],
        "plots": [],
        "memory_plots": [],
        "wall_seconds": 0.0,
    }
    status = 0
    for i, key in enumerate(keys, start=1):
        log(
            f"[{i}/{len(keys)}] {key.id}: {SPECS[key.model].label}, {key.routing} routing, "
            f"{key.protocol} protocol, {specs[key.model].epochs} epochs on {device}"
        )
        try:
            run_status, record = train_run(
                key, specs[key.model], sets, args, device, num_samples, log
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
                    "status": "diverged",
                    "error": str(e),
                }
                if rank == 0
                else None
            )
            status = 1
        if rank == 0 and record is not None:
            results["runs"].append(record)
            if record.get("status") == "completed":
                log(
                    f"    best val {record['best_val_loss']:.4f} (epoch {record['best_epoch']}), "
                    f"step-wise {record['stepwise_val_loss']:.4f}, runaway "
                    f"{100 * record['runaway_rate']:.1f}%, repetition "
                    f"{100 * record['repetition']:.1f}%, e.g. {', '.join(record['examples'][:5])}"
                )
            _write_all(out, results, start)
        if dist.is_initialized():
            dist.barrier()
        if run_status == "interrupted":
            log(f"stopped: rerun the same command with --resume to continue ({out})")
            status = 130
            break
    if rank == 0:
        report = make_report(args.preset)
        results["plots"] = report.plot_losses(out, results["runs"])
        results["memory_plots"] = report.plot_memory(out, results["runs"])
        _write_all(out, results, start)
        log(
            f"wrote {out / 'results.md'} and {out / 'results.json'} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    if dist.is_initialized():
        # every rank waits for rank 0's report, then all leave together: a rank that
        # tears its gloo connections down while a peer still holds them can abort
        # (SIGABRT from an uncaught gloo IoException; seen twice in about ten test runs)
        dist.barrier()
        dist.destroy_process_group()
    return status


def _write_all(out: Path, results: dict[str, Any], start: float) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run; returns the exit status (0 ok, 1 a run diverged, 2 bad input,
    130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(argv)
    try:
        return run(args, argv)
    except (UsageError, RecurrentKitError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(
            f"{PROG}: error: {e.strerror or e}: {e.filename or ''} (check --out and --data)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
