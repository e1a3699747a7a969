"""Cold ``torch.compile`` time and compiled/eager train-step ratio of a γ stack, per policy.

For each routing policy, a fresh Python process builds a γ-size stack (3 GRU layers,
input 128, hidden 512), compiles it (``torch.compile``, inductor, ``fullgraph=True``)
and times the first training step (forward, loss, backward: what compiling costs, cold:
nothing cached in the process, and inductor's caches on disk switched off with
``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1``), then times compiled and eager training steps
(forward, loss, backward, Adam) interleaved, ``--repeat`` rounds, at torch's default
thread count and at one thread; the ratio is compiled over eager at the same count.

The first row is the floor: the same cold compile of one ``nn.Linear``'s training step,
what any compile costs on this machine (``--no-floor`` skips it).

With torch <= 2.13, inductor's buffer donation is switched off
(``torch._functorch.config.donated_buffer = False``): with it on, inductor corrupts
the backward of torch's scan operator (pytorch#153679), which compiled stacks use where
their layers' kernels do not run as custom ops (``cross_layer``; cells without a kernel).

Run ``python benchmarks/compile_bench.py`` (or ``benchmarks/bench.py --compile``, which
prints this table after its own). Quote ratios; absolute times drift on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch

POLICIES = ("independent", "shared", "residual", "cross_layer", "handoff")
GAMMA = {"input": 128, "hidden": 512, "layers": 3}


def floor() -> dict[str, object]:
    """What any cold compile costs here: one ``nn.Linear(128, 512)``'s training step
    (forward, loss, backward), compiled the same way, in a fresh process."""
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    linear = torch.nn.Linear(GAMMA["input"], GAMMA["hidden"])
    compiled = torch.compile(linear, fullgraph=True)
    x = torch.randn(64, GAMMA["input"])
    t0 = time.perf_counter()
    compiled(x).square().mean().backward()
    return {"routing": FLOOR, "compile_s": time.perf_counter() - t0, "by_threads": {}}


FLOOR = "floor"
"""The row of :func:`floor`: an ``nn.Linear`` (not a policy)."""


def child(routing: str, repeat: int, steps: int, batch: int) -> dict[str, object]:
    """One policy in this process: cold compile time and the train-step ratios."""
    if routing == FLOOR:
        return floor()
    import torch._functorch.config as functorch_config

    import recurrentkit as rk

    warnings.filterwarnings("ignore")
    functorch_config.donated_buffer = False
    default_threads = torch.get_num_threads()
    torch.manual_seed(0)
    I, H, L = GAMMA["input"], GAMMA["hidden"], GAMMA["layers"]  # noqa: E741

    def build() -> rk.Stack:
        torch.manual_seed(0)
        return rk.Stack([rk.GRUCell(I if k == 0 else H, H) for k in range(L)], routing)

    eager, compiled_stack = build(), build()
    compiled = torch.compile(compiled_stack, fullgraph=True)
    x = torch.randn(steps, batch, I)
    opt = {
        "eager": torch.optim.Adam(eager.parameters(), lr=1e-3),
        "compiled": torch.optim.Adam(compiled_stack.parameters(), lr=1e-3),
    }
    model = {"eager": eager, "compiled": compiled}

    def train_step(name: str) -> float:
        t0 = time.perf_counter()
        y, _ = model[name](x)
        loss = y.square().mean()
        opt[name].zero_grad()
        loss.backward()
        opt[name].step()
        return time.perf_counter() - t0

    compile_s = train_step("compiled")  # cold: traces and compiles forward and backward
    by_threads = {}
    for threads in dict.fromkeys((default_threads, 1)):
        torch.set_num_threads(threads)
        for name in model:  # warm-up at this count
            train_step(name)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for r in range(repeat):
            order = ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")
            for name in order:
                times[name].append(train_step(name))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        by_threads[threads] = {
            "eager_ms": med["eager"],
            "compiled_ms": med["compiled"],
            "ratio": med["compiled"] / med["eager"],
        }
    torch.set_num_threads(default_threads)
    return {"routing": routing, "compile_s": compile_s, "by_threads": by_threads}


def run(policies: tuple[str, ...], repeat: int, steps: int, batch: int, timeout: float) -> None:
    """Each policy in a fresh process; print the table."""
    rows = []
    env = {**os.environ, "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}  # cold: no disk cache
    for routing in policies:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", routing]
        cmd += ["--repeat", str(repeat), "--steps", str(steps), "--batch", str(batch)]
        print(f"compiling {routing} (fresh process) ...", file=sys.stderr, flush=True)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            rows.append({"routing": routing, "error": f"timed out after {timeout:.0f} s"})
            continue
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["?"])[-1]
            rows.append({"routing": routing, "error": tail[:120]})
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"\ntorch.compile of a γ stack (GRU, {GAMMA['layers']} layers, input {GAMMA['input']}, "
        f"hidden {GAMMA['hidden']}; batch {batch} x {steps} steps), torch {torch.__version__}"
    )
    print(
        f"{'policy':<12} {'cold compile s':>15} {'threads':>8} {'eager ms':>9} "
        f"{'compiled ms':>12} {'compiled/eager':>15}"
    )
    for row in rows:
        if "error" in row:
            print(f"{row['routing']:<12} failed: {row['error']}")
            continue
        if row["routing"] == FLOOR:
            cold = f"{row['compile_s']:.1f}"
            print(f"{'nn.Linear':<12} {cold:>15}   (the floor: any cold compile here)")
            continue
        first = True
        for threads, r in row["by_threads"].items():  # type: ignore[union-attr]
            cold = f"{row['compile_s']:.1f}" if first else ""
            print(
                f"{row['routing'] if first else '':<12} {cold:>15} {threads:>8} "
                f"{r['eager_ms']:>9.1f} {r['compiled_ms']:>12.1f} {r['ratio']:>14.2f}x"
            )
            first = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per thread count")
    parser.add_argument("--steps", type=int, default=16, help="sequence length T")
    parser.add_argument("--batch", type=int, default=64, help="batch size B")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per policy")
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the first row: the cold compile of one nn.Linear's training step",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.repeat, args.steps, args.batch)))
        return 0
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    if not args.no_floor:
        policies = (FLOOR, *policies)
    run(policies, args.repeat, args.steps, args.batch, args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
