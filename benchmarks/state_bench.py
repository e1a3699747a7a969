"""Speed of state over long time: resets inside a batch, and chunked streaming.

Ratios measured in one process, timed alternately round by round, at torch's default
thread count and at one thread (the state issue's rows):

- **resets**: a train step (forward and backward) of a batch of 64 rows of 16 steps with
  resets (every row cut once or twice, at random steps) over the same batch without
  resets, on the hand-built GRU and LSTM stacks and on the torch-equivalent stacks
  (``"auto"``; ``Stack.explain`` names the plan the segments run on);
- **vs split-and-pad**: the same batch with resets against what a user writes today:
  cut every row at its resets, pack the segments (``pack_sequence``), run ``nn.GRU`` /
  ``nn.LSTM`` and scatter the outputs back;
- **streaming**: a forward and backward over ``T = 1024`` in chunks of 16 steps with the
  state carried (not detached), over one call.

    python benchmarks/state_bench.py [--sizes beta,gamma] [--rounds 7] [--cells GRU,LSTM]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

import recurrentkit as rk

SIZES = {"beta": (96, 256, 2), "gamma": (128, 512, 3)}
B, T = 64, 16


def resets_mask(seed: int = 0) -> Tensor:
    """``(T, B)``: each row reset at one or two random steps in ``1..T-1``."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(T, B, dtype=torch.bool)
    for b in range(B):
        steps = torch.randperm(T - 1, generator=g)[: 1 + b % 2] + 1
        mask[steps, b] = True
    return mask


def segments(x: Tensor, mask: Tensor) -> tuple[list[Tensor], list[tuple[int, int, int]]]:
    """Each row of ``x (T, B, E)`` cut at its resets: the pieces, and where each goes."""
    pieces, where = [], []
    for b in range(x.shape[1]):
        cuts = [0, *mask[:, b].nonzero().flatten().tolist(), x.shape[0]]
        for s, e in zip(cuts, cuts[1:]):
            pieces.append(x[s:e, b])
            where.append((b, s, e))
    return pieces, where


def split_and_pad(module: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """What a user writes without resets: segments packed, one torch call, scattered back."""
    pieces, where = segments(x, mask)
    y, _ = module(pack_sequence(pieces, enforce_sorted=False))
    padded, _ = pad_packed_sequence(y)  # (T_max, S, H)
    out = x.new_zeros(x.shape[0], x.shape[1], padded.shape[-1])
    for i, (b, s, e) in enumerate(where):
        out[s:e, b] = padded[: e - s, i]
    return out


def step_fn(forward: Callable[[], Tensor], params: list[Tensor]) -> Callable[[], None]:
    def run() -> None:
        for p in params:
            p.grad = None
        forward().square().mean().backward()

    return run


def paired(a: Callable[[], None], b: Callable[[], None], rounds: int) -> float:
    """Median over rounds of time(b) / time(a), timed alternately."""
    a(), b()
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(ratios)


def stack(cell: str, executor: str, E: int, H: int, L: int) -> rk.Stack:
    torch.manual_seed(0)
    make = rk.GRUCell if cell == "GRU" else rk.LSTMCell
    return rk.Stack([make(E if k == 0 else H, H) for k in range(L)], executor=executor)


def measure(
    sizes: list[str], rounds: int, cells: tuple[str, ...] = ("GRU", "LSTM")
) -> list[dict[str, Any]]:
    rows = []
    mask = resets_mask()
    for size in sizes:
        E, H, L = SIZES[size]
        x = torch.randn(T, B, E)
        for cell in cells:
            for executor in ("handbuilt", "auto"):
                s = stack(cell, executor, E, H, L)
                params = list(s.parameters())
                plain = step_fn(lambda s=s, x=x: s(x)[0], params)
                reset = step_fn(lambda s=s, x=x: s(x, resets=mask)[0], params)
                plan = s.explain(x, resets=mask)
                rows.append(
                    {
                        "size": size,
                        "row": f"{cell} {executor}: resets / none",
                        "plan": f"{plan.plan} -> {plan.inner}",
                        "ratio": paired(plain, reset, rounds),
                        "goal": 1.15,
                    }
                )
            torch.manual_seed(0)
            torch_module = getattr(nn, cell)(E, H, L)
            ours = stack(cell, "auto", E, H, L)
            user = step_fn(lambda m=torch_module, x=x: split_and_pad(m, x, mask), [])
            mine = step_fn(lambda s=ours, x=x: s(x, resets=mask)[0], [])
            rows.append(
                {
                    "size": size,
                    "row": f"{cell}: resets / split-and-pad with nn.{cell}",
                    "plan": "",
                    "ratio": paired(user, mine, rounds),
                    "goal": 0.5,
                }
            )
            long_x = torch.randn(1024, 8, E)
            s = stack(cell, "auto", E, H, L)

            def chunked(s: rk.Stack = s, long_x: Tensor = long_x) -> Tensor:
                state, ys = None, []
                for c in long_x.split(16):
                    y, state = s(c, state)
                    ys.append(y)
                return torch.cat(ys)

            one = step_fn(lambda s=s, long_x=long_x: s(long_x)[0], [])
            rows.append(
                {
                    "size": size,
                    "row": f"{cell} auto: chunks of 16 / one call (T = 1024, B = 8)",
                    "plan": "",
                    "ratio": paired(one, step_fn(chunked, []), max(3, rounds // 2)),
                    "goal": 1.1,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="beta,gamma")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cells", default="GRU,LSTM", help="GRU, LSTM or both")
    args = parser.parse_args(argv)
    if not set(args.cells.split(",")) <= {"GRU", "LSTM"}:
        parser.error(f"--cells: expected GRU, LSTM or GRU,LSTM, got {args.cells!r}")
    default = torch.get_num_threads()
    for threads in sorted({default, 1}, reverse=True):
        torch.set_num_threads(threads)
        label = f"{threads} threads (torch's default)" if threads == default else "1 thread"
        print(f"\n### {label}\n")
        print("| size | row | plan | ratio | goal |")
        print("|---|---|---|---|---|")
        for r in measure(args.sizes.split(","), args.rounds, tuple(args.cells.split(","))):
            verdict = "ok" if round(r["ratio"], 2) <= r["goal"] else "MISS"
            print(
                f"| {r['size']} | {r['row']} | {r['plan']} | {r['ratio']:.2f} "
                f"| ≤ {r['goal']:.2f} {verdict} |"
            )
    torch.set_num_threads(default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
