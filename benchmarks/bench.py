"""Speed of recurrentkit's stacks next to torch.nn, as ratios measured in one process.

For the study's sizes — α (E 64, H 128, 1 layer), β (96, 256, 2), γ (128, 512, 3) — on a
character model (embedding, recurrent stack, linear head over a vocabulary of 28; batch
64 × 16 characters), it measures per implementation:

- **train**: one training step (forward, cross-entropy, backward, Adam), median ms over
  ``--repeat`` rounds; every round runs every implementation once, in a shuffled order,
  so the machine's noise hits all of them alike; the ratio is to torch.nn of the same
  size and cell (``nn.GRU`` for GRU rows, ``nn.LSTM`` for LSTM and Nested LSTM rows),
  and for LSTM rows also to ``nn.LSTM`` with oneDNN switched off
  (``torch.backends.mkldnn.flags(enabled=False)``, torch's native CPU path);
- **sample**: 20 greedy tokens stepped one at a time with the state carried
  (``stack.step`` / ``module(x[None], h)``), batch 1 and batch 64, no grad;
- **memory**: peak bytes allocated during one training step above what was held
  before it: on the CPU from the torch profiler's memory events
  (``profile_memory=True``: a running sum of the allocations and frees the CPU allocator
  reports; tracemalloc cannot see torch's allocator), on CUDA from
  ``torch.cuda.max_memory_allocated``;
- **packed**: a batch of 64 names with the names dataset's lengths (at most 16) as a
  ``PackedSequence`` (embedding, stack, head and loss on the real tokens only), against
  the same number of real tokens laid out unpadded (full 16-step rows, fewer of them) —
  the goal is ≤ 1.2×; the padded batch without lengths is shown too;
- **flops**: ``cross_layer``'s arithmetic over ``nn.GRU``'s or ``nn.LSTM``'s (recurrent
  part, forward; backward scales alike), printed beside its ratio.

``--rows backbones`` measures the backbones issue's rows instead (``--rows all``: both):
each new cell in a one-policy (independent) ``Stack`` against the torch.nn module it
stands in for (``MGUCell`` and ``LayerNormGRUCell`` against ``nn.GRU``,
``CoupledLSTMCell`` and ``LayerNormLSTMCell`` against ``nn.LSTM``, ``IndRNNCell``
against ``nn.RNN(nonlinearity="relu")``), and each regulariser (``Zoneout``,
``RecurrentDropout`` around every layer, ``WeightDrop`` around the stack) against the
bare stack it wraps, around ``CoupledLSTMCell`` and around the built-in ``LSTMCell``
(whose bare stack runs torch's op under ``"auto"``); sampling is compared with the same
row as training. Their goals are the issue's training-step ratios.

Every measurement runs at torch's default thread count (``torch.get_num_threads()`` when
the script starts: what a user gets) and at one thread, each ratio taken between runs at
the same count; ``--threads`` names the counts instead (``--threads 1``, ``--threads
default,1``, ``--threads 4,2,1``). The tables come per thread count, then one table of the
speed issue's goals (the ratio bounds of docs/benchmarks.md's results table) with a column
per thread count saying whether each is met; ``--json`` keys the rows by thread count
(``by_threads``) and lists the goals with their verdict at each (``goals``).

``--device cuda`` runs everything on the GPU (timings synchronise the device; the
oneDNN-off row then equals ``nn.LSTM``: oneDNN is a CPU library), and
``--compile-mode reduce-overhead`` compiles with CUDA graphs. Run
``python benchmarks/bench.py --help``. Quote ratios, not absolute times: on a shared
machine absolute times drift, ratios measured in one interleaved run much less.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import recurrentkit as rk

VOCAB, BATCH, STEPS, SAMPLE_TOKENS = 28, 64, 16, 20
DEVICE = torch.device("cpu")  # set from --device by main()
COMPILE_MODE: str | None = None  # torch.compile's mode, from --compile-mode
K = TypeVar("K", bound=Hashable)  # a job's key in interleaved()
SIZES = {"alpha": (64, 128, 1), "beta": (96, 256, 2), "gamma": (128, 512, 3)}


# -- models ------------------------------------------------------------------------------


class CharModel(nn.Module):
    """Embedding → recurrent module → linear head; ``kind`` says how to call the module."""

    def __init__(self, rnn: nn.Module, kind: str, E: int, H: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, E)
        self.rnn = rnn
        self.head = nn.Linear(H, VOCAB)
        self.kind = kind  # "torch" (nn.GRU-like call) or "stack"

    def forward(self, idx: Tensor) -> Tensor:
        y, _ = self.rnn(self.emb(idx))  # (T, B, H)
        return self.head(y)  # (T, B, V)

    def forward_packed(self, idx: Tensor, lengths: Tensor) -> Tensor:
        """Real tokens only: ``idx (T, B)`` packed by ``lengths`` → logits ``(N, V)``."""
        packed = nn.utils.rnn.pack_padded_sequence(idx, lengths, enforce_sorted=False)
        x = nn.utils.rnn.PackedSequence(
            self.emb(packed.data),
            packed.batch_sizes,
            packed.sorted_indices,
            packed.unsorted_indices,
        )
        y, _ = self.rnn(x)  # packed in, packed out (Stack and torch.nn alike)
        return self.head(y.data)  # (N, V)

    @torch.no_grad()
    def sample(self, first: Tensor, tokens: int) -> Tensor:
        """Greedy decoding from ``first (B,)``, the state carried step to step."""
        idx, state, out = first, None, []
        for _ in range(tokens):
            x = self.emb(idx)  # (B, E)
            if self.kind == "stack":
                y, state = self.rnn.step(x, state)
            else:
                y, state = self.rnn(x[None], state)
                y = y[0]
            idx = self.head(y).argmax(-1)
            out.append(idx)
        return torch.stack(out)


@dataclass
class Impl:
    """One row: how to build the recurrent module, and what to compare it with."""

    name: str
    cell: str  # "GRU", "LSTM", "NestedLSTM"
    routing: str
    executor: str
    build: Callable[[int, int, int], tuple[nn.Module, str]]
    baseline: str  # the name of the torch.nn row this one is compared with
    context: Callable[[], Any] = contextlib.nullcontext
    flops: float | None = None
    compiled: bool = False
    results: dict[str, Any] = field(default_factory=dict)
    sample_baseline: str | None = None  # the row sampling is compared with (default: by cell)
    train_goal: float | None = None  # the backbones rows' goal (--rows backbones)


def stack_builder(cell: str, routing: str, executor: str) -> Callable:
    def build(E: int, H: int, L: int) -> tuple[nn.Module, str]:
        make = {
            "GRU": lambda i: rk.GRUCell(i, H),
            "LSTM": lambda i: rk.LSTMCell(i, H),
            "NestedLSTM": lambda i: rk.NestedLSTMCell(i, H),
        }[cell]
        policy: Any = rk.routing.Shared(carry="last") if routing == "shared_last" else routing
        return rk.Stack([make(E if k == 0 else H) for k in range(L)], policy, executor=executor), (
            "stack"
        )

    return build


SPLIT_STEP = "(split step, no kernel)"
"""The rows ``Stack GRU (split step, no kernel)`` / ``Stack LSTM ...``: the built-in
equations on the split-step plan."""

SPLIT_STEP_GOAL = 1.3
"""The architecture issue's goal: the split-step plan's train step at most 1.3 x the
hand-built kernel's (beta and gamma)."""


class _SplitGRU(rk.GRUCell):
    """The GRU cell without its kernel (kernels go by exact type): its split step."""


class _SplitLSTM(rk.LSTMCell):
    """The LSTM cell without its kernel: its split step."""


def split_step_builder(cell: str) -> Callable:
    def build(E: int, H: int, L: int) -> tuple[nn.Module, str]:
        make = {"GRU": _SplitGRU, "LSTM": _SplitLSTM}[cell]
        cells = [make(E if k == 0 else H, H) for k in range(L)]
        return rk.Stack(cells, "independent", executor="handbuilt"), "stack"

    return build


def split_vs_kernel(rows: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """For each cell, the split-step row's train time over the hand-built kernel's
    (``independent``, ``"handbuilt"``), measured in the same rounds."""
    out = []
    for r in rows:
        if not r["implementation"].endswith(SPLIT_STEP):
            continue
        for k in rows:
            if (
                k["implementation"] == f"Stack {r['cell']}"
                and k["routing"] == "independent"
                and k["executor"] == "handbuilt"
            ):
                out.append((r["cell"], r["train_ms"] / k["train_ms"]))
    return out


BACKBONE_CELLS: dict[str, Callable[[int, int], nn.Module]] = {
    "MGU": lambda i, h: rk.MGUCell(i, h),
    "CoupledLSTM": lambda i, h: rk.CoupledLSTMCell(i, h),
    "IndRNN": lambda i, h: rk.IndRNNCell(i, h),
    "LayerNormGRU": lambda i, h: rk.LayerNormGRUCell(i, h),
    "LayerNormLSTM": lambda i, h: rk.LayerNormLSTMCell(i, h),
    "LSTM": lambda i, h: rk.LSTMCell(i, h),
}
"""The cells of the backbones rows (``--rows backbones``), by name."""

REGULARISERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "Zoneout": lambda cell: rk.Zoneout(cell, 0.1, p_cell=0.05),
    "RecurrentDropout": lambda cell: rk.RecurrentDropout(cell, 0.25),
}
"""The cell wrappers of the backbones rows, with the probabilities they are timed at."""


def backbone_builder(cell: str, wrap: str | None = None) -> Callable:
    """An independent ``Stack`` (executor ``"auto"``) of ``cell``, each layer wrapped in
    ``wrap`` (a key of :data:`REGULARISERS`, or ``"WeightDrop"``: the whole stack in
    ``WeightDrop(p=0.25)``)."""

    def build(E: int, H: int, L: int) -> tuple[nn.Module, str]:
        cells = [BACKBONE_CELLS[cell](E if k == 0 else H, H) for k in range(L)]
        if wrap in REGULARISERS:
            cells = [REGULARISERS[wrap](c) for c in cells]
        stack = rk.Stack(cells, "independent")
        if wrap == "WeightDrop":  # called as module(x, state), as torch.nn is
            return rk.WeightDrop(stack, 0.25), "torch"
        return stack, "stack"

    return build


def backbone_rows() -> list[Impl]:
    """The backbones issue's rows: each new cell against the torch.nn module it stands
    in for, each regulariser against the bare cell it wraps (issue goals as
    ``train_goal``)."""
    rows = [
        Impl(
            "nn.RNN (relu)",
            "RNN",
            "-",
            "torch",
            lambda E, H, L: (nn.RNN(E, H, L, nonlinearity="relu"), "torch"),
            "nn.RNN (relu)",
        )
    ]
    for cell, base, goal in (
        ("MGU", "nn.GRU", 0.85),
        ("CoupledLSTM", "nn.LSTM", 1.0),
        ("IndRNN", "nn.RNN (relu)", 1.0),
        ("LayerNormGRU", "nn.GRU", 1.4),
        ("LayerNormLSTM", "nn.LSTM", 1.5),
    ):
        rows.append(
            Impl(
                f"Stack {cell}",
                cell,
                "independent",
                "auto",
                backbone_builder(cell),
                base,
                sample_baseline=base,
                train_goal=goal,
            )
        )
    # the regularisers around a split-step cell (CIFG: an h and a c to zone) and around
    # the built-in LSTM cell (torch's op when bare; its call on the split plan wrapped)
    for cell in ("CoupledLSTM", "LSTM"):
        bare = f"Stack {cell}"
        for wrap, goal in (("Zoneout", 1.2), ("RecurrentDropout", 1.2), ("WeightDrop", 1.1)):
            rows.append(
                Impl(
                    f"{wrap} {cell}",
                    cell,
                    "independent",
                    "auto",
                    backbone_builder(cell, wrap),
                    bare,
                    sample_baseline=bare,
                    train_goal=goal,
                )
            )
    return rows


ROW_SETS = ("speed", "backbones", "all", "linear")
"""``--rows``: the speed issue's rows (the default), the backbones issue's (with the
torch.nn and bare-cell rows they are compared with), both, or the linear-recurrence
issue's (:func:`run_linear`: their own sizes and sequence lengths)."""


def implementations(with_compile: bool, rows: str = "speed") -> list[Impl]:
    """The rows of ``rows`` (one of :data:`ROW_SETS`)."""
    speed = speed_rows(with_compile)
    if rows == "speed":
        return speed
    if rows == "all":
        return speed + backbone_rows()
    keep = {"nn.GRU", "nn.LSTM", "nn.LSTM (oneDNN off)"}
    base = [
        i
        for i in speed
        if i.name in keep or (i.name == "Stack LSTM" and i.executor == "auto")  # bare LSTM
    ]
    return base + backbone_rows()


def speed_rows(with_compile: bool) -> list[Impl]:
    no_onednn = lambda: torch.backends.mkldnn.flags(enabled=False)  # noqa: E731
    rows = [
        Impl("nn.GRU", "GRU", "-", "torch", lambda E, H, L: (nn.GRU(E, H, L), "torch"), "nn.GRU"),
        Impl(
            "nn.LSTM", "LSTM", "-", "torch", lambda E, H, L: (nn.LSTM(E, H, L), "torch"), "nn.LSTM"
        ),
        Impl(
            "nn.LSTM (oneDNN off)",
            "LSTM",
            "-",
            "torch native",
            lambda E, H, L: (nn.LSTM(E, H, L), "torch"),
            "nn.LSTM",
            context=no_onednn,
        ),
    ]
    if hasattr(rk, "GRU") and hasattr(rk, "LSTM"):
        rows += [
            Impl(
                "rk.GRU",
                "GRU",
                "independent",
                "drop-in",
                lambda E, H, L: (rk.GRU(E, H, L), "torch"),
                "nn.GRU",
            ),
            Impl(
                "rk.LSTM",
                "LSTM",
                "independent",
                "drop-in",
                lambda E, H, L: (rk.LSTM(E, H, L), "torch"),
                "nn.LSTM",
            ),
        ]
    for cell, base in (("GRU", "nn.GRU"), ("LSTM", "nn.LSTM")):
        rows.append(
            Impl(
                f"Stack {cell}",
                cell,
                "independent",
                "auto",
                stack_builder(cell, "independent", "auto"),
                base,
            )
        )
    # the default executor under other policies: residual and handoff run each layer on
    # torch's op, shared its batched plan, cross_layer samples on torch's cell op
    for routing in ("shared", "residual", "handoff", "cross_layer"):
        rows.append(
            Impl(
                "Stack GRU", "GRU", routing, "auto", stack_builder("GRU", routing, "auto"), "nn.GRU"
            )
        )
    for routing in ("independent", "shared", "shared_last", "residual", "cross_layer", "handoff"):
        rows.append(
            Impl(
                "Stack GRU",
                "GRU",
                routing,
                "handbuilt",
                stack_builder("GRU", routing, "handbuilt"),
                "nn.GRU",
            )
        )
    for routing in ("independent", "shared", "cross_layer"):
        rows.append(
            Impl(
                "Stack LSTM",
                "LSTM",
                routing,
                "handbuilt",
                stack_builder("LSTM", routing, "handbuilt"),
                "nn.LSTM",
            )
        )
    # the split-step plan: the built-in cells with their kernels out of reach (a subclass
    # that keeps the equations gets no kernel, only the cell's declared split step)
    for cell, base in (("GRU", "nn.GRU"), ("LSTM", "nn.LSTM")):
        rows.append(
            Impl(
                f"Stack {cell} {SPLIT_STEP}",
                cell,
                "independent",
                "handbuilt",
                split_step_builder(cell),
                base,
            )
        )
    rows.append(
        Impl(
            "Stack NestedLSTM",
            "NestedLSTM",
            "independent",
            "handbuilt",
            stack_builder("NestedLSTM", "independent", "handbuilt"),
            "nn.LSTM",
        )
    )
    rows.append(
        Impl(
            "Stack GRU",
            "GRU",
            "shared",
            "reference",
            stack_builder("GRU", "shared", "reference"),
            "nn.GRU",
        )
    )
    if with_compile:
        for routing in ("shared", "cross_layer"):
            rows.append(
                Impl(
                    "Stack GRU compiled",
                    "GRU",
                    routing,
                    "handbuilt",
                    stack_builder("GRU", routing, "handbuilt"),
                    "nn.GRU",
                    compiled=True,
                )
            )
    return rows


# -- measurements --------------------------------------------------------------------------


@dataclass
class Runner:
    """A built model with its optimiser and a fixed batch."""

    impl: Impl
    model: nn.Module
    opt: torch.optim.Optimizer
    idx: Tensor
    target: Tensor
    lengths: Tensor | None = None

    def train_step(self) -> None:
        with self.impl.context():
            if self.lengths is not None:  # real tokens only, packed
                logits = self.model.forward_packed(self.idx, self.lengths)  # (N, V)
                loss = F.cross_entropy(logits, self.target)
            else:
                logits = self.model(self.idx)  # (T, B, V)
                loss = F.cross_entropy(logits.reshape(-1, VOCAB), self.target.reshape(-1))
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()

    def sample(self, batch: int) -> None:
        model = getattr(self.model, "_orig_mod", self.model)
        was = model.training
        model.eval()
        with self.impl.context():
            model.sample(torch.zeros(batch, dtype=torch.long, device=DEVICE), SAMPLE_TOKENS)
        model.train(was)


def make_runner(
    impl: Impl,
    size: tuple[int, int, int],
    seed: int,
    lengths: Tensor | None = None,
    batch: int = BATCH,
) -> Runner:
    E, H, L = size
    torch.manual_seed(seed)
    rnn, kind = impl.build(E, H, L)
    model: nn.Module = CharModel(rnn, kind, E, H).to(DEVICE)
    if impl.compiled:
        model = torch.compile(model, mode=COMPILE_MODE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, VOCAB, (STEPS, batch), generator=g)
    target = torch.randint(0, VOCAB, (STEPS, batch), generator=g)
    if lengths is not None:  # the targets of the real tokens, in packed order
        target = nn.utils.rnn.pack_padded_sequence(target, lengths, enforce_sorted=False).data
    return Runner(impl, model, opt, idx.to(DEVICE), target.to(DEVICE), lengths)  # lengths: CPU


def sync() -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1e3


def interleaved(
    jobs: dict[K, Callable[[], None]], repeat: int, warmup: int, seed: int
) -> dict[K, float]:
    """Median ms per job; each round runs every job once, in a shuffled order."""
    for fn in jobs.values():
        for _ in range(warmup):
            fn()
    times: dict[K, list[float]] = {k: [] for k in jobs}
    order = list(jobs)
    rng = random.Random(seed)
    for _ in range(repeat):
        rng.shuffle(order)
        for k in order:
            times[k].append(timed(jobs[k]))
    return {k: statistics.median(v) for k, v in times.items()}


def peak_memory_mib(fn: Callable[[], None]) -> float:
    """Peak bytes allocated on :data:`DEVICE` while ``fn`` runs, above the level at its
    start (MiB)."""
    if DEVICE.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(DEVICE)
        start = torch.cuda.memory_allocated(DEVICE)
        fn()
        sync()
        return (torch.cuda.max_memory_allocated(DEVICE) - start) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    total = peak = 0
    for e in sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"]):
        if e["args"].get("Device Type", 0) == 0:  # CPU
            total += e["args"]["Bytes"]
            peak = max(peak, total)
    return peak / 2**20


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop lines (file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def cross_layer_flop_ratio(E: int, H: int, L: int, gates: int = 3) -> float:
    """Forward multiply-adds of a cross_layer stack over the torch module's (recurrent
    part): ``gates`` is 3 for GRU, 4 for LSTM."""
    base = sum(gates * H * ((E if k == 0 else H) + H) for k in range(L))
    if L == 1:
        return 1.0
    extra = sum((L - 1) * ((E if k == 0 else H) + L * H) + (L - 1) * H * H for k in range(L))
    return (base + extra) / base


def name_lengths(batch: int, seed: int) -> Tensor:
    """Lengths of ``batch`` names from the shipped dataset (+1 end token), capped at 16."""
    path = Path(rk.__file__).parent / "study" / "data" / "names.txt"
    names = [n for n in path.read_text().split() if n]
    rng = random.Random(seed)
    return torch.tensor([min(len(rng.choice(names)) + 1, STEPS) for _ in range(batch)])


# -- the linear-recurrence rows (--rows linear) ------------------------------------------------

LINEAR_BATCH, LINEAR_I, LINEAR_H, LINEAR_L = 32, 96, 256, 2
LINEAR_STEPS = (16, 128, 512, 1024)
SAMPLE_STEPS = 64


def linear_models(method: str = "auto") -> dict[str, Callable[[], nn.Module]]:
    """The rows of ``--rows linear``: 2-layer stacks (``independent``, executor ``"auto"``)
    of each linear-recurrence cell, minGRU also on the ``"log"`` scan, beside ``nn.GRU``
    of the same width. ``method`` is the minGRU/minLSTM/LRU rows' scan method."""
    I, H, L = LINEAR_I, LINEAR_H, LINEAR_L

    def stack(make: Callable[[int, int], Any], scan: str) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            cells = [make(I if k == 0 else H, H) for k in range(L)]
            for c in cells:
                c.scan_method = scan
            return rk.Stack(cells, "independent")

        return build

    return {
        "nn.GRU": lambda: nn.GRU(I, H, L),
        "Stack MinGRU": stack(rk.MinGRUCell, method),
        "Stack MinGRU (log)": stack(rk.MinGRUCell, "log"),
        "Stack MinLSTM": stack(rk.MinLSTMCell, method),
        "Stack LRU": stack(rk.LRUCell, method),
    }


LINEAR_GOALS: tuple[tuple[str, str, str, float, int], ...] = (
    # (row, measure, over row, at most, from T)
    ("Stack MinGRU", "train", "nn.GRU", 0.35, 0),
    ("Stack MinGRU", "train", "Stack MinGRU (log)", 0.5, 0),
    ("Stack MinLSTM", "train", "Stack MinGRU", 1.2, 0),
    ("Stack LRU", "train", "nn.GRU", 0.5, 128),
    ("Stack MinGRU", "peak", "nn.GRU", 1.0, 0),
    ("Stack MinLSTM", "peak", "nn.GRU", 1.0, 0),
    ("Stack LRU", "peak", "nn.GRU", 1.0, 0),
    ("Stack MinGRU", "sample", "nn.GRU", 0.6, 0),
    ("Stack MinLSTM", "sample", "nn.GRU", 0.6, 0),
    ("Stack LRU", "sample", "nn.GRU", 0.6, 0),
)
"""The linear-recurrence issue's goals, each a ratio of one row's measure over another's."""


def linear_train_job(build: Callable[[], nn.Module], T: int, seed: int) -> Callable[[], None]:
    """One training step of a fresh model: forward over ``(T, B, I)``, mean squared
    output, backward, Adam."""
    torch.manual_seed(seed)
    model = build().to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(T, LINEAR_BATCH, LINEAR_I, device=DEVICE)

    def step() -> None:
        y, _ = model(x)  # (T, B, H)
        loss = y.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def linear_sample_job(build: Callable[[], nn.Module], seed: int) -> Callable[[], None]:
    """``SAMPLE_STEPS`` steps at batch 1 without grad, the state carried: ``stack.step``,
    or the torch module on a one-step sequence."""
    torch.manual_seed(seed)
    model = build().to(DEVICE).eval()
    xs = torch.randn(SAMPLE_STEPS, 1, LINEAR_I, device=DEVICE)
    stepper = isinstance(model, rk.Stack)

    @torch.no_grad()
    def run() -> None:
        state = None
        for x in xs:
            if stepper:
                _, state = model.step(x, state)
            else:
                _, state = model(x[None], state)

    return run


def run_linear(args: argparse.Namespace, thread_counts: list[int], default: int) -> dict[str, Any]:
    """Every linear row at each ``T`` and thread count, timed interleaved (each ratio
    between runs in the same rounds), peak training memory at each ``T``, sampling once
    per thread count; the goals of :data:`LINEAR_GOALS` checked."""
    models = linear_models(args.method)
    steps = [t for t in LINEAR_STEPS if t <= args.max_steps]
    out: dict[str, Any] = {"thread_counts": thread_counts, "rows": [], "goals": []}
    for n in thread_counts:
        with num_threads(n):
            print(f"-- {threads_label(n, default)}", flush=True)
            sample = interleaved(
                {k: linear_sample_job(b, i) for i, (k, b) in enumerate(models.items())},
                max(3, args.repeat // 2),
                1,
                seed=3,
            )
            for T in steps:
                jobs = {k: linear_train_job(b, T, i) for i, (k, b) in enumerate(models.items())}
                train = interleaved(jobs, args.repeat, 1, seed=T)
                peak = {} if args.no_memory else {k: peak_memory_mib(f) for k, f in jobs.items()}
                for k in models:
                    out["rows"].append(
                        {
                            "threads": n,
                            "T": T,
                            "implementation": k,
                            "train_ms": train[k],
                            "train_ratio": train[k] / train["nn.GRU"],
                            "peak_mib": peak.get(k),
                            "sample_b1_ms": sample[k],
                            "sample_b1_ratio": sample[k] / sample["nn.GRU"],
                        }
                    )
                print(f"   T={T} done", flush=True)
    out["goals"] = linear_goals(out["rows"])
    return out


def linear_goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal of :data:`LINEAR_GOALS` at each thread count and ``T`` it applies to
    (sampling, which does not depend on ``T``, once)."""
    at = {(r["threads"], r["T"], r["implementation"]): r for r in rows}
    field = {"train": "train_ms", "peak": "peak_mib", "sample": "sample_b1_ms"}
    goals = []
    for threads, T in sorted({(r["threads"], r["T"]) for r in rows}, key=lambda k: (-k[0], k[1])):
        for row, measure, over, bound, from_T in LINEAR_GOALS:
            if T < from_T or (measure == "sample" and T != min(r["T"] for r in rows)):
                continue
            a, b = at[(threads, T, row)][field[measure]], at[(threads, T, over)][field[measure]]
            if a is None or b is None or b <= 0:
                continue
            ratio = a / b
            goals.append(
                {
                    "threads": threads,
                    "T": None if measure == "sample" else T,
                    "row": row,
                    "measure": measure,
                    "over": over,
                    "ratio": ratio,
                    "goal": bound,
                    "met": round(ratio, 2) <= bound,
                }
            )
    return goals


def print_linear(result: dict[str, Any], default: int) -> None:
    for n in result["thread_counts"]:
        print(f"\n## Linear recurrences, {threads_label(n, default)}")
        print(
            f"B={LINEAR_BATCH}, I={LINEAR_I}, H={LINEAR_H}, {LINEAR_L} layers, train step "
            "(forward, mean squared output, backward, Adam); sampling: "
            f"{SAMPLE_STEPS} steps at B=1, no grad"
        )
        print("| T | implementation | train ms | / nn.GRU | peak MiB | sample B=1 / nn.GRU |")
        print("|---|---|---|---|---|---|")
        for r in result["rows"]:
            if r["threads"] == n:
                print(
                    f"| {r['T']} | {r['implementation']} | {r['train_ms']:.2f} "
                    f"| {r['train_ratio']:.2f} | {fmt(r['peak_mib'], '.1f')} "
                    f"| {r['sample_b1_ratio']:.2f} |"
                )
    print("\n## Goals (met when the ratio, to two decimals, is at most the goal)")
    print("| threads | T | ratio | goal | measured | verdict |")
    print("|---|---|---|---|---|---|")
    for g in result["goals"]:
        print(
            f"| {g['threads']} | {fmt(g['T'], 'd')} | {g['measure']}: {g['row']} / {g['over']} "
            f"| ≤ {g['goal']:.2f} | {g['ratio']:.2f} | {'ok' if g['met'] else '**MISS**'} |"
        )


# -- goals -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """A goal of the speed issue for one measure of a row: ``measure`` (a ratio field of
    the row) at most ``limit``, or at most the row's FLOP ratio where ``limit`` is None."""

    measure: str
    limit: float | None = None

    def bound(self, row: dict[str, Any]) -> float:
        return row["flop_ratio"] if self.limit is None else self.limit


MEASURES = {
    "train_ratio": "train",
    "sample_b1_ratio": "sample B=1",
    "sample_b64_ratio": f"sample B={BATCH}",
    "peak_ratio": "peak memory",
    "packed_ratio": "packed / unpadded",
}


def goals_of(impl: Impl) -> list[Goal]:
    """The goals a row is held to, as in docs/benchmarks.md's results table.

    torch.nn's own rows and the compiled ones have none; ``shared`` on the reference loop
    and the Nested LSTM's sampling are shown without one.
    """
    if impl.executor in ("torch", "torch native") or impl.compiled:
        return []
    if impl.name.endswith(SPLIT_STEP):  # held to the kernel's time (split_vs_kernel)
        return []
    if impl.train_goal is not None:  # the backbones rows: their issue's training goal only
        return [Goal("train_ratio", impl.train_goal)]
    handbuilt = impl.executor == "handbuilt"
    gru_cross = impl.cell == "GRU" and impl.routing == "cross_layer"
    goals: list[Goal] = []
    # one training step, over nn.GRU / nn.LSTM (oneDNN on) of the same size
    if impl.cell == "NestedLSTM":
        goals.append(Goal("train_ratio", 3.0))
    elif gru_cross:
        goals.append(Goal("train_ratio"))  # at most its FLOP ratio
    elif impl.cell == "LSTM" and handbuilt:
        goals.append(Goal("train_ratio", 1.5))
    elif handbuilt:
        goals.append(Goal("train_ratio", 1.0))
    elif impl.executor in ("auto", "drop-in"):
        goals.append(Goal("train_ratio", 1.05))
    # sampling, over nn.GRU / nn.LSTM stepping
    if gru_cross:
        goals += [Goal("sample_b1_ratio"), Goal("sample_b64_ratio")]
    elif impl.executor == "drop-in" and impl.cell == "GRU":
        goals += [Goal("sample_b1_ratio", 1.0), Goal("sample_b64_ratio", 1.0)]
    elif impl.cell == "LSTM" and handbuilt:
        goals += [Goal("sample_b1_ratio", 1.0), Goal("sample_b64_ratio", 1.0)]
    elif impl.cell == "GRU" and impl.executor in ("auto", "handbuilt"):
        goals.append(Goal("sample_b1_ratio", 1.0))
    goals.append(Goal("peak_ratio", 1.5))  # every recurrentkit row
    return goals


PACKED_GOAL = Goal("packed_ratio", 1.2)  # every recurrentkit row of the packed comparison


def check_goals(row: dict[str, Any], goals: list[Goal]) -> None:
    """Add ``row["goals"]``: per measured ratio with a goal, the bound and whether it is
    met. A ratio meets its goal when, as printed (two decimals), it is at most the bound."""
    checked = {}
    for g in goals:
        if g.measure in row:
            bound = g.bound(row)
            checked[g.measure] = {
                "goal": bound,
                "flop_goal": g.limit is None,
                "met": round(row[g.measure], 2) <= round(bound, 2),
            }
    if checked:
        row["goals"] = checked


# -- the run ---------------------------------------------------------------------------------


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_size(
    label: str,
    size: tuple[int, int, int],
    impls: list[Impl],
    args: argparse.Namespace,
    thread_counts: list[int],
) -> dict[int, dict[str, Any]]:
    """Every row of one size at each thread count: ``{threads: {"rows", "packed"}}``.

    The models are built once (compiled ones compiled under the first thread count, which
    alone reports ``compile_s``); at each thread count every implementation is timed in
    the same interleaved rounds, so each ratio compares runs at one thread count.
    """
    E, H, L = size
    print(f"\n== {label}: E={E} H={H} L={L}, batch {BATCH} x {STEPS}, vocab {VOCAB} ==", flush=True)
    runners: dict[str, Runner] = {}
    compile_s: dict[str, float] = {}
    with num_threads(thread_counts[0]):
        for i, impl in enumerate(impls):
            key = row_key(impl)
            runners[key] = make_runner(impl, size, seed=i)
            if impl.compiled:
                t0 = time.perf_counter()
                runners[key].train_step()
                compile_s[key] = time.perf_counter() - t0
    packed_jobs = None if args.no_packed else packed_runners(size)
    out: dict[int, dict[str, Any]] = {}
    for n in thread_counts:
        print(f"-- {threads_label(n, None)}", flush=True)
        with num_threads(n):
            rows = measure_rows(label, size, impls, runners, args, n)
            packed = [] if packed_jobs is None else measure_packed(label, packed_jobs, args, n)
        if n == thread_counts[0]:
            for row, impl in zip(rows, impls):
                if row_key(impl) in compile_s:
                    row["compile_s"] = compile_s[row_key(impl)]
        out[n] = {"rows": rows, "packed": packed}
    return out


def measure_rows(
    label: str,
    size: tuple[int, int, int],
    impls: list[Impl],
    runners: dict[str, Runner],
    args: argparse.Namespace,
    threads: int,
) -> list[dict[str, Any]]:
    """Train, sample and memory of every row, at the thread count already set."""
    E, H, L = size
    train = interleaved({k: r.train_step for k, r in runners.items()}, args.repeat, 2, seed=1)
    sample_jobs: dict[tuple[str, int], Callable[[], None]] = {}
    for k, r in runners.items():
        if r.impl.compiled:
            continue
        sample_jobs[(k, 1)] = functools.partial(r.sample, 1)
        sample_jobs[(k, BATCH)] = functools.partial(r.sample, BATCH)
    sample = interleaved(sample_jobs, max(3, args.repeat // 2), 1, seed=2)
    memory = {}
    if not args.no_memory:
        for k, r in runners.items():
            if not r.impl.compiled:
                memory[k] = peak_memory_mib(r.train_step)
    rows = []
    for impl in impls:
        k = row_key(impl)
        base = row_key_by_name(impls, impl.baseline)
        row: dict[str, Any] = {
            "size": label,
            "threads": threads,
            "E": E,
            "H": H,
            "L": L,
            "implementation": impl.name,
            "cell": impl.cell,
            "routing": impl.routing,
            "executor": impl.executor,
            "train_ms": train[k],
            "train_ratio": train[k] / train[base],
            "baseline": impl.baseline,
        }
        if impl.cell in ("LSTM", "NestedLSTM", "CoupledLSTM", "LayerNormLSTM"):
            native = row_key_by_name(impls, "nn.LSTM (oneDNN off)")
            row["train_ratio_vs_native_lstm"] = train[k] / train[native]
        if impl.routing == "cross_layer":
            row["flop_ratio"] = cross_layer_flop_ratio(E, H, L, 4 if impl.cell == "LSTM" else 3)
        if (k, 1) in sample:
            sname = impl.sample_baseline or ("nn.GRU" if impl.cell == "GRU" else "nn.LSTM")
            sbase = row_key_by_name(impls, sname)
            for b in (1, BATCH):
                row[f"sample_b{b}_ms"] = sample[(k, b)]
                row[f"sample_b{b}_ratio"] = sample[(k, b)] / sample[(sbase, b)]
        if k in memory:
            row["peak_mib"] = memory[k]
            row["peak_ratio"] = memory[k] / memory[base] if memory[base] > 0 else float("nan")
        check_goals(row, goals_of(impl))
        rows.append(row)
    return rows


@dataclass
class PackedJobs:
    """The packed comparison's models, built once for every thread count."""

    candidates: list[Impl]
    jobs: dict[tuple[str, str], Callable[[], None]]
    tokens: int
    dense_batch: int


def packed_runners(size: tuple[int, int, int]) -> PackedJobs:
    """Mixed lengths (with lengths) against the same real tokens unpadded."""
    lengths = name_lengths(BATCH, seed=0)
    tokens = int(lengths.sum())
    dense_batch = max(1, round(tokens / STEPS))
    candidates = [
        Impl("nn.GRU", "GRU", "-", "torch", lambda E, H, L: (nn.GRU(E, H, L), "torch"), "nn.GRU"),
        Impl(
            "Stack GRU",
            "GRU",
            "independent",
            "auto",
            stack_builder("GRU", "independent", "auto"),
            "nn.GRU",
        ),
        Impl(
            "Stack GRU",
            "GRU",
            "independent",
            "handbuilt",
            stack_builder("GRU", "independent", "handbuilt"),
            "nn.GRU",
        ),
        Impl(
            "Stack GRU",
            "GRU",
            "shared",
            "handbuilt",
            stack_builder("GRU", "shared", "handbuilt"),
            "nn.GRU",
        ),
        Impl(
            "Stack GRU",
            "GRU",
            "cross_layer",
            "handbuilt",
            stack_builder("GRU", "cross_layer", "handbuilt"),
            "nn.GRU",
        ),
    ]
    jobs: dict[tuple[str, str], Callable[[], None]] = {}
    for i, impl in enumerate(candidates):
        k = row_key(impl)
        jobs[(k, "packed")] = make_runner(impl, size, seed=i, lengths=lengths).train_step
        jobs[(k, "dense")] = make_runner(impl, size, seed=i, batch=dense_batch).train_step
        jobs[(k, "padded")] = make_runner(impl, size, seed=i).train_step
    return PackedJobs(candidates, jobs, tokens, dense_batch)


def measure_packed(
    label: str, packed: PackedJobs, args: argparse.Namespace, threads: int
) -> list[dict[str, Any]]:
    """The packed comparison's rows, at the thread count already set."""
    t = interleaved(packed.jobs, max(3, args.repeat // 2), 1, seed=3)
    out = []
    for impl in packed.candidates:
        k = row_key(impl)
        row = {
            "size": label,
            "threads": threads,
            "implementation": impl.name,
            "routing": impl.routing,
            "executor": impl.executor,
            "real_tokens": packed.tokens,
            "mean_length": packed.tokens / BATCH,
            "dense_batch": packed.dense_batch,
            "with_lengths_ms": t[(k, "packed")],
            "unpadded_ms": t[(k, "dense")],
            "padded_no_lengths_ms": t[(k, "padded")],
            "packed_ratio": t[(k, "packed")] / t[(k, "dense")],
        }
        check_goals(row, [] if impl.executor == "torch" else [PACKED_GOAL])
        out.append(row)
    return out


def row_key(impl: Impl) -> str:
    return f"{impl.name}|{impl.routing}|{impl.executor}"


def row_key_by_name(impls: list[Impl], name: str) -> str:
    return next(row_key(i) for i in impls if i.name == name)


def parse_threads(spec: str, default: int) -> list[int]:
    """``--threads``: comma-separated counts, ``default`` standing for ``default``; each
    count once, in the order given. Raises ValueError on anything else."""
    counts: list[int] = []
    for part in spec.split(","):
        word = part.strip().lower()
        if word == "default":
            n = default
        elif word.isdigit() and int(word) > 0:
            n = int(word)
        else:
            raise ValueError(part)
        if n not in counts:
            counts.append(n)
    return counts


def goal_summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every goal of the run once, with its ratio and verdict at each thread count."""
    summary: dict[tuple[str, ...], dict[str, Any]] = {}
    for key, run in result["by_threads"].items():
        for size_result in run["sizes"]:
            for row in size_result["rows"] + size_result["packed"]:
                for measure, g in row.get("goals", {}).items():
                    ident = (
                        row["size"],
                        row["implementation"],
                        row["routing"],
                        row["executor"],
                        measure,
                    )
                    entry = summary.setdefault(
                        ident,
                        {
                            "size": row["size"],
                            "implementation": row["implementation"],
                            "routing": row["routing"],
                            "executor": row["executor"],
                            "measure": measure,
                            "goal": g["goal"],
                            "flop_goal": g["flop_goal"],
                            "by_threads": {},
                        },
                    )
                    entry["by_threads"][key] = {"ratio": row[measure], "met": g["met"]}
    return list(summary.values())


# -- printing ----------------------------------------------------------------------------------


def fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def threads_label(n: int, default: int | None) -> str:
    """``2 threads (torch's default)``, ``1 thread``."""
    return f"{n} thread{'s' if n != 1 else ''}" + (" (torch's default)" if n == default else "")


def print_tables(result: dict[str, Any]) -> None:
    default = result["default_threads"]
    for run in result["by_threads"].values():
        n = run["threads"]
        print(f"\n## {threads_label(n, default)}")
        for size_result in run["sizes"]:
            print_size(size_result, threads_label(n, default))
    print_goals(result)


def print_size(size_result: dict[str, Any], threads: str) -> None:
    rows = size_result["rows"]
    if not rows:
        return
    r0 = rows[0]
    print(f"\n### {r0['size']} (E={r0['E']}, H={r0['H']}, L={r0['L']}), {threads}")
    head = (
        "| implementation | routing | executor | train ms | ratio | vs native LSTM "
        "| flop ratio | sample B=1 ratio | sample B=64 ratio | peak MiB | mem ratio |"
    )
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for r in rows:
        extra = f" (compile {r['compile_s']:.1f} s)" if "compile_s" in r else ""
        print(
            f"| {r['implementation']}{extra} | {r['routing']} | {r['executor']} "
            f"| {r['train_ms']:.2f} | {r['train_ratio']:.2f} "
            f"| {fmt(r.get('train_ratio_vs_native_lstm'))} | {fmt(r.get('flop_ratio'))} "
            f"| {fmt(r.get('sample_b1_ratio'))} | {fmt(r.get('sample_b64_ratio'))} "
            f"| {fmt(r.get('peak_mib'), '.1f')} | {fmt(r.get('peak_ratio'))} |"
        )
    for cell, ratio in split_vs_kernel(rows):
        verdict = "ok" if round(ratio, 2) <= SPLIT_STEP_GOAL else "MISS"
        print(
            f"\n{cell} split-step plan / hand-built kernel, train step: {ratio:.2f} "
            f"(goal ≤ {SPLIT_STEP_GOAL:.2f}: {verdict})"
        )
    if size_result["packed"]:
        p0 = size_result["packed"][0]
        print(
            f"\nPacked input ({p0['real_tokens']} real tokens in {BATCH} names, mean length "
            f"{p0['mean_length']:.1f}; unpadded = {p0['dense_batch']} full rows of {STEPS}), "
            f"{threads}:"
        )
        print(
            "| implementation | routing | executor | with lengths ms | unpadded ms "
            "| padded ms | ratio |"
        )
        print("|---|---|---|---|---|---|---|")
        for p in size_result["packed"]:
            print(
                f"| {p['implementation']} | {p['routing']} | {p['executor']} "
                f"| {p['with_lengths_ms']:.2f} | {p['unpadded_ms']:.2f} "
                f"| {p['padded_no_lengths_ms']:.2f} | {p['packed_ratio']:.2f} |"
            )


def print_goals(result: dict[str, Any]) -> None:
    """One line per goal, a column per thread count: the ratio, and ``ok`` or ``MISS``."""
    goals = result["goals"]
    if not goals:
        return
    default = result["default_threads"]
    keys = list(result["by_threads"])
    labels = [threads_label(result["by_threads"][k]["threads"], default) for k in keys]
    print(
        "\n## Goals at each thread count (met when the ratio, to two decimals, is at most the "
        "goal; misses in bold)"
    )
    head = "| size | implementation | routing | executor | measure | goal |"
    print(head + "".join(f" {label} |" for label in labels))
    print("|---" * (6 + len(keys)) + "|")
    for g in goals:
        cells = []
        for k in keys:
            v = g["by_threads"].get(k)
            if v is None:
                cells.append("-")
            elif v["met"]:
                cells.append(f"{v['ratio']:.2f} ok")
            else:
                cells.append(f"**{v['ratio']:.2f}** MISS")
        goal = f"≤ {g['goal']:.2f}" + (" (FLOPs)" if g["flop_goal"] else "")
        print(
            f"| {g['size']} | {g['implementation']} | {g['routing']} | {g['executor']} "
            f"| {MEASURES[g['measure']]} | {goal} | " + " | ".join(cells) + " |"
        )
    met = result["goals_met"]
    print(
        "\nGoals met: "
        + "; ".join(f"{label} {met[k]['met']} of {met[k]['of']}" for k, label in zip(keys, labels))
    )


def main(argv: list[str] | None = None) -> int:
    default_threads = torch.get_num_threads()  # torch's, before this script changes it
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="alpha,beta,gamma", help="comma-separated: alpha,beta,gamma"
    )
    parser.add_argument("--repeat", type=int, default=15, help="timed rounds per measurement")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="alpha and beta, 5 rounds, no memory (~1 min per thread count)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help=(
            "add torch.compile'd stacks (slow), then print each policy's cold compile time "
            "and compiled/eager train-step ratio for a γ stack (benchmarks/compile_bench.py)"
        ),
    )
    parser.add_argument(
        "--rows",
        choices=ROW_SETS,
        default="speed",
        help=(
            "which rows: the speed issue's (default), the backbones issue's (new cells vs "
            "torch.nn, regularisers vs the bare cell), or all"
        ),
    )
    parser.add_argument(
        "--compile-mode",
        choices=["default", "reduce-overhead", "max-autotune"],
        default="default",
        help="torch.compile's mode for --compile (reduce-overhead: CUDA graphs on a GPU)",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default cpu)"
    )
    parser.add_argument(
        "--threads",
        default="default,1",
        help=(
            "torch thread counts to measure at, comma-separated; 'default' is torch's "
            f"(here {default_threads}); default: default,1"
        ),
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=max(LINEAR_STEPS),
        help=f"--rows linear: the longest T of {LINEAR_STEPS} to measure",
    )
    parser.add_argument(
        "--method",
        choices=rk.scan.METHODS,
        default="auto",
        help="--rows linear: the scan method of the linear rows (the log row keeps 'log')",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--no-packed", action="store_true", help="skip the packed-input comparison")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of tables"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=rk.routing.LeakWarning)  # handoff, expected
    warnings.filterwarnings("ignore", message=".*TF32.*")  # oneDNN flags on a CPU build
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit, in inductor
    if args.quick:
        args.sizes, args.repeat, args.no_memory = "alpha,beta", 5, True
    try:
        thread_counts = parse_threads(args.threads, default_threads)
    except ValueError:
        parser.error(
            "--threads: expected positive integers or 'default', comma-separated, "
            f"got {args.threads!r}"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device: expected cpu on this machine (torch sees no CUDA device), got cuda")
    global DEVICE, COMPILE_MODE
    DEVICE = torch.device(args.device)
    COMPILE_MODE = None if args.compile_mode == "default" else args.compile_mode
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: expected names among {', '.join(SIZES)}, got {', '.join(unknown)}")
    if args.rows == "linear":
        return main_linear(args, thread_counts, default_threads)
    impls = implementations(args.compile, args.rows)
    out = sys.stdout
    if args.json:
        sys.stdout = sys.stderr  # progress lines go to stderr, the document to stdout
    started = time.time()
    result: dict[str, Any] = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
        "default_threads": default_threads,
        "thread_counts": thread_counts,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        # keyed by thread count (JSON keys are strings): {"2": {"threads": 2, ...}, "1": ...}
        "by_threads": {
            str(n): {"threads": n, "default": n == default_threads, "sizes": []}
            for n in thread_counts
        },
    }
    try:
        for label in sizes:
            by_threads = run_size(label, SIZES[label], impls, args, thread_counts)
            for n, size_result in by_threads.items():
                result["by_threads"][str(n)]["sizes"].append(size_result)
    finally:
        torch.set_num_threads(default_threads)
        sys.stdout = out
    result["goals"] = goal_summary(result)
    result["goals_met"] = {
        k: {
            "met": sum(g["by_threads"][k]["met"] for g in result["goals"] if k in g["by_threads"]),
            "of": sum(k in g["by_threads"] for g in result["goals"]),
        }
        for k in result["by_threads"]
    }
    result["seconds"] = time.time() - started
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_tables(result)
        counts = ", ".join(threads_label(n, default_threads) for n in thread_counts)
        print(
            f"\n{result['command']} — torch {result['torch']}, {result['device']}, "
            f"{counts}, {result['seconds']:.0f} s"
        )
        if args.compile and DEVICE.type == "cpu":
            compile_times()
    return 0


def main_linear(args: argparse.Namespace, thread_counts: list[int], default: int) -> int:
    """``--rows linear``: :func:`run_linear`, printed as tables or one JSON document."""
    out = sys.stdout
    if args.json:
        sys.stdout = sys.stderr  # progress lines go to stderr, the document to stdout
    started = time.time()
    try:
        result = run_linear(args, thread_counts, default)
    finally:
        torch.set_num_threads(default)
        sys.stdout = out
    result["command"] = " ".join([os.path.basename(sys.executable), *sys.argv])
    result["torch"] = torch.__version__
    result["device"] = str(DEVICE)
    result["seconds"] = time.time() - started
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_linear(result, default)
        print(f"\n{result['command']} — torch {result['torch']}, {result['seconds']:.0f} s")
    return 0


def compile_times() -> None:
    """Each policy's cold compile time and compiled/eager ratio for a γ stack, each in a
    fresh process (``benchmarks/compile_bench.py``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import compile_bench
    finally:
        sys.path.pop(0)
    compile_bench.main([])


if __name__ == "__main__":
    raise SystemExit(main())
