"""Names as one stream with resets: the same loss as one padded row per name.

A character model of names is usually trained on one padded row per name. Laid end to
end in one stream instead, cut into rows of ``T`` tokens (each row holding whole names),
the rows waste no padding, but a name must not see the one before it: the stack's state
restarts at every name's start token (``resets``, via
:class:`~recurrentkit.study.lm.CharLM`'s ``reset_token``). This script shows that this
computes exactly what the per-name model computes:

1. **same weights**: one model's validation loss over the per-name rows, and over the
   stream rows with resets (the same targets, token-weighted), agree to float precision;
   without resets the stream's loss is another number (each name reads the previous
   one's state);
2. **same training**: two copies of one initial model, trained from the same seed on the
   same batches of names (one as per-name rows, one as those names' stream rows), have
   the same loss at every step and the same final validation loss, to float precision
   (float64 by default; in float32 they drift apart by rounding only). What differs is
   the layout alone: a stream batch is the per-name batch's names in fewer rows.

Everything here is package code (:mod:`recurrentkit.study`: the names, their encodings,
:class:`~recurrentkit.study.lm.CharLM`, :func:`~recurrentkit.study.train.evaluate`); this
file is the command line::

    python examples/streaming_names.py            # --quick: 2000 names, 1 epoch, seconds
    python examples/streaming_names.py --full     # every name, 3 epochs
    python examples/streaming_names.py --cell lstm --dtype float32
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

import recurrentkit as rk
from recurrentkit.study import CharLM, data, evaluate
from recurrentkit.study.ablation import LIBRARY_CELLS, MAX_LEN, SPECS, split_words

PROG = "streaming_names.py"


@dataclass(frozen=True)
class Settings:
    """One run: the data, the model (a backbone of the names study) and the training."""

    cell: str = "gru"
    names: int = 2000
    epochs: int = 1
    batch_size: int = 64
    row_len: int = 64
    dtype: str = "float64"
    seed: int = 0


QUICK = Settings()
FULL = Settings(names=0, epochs=3)


def build(settings: Settings, reset_token: int | None) -> CharLM:
    """The study's ``gru``/``lstm`` backbone as a :class:`CharLM` (its seed: ``settings.seed``)."""
    spec = SPECS[settings.cell]
    torch.manual_seed(settings.seed)
    sizes = [(spec.embed if k == 0 else spec.hidden, spec.hidden) for k in range(spec.layers)]
    stack = rk.Stack([LIBRARY_CELLS[spec.cell](i, h) for i, h in sizes], batch_first=True)
    model = CharLM(stack, data.vocab_size("fixed"), spec.embed, reset_token=reset_token)
    return model.to(getattr(torch, settings.dtype))


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` measured (losses are token means over the same targets)."""

    per_name: float
    stream: float
    stream_no_resets: float
    rows_per_name: int
    rows_stream: int


def compare(model: CharLM, words: Sequence[str], row_len: int) -> Comparison:
    """``model``'s loss over ``words`` as per-name rows and as stream rows (with and
    without resets). ``model`` must not reset itself (``reset_token=None``)."""
    per_name = data.encode(words, "fixed", MAX_LEN)
    stream = data.encode_stream(words, row_len)
    streaming = copy.deepcopy(model)
    streaming.reset_token = data.START
    return Comparison(
        per_name=evaluate(model, *per_name),
        stream=evaluate(streaming, *stream),
        stream_no_resets=evaluate(model, *stream),
        rows_per_name=per_name[0].shape[0],
        rows_stream=stream[0].shape[0],
    )


@dataclass(frozen=True)
class Training:
    """Both models' training losses per step, final validation losses, and the trained
    per-name model."""

    per_name: list[float]
    stream: list[float]
    val_per_name: float
    val_stream: float
    model: CharLM

    @property
    def max_gap(self) -> float:
        return max(abs(a - b) for a, b in zip(self.per_name, self.stream))


def train_both(settings: Settings, train: Sequence[str], val: Sequence[str]) -> Training:
    """Two copies of one initial model trained on the same batches of names: one on the
    names' per-name rows, one (``reset_token = <S>``) on those names' stream rows."""
    names_model = build(settings, reset_token=None)
    stream_model = build(settings, reset_token=data.START)
    stream_model.load_state_dict(names_model.state_dict())
    lr = SPECS[settings.cell].lr
    opts = [torch.optim.Adam(m.parameters(), lr=lr) for m in (names_model, stream_model)]
    x, y = data.encode(train, "fixed", MAX_LEN)  # (N, T): one row per name
    order = torch.Generator().manual_seed(settings.seed)
    curves: tuple[list[float], list[float]] = ([], [])
    for _ in range(settings.epochs):
        for idx in torch.randperm(len(train), generator=order).split(settings.batch_size):
            batch = (x[idx], y[idx]), data.encode_stream([train[i] for i in idx], settings.row_len)
            for model, opt, (xb, yb), curve in zip(
                (names_model, stream_model), opts, batch, curves
            ):
                opt.zero_grad(set_to_none=True)
                _, loss = model(xb, yb)
                assert loss is not None
                loss.backward()
                opt.step()
                curve.append(float(loss.detach()))
    return Training(
        per_name=curves[0],
        stream=curves[1],
        val_per_name=evaluate(names_model, *data.encode(val, "fixed", MAX_LEN)),
        val_stream=evaluate(stream_model, *data.encode_stream(val, settings.row_len)),
        model=names_model,
    )


def run(settings: Settings) -> tuple[Comparison, Training, Comparison]:
    """Both comparisons (same weights before and after training; same training),
    printed as they finish."""
    start = time.perf_counter()
    train, val = split_words(max_names=settings.names or None)
    spec = SPECS[settings.cell]
    print(
        f"{len(train)} training and {len(val)} validation names; {spec.label}, "
        f"{spec.layers} layers of {spec.hidden}; {settings.dtype}; stream rows of "
        f"{settings.row_len} tokens"
    )
    before = compare(build(settings, reset_token=None), val, settings.row_len)
    _print_comparison("same weights (initial)", before, settings)
    t = train_both(settings, train, val)
    steps = len(t.per_name)
    print(f"\ntraining from seed {settings.seed}, the same batches of names ({steps} steps)")
    print("  step  per-name rows   stream rows")
    for s in sorted({0, steps // 2, steps - 1}):
        print(f"  {s:4d}  {t.per_name[s]:.12f}  {t.stream[s]:.12f}")
    print(f"  largest |difference| over the steps: {t.max_gap:.1e}")
    print(f"  validation loss after training: per-name {t.val_per_name:.12f}")
    print(f"                                  stream   {t.val_stream:.12f}")
    print(f"  |difference|: {abs(t.val_per_name - t.val_stream):.1e}")
    after = compare(t.model, val, settings.row_len)
    _print_comparison("same weights (trained per-name model)", after, settings)
    print(f"\n{time.perf_counter() - start:.1f} s")
    return before, t, after


def _print_comparison(title: str, c: Comparison, settings: Settings) -> None:
    print(f"\n{title}: validation loss, token mean over the same targets")
    print(f"  per-name rows ({c.rows_per_name} x {MAX_LEN}):          {c.per_name:.12f}")
    print(f"  stream rows with resets ({c.rows_stream} x {settings.row_len}): {c.stream:.12f}")
    print(f"  |difference|: {abs(c.per_name - c.stream):.1e}")
    print(f"  stream rows without resets:    {c.stream_no_resets:.12f} (each name reads the last)")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Names as one stream with resets: the same loss as one row per name.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="2000 names, 1 epoch: seconds (the default)"
    )
    size.add_argument("--full", action="store_true", help="every name, 3 epochs")
    p.add_argument("--cell", choices=("gru", "lstm"), default="gru", help="the backbone")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--row-len", type=int, default=64, help="tokens per stream row (>= 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.row_len < MAX_LEN:
        make_parser().error(
            f"--row-len: expected an int >= {MAX_LEN} (the longest name + 1), got {args.row_len}"
        )
    base = FULL if args.full else QUICK
    settings = replace(base, cell=args.cell, dtype=args.dtype, row_len=args.row_len, seed=args.seed)
    torch.set_num_threads(max(1, args.threads))
    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
