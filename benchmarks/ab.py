"""A/B in one process: this checkout's recurrentkit against an earlier commit's.

The earlier package is taken from git (``git archive``), renamed ``rkbase`` (its own
imports rewritten) and imported beside ``recurrentkit``; both build the same model from
the same seed and are timed alternately, round by round, so the machine's drift hits both
alike. Prints per case the median of the per-round ratios new / base and each side's
median time. Train steps (forward and backward of a ``(16, 64, E)`` batch) at the study's
beta and gamma sizes; ``--sampling``: 200 steps at B = 1 without grad (beta; GRU and LSTM
stacks and drop-ins, and an ``independent`` stack of each newer cell).

    python benchmarks/ab.py --base d5ce90e --threads 1 --rounds 9
    python benchmarks/ab.py --base d5ce90e --threads 2 --rounds 9 --sampling
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import recurrentkit as new_rk

SIZES = {"beta": (96, 256, 2), "gamma": (128, 512, 3)}
TRAIN_CASES = [
    ("gru", "dropin", "-"),
    ("lstm", "dropin", "-"),
    ("gru", "independent", "auto"),
    ("gru", "shared", "auto"),
    ("gru", "residual", "auto"),
    ("gru", "cross_layer", "auto"),
    ("gru", "independent", "handbuilt"),
    ("gru", "shared", "handbuilt"),
    ("gru", "shared_last", "handbuilt"),
    ("gru", "cross_layer", "handbuilt"),
    ("lstm", "independent", "handbuilt"),
    ("lstm", "cross_layer", "handbuilt"),
]
SAMPLING_CASES = [
    ("gru", "shared", "auto"),
    ("gru", "shared", "handbuilt"),
    ("gru", "shared_last", "handbuilt"),
    ("gru", "residual", "handbuilt"),
    ("gru", "independent", "handbuilt"),
    ("gru", "independent", "auto"),
    ("gru", "cross_layer", "handbuilt"),
    ("gru", "dropin", "-"),
    ("lstm", "independent", "handbuilt"),
    ("lstm", "dropin", "-"),
    *((cell, "independent", "auto") for cell in ("mgu", "cifg", "indrnn", "ln_gru")),
    *((cell, "independent", "auto") for cell in ("mingru", "minlstm", "lru")),
]
CELLS = {
    "gru": "GRUCell",
    "lstm": "LSTMCell",
    "mgu": "cells.MGUCell",
    "cifg": "cells.CoupledLSTMCell",
    "indrnn": "cells.IndRNNCell",
    "ln_gru": "cells.LayerNormGRUCell",
    "mingru": "MinGRUCell",
    "minlstm": "MinLSTMCell",
    "lru": "LRUCell",
}
"""Each case's cell: its path in the package (either revision's)."""


def base_package(rev: str) -> ModuleType:
    """``recurrentkit`` as of ``rev``, imported as ``rkbase``."""
    root = Path(__file__).resolve().parents[1]
    tar = subprocess.run(
        ["git", "-C", str(root), "archive", rev, "recurrentkit"], check=True, capture_output=True
    ).stdout
    where = Path(tempfile.mkdtemp(prefix="rkbase-"))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(where, filter="data")
    (where / "recurrentkit").rename(where / "rkbase")
    for path in (where / "rkbase").rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\brecurrentkit\b(?=[. ])", "rkbase", text))
    sys.path.insert(0, str(where))
    return importlib.import_module("rkbase")


def build(rk: Any, cell: str, routing: str, executor: str, E: int, H: int, L: int) -> Any:
    torch.manual_seed(0)
    if routing == "dropin":
        return getattr(rk, cell.upper())(E, H, L)
    make = rk
    for name in CELLS[cell].split("."):
        make = getattr(make, name)
    policy = rk.routing.Shared(carry="last") if routing == "shared_last" else routing
    return rk.Stack([make(E if k == 0 else H, H) for k in range(L)], policy, executor=executor)


def train_step(model: Any, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        y, _ = model(x)
        y.square().mean().backward()

    return run


def sampling(model: Any, x: torch.Tensor, dropin: bool) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            state = None
            for _ in range(200):
                if dropin:
                    _, state = model(x, state)  # (1, 1, E): one step of the drop-in
                else:
                    _, state = model.step(x[0], state)

    return run


def paired(a: Callable[[], None], b: Callable[[], None], rounds: int) -> tuple[float, ...]:
    a(), b()
    ratios, ta, tb = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(ratios), statistics.median(ta), statistics.median(tb)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the git revision to compare with")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sampling", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base_rk = base_package(args.base)
    print(f"new / base ({args.base}), {args.threads} thread(s), {args.rounds} rounds, medians")
    sizes = {"beta": SIZES["beta"]} if args.sampling else SIZES
    for size, (E, H, L) in sizes.items():
        for case in SAMPLING_CASES if args.sampling else TRAIN_CASES:
            a, b = (build(rk, *case, E, H, L) for rk in (base_rk, new_rk))
            if args.sampling:
                x = torch.randn(1, 1, E)
                fa, fb = sampling(a, x, case[1] == "dropin"), sampling(b, x, case[1] == "dropin")
            else:
                x = torch.randn(16, 64, E)
                fa, fb = train_step(a, x), train_step(b, x)
            ratio, ma, mb = paired(fa, fb, args.rounds)
            print(
                f"{size:5s} {'/'.join(case):28s} new/base {ratio:.3f}  "
                f"base {ma * 1e3:.2f} ms  new {mb * 1e3:.2f} ms",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
