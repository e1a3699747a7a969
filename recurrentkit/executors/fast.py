"""The fast executor: runs any policy's semantics on the fastest exact path per layer.

Chosen by what the policy and cells declare, never by what they compute:

- **layer-major policies** (they override ``run`` and call ``layers.run_layer``, e.g.
  independent, residual, handoff): each layer runs over the whole sequence on torch's
  fused op if the cell is exactly a torch layer (executor ``"auto"``), else on the
  cell's hand-built whole-sequence kernel (:mod:`.kernels`); a user cell with the
  protocol's split step projects the whole sequence at once and steps on the projected
  rows; other user cells run on the reference loop; an ``independent`` stack whose
  layers torch could hold in one module (one mode, hidden size, bias and projection)
  runs as one call of torch's multi-layer op;
- **shared routing** under ``"auto"``: the reference loop over the cells' own steps, so
  it equals the original study's literal loop to the bit; under ``"handbuilt"`` with
  ``carry="first"`` (built-in cells): only layer 1's state crosses time, so layer 1
  runs as one sequence and every layer above is one batched step over all ``T × B``
  rows at once (equal to the reference to rounding, about 1e-16 in float64);
- **step-major policies** (shared ``carry="last"``, cross_layer, user policies that
  define ``step``): the policy's own ``step`` in a time loop, with layer 1's input
  projection hoisted out of the loop (built-in cells and split user cells); with
  built-in policies and cells, finished sequences leave the batch as they end
  (otherwise the reference's masking). A reset-after GRU or an LSTM without
  projection steps as one op with a hand-written backward, other built-in cells on
  plain ops; large weights get their gradient as one matmul over all steps
  (:mod:`.deferred`); ``cross_layer``'s mixing is one op per layer and step
  (:mod:`.cross_mix`), except that ``cross_layer`` over reset-after GRU and LSTM (no
  projection) layers without active dropout is one op for the whole run
  (:mod:`.cross_run`); without autograd (sampling), a torch-exact cell steps on torch's
  fused cell op under ``"auto"``;
- a layer whose input *is* its state's ``h`` (shared routing, dropout off: the layer
  below's write is both) runs as one matmul with summed weights, ``(W_ih + W_hh) h``
  (:meth:`CellKernel.tied_weights`), in both shared plans;
- one **step** (:meth:`FastLayers.step`) is the policy's ``step`` on those cell steps;
  without autograd, a stack of built-in RNN/GRU/LSTM cells keeps its executor from one
  step to the next (:func:`step_layers`);
- a **one-layer** stack under a built-in policy is that layer over the sequence (every
  built-in policy reduces to it).

Under ``torch.compile`` tracing and torch.func transforms the same plans run on plain
autograd ops (no custom autograd functions, no ``torch._VF`` calls); with ``lengths``
there, the reference's masking (no shapes that depend on values). Under autocast they run
on plain ops too (torch's fused ops stay: they follow autocast themselves).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import _VF, Tensor, nn
from torch.nn import functional as F

from recurrentkit._scan import scan
from recurrentkit._validation import map_state
from recurrentkit.cells import GRUCell, LSTMCell, RNNCell
from recurrentkit.executors.cross_layer import run as cross_run
from recurrentkit.executors.cross_layer.mix import cross_step
from recurrentkit.executors.deferred import DeferredLinear
from recurrentkit.executors.kernels import CellKernel, kernel_for, split_kernel_for
from recurrentkit.executors.kernels.base import Linear
from recurrentkit.executors.packing import Schedule, cat_states, schedule
from recurrentkit.executors.reference import ReferenceLayers
from recurrentkit.executors.torch_ops import (
    fusable,
    run_torch_layer,
    run_torch_layers,
    run_torch_rows,
    torch_mode,
)
from recurrentkit.routing.base import RoutingPolicy, state_h
from recurrentkit.routing.cross_layer import CrossLayer
from recurrentkit.routing.handoff import Handoff
from recurrentkit.routing.independent import Independent
from recurrentkit.routing.residual import Residual
from recurrentkit.routing.shared import Shared

__all__ = ["FastLayers", "plain_mode", "step_layers"]

_BUILTIN_STEP_POLICIES = (Shared, CrossLayer)
_BUILTIN_POLICIES = (Independent, Shared, Residual, CrossLayer, Handoff)


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
) -> FastLayers:
    """The executor for one step of ``owner``'s ``cells``: built once and kept (per
    ``owner``) for steps without autograd while nothing it was planned from changes.

    A sampling loop steps a stack many times, and building the executor each step cost
    about 20 µs of a β-size ``cross_layer`` step's 240 inside such a loop (6 µs timed
    alone; ``docs/benchmarks.md``). It is kept only where its plan depends on nothing
    but what is compared here: the cells themselves (their identity, and for built-in RNN, GRU
    and LSTM cells their torch mode), dropout, train mode, ``torch_ops`` and autocast.
    Other cells, grad mode and ``torch.compile`` tracing get a new executor each step.
    The kept one gets a fresh ``linear`` each step (no views or slots carried over).
    """
    if torch.is_grad_enabled() or plain_mode():
        return FastLayers(cells, dropout, training, torch_ops=torch_ops)
    cells = tuple(cells)
    key = (cells, dropout, training, torch_ops, autocast_on(), tuple(map(torch_mode, cells)))
    hit = _STEP_LAYERS.get(owner)
    if hit is not None and hit[0] == key:
        hit[1]._linear = DeferredLinear() if hit[1]._custom else F.linear
        return hit[1]
    layers = FastLayers(cells, dropout, training, torch_ops=torch_ops)
    if all(type(c) in _PLANNED_BY_TYPE for c in cells):
        _STEP_LAYERS[owner] = (key, layers)
    return layers


_STEP_LAYERS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], FastLayers]] = (
    weakref.WeakKeyDictionary()
)
""":func:`step_layers`' kept executors, one per owner (gone with it)."""

_PLANNED_BY_TYPE = (RNNCell, GRUCell, LSTMCell)
"""Cells whose plan (kernel, torch mode) :func:`step_layers`' key fully describes."""


class FastLayers:
    """:class:`~recurrentkit.routing.Layers` on fused ops and hand-built kernels.

    Args:
        cells: the stack's cells, bottom first.
        dropout: inter-layer dropout probability.
        training: training mode (dropout on).
        torch_ops: run layers that are exactly torch layers on torch's fused ops.
    """

    def __init__(
        self, cells: Sequence[nn.Module], dropout: float, training: bool, *, torch_ops: bool
    ) -> None:
        cells = tuple(cells)  # (iterated several times below: a ModuleList is slow to walk)
        self.cells = cells
        self.dropout = dropout
        self.training = training
        self._ref = ReferenceLayers(cells, dropout, training)
        self._exact_shared = torch_ops  # executor "auto"
        self._plain = plain_mode()
        self._kernels: list[CellKernel | None] = [kernel_for(c) for c in cells]
        # what steps each cell from projected input: the kernel, or a user cell's split step
        self._steppers: list[CellKernel | None] = [
            k if k is not None else split_kernel_for(c) for k, c in zip(self._kernels, cells)
        ]
        use_torch = torch_ops and not self._plain
        self._modes = [torch_mode(c) if use_torch else None for c in cells]
        # hand-written autograd ops (fused steps, sequence kernels, deferred weight
        # gradients in step loops): not while tracing, under torch.func or autocast
        self._custom = not self._plain and not autocast_on()
        self._linear: Linear = DeferredLinear() if self._custom else F.linear
        self._x_t: Tensor | None = None  # layer 1's input at the current step ...
        self._gi_t: Tensor | None = None  # ... and its hoisted projection
        # whole runs (not single steps) tie a layer's weights when its input is its h
        self._tie = False
        self._tied: dict[int, tuple[Tensor, Tensor | None] | None] = {}

    # -- the Layers protocol ---------------------------------------------------------

    def cell(self, layer: int, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        kern, cell = self._steppers[layer], self.cells[layer]
        if kern is None:
            return self._ref.cell(layer, x, state)
        linear = self._linear
        if layer == 0 and x is self._x_t:
            assert self._gi_t is not None
            return kern.step(cell, self._gi_t, state, linear)
        mode = self._modes[layer]
        if mode is not None and (mode != "LSTM" or not cell.proj_size) and not _grad(cell):
            return _torch_cell(cell, mode, x, state)  # inference: one fused torch op
        tied = self._tied_step(layer, x, state, linear)
        if tied is not None:
            return tied
        return kern.step(cell, kern.project(cell, x, linear), state, linear)

    def drop(self, layer: int, y: Tensor) -> Tensor:
        return self._ref.drop(layer, y)

    def run_layer(
        self, layer: int, x: Tensor, state: Any, lengths: Tensor | None
    ) -> tuple[Tensor, Any]:
        cell, mode = self.cells[layer], self._modes[layer]
        if x.shape[0] == 1 and lengths is None and self._steppers[layer] is not None:
            y, state = self.cell(layer, x[0], state)  # one step: no sequence machinery
            return y.unsqueeze(0), state
        if mode is not None:
            return run_torch_layer(cell, mode, x, state, lengths, self.training)
        if self._kernels[layer] is None:
            split = self._steppers[layer]
            if split is None:
                return self._ref.run_layer(layer, x, state, lengths)
            # a user cell's split step: the whole input projected at once, then stepped
            T, B = x.shape[0], x.shape[1]
            gi = split.project(cell, x.reshape(T * B, -1)).reshape(T, B, -1)  # (T, B, G)
            return scan(lambda g, s: split.step(cell, g, s), gi, state, lengths)
        sched = schedule(x, lengths)
        out, seq = self._sequence(layer, sched.pack(x), sched.sort_state(state), sched)
        return sched.unpack(out), sched.final_state(seq)

    # -- whole runs ------------------------------------------------------------------

    def run(
        self,
        policy: RoutingPolicy,
        x: Tensor,
        states: tuple[Any, ...],
        lengths: Tensor | None,
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """``policy`` over ``x (T, B, I)`` from ``states``: ``(outputs (T, B, O), states)``."""
        if self._plain and lengths is not None:  # no shapes that depend on values
            return policy.run(self._ref, x, states, lengths)
        self._tie = not self._plain
        if len(self.cells) == 1 and type(policy) in _BUILTIN_POLICIES:  # all one cell
            y, s = self.run_layer(0, x, states[0], lengths)
            return y, (s,)
        if type(policy) is Independent and (mode := fusable(self.cells, self._modes)):
            # exactly nn.GRU(num_layers=L) & co.: one call of torch's multi-layer op
            return run_torch_layers(
                self.cells, mode, x, states, lengths, self.dropout, self.training
            )
        if type(policy) is Independent and lengths is not None and self._rows_chain():
            # mixed lengths: pack once, every layer on the packed rows, unpack once
            sched = schedule(x, lengths)
            out, finals = self._layers_on_rows(sched.pack(x), sched, states)
            return sched.unpack(out), finals
        if type(policy) is Shared and self._exact_shared:
            # "auto": shared routing reproduces the literal step loop over the cells to the
            # bit (issue 3's proof); the batched plan below differs in the last bits.
            return policy.run(self._ref, x, states, lengths)
        has_kernels = all(k is not None for k in self._kernels)
        if type(policy) is Shared and policy.carry == "first" and has_kernels:
            return self._run_shared_first(x, states, lengths)
        if type(policy).run is not RoutingPolicy.run:
            return policy.run(self, x, states, lengths)
        if self._custom and cross_run.applies(policy, self.cells) and not self._dropping():
            return self._run_cross(policy, x, states, lengths)  # type: ignore[arg-type]
        return self._run_steps(policy, x, states, lengths)

    def run_packed(
        self, policy: RoutingPolicy, data: Tensor, sched: Schedule, states: tuple[Any, ...]
    ) -> tuple[Tensor, tuple[Any, ...]] | None:
        """``policy`` over packed rows ``data (N, I)`` (a PackedSequence's own data), or
        ``None`` where no plan runs on packed rows directly.

        Plans that do: one layer under a built-in policy (torch's op or the cell's
        kernel), an ``independent`` stack torch could hold in one module (one call), and
        any ``independent`` stack whose layers all run on torch's op or a kernel, without
        active inter-layer dropout (layer by layer on the rows). They skip padding the
        input and packing the output again. ``states`` and the returned
        final states are in the original batch order; outputs are packed rows ``(N, O)``.
        """
        if self._plain:
            return None
        if type(policy) is Independent and (mode := fusable(self.cells, self._modes)):
            return run_torch_rows(
                self.cells, mode, data, sched, states, self.dropout, self.training
            )
        one_cell = len(self.cells) == 1 and type(policy) in _BUILTIN_POLICIES
        if (one_cell or type(policy) is Independent) and self._rows_chain():
            return self._layers_on_rows(data, sched, states)
        return None

    def step(
        self, policy: RoutingPolicy, x: Tensor, states: tuple[Any, ...]
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """One step ``x (B, I)``: ``(y (B, O), states)``."""
        if type(policy).step is RoutingPolicy.step:  # a policy defined by run() only
            out, new = policy.run(self, x.unsqueeze(0), states, None)
            return out[0], new
        return self._policy_step(policy)(x, states)

    # -- plans -----------------------------------------------------------------------

    def _rows_chain(self) -> bool:
        """Whether every layer runs on packed rows (torch's op or a kernel), with no
        active inter-layer dropout (its masks would be drawn over rows, not the
        reference's padded steps)."""
        return (
            not self._plain
            and all(k is not None or m is not None for k, m in zip(self._kernels, self._modes))
            and not self._dropping()
        )

    def _dropping(self) -> bool:
        """Whether inter-layer dropout is active."""
        return self.training and self.dropout > 0 and len(self.cells) > 1

    def _layers_on_rows(
        self, data: Tensor, sched: Schedule, states: tuple[Any, ...]
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """Each layer in turn over packed rows ``data (N, I)``, its own state carried
        (independent routing): ``(outputs (N, O), final states)``, states in the
        original batch order."""
        u, finals = data, []
        for k, cell in enumerate(self.cells):
            if (mode := self._modes[k]) is not None:
                u, (s,) = run_torch_rows([cell], mode, u, sched, (states[k],), 0.0, self.training)
            else:
                u, seq = self._sequence(k, u, sched.sort_state(states[k]), sched)
                s = sched.final_state(seq)
            finals.append(s)
        return u, tuple(finals)

    def _sequence(self, layer: int, x: Tensor, state: Any, sched: Schedule) -> tuple[Tensor, Any]:
        """Layer ``layer`` over packed rows ``x (N, I)``: ``(out (N, O), state sequence)``."""
        kern, cell = self._kernels[layer], self.cells[layer]
        assert kern is not None
        gi = kern.project(cell, x)  # (N, G)
        if self._custom:
            return kern.sequence(cell, gi, state, sched)
        steps = gi.split(sched.sizes)
        seq: list[Any] = []

        def step(t: int, gi_t: Tensor, s: Any) -> tuple[Tensor, Any]:
            y, s = kern.step(cell, gi_t, s)
            seq.append(s)
            return y, s

        ys, _ = step_loop(step, steps, state, sched.sizes)
        return torch.cat(ys), cat_states(seq)

    def _run_shared_first(
        self, x: Tensor, states: tuple[Any, ...], lengths: Tensor | None
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """Shared routing, ``carry="first"``: layer 1 over time, the rest batched."""
        sched = schedule(x, lengths)
        u, seq = self._sequence(0, sched.pack(x), sched.sort_state(states[0]), sched)
        finals = [sched.final_state(seq)]
        for k in range(1, len(self.cells)):
            kern = self._kernels[k]
            assert kern is not None
            cell, x_k = self.cells[k], self.drop(k - 1, u)
            done = self._tied_step(k, x_k, seq, F.linear)
            if done is None:
                done = kern.step(cell, kern.project(cell, x_k), seq)
            u, seq = done  # (N, O)
            finals.append(sched.final_state(seq))
        return sched.unpack(u), tuple(finals)

    def _run_cross(
        self,
        policy: CrossLayer,
        x: Tensor,
        states: tuple[Any, ...],
        lengths: Tensor | None,
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """``cross_layer`` over GRU/LSTM layers as one op (:mod:`.cross_run`)."""
        sched = schedule(x, lengths)
        y, seqs = cross_run.cross_run(
            policy, self.cells, sched.pack(x), sched.sort_state(states), sched
        )
        return sched.unpack(y), tuple(sched.final_state(s) for s in seqs)

    def _run_steps(
        self,
        policy: RoutingPolicy,
        x: Tensor,
        states: tuple[Any, ...],
        lengths: Tensor | None,
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """A step-major policy's own ``step`` in a time loop, layer 1's projection hoisted."""
        sched = schedule(x, lengths)
        kern0 = self._steppers[0]
        if isinstance(self._linear, DeferredLinear):
            self._linear.whole_run = True  # every weight serves every step
        shrink = type(policy) in _BUILTIN_STEP_POLICIES and all(
            k is not None for k in self._kernels
        )
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
        ``cross_layer`` in eager mode :func:`~.cross_mix.cross_step` (its mixing as one
        op per layer and step)."""
        linear = self._linear
        if (
            type(policy) is CrossLayer
            and len(self.cells) > 1
            and isinstance(linear, DeferredLinear)
        ):
            return lambda x_t, s: cross_step(policy, self, linear, x_t, s)
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
        kern = self._kernels[layer]
        if not self._tie or kern is None or x is not state_h(state):
            return None
        if layer not in self._tied:
            self._tied[layer] = kern.tied_weights(self.cells[layer])
        tied = self._tied[layer]
        if tied is None:
            return None
        return kern.step_tied(self.cells[layer], linear(x, *tied), state, linear)

    def _project0(self, x: Tensor, sizes: tuple[int, ...]) -> tuple[Tensor, ...]:
        kern = self._steppers[0]
        if kern is None:
            return ()
        return kern.project(self.cells[0], x).split(sizes)


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


def _grad(cell: Any) -> bool:
    """Whether a step of ``cell`` records autograd history."""
    return torch.is_grad_enabled() and bool(cell.weight_hh.requires_grad)


def _torch_cell(cell: Any, mode: str, x: Tensor, state: Any) -> tuple[Tensor, Any]:
    """One step of a torch-form cell on torch's cell op."""
    p = cell._parameters  # (read every step: no attribute lookups)
    w = (p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
    if mode == "LSTM":
        h, c = _VF.lstm_cell(x, (state[0], state[1]), *w)
        return h, type(state)(h, c) if hasattr(state, "_fields") else (h, c)
    h = _CELL_OPS[mode](x, state, *w)
    return h, h


_CELL_OPS = {"GRU": _VF.gru_cell, "RNN_TANH": _VF.rnn_tanh_cell, "RNN_RELU": _VF.rnn_relu_cell}
"""torch's one-step cell op per mode (looked up once, not per step)."""
