r"""torch.nn drop-ins: ``RNN``, ``GRU``, ``LSTM`` built from recurrentkit's cells and Stack.

Same constructor, same ``forward(input, hx=None)``, same return layout and shapes,
same parameter names (as attributes, in ``named_parameters()`` and in the state_dict)
as ``torch.nn.RNN``/``GRU``/``LSTM``, so
``rk.GRU(...).load_state_dict(nn.GRU(...).state_dict())`` and the reverse just work.

How it is built:

- The drop-ins are ``torch.nn.RNNBase`` modules: torch's own base class creates the
  torch-named parameters (``weight_ih_l0``, ``weight_hh_l1_reverse``, ...) in torch's
  order and initialises them as torch does (one uniform pass, so the same seed gives the
  same weights as torch.nn), and keeps torch's ``_flat_weights`` /
  ``_flat_weights_names``, ``all_weights``, ``flatten_parameters``, ``.to()`` and pickling
  behaviour. They are *not* subclasses of ``nn.RNN``/``nn.GRU``/``nn.LSTM``: TorchDynamo
  refuses every instance of those (``torch.compile(fullgraph=True)`` would fail on them and
  on any model holding them), and torch's quantization matches exact types anyway (see
  :func:`recurrentkit.interop.quantize_dynamic`).
- What runs is what torch.nn's forward runs, ``_flat_weights`` (updated as torch updates
  it, so weight-drop implementations, ``weight_norm`` and ``functional_call`` act on it),
  by the drop-in's :attr:`~RecurrentBase.executor`: under ``"auto"`` (the default) the
  whole module is one call of torch's fused multi-layer op (``torch._VF.gru`` & co., what
  ``torch.nn.GRU.forward`` calls); under ``"handbuilt"`` or ``"reference"`` it runs library
  parts that it does *not* register as submodules (so the state_dict has torch's keys
  only): a unidirectional drop-in runs one :class:`~recurrentkit.Stack` with independent
  routing over ``RNNCell``/``GRUCell``/``LSTMCell``; a bidirectional one runs, per layer,
  a :class:`~recurrentkit.bidirectional.Bidirectional` of two one-layer stacks, with
  inter-layer dropout between layers. ``torch.compile`` tracing and torch.func transforms
  run the parts (plain autograd ops) whatever the executor; so does ``"auto"`` where
  torch's op refuses the input (bfloat16 LSTM on a CPU without AVX-512).
- Before the parts run, the cells' parameters are pointed at those weights (a dictionary
  write per tensor), so ``.to()``, ``.double()``, ``load_state_dict(assign=True)``,
  ``copy.deepcopy`` and ``torch.func.functional_call`` all act on what runs.
- Under ``torch.export`` (in eval mode, or without dropout) each layer is one custom op,
  ``recurrentkit::gru_layer`` & co., whose fake implementation keeps the time axis and
  the batch symbolic, so ``torch.export.export(gru.eval(), (x,), dynamic_shapes=...)``
  runs at any length (torch.nn's modules are unrolled to the example's); under
  ``torch.onnx.export(..., dynamo=True)`` each layer is ONNX's own ``RNN``/``GRU``/
  ``LSTM`` operator with torch's semantics (see :mod:`recurrentkit.export`).
  ``torch.jit.trace`` records torch's fused op, which runs at any shape.
- Bad input raises recurrentkit errors that are also the class torch.nn raises for the
  same mistake (a :class:`~recurrentkit.errors.ShapeRuntimeError` for a wrong feature
  size, ...), with torch's own message in parentheses (see :mod:`recurrentkit.errors`).

Inside, everything is time-major; ``batch_first`` and unbatched input are converted once,
at this boundary (packed sequences go to torch's packed op as they are under ``"auto"``
and are padded once for the parts).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NoReturn, TypeVar, cast, overload

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from recurrentkit._layer_ops import exporting, run_layer
from recurrentkit._validation import (
    allocate,
    check_bool,
    check_choice,
    check_int,
    describe,
    factory_kwargs,
    shape_str,
)
from recurrentkit.bidirectional import Bidirectional
from recurrentkit.cells import GRUCell, LSTMCell, LSTMState, RNNCell
from recurrentkit.cells.protocol import CellBase
from recurrentkit.errors import (
    ConfigError,
    DeviceError,
    DeviceRuntimeError,
    InputTypeError,
    InputTypeRuntimeError,
    InputTypeValueError,
    RecurrentKitError,
    ShapeError,
    ShapeRuntimeError,
    StateRuntimeError,
    UnsupportedError,
)
from recurrentkit.executors.fast import plain_mode
from recurrentkit.executors.torch_ops import refused, try_fused
from recurrentkit.stack import EXECUTORS, Stack, check_resets, repack, run_segments

__all__ = [
    "GRU",
    "LSTM",
    "PARAMETER_KINDS",
    "RNN",
    "RecurrentBase",
    "dropin_from_torch",
    "dropin_to_torch",
    "mode_of",
]

PARAMETER_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
"""One layer's parameter names in torch's registration order (``weight_ih_l{k}`` & co.
are these with the layer suffix); the built-in cells use the same names."""
_NONLINEARITIES = ("tanh", "relu")
_DROPOUT_WORDS = (
    "dropout should be a number in range [0, 1] representing the probability of an "
    "element being zeroed"
)
_EMPTY_SEQUENCE_WORDS = "Expected sequence length to be larger than 0 in RNN"


class RecurrentBase(nn.RNNBase):
    """What the drop-ins share: torch's ``RNNBase``, validation, the run.

    Not instantiated directly: use :class:`RNN`, :class:`GRU` or :class:`LSTM`.
    ``isinstance(m, torch.nn.RNNBase)`` holds for them, as for torch's modules; to tell
    the kinds apart in code that must accept both, read ``m.mode`` (``"GRU"``, ...).

    Attributes:
        mode: torch's mode string: ``"RNN_TANH"``, ``"RNN_RELU"``, ``"GRU"``, ``"LSTM"``.
        input_size: ``I``.
        hidden_size: ``H``.
        num_layers: ``L``.
        bias: whether the biases exist.
        batch_first: input and output are ``(B, T, ·)``.
        dropout: inter-layer dropout probability.
        bidirectional: ``D = 2`` if true.
        proj_size: ``P`` (LSTM only; 0 means none).
        _flat_weights_names: torch's: every parameter's name, in torch's flat order.
        _flat_weights: torch's: the tensors a forward runs with, in that order (kept in
            step with the attributes by torch's ``RNNBase``; ``weight_norm`` and
            weight-drop implementations put plain tensors there).
    """

    mode: str
    # the parts that run it, kept out of _modules (see _build_parts)
    _cells: list[CellBase]
    _bindings: list[tuple[CellBase, list[tuple[str, str]]]]
    _slots: list[tuple[CellBase, str, int]]
    _stack: Stack | None
    _bi_layers: tuple[Bidirectional, ...]

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bias: bool,
        batch_first: bool,
        dropout: float,
        bidirectional: bool,
        proj_size: int,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        executor: str = "auto",
    ) -> None:
        _check_config(
            mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, proj_size,
        )  # fmt: skip
        factory = factory_kwargs(device, dtype)
        executor = check_choice("executor", executor, EXECUTORS)
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero "
                f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                f"num_layers={num_layers}",
                UserWarning,
                stacklevel=3,
            )
        gates = {"LSTM": 4, "GRU": 3}.get(mode, 1) * hidden_size
        with warnings.catch_warnings():  # torch's RNNBase would warn again, at this line
            warnings.filterwarnings("ignore", "dropout option adds dropout", UserWarning)
            allocate(
                "input_size, hidden_size",
                (gates, max(input_size, hidden_size)),
                lambda: super(RecurrentBase, self).__init__(
                    mode, input_size, hidden_size, num_layers, bias, batch_first,
                    float(dropout), bidirectional, proj_size, **factory,
                ),
            )  # fmt: skip
        self._executor = executor
        self._build_parts()

    def _build_parts(self) -> None:
        """Build the cells and the stacks that run them, not as submodules.

        Cells are created on the meta device (no memory, no random numbers drawn); their
        parameters are pointed at this module's weights by :meth:`_bind` before every
        use. ``object.__setattr__`` keeps the parts out of ``_modules``, so the state_dict
        holds torch's keys only.
        """
        D = 2 if self.bidirectional else 1
        out = self.proj_size or self.hidden_size
        cells: list[CellBase] = []
        bindings: list[tuple[CellBase, list[tuple[str, str]]]] = []
        for layer in range(self.num_layers):
            for direction in range(D):
                width = self.input_size if layer == 0 else D * out
                cell = self._make_cell(width, self.hidden_size, self.bias, self.proj_size)
                suffix = "_reverse" if direction == 1 else ""
                pairs = [
                    (kind, f"{kind}_l{layer}{suffix}")
                    for kind in PARAMETER_KINDS
                    if cell._parameters.get(kind) is not None
                ]
                cells.append(cell)
                bindings.append((cell, pairs))
        index = {name: i for i, name in enumerate(self._flat_weights_names)}
        slots = [(cell, kind, index[name]) for cell, pairs in bindings for kind, name in pairs]
        stack: Stack | None = None
        layers: tuple[Bidirectional, ...] = ()
        if self.bidirectional:
            layers = tuple(
                Bidirectional(Stack([cells[2 * k]]), Stack([cells[2 * k + 1]]))
                for k in range(self.num_layers)
            )
        else:
            stack = Stack(cells, "independent", dropout=self.dropout)
        for name, value in (
            ("_cells", cells),
            ("_bindings", bindings),
            ("_slots", slots),
            ("_stack", stack),
            ("_bi_layers", layers),
        ):
            object.__setattr__(self, name, value)
        self._set_parts_executor()

    def _replicate_for_data_parallel(self) -> RecurrentBase:
        # A replica shares this module's __dict__ copy: give it its own parts, so replicas
        # running in parallel threads never rebind one another's cells.
        replica = super()._replicate_for_data_parallel()
        replica._build_parts()
        return replica

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_flat_weights_names" not in state and "_flat_names" in state:
            # pickled by recurrentkit 0.1, whose drop-ins were plain nn.Modules
            state = dict(state)
            names = state.pop("_flat_names")
            state["_flat_weights_names"] = names
            state["_flat_weights"] = [state["_parameters"].get(n) for n in names]
        super().__setstate__(state)
        if "_slots" not in state:
            self._build_parts()

    def __prepare_scriptable__(self) -> NoReturn:
        """``torch.jit.script`` calls this first: refuse, naming what works instead."""
        raise UnsupportedError(
            "torch.jit.script",
            "torch.export.export(module, args) or torch.jit.trace(module, example_inputs), "
            "which record what the module runs (TorchScript cannot compile recurrentkit's "
            "Python executors; module.to_torch() is the torch.nn module with these weights)",
            f"torch.jit.script on {self._name()}({self.extra_repr()})",
        )

    # -- what a subclass supplies -------------------------------------------------------

    def _make_cell(self, input_size: int, hidden_size: int, bias: bool, proj: int) -> CellBase:
        raise NotImplementedError  # pragma: no cover

    # -- torch.nn's surface -------------------------------------------------------------

    def reset_parameters(self) -> None:
        """torch.nn's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)).

        One pass in ``named_parameters()`` order, as torch.nn does, so the same seed
        gives the same weights as the torch module.
        """
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    @property
    def stack(self) -> Stack | None:
        """The :class:`~recurrentkit.Stack` a unidirectional drop-in runs (``None`` if
        bidirectional). Time-major; it shares this module's parameters."""
        self._bind(self._weights())
        return self._stack

    @property
    def bidirectional_layers(self) -> tuple[Bidirectional, ...]:
        """The per-layer :class:`~recurrentkit.bidirectional.Bidirectional` parts a
        bidirectional drop-in runs (empty if unidirectional)."""
        self._bind(self._weights())
        return self._bi_layers

    def to_torch(self) -> nn.Module:
        """The equivalent ``torch.nn`` module, weights copied.

        See :func:`dropin_to_torch`.
        """
        return dropin_to_torch(self)

    @classmethod
    def from_torch(cls, module: nn.Module) -> RecurrentBase:
        """A drop-in equal to a ``torch.nn`` module, weights copied.

        See :func:`dropin_from_torch`.
        """
        wanted = getattr(nn, cls.__name__, nn.RNNBase)
        if not isinstance(module, wanted):
            raise InputTypeError("module", f"a torch.nn.{wanted.__name__}", describe(module))
        return dropin_from_torch(module)

    # -- running ------------------------------------------------------------------------

    @property
    def executor(self) -> str:
        """How the module runs: ``"auto"`` (default), ``"handbuilt"`` or ``"reference"``.

        - ``"auto"``: the whole module on torch's fused multi-layer recurrent op
          (``torch._VF.gru`` & co., what ``torch.nn.GRU`` itself calls: ATen/oneDNN on CPU,
          cuDNN on GPU), with this module's parameters. Under ``torch.compile`` tracing
          and torch.func transforms it runs the library's parts on plain ops instead, and
          so it does where torch's op refuses the input (oneDNN has no bfloat16 LSTM on
          CPUs without AVX-512, where ``nn.LSTM`` fails under bfloat16 autocast): the
          parts, as ``"handbuilt"`` runs them (plain ops under autocast, which it converts).
        - ``"handbuilt"`` / ``"reference"``: the library's parts (a :class:`~recurrentkit.Stack`
          per direction, see :attr:`stack` and :attr:`bidirectional_layers`) with that
          executor — hand-built cells and kernels, never torch's fused op.

        All compute the same function (float64 agreement ≤ 1e-10 with ``torch.nn``,
        outputs, states and gradients); in training, dropout draws different masks.
        Settable at any time: ``gru.executor = "handbuilt"``.
        """
        return self._executor

    @executor.setter
    def executor(self, value: str) -> None:
        self._executor = check_choice("executor", value, EXECUTORS)
        self._set_parts_executor()

    def _set_parts_executor(self) -> None:
        parts = "handbuilt" if self._executor == "auto" else self._executor
        stacks = [self._stack] if self._stack is not None else []
        for layer in self._bi_layers:
            stacks += [layer.forward_stack, layer.backward_stack]
        for stack in stacks:
            stack.executor = parts

    def _run(self, input: Tensor | PackedSequence, hx: Any, resets: Any = None) -> tuple[Any, Any]:
        """Shared body of ``forward``: ``(output, h_n)``, ``h_n`` a tensor or ``(h_n, c_n)``
        in torch's layout. With ``resets``, the library's parts run on the segments the
        resets cut (:func:`~recurrentkit.stack.run_segments`), never torch's fused op."""
        weights = self._weights()
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            self._check_input("input.data (PackedSequence)", packed.data, weights, packed=True)
            x = packed.data  # (N, I)
            B, unbatched = int(packed.batch_sizes[0]), False
        else:
            self._check_input("input", input, weights, packed=False)
            assert isinstance(input, Tensor)
            unbatched = input.dim() == 2
            time_axis = 1 if self.batch_first and not unbatched else 0
            if input.shape[time_axis] == 0:
                raise ShapeRuntimeError(
                    "input",
                    "a non-empty time dimension (T >= 1; an empty batch, B = 0, is fine)",
                    shape_str(input.shape),
                    torch_message=_EMPTY_SEQUENCE_WORDS,
                )
            if unbatched:
                x = input.unsqueeze(1)  # (T, 1, I)
            else:
                x = input.transpose(0, 1) if self.batch_first else input  # (T, B, I)
            B = x.shape[1]
        h0 = self._check_hx(hx, B, x, unbatched, packed is not None)  # (D L, B, ·) or None
        if resets is not None:
            return self._run_resets(x, packed, h0, resets, unbatched, weights)
        fused = None
        if packed is None and exporting() and not (self.training and self.dropout > 0):
            fused = self._run_layer_ops(x, h0, weights)  # one op per layer, T and B symbolic
        elif self._executor == "auto" and not plain_mode():
            fused = self._run_fused(x, packed, h0, weights)  # None where torch's op refuses
        if fused is not None:
            y, h_n = fused  # packed: (N, D H_out)
            if packed is not None:
                return PackedSequence(
                    y, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
                ), h_n
        else:
            lengths = None
            if packed is not None:
                x, lengths = pad_packed_sequence(packed)  # (T, B, I), the caller's order
            y, h_n = self._run_parts(x, h0, lengths, weights)  # (T, B, D H_out)
            if packed is not None:
                assert lengths is not None
                return repack(y, lengths, packed), h_n
        if unbatched:
            h_n = tuple(h.squeeze(1) for h in h_n) if self.mode == "LSTM" else h_n.squeeze(1)
            return y.squeeze(1), h_n  # (T, D H_out)
        return (y.transpose(0, 1) if self.batch_first else y), h_n

    def _run_resets(
        self,
        x: Tensor,
        packed: PackedSequence | None,
        h0: Any,
        resets: object,
        unbatched: bool,
        weights: list[Tensor],
    ) -> tuple[Any, Any]:
        """``forward`` with ``resets``: the parts over the segments they cut, each
        segment from zeros (a row's first: from ``hx``), in every direction and layer."""
        lengths = None
        if packed is not None:
            x, lengths = pad_packed_sequence(packed)  # (T, B, I), the caller's order
        bf = self.batch_first and packed is None
        mask = check_resets("resets", resets, x, unbatched=unbatched, batch_first=bf)
        lstm = self.mode == "LSTM"
        D, B = (2 if self.bidirectional else 1), x.shape[1]
        H, C = self.proj_size or self.hidden_size, self.hidden_size
        if h0 is None:
            h0 = x.new_zeros(D * self.num_layers, B, H)
            h0 = (h0, x.new_zeros(D * self.num_layers, B, C)) if lstm else h0
        parts = [(h, c) for h, c in zip(h0[0].unbind(0), h0[1].unbind(0))] if lstm else h0.unbind(0)
        zero = x.new_zeros(1, H)
        initial = [(zero, x.new_zeros(1, C)) if lstm else zero for _ in parts]

        def run(x_s: Tensor, s: tuple[Any, ...], len_s: Tensor | None) -> tuple[Tensor, Any]:
            h_s: Any
            if lstm:
                h_s = (torch.stack([p[0] for p in s]), torch.stack([p[1] for p in s]))
            else:
                h_s = torch.stack(s)
            y, h_n = self._run_parts(x_s, h_s, len_s, weights)  # (T', S, D H_out)
            if lstm:
                return y, [(h, c) for h, c in zip(h_n[0].unbind(0), h_n[1].unbind(0))]
            return y, h_n.unbind(0)

        y, finals = run_segments(x, parts, lengths, mask, initial, run)  # (T, B, D H_out)
        if lstm:
            h_n: Any = (torch.stack([f[0] for f in finals]), torch.stack([f[1] for f in finals]))
        else:
            h_n = torch.stack(finals)
        if packed is not None:
            assert lengths is not None
            return repack(y, lengths, packed), h_n
        if unbatched:
            h_n = tuple(h.squeeze(1) for h in h_n) if lstm else h_n.squeeze(1)
            return y.squeeze(1), h_n  # (T, D H_out)
        return (y.transpose(0, 1) if self.batch_first else y), h_n

    def _run_fused(
        self, x: Tensor, packed: PackedSequence | None, h0: Any, weights: list[Tensor]
    ) -> tuple[Tensor, Any] | None:
        """The whole module on torch's fused op: ``x`` is ``(T, B, I)``, or the packed
        data ``(N, I)`` of ``packed``; ``h0`` in the caller's batch order or ``None``.
        ``None`` where the op refuses the input (:func:`~.executors.torch_ops.try_fused`:
        bfloat16 on a CPU without oneDNN's bfloat16 LSTM, say): the parts run instead."""
        if refused(self.mode, x):
            return None
        lstm = self.mode == "LSTM"
        if h0 is None:
            D = 2 if self.bidirectional else 1
            B = int(packed.batch_sizes[0]) if packed is not None else x.shape[1]
            zeros = x.new_zeros((D * self.num_layers, B, self.proj_size or self.hidden_size))
            h0 = (zeros, x.new_zeros((*zeros.shape[:2], self.hidden_size))) if lstm else zeros
        elif packed is not None and packed.sorted_indices is not None:
            order = packed.sorted_indices  # the op runs sequences longest first
            h0 = tuple(h.index_select(1, order) for h in h0) if lstm else h0.index_select(1, order)
        config = (self.bias, self.num_layers, self.dropout, self.training, self.bidirectional)
        if packed is None:
            done = try_fused(self.mode, x, h0, weights, *config, False)
        else:
            done = try_fused(self.mode, x, packed.batch_sizes, h0, weights, *config)
        if done is None:
            return None
        y, h_n = done
        if packed is not None and packed.unsorted_indices is not None:
            back = packed.unsorted_indices  # the caller's batch order again
            h_n = tuple(h.index_select(1, back) for h in h_n) if lstm else h_n.index_select(1, back)
        return y, h_n

    def _run_layer_ops(self, x: Tensor, h0: Any, weights: list[Tensor]) -> tuple[Tensor, Any]:
        """The module as one exportable op per layer (:func:`~._layer_ops.run_layer`):
        ``x (T, B, I)``, ``h0`` ``(D L, B, ·)`` (a pair for LSTM) or ``None``; no dropout
        (eval mode, or ``dropout=0``)."""
        D = 2 if self.bidirectional else 1
        per = len(weights) // (D * self.num_layers)  # tensors per layer and direction
        lstm = self.mode == "LSTM"
        finals: list[Any] = []  # per layer: (D, B, H_out), or a pair for LSTM
        y = x
        for k in range(self.num_layers):
            rows = slice(D * k, D * (k + 1))
            hx = None if h0 is None else (h0[0][rows], h0[1][rows]) if lstm else h0[rows]
            layer = weights[D * per * k : D * per * (k + 1)]
            y, h_n = run_layer(self.mode, y, hx, layer, self.bias, self.bidirectional)
            finals.append(h_n)  # (D, B, ·) or a pair
        if lstm:
            return y, (torch.cat([h for h, _ in finals]), torch.cat([c for _, c in finals]))
        return y, torch.cat(finals)  # (D L, B, H_out)

    def _weights(self) -> list[Tensor]:
        """What a forward runs with, in torch's flat order: ``_flat_weights``, brought up
        to date as ``torch.nn.GRU.forward`` brings it (``functional_call`` & co.).

        While tracing (``torch.compile``, torch.func) the attributes themselves, which
        is what an update would give, without torch's weak references.
        """
        if plain_mode():
            return [getattr(self, name) for name in self._flat_weights_names]
        # torch's _update_flat_weights, with its common case (every weight where it was,
        # found in _parameters) checked without Module.__getattr__; anything else
        # (parametrizations, a replaced weight) goes through torch's own update
        params = self._parameters
        for ref, name in zip(self._flat_weight_refs, self._flat_weights_names):
            w = params.get(name)
            if w is None or ref is None or ref() is not w:
                self._update_flat_weights()
                break
        return cast("list[Tensor]", self._flat_weights)  # (each name's tensor: none None)

    def _run_parts(
        self, x: Tensor, h0: Any, lengths: Tensor | None, weights: list[Tensor]
    ) -> tuple[Tensor, Any]:
        """The library's Stack / Bidirectional parts over ``x (T, B, I)``."""
        self._bind(weights)
        states: list[Any] | None = None
        if h0 is not None:
            if self.mode == "LSTM":
                states = [LSTMState(h, c) for h, c in zip(h0[0].unbind(0), h0[1].unbind(0))]
            else:
                states = list(h0.unbind(0))
        if self._stack is not None:
            if self._stack.training != self.training:  # train() walks every submodule
                self._stack.train(self.training)
            y, finals = self._stack(
                x, None if states is None else tuple(states), lengths=lengths
            )  # (T, B, H_out)
            finals = list(finals)
        else:
            y, finals = self._run_bidirectional(x, states, lengths)  # (T, B, 2 H_out)
        if self.mode == "LSTM":
            return y, (torch.stack([s.h for s in finals]), torch.stack([s.c for s in finals]))
        return y, torch.stack(finals)  # (D L, B, H)

    def _run_bidirectional(
        self, x: Tensor, states: list[Any] | None, lengths: Tensor | None
    ) -> tuple[Tensor, list[Any]]:
        u, finals = x, []
        last = len(self._bi_layers) - 1
        for k, layer in enumerate(self._bi_layers):
            if layer.training != self.training:
                layer.train(self.training)
            s = None if states is None else ((states[2 * k],), (states[2 * k + 1],))
            y, (s_f, s_b) = layer(u, s, lengths=lengths)  # (T, B, 2 H_out)
            finals += [s_f[0], s_b[0]]
            if self.training and self.dropout > 0 and k < last:
                y = F.dropout(y, self.dropout, training=True)
            # under autocast a layer may hand back autocast's dtype; the next layer's parts
            # take the module's (an exact upcast: autocast casts it back for the matmuls)
            u = y if k == last else y.to(x.dtype)
        return u, finals

    def _bind(self, weights: list[Tensor]) -> None:
        """Point every cell's parameters at ``weights`` (cheap; before each use)."""
        for cell, kind, i in self._slots:
            cell._parameters[kind] = weights[i]  # type: ignore[assignment]  # plain tensors too

    # -- validation ---------------------------------------------------------------------

    def _layout(self) -> str:
        I = self.input_size  # noqa: E741
        return f"(B, T, {I}) or (T, {I})" if self.batch_first else f"(T, B, {I}) or (T, {I})"

    def _torch_name(self) -> str:
        return "RNN" if self.mode.startswith("RNN") else self.mode

    def _check_input(self, name: str, x: object, weights: list[Tensor], *, packed: bool) -> None:
        """``input`` (or a PackedSequence's data) against this module, each mistake raised
        as the class torch.nn raises for it, with torch's wording."""
        I = self.input_size  # noqa: E741
        ref = weights[0]
        if (
            isinstance(x, Tensor)
            and x.dim() == (2 if packed else x.dim())
            and x.dim() in (2, 3)
            and x.shape[-1] == I
            and x.dtype is ref.dtype
            and x.device == ref.device
            and all(p.dtype is x.dtype for p in weights)
            and all(p.device == ref.device for p in weights)
        ):
            return  # (every check below passes: no message is built)
        layout = f"(N, {I}) (packed rows)" if packed else self._layout()
        if not isinstance(x, Tensor):
            raise InputTypeError(name, f"a tensor of shape {layout}", describe(x))
        if not x.is_floating_point():
            raise InputTypeValueError(
                name,
                "a floating-point tensor (token ids go through an nn.Embedding first)",
                x.dtype,
                torch_message=_dtype_words(x, ref),
            )
        if packed and x.dim() != 2:
            raise ShapeRuntimeError(
                name,
                f"shape {layout}",
                shape_str(x.shape),
                torch_message=f"input must have 2 dimensions, got {x.dim()}",
            )
        if x.dim() not in (2, 3):
            tensor = " tensor" if self._torch_name() == "RNN" else ""
            raise ShapeError(
                name,
                f"shape {layout}",
                shape_str(x.shape),
                torch_message=f"{self._torch_name()}: Expected input to be 2D or 3D, got "
                f"{x.dim()}D{tensor} instead",
            )
        if x.shape[-1] != I:
            raise ShapeRuntimeError(
                name,
                f"shape {layout} with last dim {I}",
                shape_str(x.shape),
                torch_message="input.size(-1) must be equal to input_size. "
                f"Expected {I}, got {x.shape[-1]}",
            )
        if x.dtype != ref.dtype:
            raise DeviceError(
                name,
                f"dtype {ref.dtype} (the module's parameters)",
                x.dtype,
                torch_message=_dtype_words(x, ref),
            )
        if x.device != ref.device:
            raise DeviceRuntimeError(
                name,
                f"device {ref.device} (the module's parameters)",
                x.device,
                torch_message="Input and parameter tensors are not at the same device, found "
                f"input tensor at {x.device} and parameter tensor at {ref.device}",
            )
        for pname, p in zip(self._flat_weights_names[1:], weights[1:]):
            if p.dtype != x.dtype or p.device != x.device:
                raise DeviceRuntimeError(
                    pname,
                    f"the input's dtype {x.dtype} and device {x.device} (all parameters of "
                    f"the module must share them; {name} has them)",
                    f"{p.dtype} on {p.device}",
                )

    def _check_hx(self, hx: object, B: int, x: Tensor, unbatched: bool, packed: bool) -> Any:
        """``hx`` checked, as ``(D L, B, ·)`` tensors (a pair for LSTM); ``None`` stays.

        Each mistake is raised as the class torch.nn raises for it (all
        :class:`RuntimeError` but a non-tensor ``hx``), with torch's wording."""
        if hx is None:
            return None
        D = 2 if self.bidirectional else 1
        rank = 2 if unbatched else 3
        out = self.proj_size or self.hidden_size
        lead = (D * self.num_layers,) if unbatched else (D * self.num_layers, B)
        dims = "(D*num_layers, {})" if unbatched else "(D*num_layers, B, {})"
        if self.mode != "LSTM":
            if not isinstance(hx, Tensor):
                raise InputTypeError(
                    "hx",
                    f"a tensor of shape {dims.format('H')} ({self._name()}'s state is one tensor)",
                    describe(hx),
                )
            if hx.dim() != rank and not packed:
                raise StateRuntimeError(
                    "hx",
                    f"a {rank}-D tensor of shape {dims.format('H')} for "
                    f"{'unbatched 2-D' if unbatched else 'batched 3-D'} input",
                    shape_str(hx.shape),
                    torch_message=f"For {'unbatched 2-D' if unbatched else 'batched 3-D'} "
                    f"input, hx should also be {rank}-D but got {hx.dim()}-D tensor",
                )
            h = self._check_hx_tensor(
                "hx", hx, (*lead, out), dims.format("H"), x, unbatched, "hidden"
            )
            return h.unsqueeze(1) if unbatched else h  # (D L, B, H)
        if not isinstance(hx, (tuple, list)):
            error = InputTypeRuntimeError if isinstance(hx, Tensor) else InputTypeError
            raise error("hx", "a tuple (h_0, c_0) (an LSTM's state is two tensors)", describe(hx))
        if len(hx) != 2:
            raise StateRuntimeError(
                "hx",
                "a tuple (h_0, c_0) of 2 tensors",
                f"{len(hx)} elements",
                torch_message="lstm expects two hidden states",
            )
        h_name = "H_out" if self.proj_size else "H"
        if all(isinstance(t, Tensor) for t in hx) and not packed:
            if hx[0].dim() != rank or hx[1].dim() != rank:
                kind = "unbatched 2-D" if unbatched else "batched 3-D"
                raise StateRuntimeError(
                    "hx",
                    f"two {rank}-D tensors for {kind} input",
                    f"{shape_str(hx[0].shape)} and {shape_str(hx[1].shape)}",
                    torch_message=f"For {kind} input, hx and cx should also be {rank}-D but "
                    f"got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors",
                )
        h = self._check_hx_tensor(
            "hx[0] (h_0)", hx[0], (*lead, out), dims.format(h_name), x, unbatched, "hidden[0]"
        )
        c = self._check_hx_tensor(
            "hx[1] (c_0)",
            hx[1],
            (*lead, self.hidden_size),
            dims.format("H"),
            x,
            unbatched,
            "hidden[1]",
        )
        if unbatched:
            h, c = h.unsqueeze(1), c.unsqueeze(1)  # (D L, 1, ·)
        return h, c

    def _check_hx_tensor(
        self,
        name: str,
        t: object,
        shape: tuple[int, ...],
        layout: str,
        x: Tensor,
        unbatched: bool,
        torch_name: str,
    ) -> Tensor:
        if not isinstance(t, Tensor):
            raise InputTypeError(name, f"a tensor of shape {layout}", describe(t))
        if not t.is_floating_point():
            raise InputTypeRuntimeError(name, "a floating-point tensor", t.dtype)
        if tuple(t.shape) != shape:
            # torch words it after adding the batch axis to unbatched input and hx
            want = (shape[0], 1, shape[1]) if unbatched else shape
            got = list(t.unsqueeze(1).shape) if unbatched and t.dim() == 2 else list(t.shape)
            raise StateRuntimeError(
                name,
                f"shape {layout} = {shape_str(shape)}",
                shape_str(t.shape),
                torch_message=f"Expected {torch_name} size {tuple(want)}, got {got}",
            )
        if t.dtype != x.dtype:
            raise DeviceRuntimeError(name, f"dtype {x.dtype} (the input's)", t.dtype)
        if t.device != x.device:
            raise DeviceRuntimeError(
                name,
                f"device {x.device} (the input's)",
                t.device,
                torch_message="Input and hidden tensors are not at the same device, found "
                f"input tensor at {x.device} and hidden tensor at {t.device}",
            )
        return t

    def _name(self) -> str:
        return type(self).__name__

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s


def _dtype_words(x: Tensor, ref: Tensor) -> str:
    """torch.nn's message for an input whose dtype is not the weights'."""
    return (
        f"RNN input dtype ({x.dtype}) does not match weight dtype ({ref.dtype}). "
        f"Convert input: input.to({ref.dtype}), or convert model: model.to({x.dtype})"
    )


def _check_config(
    mode: str,
    input_size: object,
    hidden_size: object,
    num_layers: object,
    bias: object,
    batch_first: object,
    dropout: object,
    bidirectional: object,
    proj_size: object,
) -> None:
    """The constructor's arguments, each mistake raised as the class torch.nn raises for
    it, with torch's wording."""
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputTypeError(
                name,
                "an int >= 1",
                describe(value),
                torch_message=f"{name} should be of type int, got: {type(value).__name__}",
            )
        if value < 1:
            raise ConfigError(
                name, "an int >= 1", value, torch_message=f"{name} must be greater than zero"
            )
    words = "num_layers must be greater than zero"
    _worded(ConfigError, words, check_int, "num_layers", num_layers)
    for name, value in (("bias", bias), ("batch_first", batch_first)):
        words = f"{name} should be of type bool, got: {type(value).__name__}"
        _worded(InputTypeError, words, check_bool, name, value)
    check_bool("bidirectional", bidirectional)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise InputTypeValueError(
            "dropout", "a float in [0, 1]", describe(dropout), torch_message=_DROPOUT_WORDS
        )
    if not 0.0 <= float(dropout) <= 1.0:
        raise ConfigError("dropout", "a float in [0, 1]", dropout, torch_message=_DROPOUT_WORDS)
    if mode != "LSTM":
        if not (type(proj_size) is int and proj_size == 0):
            raise ConfigError(
                "proj_size",
                "0 (projections exist only for LSTM, as in torch.nn)",
                describe(proj_size) if not isinstance(proj_size, int) else proj_size,
                torch_message="proj_size argument is only supported for LSTM, not RNN or GRU",
            )
        return
    words = "proj_size should be a positive integer or zero to disable projections"
    _worded(ConfigError, words, check_int, "proj_size", proj_size, minimum=0)
    assert isinstance(proj_size, int) and isinstance(hidden_size, int)
    if proj_size >= hidden_size:
        raise ConfigError(
            "proj_size",
            f"0 (no projection) or an int < hidden_size={hidden_size}",
            proj_size,
            torch_message="proj_size has to be smaller than hidden_size",
        )


def _worded(kind: type[RecurrentKitError], words: str, check: Any, *args: Any, **kw: Any) -> Any:
    """``check(*args, **kw)``; an error of exactly class ``kind`` it raises gets torch's
    ``words``."""
    try:
        return check(*args, **kw)
    except kind as error:
        if type(error) is not kind:
            raise
        raise kind(error.argument, error.expected, error.got, torch_message=words) from None


class RNN(RecurrentBase):
    r"""Multi-layer Elman RNN, a drop-in for ``torch.nn.RNN``, built from :class:`RNNCell`.

    For each layer and direction, from :math:`h_0` (zeros if ``hx`` is ``None``):

    $$
    h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}),
    \qquad \phi \in \{\tanh, \mathrm{relu}\}
    $$

    Layer ``k > 0`` reads the (dropped-out, in training) output of layer ``k - 1``;
    with ``bidirectional=True`` each layer also reads every sequence backwards (see
    :class:`~recurrentkit.bidirectional.Bidirectional`) and outputs ``[h→; h←]``.

    Args:
        input_size: ``I``, features of the input.
        hidden_size: ``H``, features of the state.
        num_layers: ``L >= 1``.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        bias: create ``bias_ih_l{k}`` and ``bias_hh_l{k}``.
        batch_first: input and output are ``(B, T, ·)`` (the state is not).
        dropout: inter-layer dropout in training mode, not after the last layer.
        bidirectional: add a reverse direction (``D = 2``).
        device: where to create the parameters.
        dtype: dtype of the parameters.
        executor: ``"auto"``, ``"handbuilt"`` or ``"reference"`` (see
            :attr:`RecurrentBase.executor`).
        proj_size: keyword-only and must be 0 (as torch.nn, projections are LSTM's).

    Parameters, torch's names and shapes: ``weight_ih_l{k}[_reverse]`` ``(H, I or D H)``,
    ``weight_hh_l{k}[_reverse]`` ``(H, H)``, ``bias_ih_l{k}[_reverse]``,
    ``bias_hh_l{k}[_reverse]`` ``(H,)``.

    Shape:
        - input: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, ``(T, I)`` unbatched,
          or a ``PackedSequence``.
        - hx: ``(D L, B, H)`` (``(D L, H)`` unbatched) or ``None``.
        - output: ``(T, B, D H)`` (as the input's layout; packed in, packed out).
        - h_n: ``(D L, B, H)`` (``(D L, H)`` unbatched).

    Raises:
        ConfigError: non-positive sizes, ``num_layers=0``, dropout outside ``[0, 1]``,
            unknown ``nonlinearity``, ``proj_size != 0``.
        ShapeError, StateError, InputTypeError, DeviceError: bad ``input`` or ``hx``;
            each is also the class torch.nn raises for the mistake, with torch's words
            (a wrong feature size or ``T = 0``: :class:`~recurrentkit.ShapeRuntimeError`;
            ``hx``: :class:`~recurrentkit.StateRuntimeError`; see
            :mod:`recurrentkit.errors`). An empty batch (``B = 0``) is not an error.
        UnsupportedError: ``torch.jit.script`` (use ``torch.export`` or
            ``torch.jit.trace``).

    Example:
        >>> import torch, recurrentkit as rk
        >>> rnn = rk.RNN(3, 5, num_layers=2, nonlinearity="relu", bidirectional=True)
        >>> out, h_n = rnn(torch.randn(7, 4, 3))
        >>> out.shape, h_n.shape
        (torch.Size([7, 4, 10]), torch.Size([4, 4, 5]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        proj_size: int = 0,
        executor: str = "auto",
    ) -> None:
        words = f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'."
        _worded(ConfigError, words, check_choice, "nonlinearity", nonlinearity, _NONLINEARITIES)
        self.nonlinearity = nonlinearity
        super().__init__(
            "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU",
            input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, proj_size, device, dtype, executor,
        )  # fmt: skip

    def _make_cell(self, input_size: int, hidden_size: int, bias: bool, proj: int) -> CellBase:
        return RNNCell(input_size, hidden_size, bias, self.nonlinearity, device="meta")

    @overload
    def forward(
        self, input: Tensor, hx: Tensor | None = None, *, resets: Tensor | None = None
    ) -> tuple[Tensor, Tensor]: ...

    @overload
    def forward(
        self, input: PackedSequence, hx: Tensor | None = None, *, resets: Tensor | None = None
    ) -> tuple[PackedSequence, Tensor]: ...

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: Tensor | None = None,
        *,
        resets: Tensor | None = None,
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        """Run the whole sequence, as ``torch.nn.RNN.forward``.

        Args:
            input: ``(T, B, I)`` / ``(B, T, I)`` / ``(T, I)`` or a ``PackedSequence``.
            hx: ``(D L, B, H)`` initial states (``(D L, H)`` unbatched); ``None`` = zeros.
            resets: recurrentkit's keyword beyond torch's signature: a bool mask
                ``(T, B)`` (``(B, T)`` if ``batch_first``, ``(T,)`` unbatched, ``(T, B)``
                for a ``PackedSequence``); where ``resets[t, b]`` is true, sequence ``b``
                starts again from zeros before step ``t`` in every layer and direction
                (see :meth:`recurrentkit.Stack.forward`). Runs the library's parts.

        Returns:
            ``(output, h_n)``.
        """
        return self._run(input, hx, resets)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", nonlinearity={self.nonlinearity!r}" if self.nonlinearity != "tanh" else "")


class GRU(RecurrentBase):
    r"""Multi-layer GRU, a drop-in for ``torch.nn.GRU``, built from :class:`GRUCell`.

    For each layer and direction (torch's reset-after form, rows ``r | z | n``):

    $$
    \begin{aligned}
    r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
    z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
    n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
    h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}
    \end{aligned}
    $$

    Layer ``k > 0`` reads the (dropped-out, in training) output of layer ``k - 1``;
    with ``bidirectional=True`` each layer also reads every sequence backwards (see
    :class:`~recurrentkit.bidirectional.Bidirectional`) and outputs ``[h→; h←]``.

    Args:
        input_size: ``I``, features of the input.
        hidden_size: ``H``, features of the state.
        num_layers: ``L >= 1``.
        bias: create ``bias_ih_l{k}`` and ``bias_hh_l{k}``.
        batch_first: input and output are ``(B, T, ·)`` (the state is not).
        dropout: inter-layer dropout in training mode, not after the last layer.
        bidirectional: add a reverse direction (``D = 2``).
        device: where to create the parameters.
        dtype: dtype of the parameters.
        executor: ``"auto"``, ``"handbuilt"`` or ``"reference"`` (see
            :attr:`RecurrentBase.executor`).
        proj_size: keyword-only and must be 0 (as torch.nn, projections are LSTM's).

    Parameters, torch's names and shapes: ``weight_ih_l{k}[_reverse]``
    ``(3H, I or D H)``, ``weight_hh_l{k}[_reverse]`` ``(3H, H)``,
    ``bias_ih_l{k}[_reverse]``, ``bias_hh_l{k}[_reverse]`` ``(3H,)``.

    Shape:
        - input: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, ``(T, I)`` unbatched,
          or a ``PackedSequence``.
        - hx: ``(D L, B, H)`` (``(D L, H)`` unbatched) or ``None``.
        - output: ``(T, B, D H)`` (as the input's layout; packed in, packed out).
        - h_n: ``(D L, B, H)`` (``(D L, H)`` unbatched).

    Raises:
        ConfigError: non-positive sizes, ``num_layers=0``, dropout outside ``[0, 1]``,
            ``proj_size != 0``.
        ShapeError, StateError, InputTypeError, DeviceError: bad ``input`` or ``hx``;
            each is also the class torch.nn raises for the mistake, with torch's words
            (a wrong feature size or ``T = 0``: :class:`~recurrentkit.ShapeRuntimeError`;
            ``hx``: :class:`~recurrentkit.StateRuntimeError`; see
            :mod:`recurrentkit.errors`). An empty batch (``B = 0``) is not an error.
        UnsupportedError: ``torch.jit.script`` (use ``torch.export`` or
            ``torch.jit.trace``).

    Example:
        >>> import torch, recurrentkit as rk
        >>> gru = rk.GRU(3, 5, num_layers=2, batch_first=True)
        >>> out, h_n = gru(torch.randn(4, 7, 3))                  # (B, T, I)
        >>> out.shape, h_n.shape, gru.weight_hh_l1.shape
        (torch.Size([4, 7, 5]), torch.Size([2, 4, 5]), torch.Size([15, 5]))
        >>> _ = gru.load_state_dict(torch.nn.GRU(3, 5, 2, batch_first=True).state_dict())
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        proj_size: int = 0,
        executor: str = "auto",
    ) -> None:
        super().__init__(
            "GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, proj_size, device, dtype, executor,
        )  # fmt: skip

    def _make_cell(self, input_size: int, hidden_size: int, bias: bool, proj: int) -> CellBase:
        return GRUCell(input_size, hidden_size, bias, device="meta")

    @overload
    def forward(
        self, input: Tensor, hx: Tensor | None = None, *, resets: Tensor | None = None
    ) -> tuple[Tensor, Tensor]: ...

    @overload
    def forward(
        self, input: PackedSequence, hx: Tensor | None = None, *, resets: Tensor | None = None
    ) -> tuple[PackedSequence, Tensor]: ...

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: Tensor | None = None,
        *,
        resets: Tensor | None = None,
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        """Run the whole sequence, as ``torch.nn.GRU.forward``.

        Args:
            input: ``(T, B, I)`` / ``(B, T, I)`` / ``(T, I)`` or a ``PackedSequence``.
            hx: ``(D L, B, H)`` initial states (``(D L, H)`` unbatched); ``None`` = zeros.
            resets: recurrentkit's keyword beyond torch's signature: a bool mask
                ``(T, B)`` (``(B, T)`` if ``batch_first``, ``(T,)`` unbatched, ``(T, B)``
                for a ``PackedSequence``); where ``resets[t, b]`` is true, sequence ``b``
                starts again from zeros before step ``t`` in every layer and direction
                (see :meth:`recurrentkit.Stack.forward`). Runs the library's parts.

        Returns:
            ``(output, h_n)``.
        """
        return self._run(input, hx, resets)


class LSTM(RecurrentBase):
    r"""Multi-layer LSTM, a drop-in for ``torch.nn.LSTM``, built from :class:`LSTMCell`.

    For each layer and direction (rows ``i | f | g | o``):

    $$
    \begin{aligned}
    i, f, g, o &= \text{split}(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}) \\
    c_t &= \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g) \\
    h_t &= \sigma(o) \odot \tanh(c_t) \qquad
    \text{or } h_t = W_{hr} (\sigma(o) \odot \tanh(c_t)) \text{ with proj\_size}
    \end{aligned}
    $$

    Layer ``k > 0`` reads the (dropped-out, in training) output of layer ``k - 1``;
    with ``bidirectional=True`` each layer also reads every sequence backwards (see
    :class:`~recurrentkit.bidirectional.Bidirectional`) and outputs ``[h→; h←]``.
    ``H_out`` is ``proj_size`` if set, else ``H``.

    Args:
        input_size: ``I``, features of the input.
        hidden_size: ``H``, features of the memory ``c``.
        num_layers: ``L >= 1``.
        bias: create ``bias_ih_l{k}`` and ``bias_hh_l{k}``.
        batch_first: input and output are ``(B, T, ·)`` (the state is not).
        dropout: inter-layer dropout in training mode, not after the last layer.
        bidirectional: add a reverse direction (``D = 2``).
        proj_size: ``0`` or ``P < H``: project ``h`` to ``P`` features (``weight_hr_l{k}``).
        device: where to create the parameters.
        dtype: dtype of the parameters.
        executor: ``"auto"``, ``"handbuilt"`` or ``"reference"`` (see
            :attr:`RecurrentBase.executor`).

    Parameters, torch's names and shapes: ``weight_ih_l{k}[_reverse]``
    ``(4H, I or D H_out)``, ``weight_hh_l{k}[_reverse]`` ``(4H, H_out)``,
    ``bias_ih_l{k}[_reverse]``, ``bias_hh_l{k}[_reverse]`` ``(4H,)``,
    ``weight_hr_l{k}[_reverse]`` ``(P, H)`` with ``proj_size``.

    Shape:
        - input: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, ``(T, I)`` unbatched,
          or a ``PackedSequence``.
        - hx: ``(h_0 (D L, B, H_out), c_0 (D L, B, H))`` (without ``B`` unbatched) or
          ``None``.
        - output: ``(T, B, D H_out)`` (as the input's layout; packed in, packed out).
        - h_n: ``(D L, B, H_out)``; c_n: ``(D L, B, H)``.

    Raises:
        ConfigError: non-positive sizes, ``num_layers=0``, dropout outside ``[0, 1]``,
            ``proj_size >= hidden_size``.
        ShapeError, StateError, InputTypeError, DeviceError: bad ``input`` or ``hx``;
            each is also the class torch.nn raises for the mistake, with torch's words
            (a wrong feature size or ``T = 0``: :class:`~recurrentkit.ShapeRuntimeError`;
            ``hx``: :class:`~recurrentkit.StateRuntimeError`; see
            :mod:`recurrentkit.errors`). An empty batch (``B = 0``) is not an error.
        UnsupportedError: ``torch.jit.script`` (use ``torch.export`` or
            ``torch.jit.trace``).

    Example:
        >>> import torch, recurrentkit as rk
        >>> lstm = rk.LSTM(3, 8, num_layers=2, bidirectional=True, proj_size=4)
        >>> out, (h_n, c_n) = lstm(torch.randn(7, 2, 3))
        >>> out.shape, h_n.shape, c_n.shape
        (torch.Size([7, 2, 8]), torch.Size([4, 2, 4]), torch.Size([4, 2, 8]))
        >>> ", ".join(n for n, _ in lstm.named_parameters() if n.endswith("_l0"))
        'weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, weight_hr_l0'
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        executor: str = "auto",
    ) -> None:
        super().__init__(
            "LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, proj_size, device, dtype, executor,
        )  # fmt: skip

    def _make_cell(self, input_size: int, hidden_size: int, bias: bool, proj: int) -> CellBase:
        return LSTMCell(input_size, hidden_size, bias, proj_size=proj, device="meta")

    @overload
    def forward(
        self,
        input: Tensor,
        hx: tuple[Tensor, Tensor] | None = None,
        *,
        resets: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]: ...

    @overload
    def forward(
        self,
        input: PackedSequence,
        hx: tuple[Tensor, Tensor] | None = None,
        *,
        resets: Tensor | None = None,
    ) -> tuple[PackedSequence, tuple[Tensor, Tensor]]: ...

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: tuple[Tensor, Tensor] | None = None,
        *,
        resets: Tensor | None = None,
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        """Run the whole sequence, as ``torch.nn.LSTM.forward``.

        Args:
            input: ``(T, B, I)`` / ``(B, T, I)`` / ``(T, I)`` or a ``PackedSequence``.
            hx: ``(h_0, c_0)``, each ``(D L, B, ·)`` (``(D L, ·)`` unbatched); ``None``
                means zeros.
            resets: recurrentkit's keyword beyond torch's signature: a bool mask
                ``(T, B)`` (``(B, T)`` if ``batch_first``, ``(T,)`` unbatched, ``(T, B)``
                for a ``PackedSequence``); where ``resets[t, b]`` is true, sequence ``b``
                starts again from zeros before step ``t`` in every layer and direction
                (see :meth:`recurrentkit.Stack.forward`). Runs the library's parts.

        Returns:
            ``(output, (h_n, c_n))``.
        """
        return self._run(input, hx, resets)


# -- conversions from and to torch.nn (also reached through recurrentkit.interop) ---------

_MODES = ("RNN_TANH", "RNN_RELU", "GRU", "LSTM")
_TORCH_CLASSES: dict[str, type[nn.Module]] = {
    "RNN_TANH": nn.RNN,
    "RNN_RELU": nn.RNN,
    "GRU": nn.GRU,
    "LSTM": nn.LSTM,
}
_DROPIN_CLASSES: dict[str, type[RecurrentBase]] = {
    "RNN_TANH": RNN,
    "RNN_RELU": RNN,
    "GRU": GRU,
    "LSTM": LSTM,
}


def dropin_from_torch(module: nn.Module) -> RecurrentBase:
    """The :class:`recurrentkit.RNN`/:class:`~recurrentkit.GRU`/:class:`~recurrentkit.LSTM`
    equal to a torch.nn recurrent module (any layers and directions), weights copied.

    Args:
        module: an ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM``.

    Returns:
        The drop-in, with the module's configuration, dtype, device and training mode.

    Raises:
        InputTypeError: ``module`` is not one of those modules.

    Example:
        >>> import torch, recurrentkit as rk
        >>> lstm = torch.nn.LSTM(3, 4, bidirectional=True)
        >>> type(dropin_from_torch(lstm)).__name__
        'LSTM'
    """
    mode = mode_of(module)
    return _convert(module, _DROPIN_CLASSES[mode], mode)


def dropin_to_torch(dropin: RecurrentBase) -> nn.Module:
    """The ``torch.nn`` module equal to a recurrentkit drop-in, weights copied.

    Args:
        dropin: a :class:`recurrentkit.RNN`, :class:`~recurrentkit.GRU` or
            :class:`~recurrentkit.LSTM`.

    Returns:
        ``nn.RNN``/``nn.GRU``/``nn.LSTM`` with the same configuration, dtype, device,
        training mode and weights.

    Raises:
        InputTypeError: ``dropin`` is not a recurrentkit drop-in.

    Example:
        >>> import recurrentkit as rk
        >>> dropin_to_torch(rk.GRU(3, 4, num_layers=2))
        GRU(3, 4, num_layers=2)
    """
    if not isinstance(dropin, RecurrentBase):
        raise InputTypeError("dropin", "a recurrentkit RNN, GRU or LSTM", describe(dropin))
    return _convert(dropin, _TORCH_CLASSES[dropin.mode], dropin.mode)


def mode_of(module: object) -> str:
    """The torch mode (``"RNN_TANH"``, ``"RNN_RELU"``, ``"GRU"``, ``"LSTM"``) of a torch.nn
    recurrent module or a drop-in; :class:`InputTypeError` for anything else."""
    mode = getattr(module, "mode", None)
    if not isinstance(module, (nn.RNNBase, RecurrentBase)) or mode not in _MODES:
        raise InputTypeError(
            "module", "a torch.nn.RNN, torch.nn.GRU or torch.nn.LSTM", describe(module)
        )
    return str(mode)


_M = TypeVar("_M", bound=nn.Module)


def _convert(module: Any, cls: type[_M], mode: str) -> _M:
    """Build ``cls`` with ``module``'s configuration and load a copy of its weights (what
    its forward runs with: a ``weight_norm``-ed weight as computed, say)."""
    current = {name: getattr(module, name).detach() for name in module._flat_weights_names}
    ref = current[module._flat_weights_names[0]]
    kwargs: dict[str, Any] = {
        "num_layers": module.num_layers,
        "bias": module.bias,
        "batch_first": module.batch_first,
        "dropout": module.dropout,
        "bidirectional": module.bidirectional,
        "device": ref.device,
        "dtype": ref.dtype,
    }
    if mode.startswith("RNN"):
        kwargs["nonlinearity"] = "tanh" if mode == "RNN_TANH" else "relu"
    if mode == "LSTM":
        kwargs["proj_size"] = module.proj_size
    with warnings.catch_warnings():  # dropout with one layer warns; the source already did
        warnings.simplefilter("ignore", UserWarning)
        made = cls(module.input_size, module.hidden_size, **kwargs)
    made.load_state_dict(current)
    return made.train(module.training)
