"""``cross_layer``'s fast paths on the fast executor, all in one place.

- :mod:`.mix` — the policy's ``step`` with each layer's mixing of the previous states as
  one op (eager step loops, single steps);
- :mod:`.run` — over reset-after GRU and LSTM (no projection) layers, the whole run as
  one op with a hand-written backward;
- :mod:`.parts` — what a cell provides to that op (:class:`~.parts.CellPart`), and the
  per-step views both use; each cell's part lives with its other fast forms in
  :mod:`recurrentkit.executors.kernels` (:class:`~recurrentkit.executors.kernels.gru.GRUPart`,
  :class:`~recurrentkit.executors.kernels.lstm.LSTMPart`).

The modules are imported by name (``from recurrentkit.executors.cross_layer import
run``), not from here: :mod:`.parts` is imported by the kernels, which :mod:`.run`
imports in turn.
"""
