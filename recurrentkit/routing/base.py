"""The routing-policy interface: how recurrent state moves between layers.

A policy is a small :class:`torch.nn.Module` (it may own parameters) with:

- :meth:`RoutingPolicy.bind` — called once by :class:`~recurrentkit.Stack`: check the
  cells suit the policy (widths, state shapes) and create any parameters;
- :meth:`RoutingPolicy.step` — the policy's equations at one time step;
- :meth:`RoutingPolicy.run` — the whole sequence. The default loops :meth:`step`
  over time; a *layer-major* policy overrides it to run one layer at a time over the
  whole sequence through :meth:`Executor.run_layer`, which an executor may run on a
  fused kernel.

and two declarations an executor reads: ``causal`` (outputs before ``t`` never depend
on inputs at or after ``t``) and ``layer_major`` (it overrides :meth:`run` layer by
layer). Writing a new policy is a subclass; :class:`~recurrentkit.Stack` never changes.

Everything here is time-major: sequences are ``(T, B, F)``, steps ``(B, F)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from torch import Tensor, nn

from recurrentkit._scan import Restart, scan
from recurrentkit.errors import ConfigError

__all__ = ["Executor", "RoutingPolicy", "state_h", "with_state_h"]


class Executor(Protocol):
    """What a policy runs on: the cells, and how to run them (an *executor*:
    :class:`~recurrentkit.executors.ReferenceExecutor`, the plain loop, or
    :class:`~recurrentkit.executors.FastExecutor`).

    Attributes:
        cells: the stack's cells, bottom first.
        training: whether the stack is in training mode.
    """

    @property
    def cells(self) -> Sequence[nn.Module]:
        """The stack's cells, bottom first."""
        ...

    @property
    def training(self) -> bool:
        """Whether the stack is in training mode."""
        ...

    @property
    def restart(self) -> Restart | None:
        """Resets while ``torch.compile``/``torch.export`` traces: ``mask (T, B)`` and
        the per-layer initial states (batch 1) that replace the rows' states before the
        steps where the mask holds (inside the traced loop); ``None`` otherwise."""
        ...

    def cell(self, layer: int, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One step of layer ``layer``: ``x (B, I_l)`` → ``(y (B, O_l), state)``."""
        ...

    def drop(self, layer: int, y: Tensor) -> Tensor:
        """Inter-layer dropout on layer ``layer``'s output (identity for the top layer)."""
        ...

    def run_layer(
        self, layer: int, x: Tensor, state: Any, lengths: Tensor | None
    ) -> tuple[Tensor, Any]:
        """Layer ``layer`` over a sequence ``x (T, B, I_l)`` from ``state``.

        Returns ``(outputs (T, B, O_l), final_state)``; with ``lengths (B,)`` the
        final state of sequence ``b`` is the one after step ``lengths[b] - 1`` and
        outputs past a sequence's end are zero.
        """
        ...


class RoutingPolicy(nn.Module):
    """Base class of routing policies. Subclass it to write your own.

    Class attributes (declarations; see the module docstring):
        name: the policy's name (the string shortcut for the built-in ones).
        causal: outputs before ``t`` never depend on inputs at or after ``t``.
        layer_major: :meth:`run` goes layer by layer over the whole sequence.
        reduces_to_cell: with one layer, the policy is that cell over the sequence.
        rows_independent: a step reads each batch row's states only.
        wiring: the built-in equations :meth:`step` computes, or ``None``.
    """

    name: ClassVar[str] = "custom"
    causal: ClassVar[bool] = True
    layer_major: ClassVar[bool] = False
    reduces_to_cell: ClassVar[bool] = False
    rows_independent: ClassVar[bool] = False
    wiring: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "step" in own or "run" in own:
            # new equations: the declarations about them are the subclass's to make
            for name, plain in (("reduces_to_cell", False), ("rows_independent", False)):
                if name not in own:
                    setattr(cls, name, plain)
            if "wiring" not in own:
                cls.wiring = None

    def __init__(self) -> None:
        super().__init__()
        self._bound = False

    def bind(self, cells: Sequence[nn.Module], probes: Sequence[Any]) -> None:
        """Check that ``cells`` suit this policy and create parameters.

        Called once by :class:`~recurrentkit.Stack` at construction. ``probes`` are
        the cells' initial states for a batch of one. The default checks that each
        layer's input width equals the output width of the layer below (where the
        cells declare ``input_size``/``output_size``).

        Raises:
            ConfigError: the policy instance is already bound to another stack, or the
                widths do not chain.
        """
        if self._bound:
            raise ConfigError(
                "routing", "a policy instance not yet used by another Stack", "a bound policy"
            )
        self._bound = True
        check_widths_chain(cells)

    def reads_initial_states(self, num_layers: int) -> tuple[bool, ...]:
        """Which layers' initial states the policy reads (a declaration): a
        :class:`~recurrentkit.Stack` with ``initial_state="learned"`` makes parameters
        for these only. The default: every layer's."""
        return (True,) * num_layers

    def step(self, executor: Executor, x: Tensor, states: tuple[Any, ...]) -> tuple[Tensor, tuple]:
        """One time step: ``x (B, I)`` and per-layer states → ``(y (B, O), new states)``."""
        raise NotImplementedError(f"{type(self).__name__} defines no step(); it overrides run()")

    def run(
        self,
        executor: Executor,
        x: Tensor,
        states: tuple[Any, ...],
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """The whole sequence ``x (T, B, I)`` → ``(outputs (T, B, O), final states)``.

        The default loops :meth:`step` over time. With ``lengths (B,)``, a sequence's
        states stop changing after its last step and its outputs past the end are zero.
        """
        return scan(
            lambda x_t, s: self.step(executor, x_t, s), x, states, lengths, executor.restart
        )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, causal={self.causal}"


def check_widths_chain(cells: Sequence[nn.Module]) -> None:
    """Each layer's ``input_size`` equals the ``output_size`` of the layer below."""
    for k in range(1, len(cells)):
        below = getattr(cells[k - 1], "output_size", None)
        width = getattr(cells[k], "input_size", None)
        if below is not None and width is not None and below != width:
            raise ConfigError(
                f"cells[{k}].input_size",
                f"{below} (cells[{k - 1}].output_size, the width of what layer {k - 1} passes up)",
                width,
            )


def check_same_state_shapes(name: str, probes: Sequence[Any]) -> None:
    """All layers' states have one structure and shape, and are real (for policies that
    pass states up: see :func:`check_real_states`)."""
    check_real_states(name, probes)
    first = _shapes(probes[0])
    for k, p in enumerate(probes[1:], start=1):
        if _shapes(p) != first:
            raise ConfigError(
                f"cells[{k}]",
                f"a state of the same shape as layer 0's ({first}) — {name} routing passes "
                "one layer's state to another",
                _shapes(p),
            )


def check_real_states(name: str, probes: Sequence[Any]) -> None:
    """With more than one layer, every layer's state is real (for policies that pass a
    state from one layer to another).

    A complex state (:class:`~recurrentkit.LRUCell`'s) holds coordinates in its own
    cell's diagonal (eigen)basis of a recurrence: another layer's cell, or a policy's
    real mixing weights, cannot read it as a state of their own.
    """
    if len(probes) < 2:
        return  # one layer: nothing passes between layers
    for k, p in enumerate(probes):
        for t in _tensors(p):
            if t.is_complex():
                raise ConfigError(
                    f"cells[{k}]",
                    f"a cell with a real state: {name} routing passes one layer's state to "
                    "another, and a complex state is in its own cell's diagonal basis "
                    "(independent or residual routing run such cells)",
                    f"a {t.dtype} state of shape {tuple(t.shape)}",
                )


def _tensors(state: Any) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, tuple):
        return [t for s in state for t in _tensors(s)]
    return []


def _shapes(state: Any) -> Any:
    if isinstance(state, Tensor):
        return tuple(state.shape)
    if isinstance(state, tuple):
        return tuple(_shapes(s) for s in state)
    return type(state).__name__


def state_h(state: Any) -> Tensor:
    """The hidden state ``h`` of a cell state: the tensor itself, or its ``h`` field."""
    if isinstance(state, Tensor):
        return state
    h = getattr(state, "h", None)
    if isinstance(h, Tensor):
        return h
    raise ConfigError("state", "a tensor or a NamedTuple with an 'h' field", type(state).__name__)


def with_state_h(state: Any, h: Tensor) -> Any:
    """``state`` with its hidden state replaced by ``h``."""
    if isinstance(state, Tensor):
        return h
    return state._replace(h=h)
