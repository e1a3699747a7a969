r"""Regularisers that wrap a cell (:class:`Zoneout`, :class:`RecurrentDropout`) or any
module (:class:`WeightDrop`), composable with one another and with every cell.

Their random masks come from torch's default generator, as ``nn.Dropout``'s do: under
``torch.manual_seed`` a run is reproducible. In eval mode each is deterministic
(:class:`Zoneout` its expectation, the other two the identity).

The two cell wrappers are cells themselves (the cell protocol: ``initial_state``, a call
per step, ``input_size``/``output_size`` where the wrapped cell has them) and always
declare a split step (:func:`~recurrentkit.cells.splits_step`): the wrapped cell's own
where it has one (its ``linear`` passed on, so its deferred weight gradients stay
deferred), else an identity projection and the wrapped cell's equations per step, so
a wrapped cell runs on the fast executor's ``split_step`` plan either way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from recurrentkit._validation import check_probability, describe, map_state
from recurrentkit.cells.protocol import CellBase, splits_step, takes_linear
from recurrentkit.errors import ConfigError, InputTypeError

__all__ = ["RecurrentDropout", "RecurrentDropoutState", "WeightDrop", "Zoneout"]


# -- states ------------------------------------------------------------------------------


def _state_h(state: Any) -> Tensor | None:
    """The hidden state ``h`` of a cell state (the tensor, or its ``h``), or ``None``."""
    if isinstance(state, Tensor):
        return state
    h = getattr(state, "h", None)
    return h if isinstance(h, Tensor) else None


def _h(state: Any) -> Tensor:
    """The hidden state ``h`` of a wrapped cell's state (which has one: checked when the
    wrapper was built)."""
    return state if isinstance(state, Tensor) else state.h


def _with_h(state: Any, h: Tensor) -> Any:
    """``state`` with its hidden state replaced by ``h``."""
    return h if isinstance(state, Tensor) else state._replace(h=h)


class _DroppedFields(NamedTuple):
    state: Any
    mask: Tensor


class RecurrentDropoutState(_DroppedFields):
    """State of a :class:`RecurrentDropout` cell: the wrapped cell's state and the
    sequence's dropout mask.

    It reads as the wrapped state where routing policies and other wrappers look:
    ``.h`` is the wrapped state's hidden state (the tensor itself, or its ``h``), the
    wrapped NamedTuple's other fields read through (``.c`` of an ``LSTMState``), and
    ``_replace(h=...)`` (what ``cross_layer`` routing uses to mix states) replaces them
    in the wrapped state.

    Attributes:
        state: the wrapped cell's state.
        mask: ``(B, H_h)``, shaped as ``h``: ``0`` or ``1 / (1 - p)`` per unit, drawn
            once per sequence (all ones when drawn in eval mode).
    """

    __slots__ = ()

    @property
    def h(self) -> Tensor:
        """The wrapped state's hidden state."""
        h = _state_h(self.state)
        if h is None:  # pragma: no cover (RecurrentDropout checks this at construction)
            raise AttributeError("h")
        return h

    def __getattr__(self, name: str) -> Any:
        if name in getattr(self.state, "_fields", ()):
            return getattr(self.state, name)
        raise AttributeError(name)

    def _replace(self, **changes: Any) -> RecurrentDropoutState:
        own = {k: changes.pop(k) for k in _DroppedFields._fields if k in changes}
        if changes:  # fields of the wrapped state
            inner = own.get("state", self.state)
            if isinstance(inner, Tensor):
                if set(changes) != {"h"}:
                    raise ValueError(f"Got unexpected field names: {sorted(changes)!r}")
                inner = changes["h"]
            else:
                inner = inner._replace(**changes)
            own["state"] = inner
        return super()._replace(**own)


# -- the cell wrappers ---------------------------------------------------------------------


class _CellWrapper(nn.Module):
    """What :class:`Zoneout` and :class:`RecurrentDropout` share: the wrapped cell, its
    sizes, and a split step made of the wrapped cell's (or of its call)."""

    initial_state: Callable[..., Any]  # (each subclass's method)

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        if not isinstance(cell, nn.Module) or not callable(getattr(cell, "initial_state", None)):
            raise InputTypeError(
                "cell",
                "an nn.Module following the cell protocol (initial_state and __call__)",
                describe(cell),
            )
        self.cell = cell
        probe = cast(Any, cell).initial_state(1)  # (the cell protocol's, checked above)
        h = _state_h(probe)
        if h is None:
            raise ConfigError(
                "cell",
                f"a cell whose state is a tensor or has an 'h' field ({type(self).__name__} "
                "acts on h)",
                f"a state of type {type(probe).__name__}",
            )
        if h.is_complex():
            raise ConfigError(
                "cell",
                f"a cell with a real state h ({type(self).__name__} draws real masks over h, "
                "the cell's output)",
                f"a {h.dtype} state (e.g. LRUCell's, whose output is not its state)",
            )

    @property
    def input_size(self) -> int | None:
        """The wrapped cell's ``input_size`` (``None`` where it has none)."""
        return getattr(self.cell, "input_size", None)

    @property
    def output_size(self) -> int | None:
        """The wrapped cell's ``output_size`` (``None`` where it has none)."""
        return getattr(self.cell, "output_size", None)

    def input_projection(self, x: Tensor) -> Tensor:
        """The wrapped cell's ``input_projection``, or ``x`` itself where it has none."""
        cell: Any = self.cell  # (the split step's methods are the protocol's, not Module's)
        return cell.input_projection(x) if _splits(cell) else x

    def _inner(self, gi: Tensor, state: Any, linear: Any) -> tuple[Tensor, Any]:
        """The wrapped cell's step from ``gi = input_projection(x)``."""
        cell: Any = self.cell  # (the split step's methods are the protocol's, not Module's)
        if _splits(cell):
            if takes_linear(cell):
                return cell.step_projected(gi, state, linear=linear)
            return cell.step_projected(gi, state)
        if isinstance(cell, CellBase):  # (checked tensors: its equations)
            return cell._step(gi, state)
        return cell(gi, state)

    def _initial_like(self, x: Tensor) -> Any:
        """The initial state for ``x`` (batched or not), as ``initial_state`` gives it."""
        batch = 1 if x.dim() == 1 else x.shape[0]
        state = self.initial_state(batch, device=x.device, dtype=x.dtype)
        return map_state(lambda t: t.squeeze(0), state) if x.dim() == 1 else state


_SPLITS: dict[type, bool] = {}


def _splits(cell: nn.Module) -> bool:
    """:func:`splits_step`, kept per type (asked at every step)."""
    kind = type(cell)
    hit = _SPLITS.get(kind)
    if hit is None:
        hit = _SPLITS[kind] = splits_step(cell)
    return hit


class Zoneout(_CellWrapper):
    r"""Zoneout (Krueger et al. 2017, *Zoneout: Regularizing RNNs by Randomly
    Preserving Hidden Activations*, arXiv 1606.01305) around any cell.

    With :math:`(y, s') = \text{cell}(x, s)`, each unit of the new state keeps its
    previous value with probability ``p`` (``p_cell`` for the memory ``c``):

    $$
    \begin{aligned}
    h' &= d_h \odot h + (1 - d_h) \odot \tilde h', \qquad
        d_h \sim \mathrm{Bernoulli}(p) \text{ per unit, fresh at every step} \\
    c' &= d_c \odot c + (1 - d_c) \odot \tilde c', \qquad
        d_c \sim \mathrm{Bernoulli}(p_{\text{cell}})
    \end{aligned}
    $$

    In eval mode the masks are replaced by their expectation:
    :math:`h' = p\, h + (1 - p)\, \tilde h'` (and ``c`` with ``p_cell``). The output is
    the zoned :math:`h'`. Zoneout acts on the state's ``h`` (the state itself where it
    is a tensor) and, where the state has one, its ``c`` field (an ``LSTMState``'s);
    other fields (a Nested LSTM's ``inner``) are the wrapped cell's new values.

    Args:
        cell: the wrapped cell (any cell whose state is a tensor or has an ``h``).
        p: probability that a unit of ``h`` keeps its previous value, in ``[0, 1]``.
        p_cell: the same for ``c``; ``None`` means ``p``.

    Raises:
        InputTypeError: ``cell`` is not a module following the cell protocol; ``p`` or
            ``p_cell`` not a number.
        ConfigError: ``p`` or ``p_cell`` outside ``[0, 1]``; a cell whose state has no
            ``h``.

    The state is the wrapped cell's (``initial_state`` is its); parameters are the
    cell's, under ``cell.`` (``cell.weight_ih``, ...).

    Shape:
        - x, state: as the wrapped cell's.
        - output: as the state's ``h``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.Zoneout(rk.LSTMCell(3, 5), p=0.1, p_cell=0.05)
        >>> y, (h, c) = cell(torch.randn(2, 3))
        >>> torch.equal(y, h)
        True
    """

    def __init__(self, cell: nn.Module, p: float, p_cell: float | None = None) -> None:
        super().__init__(cell)
        self.p = check_probability("p", p)
        self.p_cell = self.p if p_cell is None else check_probability("p_cell", p_cell)

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        """The wrapped cell's initial state."""
        cell: Any = self.cell  # (a protocol method, not Module's)
        return cell.initial_state(batch_size, device=device, dtype=dtype)

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """One step: the wrapped cell's, then zoneout on its new state."""
        if state is None:
            state = self._initial_like(x)
        _, new = self.cell(x, state)
        return self._zone(state, new)

    def step_projected(self, gi: Tensor, state: Any, linear: Any = F.linear) -> tuple[Tensor, Any]:
        """The wrapped cell's step from ``gi = input_projection(x)``, then zoneout."""
        _, new = self._inner(gi, state, linear)
        return self._zone(state, new)

    def _zone(self, old: Any, new: Any) -> tuple[Tensor, Any]:
        h = self._mix(_h(old), _h(new), self.p)
        if isinstance(new, Tensor):
            return h, h
        c_new = getattr(new, "c", None)
        if isinstance(c_new, Tensor):
            return h, new._replace(h=h, c=self._mix(old.c, c_new, self.p_cell))
        return h, new._replace(h=h)

    def _mix(self, old: Tensor, new: Tensor, p: float) -> Tensor:
        if p == 0.0:
            return new
        if not self.training:
            return torch.lerp(new, old, p)  # p old + (1 - p) new
        keep = torch.rand_like(new).lt_(p)  # 1 where the unit keeps its old value, else 0
        return torch.lerp(new, old, keep)

    def extra_repr(self) -> str:
        return f"p={self.p}, p_cell={self.p_cell}"


class RecurrentDropout(_CellWrapper):
    r"""Variational dropout on the state fed back into the recurrence (Gal & Ghahramani
    2016, *A Theoretically Grounded Application of Dropout in Recurrent Neural
    Networks*, arXiv 1512.05287) around any cell.

    $$
    (y_t, s_t) = \text{cell}\big(x_t,\ s_{t-1} \text{ with } h := m \odot h_{t-1}\big),
    \qquad m \in \{0, \tfrac{1}{1 - p}\}^{H}
    $$

    One mask :math:`m` per sequence (and per layer: each wrapper draws its own), the
    same at every step. It is drawn with the state, by :meth:`initial_state` in training
    mode (``F.dropout`` of ones: ``nn.Dropout``'s masks), and travels in the state
    (:class:`RecurrentDropoutState`), so a sequence stepped through
    ``Stack.step`` calls keeps its mask, and a state carried over from one batch to the
    next (truncated backpropagation) keeps it too; a new sequence starts from a new
    initial state. Only ``h`` is dropped (an LSTM's memory ``c`` is not), and only where it
    is *fed in*: the state the cell returns is not masked. In eval mode the mask is not
    applied (and ``initial_state`` draws none: all ones).

    Where ``h`` enters the cell outside its products with weights (a GRU's
    ``z ⊙ h``, an MGU's ``(1 - f) ⊙ h``), the dropped ``h`` is what that path reads too:
    the wrapper drops the state, not each product's input. For an LSTM (``h`` enters
    only ``W_hh h``) this is Gal & Ghahramani's formulation exactly.

    Routing policies that hand one layer's state to another (``shared``, ``handoff``)
    hand its mask along with it: the layers that share a memory share its mask.

    With :class:`Zoneout`, put zoneout outside (``Zoneout(RecurrentDropout(cell), p)``):
    it then keeps units of the state as the cell returned it. Inside, it would keep units
    of the dropped ``h`` it was fed (zeroed or scaled by ``1 / (1 - p)`` at every step).

    Args:
        cell: the wrapped cell (any cell whose state is a tensor or has an ``h``).
        p: dropout probability, in ``[0, 1]``.

    Raises:
        InputTypeError: ``cell`` is not a module following the cell protocol; ``p`` not a
            number.
        ConfigError: ``p`` outside ``[0, 1]``; a cell whose state has no ``h``.

    Parameters are the cell's, under ``cell.``.

    Shape:
        - x, output: as the wrapped cell's.
        - state: ``RecurrentDropoutState(state, mask (B, H_h))``, ``state`` the wrapped
          cell's.

    Example:
        >>> import torch, recurrentkit as rk
        >>> cell = rk.RecurrentDropout(rk.GRUCell(3, 5), p=0.25)
        >>> s = cell.initial_state(2)                 # the mask is drawn here (training)
        >>> y, s1 = cell(torch.randn(2, 3), s)
        >>> torch.equal(s1.mask, s.mask), s1.h.shape
        (True, torch.Size([2, 5]))
    """

    def __init__(self, cell: nn.Module, p: float) -> None:
        super().__init__(cell)
        self.p = check_probability("p", p)

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> RecurrentDropoutState:
        """The wrapped cell's initial state and a new mask (drawn in training mode with
        ``p > 0``, else all ones)."""
        cell: Any = self.cell  # (a protocol method, not Module's)
        inner = cell.initial_state(batch_size, device=device, dtype=dtype)
        h = _state_h(inner)
        assert h is not None  # (checked at construction)
        ones = torch.ones_like(h)
        if self.training and self.p > 0 and h.device.type != "meta":
            return RecurrentDropoutState(inner, F.dropout(ones, self.p, training=True))
        return RecurrentDropoutState(inner, ones)

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, RecurrentDropoutState]:
        """One step of the wrapped cell on the state with its ``h`` dropped."""
        state = self._initial_like(x) if state is None else _as_state(state)
        y, new = self.cell(x, self._fed(state))
        return y, RecurrentDropoutState(new, state.mask)

    def step_projected(
        self, gi: Tensor, state: RecurrentDropoutState, linear: Any = F.linear
    ) -> tuple[Tensor, RecurrentDropoutState]:
        """The wrapped cell's step from ``gi = input_projection(x)`` on the dropped
        state."""
        y, new = self._inner(gi, self._fed(state), linear)
        return y, RecurrentDropoutState(new, state.mask)

    def _fed(self, state: RecurrentDropoutState) -> Any:
        """The wrapped state the cell reads: ``h`` masked in training mode."""
        inner = state.state
        if not self.training or self.p == 0.0:
            return inner
        return _with_h(inner, _h(inner) * state.mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _as_state(state: Any) -> RecurrentDropoutState:
    """A ``(state, mask)`` pair as a :class:`RecurrentDropoutState`."""
    if isinstance(state, RecurrentDropoutState):
        return state
    if isinstance(state, (tuple, list)) and len(state) == 2 and not hasattr(state, "_fields"):
        return RecurrentDropoutState(*state)
    raise InputTypeError(
        "state", "a RecurrentDropoutState (state, mask), as initial_state gives", describe(state)
    )


# -- WeightDrop -------------------------------------------------------------------------------


class WeightDrop(nn.Module):
    r"""DropConnect on named weights of any module (Wan et al. 2013; on the recurrent
    weights, as AWD-LSTM: Merity, Keskar, Socher 2018, *Regularizing and Optimizing LSTM
    Language Models*, arXiv 1708.02182).

    Each call in training mode draws one dropout mask per named weight
    (``F.dropout``: entries zeroed with probability ``p``, the rest scaled by
    ``1 / (1 - p)``) and runs the wrapped module with the dropped weights in place of its
    own, through ``torch.func.functional_call``: the module and its parameters are not
    changed, and gradients reach the raw weights through the masks. In eval mode the
    call is the module's own.

    One mask per **call of the wrapped module**: wrap a :class:`~recurrentkit.Stack` or a
    drop-in (``rk.LSTM``, also ``torch.nn.LSTM``) for one mask per sequence (the
    AWD-LSTM recipe); a wrapped cell is called once per step, so it draws a mask per
    step (it is still a cell: ``initial_state``, ``input_size`` and ``output_size`` are
    the wrapped cell's).

    Args:
        module: the wrapped module.
        p: drop probability, in ``[0, 1]``.
        weights: which parameters: each a name as ``named_parameters()`` spells it
            (``"cells.0.weight_hh"``), or a name every such parameter's own name is
            (``"weight_hh"``: a cell's, each cell's of a stack, ``inner.weight_hh`` of
            a Nested LSTM), also with torch's layer suffix (``weight_hh_l0``,
            ``weight_hh_l1_reverse`` of a drop-in). A string is one name.

    Raises:
        InputTypeError: ``module`` not an ``nn.Module``; ``weights`` not names.
        ConfigError: ``p`` outside ``[0, 1]``; no names, or a name no parameter matches.

    Attributes:
        targets: the matched parameters' names, in ``named_parameters()`` order.

    Parameters are the module's, under ``module.``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> stack = rk.Stack([rk.LSTMCell(3, 5), rk.LSTMCell(5, 5)])
        >>> model = rk.WeightDrop(stack, p=0.5)
        >>> model.targets
        ('cells.0.weight_hh', 'cells.1.weight_hh')
        >>> y, state = model(torch.randn(7, 2, 3))     # one mask per weight for this call
    """

    def __init__(
        self, module: nn.Module, p: float, weights: str | Sequence[str] = ("weight_hh",)
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise InputTypeError("module", "an nn.Module", describe(module))
        self.module = module
        self.p = check_probability("p", p)
        names = (weights,) if isinstance(weights, str) else weights
        if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
            raise InputTypeError(
                "weights", "a parameter name or a sequence of them", describe(weights)
            )
        if not names:
            raise ConfigError("weights", "at least one parameter name", "an empty sequence")
        self.weights = tuple(names)
        params = [n for n, _ in module.named_parameters()]
        targets: list[str] = []
        for w in self.weights:
            hits = [n for n in params if _matches(n, w)]
            if not hits:
                shown = ", ".join(params[:6]) + (", ..." if len(params) > 6 else "")
                raise ConfigError(
                    "weights",
                    f"names of the module's parameters (it has: {shown or 'none'})",
                    repr(w),
                )
            targets += [n for n in hits if n not in targets]
        self.targets = tuple(n for n in params if n in targets)

    @property
    def input_size(self) -> int | None:
        """The wrapped module's ``input_size`` (``None`` where it has none)."""
        return getattr(self.module, "input_size", None)

    @property
    def output_size(self) -> int | None:
        """The wrapped module's ``output_size`` (``None`` where it has none)."""
        return getattr(self.module, "output_size", None)

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        """The wrapped module's ``initial_state`` (a cell's, a stack's)."""
        module: Any = self.module  # (its own method, not Module's)
        return module.initial_state(batch_size, device=device, dtype=dtype)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped module's call, its named weights dropped in training mode."""
        if not self.training or self.p == 0.0:
            return self.module(*args, **kwargs)
        module = self.module
        dropped = {n: F.dropout(_tensor(module, n), self.p, training=True) for n in self.targets}
        return functional_call(module, dropped, args, kwargs)

    def extra_repr(self) -> str:
        return f"p={self.p}, weights={self.weights!r}"


def _tensor(module: nn.Module, name: str) -> Tensor:
    """Parameter ``name`` of ``module`` as it is now: the ``nn.Parameter``, or the tensor
    an enclosing ``functional_call`` put in its place (``get_parameter`` accepts only
    the former)."""
    path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(path) if path else module
    return owner._parameters[leaf]  # type: ignore[return-value]  # a named one: not None


def _matches(name: str, wanted: str) -> bool:
    """Whether parameter ``name`` is ``wanted``: the whole dotted name, or its last part
    (bare or with torch's ``_l{k}`` / ``_l{k}_reverse`` layer suffix)."""
    if name == wanted:
        return True
    leaf = name.rsplit(".", 1)[-1]
    return re.fullmatch(re.escape(wanted) + r"(_l\d+(_reverse)?)?", leaf) is not None
