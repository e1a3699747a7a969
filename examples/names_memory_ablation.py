"""Shared vs layer-wise memory in stacked GRUs: the reference study, reproduced and measured.

The original study trained three GRU language models on 32,033 names (GRU-α/β/γ:
1/2/3 layers) with each layer's memory either its own (*independent*) or threaded
through the layers (*shared*), and reported that shared memory makes samples repeat
forever. This script reproduces its models exactly (same cell, parameter counts,
optimisers, sampling) and measures what it never did: step-wise vs teacher-forced
validation loss, runaway rate, diversity, repetition, novelty, and the flaw of its
PAD-start protocol, over several seeds; and, with `recurrentkit.analysis`, how far back
each model reaches (gradient connectivity) and how its accuracy grows with context. The
``backbones`` preset turns the same measurements on every cell of the library (GRU, LSTM,
Nested LSTM, MGU, CIFG LSTM, IndRNN, layer-normalised GRU and LSTM, minGRU, minLSTM, LRU),
2-layer stacks within 1% of the GRU's parameter count (Madsen's "Visualizing memorization
in RNNs" comparison, on the names, extended);
the ``long`` preset trains GRU, LSTM and the linear-recurrence backbones (minGRU, minLSTM,
LRU) on the names laid end to end in streams of 256 tokens and measures how far back
each reaches (connectivity shares at distance >= 16 and >= 64).

This script is the study's command line; what it runs (models, presets, the run loop,
the results files) is package code, `recurrentkit.study.ablation`. Run
``python examples/names_memory_ablation.py --help`` for the options, e.g.::

    python examples/names_memory_ablation.py --preset quick --out runs/quick
    python examples/names_memory_ablation.py --preset seed --dry-run
    python examples/names_memory_ablation.py --preset backbones --out runs/backbones
    python examples/names_memory_ablation.py --preset long --out runs/long
    torchrun --nproc_per_node 2 examples/names_memory_ablation.py --preset tiny --out runs/t

Outputs in ``--out``:

- ``results.json`` — ``{"schema": "names_memory_ablation/2", "command", "preset", "device",
  "wall_seconds", "original", "sampling", "save_epochs", "runs": [...], "summary":
  [...]}`` (``merged_from`` too when written by ``--merge``). Each run holds
  ``run`` (its id), ``model``, ``routing``, ``protocol``, ``seed``, ``split_seed``,
  ``variant`` (how it sampled and which data, ``""`` by default), ``sampling``,
  ``layers``, ``params``, ``epochs``, ``status``, ``best_epoch``, ``best_val_loss``,
  ``final_val_loss`` (teacher-forced, last epoch), ``stepwise_val_loss`` (last epoch, fed
  one token at a time with the state carried as the step sampler carries it: a ``<PAD>``
  step first under the seed protocol), ``stepwise_val_loss_zero`` (the same from the zero
  state at the first letter), ``leak_gap`` (``stepwise_val_loss_zero`` minus
  teacher-forced), ``runaway_rate``, ``runaways``, ``samples``, ``runaway_upper95``
  (one-sided 95% Clopper–Pearson bound), ``mean_length``, ``distinct2``, ``distinct3``,
  ``repetition``, ``loop_rate`` (some substring of 2+ letters 3+ times, non-overlapping),
  ``empty_rate``, ``novelty``, ``novelty_nonempty``, ``reproduction`` (share equal to a
  training name), ``heldout_match`` (share equal to a validation name absent from
  training), ``first_letters`` and ``first_letter_tv`` (total variation between the
  samples' and the training names' first letters), ``pad_sampled`` (samples in which
  ``<PAD>`` was drawn), ``best_checkpoint`` and ``saved_epochs`` (the sample metrics of
  the best-validation model and of each ``--save-epochs`` snapshot, with ``epoch`` and
  ``val_loss``), ``pad_grad_norm`` (norm of the loss gradient on the
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
  ``seconds``. Under the ``long`` preset (streams): losses and accuracy are over the
  validation stream rows, connectivity over 64 seeded rows of 256 tokens, ``far_share``
  counts from d >= 16, and ``reach`` = ``{"16": share at d >= 16, "64": share at d >= 64}``.
  Each ``summary`` entry groups the seeds of one (model, routing, protocol):
  ``n_seeds`` and, per metric,
  ``{"mean": m, "ci95": half_width or null}`` (Student's t; null with one seed), with
  ``runaway_pooled`` (runaways, samples and upper bound over the seeds) and
  ``vs_independent`` (per metric, the difference from ``independent`` paired by seed:
  ``{"mean", "ci95", "n"}``).
- ``results.md`` — the tables (with mean ± 95% CI over seeds) and a conclusion
  written from the numbers, rendered from the run records by
  `recurrentkit.study.report` (``StudyReport``; the ``backbones`` preset gets its own
  layout: one table of the cells' size, losses, reach and accuracy, no original reference).
- ``samples/<run>.tsv`` — every sample (``text<TAB>ended``), ``loss_<model>_<protocol>.png``
  — loss curves, ``connectivity_<group>.png`` / ``decay_<group>.png`` /
  ``context_<group>.png`` — heatmaps of one name, decay curves and accuracy by context
  comparing the runs of a group (the policies of one model, or for ``backbones`` the
  cells), ``checkpoints/<run>.pt`` — resumable checkpoints, with the model snapshots
  ``checkpoints/<run>.best.pt`` (best validation loss) and ``<run>.e<N>.pt``
  (``--save-epochs``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from recurrentkit.errors import RecurrentKitError
from recurrentkit.study import data
from recurrentkit.study.ablation import (
    ALIASES,
    PRESETS,
    ROUTING_CHOICES,
    SPECS,
    Sampling,
    build_model,
    finish_distributed,
    init_distributed,
    load_data,
    merge_results,
    plan_runs,
    run_specs,
    run_study,
)
from recurrentkit.study.ablation import make_report as make_report  # renders a saved results.json
from recurrentkit.study.lm import count_parameters

PROG = "names_memory_ablation.py"


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


def _epochs_list(text: str) -> tuple[int, ...]:
    try:
        epochs = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated epochs such as 5,10,20,40, got {text!r}"
        ) from None
    if not epochs or any(e < 1 for e in epochs):
        raise argparse.ArgumentTypeError(f"expected epochs >= 1 such as 5,10,20,40, got {text!r}")
    return tuple(sorted(set(epochs)))


def _temperature(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return v


def _at_least(minimum: int, what: str) -> Any:
    """An argparse type: an integer ``>= minimum``, described as ``what`` in errors."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = minimum - 1
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


_positive = _at_least(1, "a positive integer")
_non_negative = _at_least(0, "an integer >= 0")


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
            "  cross_layer  gated feedback between layers (Chung et al. 2015)\n"
            '  shared_last  Shared(carry="last"): one memory threaded through every layer, '
            "the top\n               layer's write carried to the next step (not in any "
            "preset)\n\n"
            "sampling (every run's samples; the default is the original's):\n"
            "  --sampler step     carry the state one token at a time (the original's T = 1 "
            "sampler)\n"
            "  --sampler prefix   re-run the whole prefix from zeros each step (makemore "
            "style)\n"
            "  --temperature T, --greedy (argmax), --sample-mode train (dropout on)\n\n"
            "one report from separate invocations (CIs over all their runs):\n"
            "  --merge runs/a/results.json runs/b/results.json --out runs/merged\n\n"
            "protocols:\n"
            "  seed   the original's: x = name, y = name[1:] + '.', sampling starts from <PAD>\n"
            "  fixed  a start token: x = <S> + name, y = name + '.', sampling starts from <S>\n"
            "  (the long preset: fixed-protocol names laid end to end in rows of 256 tokens,\n"
            "  the state carried from name to name; its samples start from <S>, zero state)\n\n"
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
        type=_list_of("routing policy", ROUTING_CHOICES),
        help="comma-separated routing policies (overrides the preset): "
        + ", ".join(ROUTING_CHOICES),
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
        "--split-seed",
        type=_non_negative,
        default=0,
        help="seed of the 80/20 train/validation split (and of --max-names' subset); "
        "default 0, the split every committed run used",
    )
    p.add_argument(
        "--dedupe",
        action="store_true",
        help="drop repeated names before splitting (29,494 unique of the 32,033 packaged "
        "names), so no validation name is also a training name",
    )
    p.add_argument(
        "--sampler",
        choices=("step", "prefix"),
        default="step",
        help="step: carry the state one token at a time (default, the original's sampler); "
        "prefix: re-run the whole prefix from the zero state at every step (makemore style)",
    )
    p.add_argument(
        "--temperature", type=_temperature, default=1.0, help="sampling temperature (default 1)"
    )
    p.add_argument(
        "--greedy", action="store_true", help="greedy decoding: the most likely token each step"
    )
    p.add_argument(
        "--sample-mode",
        choices=("eval", "train"),
        default="eval",
        help="sample in eval mode (default) or train mode (dropout on)",
    )
    p.add_argument(
        "--save-epochs",
        type=_epochs_list,
        default=(),
        help="comma-separated epochs, e.g. 5,10,20,40: keep a model snapshot after each and "
        "report its sample metrics (runaway rate and bound, mean length, loops, first letters)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="RESULTS_JSON",
        help="merge the results.json of separate invocations into one report in --out "
        "(means, 95%% CIs and paired differences over all their runs); no training",
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


def _device(choice: str) -> torch.device:
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu or auto")
    use_cuda = cuda and choice in ("auto", "cuda")
    if use_cuda and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device("cuda" if use_cuda else "cpu")


def _load_sets(args: argparse.Namespace, protocols: Sequence[str]) -> dict[str, Any]:
    """The data (``load_data``), its errors told as one line about ``--data``."""
    try:
        return load_data(
            args.data,
            protocols,
            max_names=args.max_names,
            split_seed=args.split_seed,
            dedupe=args.dedupe,
            stream_len=PRESETS[args.preset].stream_len,
        )
    except RecurrentKitError as e:
        if e.argument == "path":  # the file, or too few names in it
            raise UsageError(f"--data: expected {e.expected}, got {e.got}") from None
        raise UsageError(f"--data: {e.got} — expected {e.expected}") from None  # a name


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    command = " ".join(shlex.quote(a) for a in ["python", f"examples/{PROG}", *argv])
    if args.merge:
        merged = merge_results(args.merge, args.out, command=command)
        print(
            f"merged {len(merged['runs'])} runs from {len(args.merge)} files into "
            f"{args.out / 'results.md'} and {args.out / 'results.json'}"
        )
        return 0
    preset = PRESETS[args.preset]
    if preset.compare == "model" and args.routing and args.routing != ("independent",):
        raise UsageError(
            f"--routing {','.join(args.routing)}: the {args.preset} preset compares cells "
            "under independent routing only (their parameter counts are matched for it); "
            "drop --routing, or pick the models with --models under another preset"
        )
    if preset.stream_len and args.protocol and args.protocol != ("fixed",):
        raise UsageError(
            f"--protocol {','.join(args.protocol)}: the {args.preset} preset trains on "
            "streams of names, encoded as the fixed protocol encodes them; drop --protocol"
        )
    keys = plan_runs(
        preset, args.models, args.routing, args.protocol, args.seeds, split_seed=args.split_seed
    )
    if not keys:
        raise UsageError("the options select no runs; check --models/--routing/--protocol")
    specs = run_specs(preset, keys, args.epochs)
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
    init_distributed(device)
    args.max_names = args.max_names or preset.max_names
    sets = _load_sets(args, tuple(dict.fromkeys(k.protocol for k in keys)))
    sampling = Sampling(args.sampler, args.temperature, args.greedy, args.sample_mode)
    status = run_study(
        args.preset,
        keys,
        specs,
        sets,
        out=args.out,
        device=device,
        num_samples=args.samples or preset.num_samples,
        command=command,
        resume=args.resume,
        progress=not args.no_progress,
        sampling=sampling,
        save_epochs=args.save_epochs,
    )
    finish_distributed()
    return status


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
