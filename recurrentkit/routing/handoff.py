"""Handoff routing: each layer starts from the final state of the layer below (leaks the future)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from types import FrameType
from typing import Any

import torch
from torch import Tensor, nn

from recurrentkit.routing.base import Executor, RoutingPolicy, check_same_state_shapes

__all__ = ["CarriedStateWarning", "Handoff", "LeakWarning"]


class LeakWarning(UserWarning):
    """A non-causal policy is used where future inputs can leak into earlier outputs."""


class CarriedStateWarning(LeakWarning):
    """A non-causal stack (``handoff``) is called with a carried state: running a
    sequence in chunks with the state carried differs from one call over it (each
    chunk's layers start from the layer below's state at the *chunk's* end), so
    streaming and truncated BPTT do not compute the whole-sequence function."""


class Handoff(RoutingPolicy):
    r"""Layer-major: layer ``l`` runs the whole sequence from layer ``l-1``'s *final* state.

    $$
    \begin{aligned}
    (y^1_{1:T}, s^1_T) &= \text{cell}_1\text{ over } x_{1:T} \text{ from } s^1_0 \\
    (y^l_{1:T}, s^l_T) &= \text{cell}_l\text{ over } \text{drop}(y^{l-1}_{1:T})
        \text{ from } s^{l-1}_T, \quad l \ge 2
    \end{aligned}
    $$

    This is "initialise the second GRU's h0 with the first GRU's last hidden state".
    Layer 1 starts from ``state[0]``; the states supplied for higher layers are **not
    read**. The returned state holds each layer's final state.

    **Not causal**: under teacher forcing, :math:`s^1_T` has seen every input, so layer
    2's output at step 1 depends on inputs at every step — the future leaks into the
    past. Stepping one token at a time (sampling) sees no future, so the two disagree.
    A :class:`LeakWarning` is issued when a handoff stack runs a sequence in training
    mode (except while ``torch.compile`` traces it: a warning cannot be part of a graph).
    All layers' states must have one shape.

    **Not streamable**: for the same reason, running a sequence in chunks with the state
    carried (streaming, truncated BPTT) differs from one call over it by construction —
    the layers of each chunk start from the state the layer below reaches at the
    *chunk's* end, and the carried states of layers 2.. are not read. A
    :class:`CarriedStateWarning` (a :class:`LeakWarning`) is issued when a handoff stack
    (any policy that is not ``causal``) is called with a state (``state`` not ``None``).
    Resets (``Stack.forward(..., resets=)``) are exact: a segment is a new sequence.
    """

    name = "handoff"
    causal = False
    layer_major = True
    reduces_to_cell = True
    rows_independent = True
    wiring = None

    def reads_initial_states(self, num_layers: int) -> tuple[bool, ...]:
        """Only layer 1's: each layer above starts from the final state of the one below."""
        return tuple(k == 0 for k in range(num_layers))

    def bind(self, cells: Sequence[nn.Module], probes: Sequence[Any]) -> None:
        super().bind(cells, probes)
        check_same_state_shapes("handoff", probes)

    def step(self, executor: Executor, x: Tensor, states: tuple[Any, ...]) -> tuple[Tensor, tuple]:
        """:meth:`run` on one step: layer ``l`` steps from the state layer ``l-1`` has
        just reached (``states[0]`` for layer 1; the others are not read)."""
        s, u, new = states[0], x, []
        for k in range(len(executor.cells)):
            y, s = executor.cell(k, u, s)
            new.append(s)
            u = executor.drop(k, y)
        return u, tuple(new)

    def run(
        self,
        executor: Executor,
        x: Tensor,
        states: tuple[Any, ...],
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Any, ...]]:
        # (not while torch.compile traces: a Python warning cannot be part of a graph)
        warning_due = executor.training and x.shape[0] > 1 and len(executor.cells) > 1
        if warning_due and not torch.compiler.is_compiling():
            warnings.warn(
                "handoff routing is not causal: under teacher forcing each layer starts "
                "from the final state of the layer below, so outputs see future inputs",
                LeakWarning,
                stacklevel=caller_level(),
            )
        s, u, finals = states[0], x, []
        for k in range(len(executor.cells)):
            y, s = executor.run_layer(k, u, s, lengths)  # (T, B, O_k)
            finals.append(s)
            u = executor.drop(k, y)
        return u, tuple(finals)


def caller_level() -> int:
    """``stacklevel`` pointing at the user's line: the first frame outside recurrentkit/torch."""
    frame: FrameType | None = sys._getframe(2)  # 1 = run(), which calls warnings.warn
    level = 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
        ("recurrentkit.", "torch.")
    ):
        frame, level = frame.f_back, level + 1
    return level
