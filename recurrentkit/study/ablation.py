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
from recurrentkit.analysis import analyse_run
from recurrentkit.errors import ConfigError
from recurrentkit.routing import LeakWarning
from recurrentkit.study import data, metrics
from recurrentkit.study.cells import StudyGRUCell
from recurrentkit.study.lm import CharLM, count_parameters
from recurrentkit.study.report import StudyReport, summarize_runs
from recurrentkit.study.sample import Sample, generate, stepwise_loss, teacher_forced_loss
from recurrentkit.study.train import TrainConfig, TrainingDiverged, fit

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
    "SCHEMA",
    "SEED_ROUTINGS",
    "SPECS",
    "SPLIT_SEED",
    "Group",
    "ModelSpec",
    "Preset",
    "RunKey",
    "build_model",
    "evaluate_run",
    "finish_distributed",
    "init_distributed",
    "load_data",
    "make_report",
    "pad_gradient_norm",
    "plan_runs",
    "rank",
    "run_specs",
    "run_study",
    "split_words",
    "train_run",
    "write_results",
]

SCHEMA = "names_memory_ablation/1"
"""The ``"schema"`` of the ``results.json`` a study writes."""

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
"""Model id → spec: the original's ``alpha``/``beta``/``gamma`` (GRU-α/β/γ), the smoke-test
``tiny``, and the matched-size backbones ``gru``/``lstm``/``nlstm``."""
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
"""Preset name → plan of runs: ``quick``, ``seed``, ``full``, ``tiny``, ``backbones``."""


@dataclass(frozen=True)
class RunKey:
    """One run: model id, routing policy, protocol and seed; ``id`` names its files."""

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


def run_specs(
    preset: Preset, keys: Sequence[RunKey], epochs: int | None = None
) -> dict[str, ModelSpec]:
    """The spec of every model the runs use, with the training length they run for:
    ``epochs`` if given, else the preset's for that model, else the spec's own."""
    return {
        m: replace(
            SPECS[m],
            epochs=epochs or (preset.epochs or {}).get(m, SPECS[m].epochs),
        )
        for m in dict.fromkeys(k.model for k in keys)
    }


def load_data(
    path: str | os.PathLike[str] | None = None,
    protocols: Sequence[str] = data.PROTOCOLS,
    *,
    max_names: int | None = None,
) -> dict[str, Any]:
    """The names a study trains and measures on, split and encoded.

    The words of ``path`` (``None``: the packaged names), a subset of ``max_names`` of
    them (seeded by ``SPLIT_SEED``) if given, split 80/20 (seeded by ``SPLIT_SEED``) and
    encoded to ``MAX_LEN`` under each protocol.

    Returns:
        ``{"data": {"source", "train", "val"}, <protocol>: {"train": (x, y), "val": (x,
        y)}, ..., "names": {"train_names", "heldout_names", "first_letters"}}``.

    Raises:
        ConfigError: a file :func:`~recurrentkit.study.data.load_words` refuses, or with
            fewer than 2 names (argument ``path``); a name too long for ``MAX_LEN``
            (argument ``words[i]``, from :func:`~recurrentkit.study.data.encode`).
    """
    train, val = split_words(path, max_names=max_names)
    source = str(path) if path else "packaged names.txt"
    sets: dict[str, Any] = {"data": {"source": source, "train": len(train), "val": len(val)}}
    for p in protocols:
        sets[p] = {"train": data.encode(train, p, MAX_LEN), "val": data.encode(val, p, MAX_LEN)}
    train_set = set(train)
    sets["names"] = {
        "train_names": train_set,
        "heldout_names": set(val) - train_set,
        "first_letters": metrics.first_letter_distribution(train),
    }
    return sets


def split_words(
    path: str | os.PathLike[str] | None = None, *, max_names: int | None = None
) -> tuple[list[str], list[str]]:
    """The training and validation names of :func:`load_data`, as words: those of
    ``path`` (``None``: the packaged names), a subset of ``max_names`` of them (seeded by
    ``SPLIT_SEED``) if given, split 80/20 (seeded by ``SPLIT_SEED``).

    Raises:
        ConfigError: as :func:`load_data`.
    """
    words = data.load_words(path)
    if max_names and max_names < len(words):
        g = torch.Generator().manual_seed(SPLIT_SEED)
        words = [words[i] for i in torch.randperm(len(words), generator=g)[:max_names]]
    if len(words) < 2:
        raise ConfigError("path", "at least 2 names to split 80/20", len(words))
    return data.split(words, 0.8, seed=SPLIT_SEED)


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
) -> tuple[str, dict[str, Any] | None]:
    """Build, train and (on rank 0) measure one run: ``(status, record)``, record ``None``
    on ranks other than 0.

    The checkpoint is ``<out>/checkpoints/<run>.pt`` (``resume=True`` continues from it),
    the samples ``<out>/samples/<run>.tsv``. ``sets`` is what
    [`load_data`][recurrentkit.study.ablation.load_data] returns.
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
    t0 = time.perf_counter()
    result = fit(model, (xt, yt), sets[key.protocol]["val"], config, resume=resume, log=log)
    seconds = time.perf_counter() - t0
    if rank() != 0:
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
    sample_dir = Path(out) / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    path = sample_dir / f"{key.id}.tsv"
    path.write_text("".join(f"{s.text}\t{int(s.ended)}\n" for s in samples))
    record["samples_file"] = str(path.relative_to(out))
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
