"""The fast executor's plans: ordered tables of named plans, each a predicate beside its runner.

:class:`~recurrentkit.executors.FastExecutor` runs the first plan of a table whose
predicate holds. The predicates read what the cells and the policy *declare* — a cell's
built-in kernel or torch mode, its split step (:func:`~recurrentkit.cells.splits_step`),
the policy's ``layer_major``, ``reduces_to_cell``, ``rows_independent`` and ``wiring``
(:class:`~recurrentkit.routing.RoutingPolicy`) — never a policy's type, so a user policy
that declares what a built-in one declares gets the same plans. The last plan of each
table always applies: a new policy or cell never needs a plan to be correct.

Four tables:

- :data:`WHOLE_RUN` — a policy over a whole padded sequence (``lengths`` or not);
- :data:`PACKED` — a policy over a ``PackedSequence``'s rows as they are (else the
  sequence is padded and :data:`WHOLE_RUN` runs with its lengths);
- :data:`LAYER` — one layer over a sequence (what layer-major policies ask for);
- :data:`STEP` — one layer for one step (a single :meth:`~recurrentkit.Stack.step`, and
  step-major loops).

:meth:`~recurrentkit.Stack.explain` reports the choice as an :class:`Explanation`; the
runs take the same choice from the same tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from recurrentkit.executors.cross_layer import run as cross_run
from recurrentkit.executors.torch_ops import fusable
from recurrentkit.routing.base import RoutingPolicy

if TYPE_CHECKING:
    from recurrentkit.executors.fast import FastExecutor

__all__ = ["LAYER", "PACKED", "STEP", "WHOLE_RUN", "Explanation", "Plan", "choose"]


@dataclass(frozen=True)
class Plan:
    """One named way to run.

    Attributes:
        name: the plan's name, as :meth:`~recurrentkit.Stack.explain` reports it.
        when: the predicate (its arguments depend on the table).
        run: the runner (likewise); ``None`` in :data:`STEP`, whose runners are the
            executor's per-layer step functions.
        why: one sentence: what the plan does and what it needs.
    """

    name: str
    when: Callable[..., bool]
    run: Callable[..., Any] | None
    why: str


def choose(table: Sequence[Plan], *args: Any) -> Plan:
    """The first plan of ``table`` whose predicate holds for ``args``."""
    for plan in table:
        if plan.when(*args):
            return plan
    raise AssertionError("a plan table's last plan always applies")  # pragma: no cover


@dataclass(frozen=True)
class Explanation:
    """Which plan a :class:`~recurrentkit.Stack` call runs, and why.

    Attributes:
        executor: the stack's executor setting (``"auto"``, ``"handbuilt"``,
            ``"reference"``).
        plan: the whole stack's plan (a name from :data:`WHOLE_RUN`, :data:`PACKED`,
            ``"step"`` for a single step, ``"reference"``, ``"empty_batch"``, or
            ``"segments"`` where ``resets`` cut rows into segments: see ``inner``).
        why: why that plan, in a sentence.
        layers: for plans that run each layer on a plan of its own, each layer's plan
            (names from :data:`LAYER`, or :data:`STEP` for steps), bottom first;
            ``None`` where the plan runs the stack as a whole.
        inner: for plan ``"segments"`` (a call with ``resets`` that cut rows), the plan
            the segments run on as one batch (``layers`` are its layers'); else ``None``.
    """

    executor: str
    plan: str
    why: str
    layers: tuple[str, ...] | None = None
    inner: str | None = None

    def __str__(self) -> str:
        text = f"{self.plan} ({self.executor}): {self.why}"
        if self.inner is not None:
            text = f"{self.plan} -> {self.inner} ({self.executor}): {self.why}"
        if self.layers is not None:
            text += "\n" + "\n".join(f"  layer {k}: {p}" for k, p in enumerate(self.layers))
        return text


# -- whole runs: when(ex, policy, lengths); run(ex, policy, x, states, lengths) ------------


def _policy_run(
    ex: FastExecutor, policy: RoutingPolicy, x: Tensor, states: Any, lengths: Any
) -> tuple[Tensor, tuple[Any, ...]]:
    return policy.run(ex, x, states, lengths)


def _overrides_run(policy: RoutingPolicy) -> bool:
    return type(policy).run is not RoutingPolicy.run


WHOLE_RUN: tuple[Plan, ...] = (
    Plan(
        "kernel_ops",
        lambda ex, policy, lengths: (
            ex.kernel_ops
            and lengths is None
            and ex.restart is None
            and ex.all_kernels()
            and (
                policy.layer_major
                or policy.wiring == "shared_first"
                or (cross_run.applies(policy, ex.cells) and not ex.dropping())
            )
        ),
        lambda ex, policy, x, states, lengths: ex.run_kernel_ops(policy, x, states),
        "torch.compile tracing without lengths or resets, every layer a built-in cell, a "
        "layer-major policy, shared_first wiring, or cross_layer wiring as its whole-run "
        "op allows: each layer's whole-sequence kernel (cross_layer: the whole run) as "
        "torch.library custom ops (forward and backward as eager mode runs them), the "
        "rest plain ops",
    ),
    Plan(
        "scan",
        lambda ex, policy, lengths: ex.traced,
        lambda ex, policy, x, states, lengths: ex.run_scan(policy, x, states, lengths),
        "torch.compile or torch.export tracing: the time loop as torch's scan operator (one "
        "traced step for any length; lengths and resets as masks in the step): one scan of "
        "the policy's step over all layers, layer 1's projection hoisted; a policy that is "
        "not causal or has no step: its run, each layer scanned in turn",
    ),
    Plan(
        "traced_with_lengths",
        lambda ex, policy, lengths: ex.plain and lengths is not None,
        lambda ex, policy, x, states, lengths: policy.run(ex.reference, x, states, lengths),
        "torch.compile tracing or a torch.func transform with lengths: the reference's "
        "masked loop (no shapes that depend on values)",
    ),
    Plan(
        "one_layer",
        lambda ex, policy, lengths: len(ex.cells) == 1 and policy.reduces_to_cell,
        lambda ex, policy, x, states, lengths: ex.run_one_layer(x, states, lengths),
        "one layer, and the policy declares reduces_to_cell: that layer over the sequence",
    ),
    Plan(
        "torch_multilayer",
        lambda ex, policy, lengths: (
            policy.wiring == "independent" and fusable(ex.cells, ex.modes) is not None
        ),
        lambda ex, policy, x, states, lengths: ex.run_torch_multilayer(x, states, lengths),
        "independent wiring over torch-exact layers of one mode, width, bias and "
        "projection: one call of torch's multi-layer op",
    ),
    Plan(
        "layers_on_rows",
        lambda ex, policy, lengths: (
            policy.wiring == "independent" and lengths is not None and ex.rows_chain()
        ),
        lambda ex, policy, x, states, lengths: ex.run_layers_on_rows(x, states, lengths),
        "independent wiring with lengths, every layer on torch's op or a kernel and no "
        "active dropout: packed once, each layer on the packed rows, unpacked once",
    ),
    Plan(
        "shared_batched",
        lambda ex, policy, lengths: policy.wiring == "shared_first" and ex.all_kernels(),
        lambda ex, policy, x, states, lengths: ex.run_shared_first(x, states, lengths),
        "shared_first wiring (only layer 1's state crosses time) over built-in kernels: "
        "layer 1 over the sequence, each layer above as one step over all T x B rows",
    ),
    Plan(
        "layer_by_layer",
        lambda ex, policy, lengths: policy.layer_major,
        _policy_run,
        "a layer-major policy: its run, each layer over the sequence on its layer plan",
    ),
    Plan(
        "policy_run",
        lambda ex, policy, lengths: _overrides_run(policy),
        _policy_run,
        "the policy overrides run (not declared layer-major): its own run on this executor",
    ),
    Plan(
        "cross_whole_run",
        lambda ex, policy, lengths: (
            policy.wiring == "cross_layer"
            and ex.custom
            and cross_run.applies(policy, ex.cells)
            and not ex.dropping()
        ),
        lambda ex, policy, x, states, lengths: ex.run_cross(policy, x, states, lengths),
        "cross_layer wiring over reset-after GRU / LSTM (no projection) layers without "
        "active dropout, in eager mode: the whole run as one op with its own backward",
    ),
    Plan(
        "step_loop",
        lambda ex, policy, lengths: True,
        lambda ex, policy, x, states, lengths: ex.run_steps(policy, x, states, lengths),
        "the policy's step in a time loop, layer 1's input projection hoisted out of it",
    ),
)
"""Plans for a policy over a whole padded sequence, in order."""


# -- packed rows: when(ex, policy); run(ex, policy, data, sched, states) --------------------

PACKED: tuple[Plan, ...] = (
    Plan(
        "torch_multilayer_rows",
        lambda ex, policy: (
            not ex.plain
            and policy.wiring == "independent"
            and fusable(ex.cells, ex.modes) is not None
        ),
        lambda ex, policy, data, sched, states: ex.run_torch_multilayer_rows(data, sched, states),
        "independent wiring over torch-exact layers torch could hold in one module: one "
        "call of torch's multi-layer op on the packed rows",
    ),
    Plan(
        "layers_on_rows",
        lambda ex, policy: (
            ((len(ex.cells) == 1 and policy.reduces_to_cell) or policy.wiring == "independent")
            and ex.rows_chain()
        ),
        lambda ex, policy, data, sched, states: ex.layers_on_rows(data, sched, states),
        "one layer or independent wiring, every layer on torch's op or a kernel, no "
        "active dropout: each layer on the packed rows as they are",
    ),
    Plan(
        "padded",
        lambda ex, policy: True,
        None,
        "no plan runs on packed rows directly: the sequence is padded and run with its lengths",
    ),
)
"""Plans for a policy over a ``PackedSequence``'s rows; ``"padded"`` hands over to
:data:`WHOLE_RUN`."""


# -- one layer over a sequence: when(ex, layer, steps, lengths); run(ex, layer, x, state,
#    lengths) ---------------------------------------------------------------------------------

LAYER: tuple[Plan, ...] = (
    Plan(
        "scan",
        lambda ex, layer, steps, lengths: ex.scanning,
        lambda ex, layer, x, state, lengths: ex.scan_layer(layer, x, state, lengths),
        "under the whole run's scan plan: torch's scan operator over the layer's step on "
        "its projected input (the projection over the whole sequence first)",
    ),
    Plan(
        "one_step",
        lambda ex, layer, steps, lengths: (
            steps == 1 and lengths is None and ex.steppers[layer] is not None
        ),
        lambda ex, layer, x, state, lengths: ex.run_one_step(layer, x, state),
        "a one-step sequence: the layer's step plan, no sequence machinery",
    ),
    Plan(
        "torch_op",
        lambda ex, layer, steps, lengths: ex.modes[layer] is not None,
        lambda ex, layer, x, state, lengths: ex.run_torch_layer(layer, x, state, lengths),
        "a torch-exact layer under executor 'auto': torch's fused recurrent op",
    ),
    Plan(
        "kernel",
        lambda ex, layer, steps, lengths: ex.kernels[layer] is not None,
        lambda ex, layer, x, state, lengths: ex.run_kernel(layer, x, state, lengths),
        "a built-in cell: its whole-sequence kernel (one op with a hand-written backward, "
        "which torch.compile runs as torch.library custom ops; plain ops on its step "
        "under torch.func or autocast)",
    ),
    Plan(
        "linear_scan",
        lambda ex, layer, steps, lengths: ex.custom and ex.linear[layer],
        lambda ex, layer, x, state, lengths: ex.run_linear(layer, x, state, lengths),
        "a cell that declares a linear recurrence (h' = a ⊙ h + b, a and b from the input "
        "only): the whole input projected at once, then one scan.linear over the sequence "
        "(eager mode, no autocast)",
    ),
    Plan(
        "split_step",
        lambda ex, layer, steps, lengths: ex.steppers[layer] is not None,
        lambda ex, layer, x, state, lengths: ex.run_split(layer, x, state, lengths),
        "a cell that declares its split step: the whole input projected at once, then "
        "stepped on the projected rows with deferred weight gradients",
    ),
    Plan(
        "cell_loop",
        lambda ex, layer, steps, lengths: True,
        lambda ex, layer, x, state, lengths: ex.reference.run_layer(layer, x, state, lengths),
        "a cell with no fast form: its own call in a time loop",
    ),
)
"""Plans for one layer over a sequence, in order."""


# -- one layer, one step: when(ex, layer) --------------------------------------------------

STEP: tuple[Plan, ...] = (
    Plan(
        "torch_cell",
        lambda ex, layer: ex.torch_cell_step(layer) and not _records_grad(ex.cells[layer]),
        None,
        "a torch-exact layer under 'auto' without autograd (sampling): torch's fused cell op",
    ),
    Plan(
        "kernel_step",
        lambda ex, layer: ex.kernels[layer] is not None,
        None,
        "a built-in cell: its step on the projected input (a fused op with its own "
        "backward in eager mode)",
    ),
    Plan(
        "split_step",
        lambda ex, layer: ex.steppers[layer] is not None,
        None,
        "a cell that declares its split step: input_projection, then step_projected",
    ),
    Plan(
        "cell",
        lambda ex, layer: True,
        None,
        "a cell with no fast form: its own call",
    ),
)
"""Plans for one layer at one step, in order."""


def _records_grad(cell: Any) -> bool:
    """Whether a step of ``cell`` records autograd history."""
    return torch.is_grad_enabled() and bool(cell.weight_hh.requires_grad)
