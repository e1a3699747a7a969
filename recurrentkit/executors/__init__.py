"""Executors: ways to run a routing policy's semantics (reference loop; faster paths).

- :class:`ReferenceExecutor` (:mod:`.reference`) — the plain loop, the definition;
- :class:`FastExecutor` (:mod:`.fast`) — per policy and per layer, the fastest exact path:
  torch's fused recurrent ops (:mod:`.torch_ops`), hand-built whole-sequence kernels
  and fused step ops (:mod:`.kernels`, one file per cell), ``cross_layer``'s mixing as
  one op and, over GRU and LSTM layers, its whole run as one op (:mod:`.cross_layer`),
  step loops with deferred weight gradients (:mod:`.deferred`) and their matrix
  products (:mod:`.products`), all on the packed layout of :mod:`.packing`; every
  hand-written backward is first-order only (:mod:`.first_order`).

:class:`~recurrentkit.Stack` picks one with its ``executor`` argument (``"auto"``,
``"handbuilt"``, ``"reference"``). Every fast path is tested against the reference in
float64 to 1e-10, forward and backward.
"""

from recurrentkit.executors.fast import FastExecutor
from recurrentkit.executors.reference import ReferenceExecutor

__all__ = ["FastExecutor", "ReferenceExecutor"]
