"""The fast executor: runs any policy's semantics on the fastest exact path it can.

Which path is a plan, chosen from the ordered tables of :mod:`.plans` by what the policy
and the cells declare (see there, and :meth:`~recurrentkit.Stack.explain`). This module
holds the executor those plans run on: one step of a layer (:meth:`FastExecutor.cell`:
layer 1's hoisted projection, torch's fused cell op without autograd, a step whose input
is its state's ``h`` as one matmul with summed weights, a kernel's or a split cell's
step) and each plan's runner. One step (:meth:`FastExecutor.step`) is the policy's
``step`` on those cell steps; without autograd a stack of built-in RNN/GRU/LSTM cells
keeps its executor from one step to the next (:func:`step_layers`).

Under ``torch.compile`` a stack of built-in cells without ``lengths`` or resets runs
each layer's whole-sequence kernel as ``torch.library`` custom ops (plan
``"kernel_ops"``, :mod:`.kernels.ops`); other traced runs (``torch.export``, lengths,
resets, cells without a kernel) are torch's scan operator over plain autograd ops (no
custom autograd functions, no ``torch._VF`` calls). Under torch.func transforms and
autocast the plans run on plain ops too (torch's fused ops stay: they follow autocast
themselves).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from recurrentkit import scan as linear_scan
from recurrentkit._scan import Restart, length_mask, scan, scan_op, traced
from recurrentkit._validation import map_state
from recurrentkit.cells import (
    CoupledLSTMCell,
    GRUCell,
    IndRNNCell,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    LRUCell,
    LSTMCell,
    MGUCell,
    MinGRUCell,
    MinLSTMCell,
    RNNCell,
    scans_linearly,
)
from recurrentkit.executors import plans
from recurrentkit.executors.cross_layer import run as cross_run
from recurrentkit.executors.cross_layer.mix import cross_step
from recurrentkit.executors.deferred import DeferredLinear
from recurrentkit.executors.kernels import CellKernel, kernel_for, split_kernel_for
from recurrentkit.executors.kernels import ops as kernel_ops
from recurrentkit.executors.kernels.base import Linear
from recurrentkit.executors.kernels.linear import linear_coefficients
from recurrentkit.executors.packing import Schedule, cat_states, schedule
from recurrentkit.executors.plans import choose
from recurrentkit.executors.reference import ReferenceExecutor
from recurrentkit.executors.torch_ops import (
    fusable,
    run_torch_layer,
    run_torch_layers,
    run_torch_rows,
    torch_cell,
    torch_mode,
)
from recurrentkit.routing.base import RoutingPolicy, state_h
from recurrentkit.routing.cross_layer import CrossLayer

__all__ = ["FastExecutor", "plain_mode", "scan_policy", "scans_layers", "step_layers"]


def plain_mode() -> bool:
    """Whether only plain autograd ops may run (``torch.compile`` tracing, torch.func)."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def autocast_on() -> bool:
    """Whether autocast is on (CPU or CUDA): the hand-written ops are written for one
    dtype, so under autocast the plans run on plain ops, which autocast converts."""
    try:
        return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def step_layers(
    owner: nn.Module,
    cells: Sequence[nn.Module],
    dropout: float,
    training: bool,
    *,
    torch_ops: bool,
) -> FastExecutor:
    """The executor for one step of ``owner``'s ``cells``: built once and kept (per
    ``owner``) for steps without autograd while nothing it was planned from changes.

    A sampling loop steps a stack many times, and building the executor each step cost
    about 20 µs of a β-size ``cross_layer`` step's 240 inside such a loop (6 µs timed
    alone; ``docs/benchmarks.md``). It is kept only where its plan depends on nothing
    but what is compared here: the cells themselves (their identity, and for built-in RNN, GRU
    and LSTM cells their torch mode), dropout, train mode, ``torch_ops`` and autocast:
    stacks of the built-in cells of :data:`_PLANNED_BY_TYPE`. Other cells, grad mode and
    ``torch.compile`` tracing get a new executor each step.
    The kept one gets a fresh ``linear`` each step (no views or slots carried over).
    """
    if torch.is_grad_enabled() or plain_mode():
        return FastExecutor(cells, dropout, training, torch_ops=torch_ops)
    cells = tuple(cells)
    key = (cells, dropout, training, torch_ops, autocast_on(), tuple(map(torch_mode, cells)))
    hit = _STEP_LAYERS.get(owner)
    if hit is not None and hit[0] == key:
        hit[1]._linear = DeferredLinear() if hit[1].custom else F.linear
        return hit[1]
    layers = FastExecutor(cells, dropout, training, torch_ops=torch_ops)
    if all(type(c) in _PLANNED_BY_TYPE for c in cells):
        _STEP_LAYERS[owner] = (key, layers)
    return layers


_STEP_LAYERS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], FastExecutor]] = (
    weakref.WeakKeyDictionary()
)
""":func:`step_layers`' kept executors, one per owner (gone with it)."""

_PLANNED_BY_TYPE = (
    RNNCell,
    GRUCell,
    LSTMCell,
    MGUCell,
    CoupledLSTMCell,
    IndRNNCell,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    MinGRUCell,
    MinLSTMCell,
    LRUCell,
)
"""Cells whose plan :func:`step_layers`' key fully describes: the built-in cells whose
kernel, torch mode, split step and linear recurrence follow from their exact type (and
their torch mode). Not the Nested LSTM (its kernel depends on its inner cells) or the
wrappers (their split step depends on the cell they wrap)."""


class FastExecutor:
    """An :class:`~recurrentkit.routing.Executor` on fused ops and hand-built kernels,
    choosing its plans from the tables of :mod:`.plans`.

    Args:
        cells: the stack's cells, bottom first.
        dropout: inter-layer dropout probability.
        training: training mode (dropout on).
        torch_ops: run layers that are exactly torch layers on torch's fused ops.
        torch_lstm_rows: with ``torch_ops``, LSTM layers too (``False``: on their
            kernel: a run over rows of unequal lengths, where torch's LSTM op on the CPU
            is slower than the kernel; see :class:`~recurrentkit.Stack`'s resets).

    Attributes (what the plans' predicates read):
        cells: the cells, bottom first.
        reference: the :class:`~.reference.ReferenceExecutor` over the same cells.
        plain: only plain autograd ops may run (``torch.compile`` tracing, torch.func).
        custom: hand-written autograd ops may run (eager, no autocast).
        kernel_ops: the kernels' whole-sequence ops may run as ``torch.library``
            custom ops (``torch.compile`` tracing, no autocast; :mod:`.kernels.ops`).
        modes: each layer's torch mode where it runs on torch's ops (else ``None``).
        kernels: each layer's built-in kernel (else ``None``).
        steppers: what steps each layer from projected input: its kernel, or the
            adapter of a cell's declared split step (else ``None``).
        linear: whether each layer declares a linear recurrence
            (:func:`~recurrentkit.cells.scans_linearly`).
    """

    def __init__(
        self,
        cells: Sequence[nn.Module],
        dropout: float,
        training: bool,
        *,
        torch_ops: bool,
        torch_lstm_rows: bool = True,
    ) -> None:
        cells = tuple(cells)  # (iterated several times below: a ModuleList is slow to walk)
        self.cells = cells
        self.dropout = dropout
        self.training = training
        self.reference = ReferenceExecutor(cells, dropout, training)
        self.plain = plain_mode()
        self.traced = traced()
        self.restart: Restart | None = None  # traced resets (set by the Stack)
        self.scanning = False  # inside the "scan" plan: layers run as torch's scan
        self.kernels: list[CellKernel | None] = [kernel_for(c) for c in cells]
        self.steppers: list[CellKernel | None] = [
            k if k is not None else split_kernel_for(c) for k, c in zip(self.kernels, cells)
        ]
        self.linear = [scans_linearly(c) for c in cells]
        use_torch = torch_ops and not self.plain
        modes = [torch_mode(c) if use_torch else None for c in cells]
        self.modes = [None if m == "LSTM" and not torch_lstm_rows else m for m in modes]
        # hand-written autograd ops (fused steps, sequence kernels, deferred weight
        # gradients in step loops): not while tracing, under torch.func or autocast
        self.custom = not self.plain and not autocast_on()
        # under torch.compile (not torch.export, not torch.func): the kernels' whole-
        # sequence ops as torch.library custom ops (.kernels.ops)
        self.kernel_ops = kernel_ops.active() and not autocast_on()
        self._linear: Linear = DeferredLinear() if self.custom else F.linear
        self._x_t: Tensor | None = None  # layer 1's input at the current step ...
        self._gi_t: Tensor | None = None  # ... and its hoisted projection
        # whole runs (not single steps) tie a layer's weights when its input is its h
        self._tie = False
        self._tied: dict[int, tuple[Tensor, Tensor | None] | None] = {}

    # -- the Executor protocol -------------------------------------------------------

    def cell(self, layer: int, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        kern, cell = self.steppers[layer], self.cells[layer]
        if kern is None:
            return self.reference.cell(layer, x, state)
        linear = self._linear
        if layer == 0 and x is self._x_t:
            assert self._gi_t is not None
            return kern.step(cell, self._gi_t, state, linear)
        mode = self.modes[layer]
        if mode is not None and self.torch_cell_step(layer) and not _grad(cell):
            return torch_cell(cell, mode, x, state)  # inference: one fused torch op
        tied = self._tied_step(layer, x, state, linear)
        if tied is not None:
            return tied
        return kern.step(cell, kern.project(cell, x, linear), state, linear)

    def drop(self, layer: int, y: Tensor) -> Tensor:
        return self.reference.drop(layer, y)

    def run_layer(
        self, layer: int, x: Tensor, state: Any, lengths: Tensor | None
    ) -> tuple[Tensor, Any]:
        plan = choose(plans.LAYER, self, layer, x.shape[0], lengths)
        assert plan.run is not None  # (every LAYER plan has a runner)
        return plan.run(self, layer, x, state, lengths)

    # -- entry points ----------------------------------------------------------------

    def run(
        self,
        policy: RoutingPolicy,
        x: Tensor,
        states: tuple[Any, ...],
        lengths: Tensor | None,
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """``policy`` over ``x (T, B, I)`` from ``states``: ``(outputs (T, B, O), states)``,
        on the first plan of :data:`.plans.WHOLE_RUN` that applies."""
        self._tie = not self.plain
        plan = choose(plans.WHOLE_RUN, self, policy, lengths)
        assert plan.run is not None  # (every WHOLE_RUN plan has a runner)
        return plan.run(self, policy, x, states, lengths)

    def run_packed(
        self, policy: RoutingPolicy, data: Tensor, sched: Schedule, states: tuple[Any, ...]
    ) -> tuple[Tensor, tuple[Any, ...]] | None:
        """``policy`` over packed rows ``data (N, I)`` (a PackedSequence's own data) on
        the first plan of :data:`.plans.PACKED` that applies, or ``None`` where that is
        ``"padded"`` (the caller pads and calls :meth:`run`). ``states`` and the
        returned final states are in the original batch order; outputs are packed rows
        ``(N, O)``."""
        plan = choose(plans.PACKED, self, policy)
        if plan.run is None:
            return None
        return plan.run(self, policy, data, sched, states)

    def step(
        self, policy: RoutingPolicy, x: Tensor, states: tuple[Any, ...]
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """One step ``x (B, I)``: ``(y (B, O), states)``."""
        if type(policy).step is RoutingPolicy.step:  # a policy defined by run() only
            out, new = policy.run(self, x.unsqueeze(0), states, None)
            return out[0], new
        return self._policy_step(policy)(x, states)

    def explain(
        self,
        policy: RoutingPolicy,
        steps: int,
        lengths: Tensor | None,
        *,
        packed: bool = False,
        step: bool = False,
    ) -> tuple[str, str, tuple[str, ...] | None]:
        """``(plan, why, per-layer plans or None)`` for a call over ``steps`` steps (a
        packed input, or one :meth:`step`), from the tables the runs use."""
        L = len(self.cells)
        if step:
            run_only = type(policy).step is RoutingPolicy.step
            why = (
                "one step: the policy's run on a one-step sequence (it defines no step)"
                if run_only
                else "one step: the policy's step, each layer on its step plan"
            )
            if run_only:
                return "step", why, tuple(self._layer_plan(k, 1, None) for k in range(L))
            return "step", why, tuple(choose(plans.STEP, self, k).name for k in range(L))
        if packed:
            plan = choose(plans.PACKED, self, policy)
            if plan.run is not None:
                layers = None
                if plan.name == "layers_on_rows":
                    layers = tuple("torch_op" if m else "kernel" for m in self.modes)
                return plan.name, plan.why, layers
        whole = choose(plans.WHOLE_RUN, self, policy, lengths)
        why = whole.why if not packed else f"packed input padded; {whole.why}"
        layers = None
        if whole.name == "scan":
            layers = tuple(choose(plans.STEP, self, k).name for k in range(L))
            if scans_layers(policy):
                layers = ("scan",) * L
        elif whole.name in ("one_layer", "layer_by_layer") or (
            whole.name == "kernel_ops" and policy.layer_major
        ):
            layers = tuple(self._layer_plan(k, steps, lengths) for k in range(L))
        elif whole.name == "layers_on_rows":
            layers = tuple("torch_op" if m else "kernel" for m in self.modes)
        elif whole.name in ("step_loop", "policy_run"):
            layers = tuple(choose(plans.STEP, self, k).name for k in range(L))
        return whole.name, why + self._explain_linear(layers), layers

    def _explain_linear(self, layers: tuple[str, ...] | None) -> str:
        """What a run's linear-recurrence layers do: the scan method each runs (and what
        ``"auto"`` picked), or why they step."""
        if not any(self.linear):
            return ""
        scanned = [k for k, p in enumerate(layers or ()) if p == "linear_scan"]
        if not scanned:
            why = (
                "torch.compile tracing, a torch.func transform or autocast: the scan is "
                "a hand-written autograd op"
                if not self.custom
                else "a step-major policy makes a layer's step read what the layer below "
                "wrote at the same step, so no layer's sequence is known before the others run"
            )
            return f"; its linear-recurrence layers step (no whole-sequence scan): {why}"
        parts = []
        for k in scanned:
            method = scan_method(self.cells[k])
            picked = linear_scan.resolve_method(method, param_device(self.cells[k]))
            how = f"{picked!r}" if method != "auto" else f"'auto' -> {picked!r}"
            parts.append(f"layer {k} scans with method {how}")
        return "; " + ", ".join(parts)

    def _layer_plan(self, layer: int, steps: int, lengths: Tensor | None) -> str:
        return choose(plans.LAYER, self, layer, steps, lengths).name

    # -- what the plans' predicates read ---------------------------------------------

    def rows_chain(self) -> bool:
        """Whether every layer runs on packed rows (torch's op or a kernel), with no
        active inter-layer dropout (its masks would be drawn over rows, not the
        reference's padded steps)."""
        return (
            not self.plain
            and all(k is not None or m is not None for k, m in zip(self.kernels, self.modes))
            and not self.dropping()
        )

    def dropping(self) -> bool:
        """Whether inter-layer dropout is active."""
        return self.training and self.dropout > 0 and len(self.cells) > 1

    def all_kernels(self) -> bool:
        """Whether every layer has a built-in kernel."""
        return all(k is not None for k in self.kernels)

    def torch_cell_step(self, layer: int) -> bool:
        """Whether a step of ``layer`` without autograd may run on torch's cell op
        (a torch-exact layer under ``"auto"``; an LSTM without projection)."""
        mode = self.modes[layer]
        return mode is not None and (mode != "LSTM" or not self.cells[layer].proj_size)

    # -- the runners -----------------------------------------------------------------

    def run_scan(
        self,
        policy: RoutingPolicy,
        x: Tensor,
        states: tuple[Any, ...],
        lengths: Tensor | None,
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """The time loop as torch's ``scan`` operator (:func:`~recurrentkit._scan.scan_op`),
        for ``torch.compile`` and ``torch.export``: :func:`scan_policy` with layer 1's
        input projection hoisted out of the loop (and each layer's, where the policy's
        layers are scanned in turn: :meth:`scan_layer`). ``lengths`` and :attr:`restart`
        (resets) are masks inside the step."""
        if scans_layers(policy):
            self.scanning = True
            try:
                return policy.run(self, x, states, lengths)
            finally:
                self.scanning = False
        return scan_policy(policy, self, x, states, lengths, hoist=self.steppers[0])

    def scan_layer(
        self, layer: int, x: Tensor, state: Any, lengths: Tensor | None
    ) -> tuple[Tensor, Any]:
        """Layer ``layer`` over ``x (T, B, I)`` as torch's ``scan`` operator: its input
        projection over the whole sequence first where it has a kernel or split step."""
        kern, cell = self.steppers[layer], self.cells[layer]
        restart = None if self.restart is None else self.restart.layer(layer)
        if kern is None:
            return scan_op(self.reference.cell_step(layer), (x,), state, lengths, restart)
        gi = _project_all(kern, cell, x)  # (T, B, G)
        return scan_op(lambda gi_t, s: kern.step(cell, gi_t, s), (gi,), state, lengths, restart)

    def run_one_layer(
        self, x: Tensor, states: tuple[Any, ...], lengths: Tensor | None
    ) -> tuple[Tensor, tuple[Any, ...]]:
        y, s = self.run_layer(0, x, states[0], lengths)
        return y, (s,)

    def run_torch_multilayer(
        self, x: Tensor, states: tuple[Any, ...], lengths: Tensor | None
    ) -> tuple[Tensor, tuple[Any, ...]]:
        mode = fusable(self.cells, self.modes)
        assert mode is not None
        return run_torch_layers(self.cells, mode, x, states, lengths, self.dropout, self.training)

    def run_torch_multilayer_rows(
        self, data: Tensor, sched: Schedule, states: tuple[Any, ...]
    ) -> tuple[Tensor, tuple[Any, ...]]:
        mode = fusable(self.cells, self.modes)
        assert mode is not None
        return run_torch_rows(self.cells, mode, data, sched, states, self.dropout, self.training)

    def run_layers_on_rows(
        self, x: Tensor, states: tuple[Any, ...], lengths: Tensor | None
    ) -> tuple[Tensor, tuple[Any, ...]]:
        sched = schedule(x, lengths)
        out, finals = self.layers_on_rows(sched.pack(x), sched, states)
        return sched.unpack(out), finals

    def run_one_step(self, layer: int, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        y, state = self.cell(layer, x[0], state)
        return y.unsqueeze(0), state

    def run_torch_layer(
        self, layer: int, x: Tensor, state: Any, lengths: Tensor | None
    ) -> tuple[Tensor, Any]:
        mode = self.modes[layer]
        assert mode is not None
        return run_torch_layer(self.cells[layer], mode, x, state, lengths, self.training)

    def run_kernel(
        self, layer: int, x: Tensor, state: Any, lengths: Tensor | None
    ) -> tuple[Tensor, Any]:
        sched = schedule(x, lengths)
        out, seq = self._sequence(layer, sched.pack(x), sched.sort_state(state), sched)
        return sched.unpack(out), sched.final_state(seq)

    def run_linear(
        self, layer: int, x: Tensor, state: Any, lengths: Tensor | None
    ) -> tuple[Tensor, Any]:
        """A linear-recurrence layer over the sequence: the whole input projected in
        one call, the coefficients ``(a, b)`` computed for every step at once, one
        :func:`recurrentkit.scan.linear`, the outputs from all states at once. Past a
        sequence's end its state is frozen (the last state is the final one) and its
        outputs are zero."""
        cell: Any = self.cells[layer]  # (declares the linear recurrence: scans_linearly)
        T, B = x.shape[0], x.shape[1]
        gi = cell.input_projection(x.reshape(T * B, -1)).reshape(T, B, -1)  # (T, B, G)
        a, b = linear_coefficients(cell, gi)  # (T, B, N) each (a may broadcast)
        h = linear_scan.linear(a, b, state, method=scan_method(cell), lengths=lengths)
        y = cell.linear_output(h, gi)  # (T, B, O)
        if lengths is not None:
            y = torch.where(length_mask(lengths, T, y.device), y, 0)
        return y, h[-1].clone()  # (the state outlives the states (T, B, N) it is in)

    def run_split(
        self, layer: int, x: Tensor, state: Any, lengths: Tensor | None
    ) -> tuple[Tensor, Any]:
        """A cell's split step over the sequence: the whole input projected in one call,
        then a step loop on the projected rows (finished sequences leave the batch), its
        weights' gradients deferred to the end of the run (:mod:`.deferred`)."""
        split, cell = self.steppers[layer], self.cells[layer]
        assert split is not None
        sched = schedule(x, lengths)
        linear = DeferredLinear() if self.custom else F.linear
        if isinstance(linear, DeferredLinear):
            linear.whole_run = True
        gis = split.project(cell, sched.pack(x)).split(sched.sizes)  # T × (B_t, G)

        def step(t: int, gi_t: Tensor, s: Any) -> tuple[Tensor, Any]:
            return split.step(cell, gi_t, s, linear)

        ys, final = step_loop(step, gis, sched.sort_state(state), sched.sizes)
        if sched.uniform:
            return torch.stack(ys), final  # (T, B, O)
        return sched.unpack(torch.cat(ys)), sched.unsort_state(final)

    def layers_on_rows(
        self, data: Tensor, sched: Schedule, states: tuple[Any, ...]
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """Each layer in turn over packed rows ``data (N, I)``, its own state carried
        (independent routing): ``(outputs (N, O), final states)``, states in the
        original batch order."""
        u, finals = data, []
        for k, cell in enumerate(self.cells):
            if (mode := self.modes[k]) is not None:
                u, (s,) = run_torch_rows([cell], mode, u, sched, (states[k],), 0.0, self.training)
            else:
                u, seq = self._sequence(k, u, sched.sort_state(states[k]), sched)
                s = sched.final_state(seq)
            finals.append(s)
        return u, tuple(finals)

    def _sequence(self, layer: int, x: Tensor, state: Any, sched: Schedule) -> tuple[Tensor, Any]:
        """Layer ``layer`` over packed rows ``x (N, I)``: ``(out (N, O), state sequence)``."""
        kern, cell = self.kernels[layer], self.cells[layer]
        assert kern is not None
        gi = kern.project(cell, x)  # (N, G)
        if self.custom or self.kernel_ops:
            return kern.sequence(cell, gi, state, sched)
        steps = gi.split(sched.sizes)
        seq: list[Any] = []

        def step(t: int, gi_t: Tensor, s: Any) -> tuple[Tensor, Any]:
            y, s = kern.step(cell, gi_t, s)
            seq.append(s)
            return y, s

        ys, _ = step_loop(step, steps, state, sched.sizes)
        return torch.cat(ys), cat_states(seq)

    def run_kernel_ops(
        self, policy: RoutingPolicy, x: Tensor, states: tuple[Any, ...]
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """Under ``torch.compile``, no lengths or resets: a layer-major policy's run (each
        layer on its kernel, as custom ops), :meth:`run_shared_first` for
        ``shared_first`` wiring, or :meth:`run_cross` for ``cross_layer``'s."""
        if policy.wiring == "shared_first":
            return self.run_shared_first(x, states, None)
        if policy.wiring == "cross_layer":
            return self.run_cross(policy, x, states, None)
        return policy.run(self, x, states, None)

    def run_shared_first(
        self, x: Tensor, states: tuple[Any, ...], lengths: Tensor | None
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """Shared routing, ``carry="first"``: layer 1 over time, the rest batched."""
        sched = schedule(x, lengths)
        u, seq = self._sequence(0, sched.pack(x), sched.sort_state(states[0]), sched)
        finals = [sched.final_state(seq)]
        for k in range(1, len(self.cells)):
            kern = self.kernels[k]
            assert kern is not None
            cell, x_k = self.cells[k], self.drop(k - 1, u)
            done = self._tied_step(k, x_k, seq, F.linear)
            if done is None:
                done = kern.step(cell, kern.project(cell, x_k), seq)
            u, seq = done  # (N, O)
            finals.append(sched.final_state(seq))
        return sched.unpack(u), tuple(finals)

    def run_cross(
        self,
        policy: RoutingPolicy,
        x: Tensor,
        states: tuple[Any, ...],
        lengths: Tensor | None,
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """``cross_layer`` over GRU/LSTM layers as one op (:mod:`.cross_layer.run`)."""
        sched = schedule(x, lengths)
        y, seqs = cross_run.cross_run(
            cast(CrossLayer, policy),  # (wiring "cross_layer": CrossLayer's layer_weights)
            self.cells,
            sched.pack(x),
            sched.sort_state(states),
            sched,
        )
        return sched.unpack(y), tuple(sched.final_state(s) for s in seqs)

    def run_steps(
        self,
        policy: RoutingPolicy,
        x: Tensor,
        states: tuple[Any, ...],
        lengths: Tensor | None,
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """A step-major policy's own ``step`` in a time loop, layer 1's projection hoisted."""
        sched = schedule(x, lengths)
        kern0 = self.steppers[0]
        if isinstance(self._linear, DeferredLinear):
            self._linear.whole_run = True  # every weight serves every step
        shrink = policy.rows_independent and all(k is not None for k in self.steppers)
        if not sched.uniform and not shrink:  # user parts: the reference's masked loop
            T, B = x.shape[0], x.shape[1]
            gis = iter(self._project0(x.reshape(T * B, -1), (B,) * T))

            policy_step = self._policy_step(policy)

            def masked(x_t: Tensor, s: tuple[Any, ...]) -> tuple[Tensor, tuple[Any, ...]]:
                self._x_t, self._gi_t = x_t, next(gis) if kern0 is not None else None
                return policy_step(x_t, s)

            return scan(masked, x, states, lengths)
        xp = sched.pack(x)  # (N, I)
        xs = xp.split(sched.sizes)
        gis_list = self._project0(xp, sched.sizes)

        policy_step = self._policy_step(policy)

        def step(t: int, x_t: Tensor, s: tuple[Any, ...]) -> tuple[Tensor, tuple[Any, ...]]:
            self._x_t, self._gi_t = x_t, gis_list[t] if gis_list else None
            return policy_step(x_t, s)

        ys, final = step_loop(step, xs, sched.sort_state(states), sched.sizes)
        self._x_t = self._gi_t = None
        if sched.uniform:
            return torch.stack(ys), final  # (T, B, O)
        return sched.unpack(torch.cat(ys)), sched.unsort_state(final)

    def _policy_step(self, policy: RoutingPolicy) -> Callable[[Tensor, Any], Any]:
        """``(x_t, states) → (y_t, states)``: the policy's own ``step``, or for
        ``cross_layer`` wiring in eager mode :func:`~.cross_layer.mix.cross_step` (its mixing
        as one op per layer and step)."""
        linear = self._linear
        if (
            policy.wiring == "cross_layer"
            and len(self.cells) > 1
            and isinstance(linear, DeferredLinear)
        ):
            cross = cast(CrossLayer, policy)  # (as run_cross's)
            return lambda x_t, s: cross_step(cross, self, linear, x_t, s)
        return lambda x_t, s: policy.step(self, x_t, s)

    def _tied_step(
        self, layer: int, x: Tensor, state: Any, linear: Linear
    ) -> tuple[Tensor, Any] | None:
        """A step of ``layer`` whose input ``x`` *is* its state's ``h`` (shared routing
        hands each layer above the first the tensor the layer below just wrote, as
        input and as state, when dropout is off) as one matmul with the summed weights
        of :meth:`CellKernel.tied_weights`; ``None`` otherwise.

        This is ``W_ih x + W_hh h = (W_ih + W_hh) h``: a GRU computes ``4H`` gate
        columns instead of ``6H``, an LSTM ``4H`` instead of ``8H``. Only inside a whole
        run, where the summed weights serve every step (built once, on first use).
        """
        kern = self.kernels[layer]
        if not self._tie or kern is None or x is not state_h(state):
            return None
        if layer not in self._tied:
            self._tied[layer] = kern.tied_weights(self.cells[layer])
        tied = self._tied[layer]
        if tied is None:
            return None
        return kern.step_tied(self.cells[layer], linear(x, *tied), state, linear)

    def _project0(self, x: Tensor, sizes: tuple[int, ...]) -> tuple[Tensor, ...]:
        kern = self.steppers[0]
        if kern is None:
            return ()
        return kern.project(self.cells[0], x).split(sizes)


def scans_layers(policy: RoutingPolicy) -> bool:
    """Whether a traced run of ``policy`` scans each layer in turn (its own ``run``): a
    policy that is not causal (``handoff``: a layer starts from the final state of the
    one below) or defines no ``step``. Every other policy runs as *one* scan of its
    ``step`` over all layers, layer-major or not (a causal policy's step is its run, one
    step at a time): one scan operator per stack, which torch 2.13's inductor needs for
    correct gradients (it corrupts the backward of a graph with two or more scans,
    pytorch#153679, unless ``torch._functorch.config.donated_buffer = False``)."""
    return not policy.causal or type(policy).step is RoutingPolicy.step


def scan_policy(
    policy: RoutingPolicy,
    executor: Any,
    x: Tensor,
    states: tuple[Any, ...],
    lengths: Tensor | None,
    *,
    hoist: CellKernel | None = None,
) -> tuple[Tensor, tuple[Any, ...]]:
    """``policy`` over ``x (T, B, I)`` on ``executor`` while tracing: one scan of its
    ``step`` (see :func:`scans_layers`), or its own ``run`` (each layer a scan).

    In the scan, layer 1's projection comes from ``hoist`` (its kernel) over the whole
    sequence, and inter-layer dropout masks are drawn for the whole sequence before the
    loop (where the cells declare ``output_size``; else each step draws its own), so
    the scanned step holds no random op and no dropout probability.
    """
    if scans_layers(policy):
        return policy.run(executor, x, states, lengths)
    seqs = [x]
    if hoist is not None:
        seqs.append(_project_all(hoist, executor.cells[0], x))  # (T, B, G)
    masks = _drop_masks(executor, x)
    seqs += masks or []

    def step(x_t: Tensor, *rest: Any) -> tuple[Tensor, tuple[Any, ...]]:
        *inputs, s = rest  # (a view per step: no executor attribute changes inside)
        gi_t = inputs.pop(0) if hoist is not None else None
        view = _ScanStep(executor, x_t, gi_t, hoist, inputs if masks is not None else None)
        return policy.step(view, x_t, s)

    return scan_op(step, tuple(seqs), states, lengths, executor.restart)


def _drop_masks(executor: Any, x: Tensor) -> list[Tensor] | None:
    """Inter-layer dropout masks ``(T, B, O_l)`` for every layer below the top, drawn
    as ``F.dropout`` of ones (scaled by ``1 / (1 - p)``); ``[]`` where dropout is off;
    ``None`` where a cell does not declare ``output_size`` (each step draws its own)."""
    cells, p = executor.cells, executor.dropout
    if not executor.training or p == 0 or len(cells) == 1:
        return []
    widths: list[int] = []
    for cell in cells[:-1]:
        width = getattr(cell, "output_size", None)
        if not isinstance(width, int):
            return None
        widths.append(width)
    T, B = x.shape[0], x.shape[1]
    return [F.dropout(x.new_ones(T, B, w), p, training=True) for w in widths]


class _ScanStep:
    """An :class:`~recurrentkit.routing.Executor` for one traced step of a policy:
    ``executor``'s, except that layer 1 on the step's input ``x_t`` steps from ``gi_t``
    (its projection, computed for the whole sequence before the loop) and that dropout
    multiplies by the step's ``masks`` (drawn before the loop) where they are given."""

    def __init__(
        self,
        executor: Any,
        x_t: Tensor,
        gi_t: Tensor | None,
        kern: CellKernel | None,
        masks: list[Tensor] | None,
    ) -> None:
        self.executor, self.x_t, self.gi_t, self.kern = executor, x_t, gi_t, kern
        self.masks = masks
        self.cells, self.training = executor.cells, executor.training
        self.restart = executor.restart

    def cell(self, layer: int, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        if layer == 0 and x is self.x_t and self.kern is not None and self.gi_t is not None:
            return self.kern.step(self.cells[0], self.gi_t, state)
        out: tuple[Tensor, Any] = self.executor.cell(layer, x, state)
        return out

    def drop(self, layer: int, y: Tensor) -> Tensor:
        if self.masks is None:
            out: Tensor = self.executor.drop(layer, y)
            return out
        return y * self.masks[layer] if layer < len(self.masks) else y

    def run_layer(
        self, layer: int, x: Tensor, state: Any, lengths: Tensor | None
    ) -> tuple[Tensor, Any]:
        out: tuple[Tensor, Any] = self.executor.run_layer(layer, x, state, lengths)
        return out


def _project_all(kern: CellKernel, cell: nn.Module, x: Tensor) -> Tensor:
    """``kern``'s input projection of a whole sequence ``x (T, B, I)`` → ``(T, B, G)``."""
    return kern.project(cell, x.flatten(0, 1)).unflatten(0, (x.shape[0], x.shape[1]))


def step_loop(
    step: Callable[[int, Tensor, Any], tuple[Tensor, Any]],
    inputs: Sequence[Tensor],
    state: Any,
    sizes: tuple[int, ...],
) -> tuple[list[Tensor], Any]:
    """Run ``step(t, inputs[t], state)`` over a packed schedule.

    ``state`` has ``sizes[0]`` rows in sorted order; at step ``t`` only its first
    ``sizes[t]`` rows run. Returns the per-step outputs and each row's state after
    its last step.
    """
    done: list[Any] = []  # states of rows that finished, latest first when reversed
    rows = sizes[0]
    ys = []
    for t, bs in enumerate(sizes):
        if bs != rows:
            done.append(map_state(lambda s: s[bs:rows], state))  # noqa: B023 (used at once)
            state = map_state(lambda s: s[:bs], state)  # noqa: B023
            rows = bs
        y, state = step(t, inputs[t], state)
        ys.append(y)
    if done:
        state = cat_states([state, *reversed(done)])
    return ys, state


def scan_method(cell: Any) -> str:
    """The :func:`recurrentkit.scan.linear` method a linear-recurrence cell asks for
    (its ``scan_method``; ``"auto"`` where it sets none)."""
    return str(getattr(cell, "scan_method", "auto"))


def param_device(cell: Any) -> torch.device:
    """The device of ``cell``'s parameters (the CPU for a cell without any)."""
    for p in cell.parameters():
        return torch.device(p.device)
    return torch.device("cpu")


def _grad(cell: Any) -> bool:
    """Whether a step of ``cell`` records autograd history."""
    return torch.is_grad_enabled() and bool(cell.weight_hh.requires_grad)
