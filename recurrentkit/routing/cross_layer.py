"""Cross-layer routing: gated feedback between all layers' states (Chung et al. 2015)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from recurrentkit.errors import ConfigError
from recurrentkit.routing.base import (
    Executor,
    RoutingPolicy,
    check_real_states,
    state_h,
    with_state_h,
)

__all__ = ["CrossLayer"]


class CrossLayer(RoutingPolicy):
    r"""Gated feedback (Chung, Gulcehre, Cho, Bengio 2015, "Gated Feedback RNNs").

    Each layer's previous hidden state is its own plus every other layer's previous
    hidden state through a learned projection, scaled by a scalar gate:

    $$
    \begin{aligned}
    g^{k \to l}_t &= \sigma\big(w^{k \to l} \cdot u^l_t
        + v^{k \to l} \cdot [h^1_{t-1}; \dots; h^L_{t-1}]\big) \\
    \tilde h^l_{t-1} &= h^l_{t-1} + \sum_{k \ne l} g^{k \to l}_t\, U^{k \to l} h^k_{t-1} \\
    (y^l_t, s^l_t) &= \text{cell}_l(u^l_t, s^l_{t-1} \text{ with } h := \tilde h^l_{t-1}),
        \qquad u^1_t = x_t, \quad u^{l+1}_t = \text{drop}(y^l_t)
    \end{aligned}
    $$

    So a higher layer's state reaches a lower layer at the next step. For cells whose
    state is a NamedTuple (LSTM family) only the ``h`` field is mixed. With one layer
    it is :class:`~recurrentkit.routing.Independent`. Causal; runs step by step.

    Parameters, for each layer ``l`` (``k`` runs over the other layers, bottom first):

    - ``feedback_weight_l{l}`` ``(H_l, Σ_{k≠l} H_k)`` — the :math:`U^{k \to l}` side by side;
    - ``gate_input_weight_l{l}`` ``(L-1, I_l)`` — the :math:`w^{k \to l}` as rows;
    - ``gate_state_weight_l{l}`` ``(L-1, Σ_k H_k)`` — the :math:`v^{k \to l}` as rows.

    Raises:
        ConfigError: a cell without ``input_size``, or whose state is neither a tensor
            nor a NamedTuple with an ``h`` field.
    """

    name = "cross_layer"
    causal = True
    layer_major = False
    reduces_to_cell = True
    rows_independent = True
    wiring = "cross_layer"

    def bind(self, cells: Sequence[nn.Module], probes: Sequence[Any]) -> None:
        super().bind(cells, probes)
        for k, p in enumerate(probes):
            if not isinstance(p, Tensor) and not isinstance(getattr(p, "h", None), Tensor):
                raise ConfigError(
                    f"cells[{k}]",
                    "a cell whose state is a tensor or a NamedTuple with an 'h' field "
                    "(cross_layer mixes each layer's h)",
                    f"a state of type {type(p).__name__}",
                )
        check_real_states("cross_layer", probes)
        widths = [state_h(p).shape[-1] for p in probes]
        self.num_layers = len(cells)
        self.widths = widths
        if self.num_layers == 1:
            return
        ref = state_h(probes[0])
        factory: dict[str, Any] = {"device": ref.device, "dtype": ref.dtype}
        self._names = tuple(  # each layer's (feedback, gate input, gate state) weight
            (f"feedback_weight_l{k}", f"gate_input_weight_l{k}", f"gate_state_weight_l{k}")
            for k in range(self.num_layers)
        )
        for k, cell in enumerate(cells):
            width = getattr(cell, "input_size", None)
            if not isinstance(width, int):
                raise ConfigError(
                    f"cells[{k}].input_size",
                    "an int (cross_layer gates read each layer's input)",
                    width,
                )
            others = sum(widths) - widths[k]
            L1 = self.num_layers - 1
            shapes = ((widths[k], others), (L1, width), (L1, sum(widths)))
            for name, shape in zip(self._names[k], shapes):
                self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each weight ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        for p in self.parameters(recurse=False):
            bound = 1.0 / math.sqrt(p.shape[1])
            nn.init.uniform_(p, -bound, bound)

    def layer_weights(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """Layer ``k``'s ``(feedback_weight, gate_input_weight, gate_state_weight)``
        (shapes above); two or more layers."""
        p = self._parameters  # (a step reads these for every layer: no attribute lookups)
        U, w_in, w_state = self._names[k]
        # (each registered in __init__, so never None; a cast would be a call per step)
        return p[U], p[w_in], p[w_state]  # type: ignore[return-value]  # registered: not None

    def step(self, executor: Executor, x: Tensor, states: tuple[Any, ...]) -> tuple[Tensor, tuple]:
        L = len(executor.cells)
        hs = [state_h(s) for s in states]  # L × (B, H_k)
        h_all = torch.cat(hs, dim=1) if L > 1 else hs[0]  # (B, ΣH)
        u, new = x, []
        for k in range(L):
            s = states[k]
            if L > 1:
                U, w_in, w_state = self.layer_weights(k)
                gates = torch.sigmoid(F.linear(u, w_in) + F.linear(h_all, w_state))  # (B, L-1)
                others = [hs[j] for j in range(L) if j != k]
                gated = torch.cat(
                    [gates[:, i : i + 1] * h for i, h in enumerate(others)], dim=1
                )  # (B, Σ_{j≠k} H_j)
                h_mixed = hs[k] + F.linear(gated, U)
                s = with_state_h(s, h_mixed)
            y, s = executor.cell(k, u, s)
            new.append(s)
            u = executor.drop(k, y)
        return u, tuple(new)
