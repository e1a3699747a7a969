"""Speed of the drop-ins exported to ONNX, run by onnxruntime, next to eager torch.nn.

For ``GRU`` and ``LSTM`` of one size (default β: input 96, hidden 256, 2 layers), the
drop-in is written once with :func:`recurrentkit.export.onnx` (time and batch free) and
run by onnxruntime at ``T`` = 16 and 256, ``B`` = 1 and 64, inference only, against eager
``nn.GRU``/``nn.LSTM`` with the same weights under ``torch.no_grad()`` (and the eager
drop-in, for reference). The kinds ``shared`` and ``cross_layer`` are GRU-cell
:class:`~recurrentkit.Stack` s of the same size under that policy, exported the same way
(their time loop becomes an ONNX ``Scan``) and compared with the eager stack itself.
Each ratio is onnxruntime's median time over the eager baseline's, timed in one process,
alternately: every round runs every job once, in a shuffled order; each timing repeats
the job's call for about ``--call-ms`` (a sub-millisecond call timed alone on a busy
machine measures the scheduler), and the table gives ms per call.

Every row runs at torch's default thread count (``torch.get_num_threads()`` at the start)
and at one thread, onnxruntime's ``intra_op_num_threads`` set to the same count (and
``inter_op_num_threads`` to 1). The issue's goals: onnxruntime / eager torch.nn <= 1.0 for
the drop-ins; onnxruntime / eager recurrentkit <= 1.5 for the stacks.

    python benchmarks/onnx_bench.py [--sizes beta,gamma] [--rounds 11] [--call-ms 30]
        [--threads default,1]
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench import interleaved, num_threads
from torch import nn

import recurrentkit as rk

SIZES = {"alpha": (64, 128, 1), "beta": (96, 256, 2), "gamma": (128, 512, 3)}
LENGTHS, BATCHES = (16, 256), (1, 64)
KINDS = {"GRU": (nn.GRU, rk.GRU), "LSTM": (nn.LSTM, rk.LSTM)}
STACKS = ("shared", "cross_layer")  # GRU-cell stacks under these policies


def build(
    kind: str, size: tuple[int, int, int], folder: Path
) -> tuple[nn.Module | None, nn.Module, Path]:
    """``(nn module, drop-in with its weights, the drop-in's .onnx)``, all in eval mode; for
    a stack kind ``(None, the stack, its .onnx)``."""
    E, H, L = size
    torch.manual_seed(0)
    reference: nn.Module | None = None
    if kind in STACKS:
        ours: nn.Module = rk.Stack(
            [rk.GRUCell(E if i == 0 else H, H) for i in range(L)], kind
        ).eval()
    else:
        theirs, ours_cls = KINDS[kind]
        reference = theirs(E, H, L).eval()
        ours = ours_cls.from_torch(reference).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = rk.export.onnx(ours, torch.randn(5, 2, E), folder / f"{kind}.onnx")
    return reference, ours, path


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def jobs_for(
    reference: nn.Module | None, ours: nn.Module, run: Any, x: torch.Tensor
) -> dict[str, Callable[[], None]]:
    """The timed calls: ``nn`` (absent for a stack), ``rk`` and ``ort``."""
    feed = {run.get_inputs()[0].name: x.numpy()}  # "input" (drop-ins) or "x" (Stack)

    def eager(module: nn.Module) -> Callable[[], None]:
        def job() -> None:
            with torch.no_grad():
                module(x)

        return job

    jobs = {"nn": eager(reference)} if reference is not None else {}
    return {**jobs, "rk": eager(ours), "ort": lambda: run.run(None, feed)}


def batched(jobs: dict[str, Callable[[], None]], ms: float) -> dict[str, tuple[int, Callable]]:
    """Each job repeated ``k`` times per timed call, ``k`` so that a call lasts about ``ms``
    (a sub-millisecond call timed alone on a busy machine measures the scheduler)."""
    out: dict[str, tuple[int, Callable]] = {}
    for name, fn in jobs.items():
        fn()  # warm
        t0 = time.perf_counter()
        fn()
        k = max(1, math.ceil(ms / max((time.perf_counter() - t0) * 1e3, 1e-3)))
        out[name] = (k, lambda fn=fn, k=k: [fn() for _ in range(k)])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="beta", help=f"comma list of {', '.join(SIZES)}")
    parser.add_argument("--rounds", type=int, default=11, help="timed rounds per job")
    parser.add_argument("--call-ms", type=float, default=30.0, help="ms per timed call")
    parser.add_argument("--threads", default="default,1", help="thread counts, e.g. default,1")
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    if bad := [s for s in sizes if s not in SIZES]:
        parser.error(f"--sizes: expected names from {', '.join(SIZES)}, got {', '.join(bad)}")
    default = torch.get_num_threads()
    counts = [default if t == "default" else int(t) for t in args.threads.split(",")]
    print(
        f"torch {torch.__version__}, default threads {default}; ms per call, median of "
        f"{args.rounds} rounds, each timing repeats a call for about {args.call_ms} ms"
    )
    print(
        "| size | kind | T | B | threads | nn ms | rk eager ms | onnxruntime ms | ort / nn "
        "| ort / rk |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, kind in itertools.product(sizes, (*KINDS, *STACKS)):
            size = SIZES[name]
            reference, ours, path = build(kind, size, Path(folder))
            for threads in counts:
                run = session(path, threads)
                for T, B in itertools.product(LENGTHS, BATCHES):
                    x = torch.randn(T, B, size[0])
                    with num_threads(threads):
                        jobs = batched(jobs_for(reference, ours, run, x), args.call_ms)
                        total = interleaved({k: j for k, (_, j) in jobs.items()}, args.rounds, 0, T)
                    ms = {k: total[k] / jobs[k][0] for k in jobs}  # per call
                    nn_ms = f"{ms['nn']:.3f}" if "nn" in ms else "—"
                    cells = [name, kind, T, B, threads, nn_ms, f"{ms['rk']:.3f}"]
                    cells.append(f"{ms['ort']:.3f}")
                    cells.append(f"{ms['ort'] / ms['nn']:.2f}" if "nn" in ms else "—")
                    cells.append(f"{ms['ort'] / ms['rk']:.2f}")
                    print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
