"""Shared routing: one memory threaded through the layers (the original study's Setup-1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from recurrentkit._validation import check_choice
from recurrentkit.routing.base import Executor, RoutingPolicy, check_same_state_shapes

__all__ = ["Shared"]

CARRIES = ("first", "last")


class Shared(RoutingPolicy):
    r"""Each layer takes, as its previous state, the state the layer below just wrote.

    The original study's snippet, read as a step loop::

        h1, hp1 = layer1(x, hp1)
        h2, hp2 = layer2(h1, hp1)
        h3, hp3 = layer3(h2, hp2)

    $$
    \begin{aligned}
    (y^1_t, s^1_t) &= \text{cell}_1(x_t, s^{c}_{t-1}) \\
    (y^l_t, s^l_t) &= \text{cell}_l(\text{drop}(y^{l-1}_t), s^{l-1}_t), \quad l \ge 2
    \end{aligned}
    $$

    where :math:`c = 1` for ``carry="first"`` (only layer 1's state reaches step
    ``t+1``; the default and the ``"shared"`` shortcut) and :math:`c = L` for
    ``carry="last"`` (one memory threaded through every layer, the top layer's write
    carried into layer 1). The returned state holds what each layer wrote at the last
    step. All layers' states must have one shape. Causal; runs step by step.

    Args:
        carry: ``"first"`` or ``"last"``.

    Raises:
        ConfigError: unknown ``carry``, or layers whose states differ in shape.
    """

    name = "shared"
    causal = True
    layer_major = False
    reduces_to_cell = True
    rows_independent = True

    @property
    def wiring(self) -> str | None:  # type: ignore[override]  # property over a class attribute
        """``"shared_first"`` for ``carry="first"``: only layer 1's state crosses time, so
        a plan may run layer 1 over the sequence and every layer above as one batched
        step; ``None`` for ``carry="last"``."""
        return "shared_first" if self.carry == "first" else None

    def __init__(self, carry: str = "first") -> None:
        super().__init__()
        self.carry = check_choice("carry", carry, CARRIES)

    def reads_initial_states(self, num_layers: int) -> tuple[bool, ...]:
        """Only the carried state: layer 1's for ``carry="first"``, the top layer's for
        ``carry="last"`` (the others start from what the layer below writes)."""
        carried = 0 if self.carry == "first" else num_layers - 1
        return tuple(k == carried for k in range(num_layers))

    def bind(self, cells: Sequence[nn.Module], probes: Sequence[Any]) -> None:
        super().bind(cells, probes)
        check_same_state_shapes("shared", probes)

    def step(self, executor: Executor, x: Tensor, states: tuple[Any, ...]) -> tuple[Tensor, tuple]:
        s = states[0] if self.carry == "first" else states[-1]
        u, new = x, []
        for k in range(len(executor.cells)):
            y, s = executor.cell(k, u, s)
            new.append(s)
            u = executor.drop(k, y)
        return u, tuple(new)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, carry={self.carry!r}"
