r"""The hand-built whole-sequence kernels as ``torch.library`` custom ops, for ``torch.compile``.

``torch.compile`` traces Python: a kernel's autograd ``Function`` would be traced step
by step (its time loop unrolled into the graph, so compile time grows with ``T``). Here
each kernel's ``Function`` runs whole inside one custom op, its backward inside another:

- ``recurrentkit::kernel_forward(name, sig, tensors) -> Tensor[]`` runs
  ``Function.forward`` on a stand-in context (:class:`_Ctx`) and returns its outputs
  and the tensors it saved for backward that are neither inputs nor outputs;
- ``recurrentkit::kernel_backward(name, sig, tensors, results, grads) -> Tensor[]``
  rebuilds that context and runs ``Function.backward``: one gradient per given tensor.

Each has a fake implementation (the shapes, from the :class:`Spec` the kernel
registers), and the first has the second as its registered autograd, so the compiled
graph holds two opaque ops per layer whatever ``T`` and ``B`` (both may be symbolic) and
runs the same arithmetic as eager mode. The ops run on the uniform layout only (no
``lengths``: every row runs every step, ``T = N / B``); a traced run with lengths or
resets takes torch's scan operator instead (:mod:`recurrentkit._scan`), as does
``torch.export`` (an exported program must not need recurrentkit's ops to run).

A ``Function``'s arguments are encoded as ``sig``, a token per argument (``t`` a tensor,
in ``tensors``; ``n`` ``None``; ``s`` the schedule, rebuilt inside the op; ``i3`` the
int 3, a bool as 0 or 1; ``wgru.lstm`` the words ``("gru", "lstm")``), so the ops'
schemas are the same for every kernel. An output that is a view (``cross_layer``'s
``h`` are column views of one buffer) is copied: a custom op's outputs may not alias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function

from recurrentkit.executors.packing import Schedule

__all__ = ["AVAILABLE", "IN", "NEW", "NONE", "OUT", "Spec", "active", "new_rows", "register"]

IN, OUT, NEW, NONE = "in", "out", "new", "none"
"""Where a saved tensor comes from: an argument (by position), an output (by index), a
buffer the forward made (returned by the forward op), or nowhere (``None`` saved)."""

Saved = tuple[str, Any]
"""``(IN, argument position)``, ``(OUT, output index)``, ``(NEW, its shape)``,
``(NONE, None)``."""


def new_rows(gi: Tensor, *widths: int) -> list[Saved]:
    """``NEW`` buffers of ``gi``'s rows ``(N, w)``, one per width (for :attr:`Spec.saved`)."""
    return [(NEW, (gi.shape[0], w)) for w in widths]


@dataclass
class Spec:
    """What the custom ops need to know of one kernel ``Function``.

    Attributes:
        fn: the ``Function`` (its ``forward(ctx, *args)`` and ``backward(ctx, *grads)``).
        n_outputs: ``args -> int``: how many tensors ``fn.forward`` returns.
        outputs: ``args -> [an empty tensor per output]``, shapes from the arguments'
            (``args`` as ``fn.apply`` takes them; symbolic sizes allowed).
        saved: ``args -> [Saved per tensor fn.forward saves]``, in its order (``None``
            arguments saved too); a ``NEW`` buffer's shape from the arguments'.
        attrs: ``(ctx, args) -> None``: sets the context's attributes its backward
            reads, other than ``sched`` (set here).
        rows: ``args -> (a tensor of N rows, a tensor of B rows)``, which size the
            uniform schedule inside the op (default: the first two tensors, ``gi``
            and the initial state).
    """

    fn: type[Function]
    n_outputs: Callable[[Sequence[Any]], int]
    outputs: Callable[[Sequence[Any]], list[Tensor]]
    saved: Callable[[Sequence[Any]], list[Saved]]
    attrs: Callable[[Any, Sequence[Any]], None] = lambda ctx, args: None
    rows: Callable[[Sequence[Any]], tuple[Tensor, Tensor]] = lambda args: _first_two(args)
    name: str = ""  # set by register: the ops' key

    def apply(self, *args: Any) -> Any:
        """``fn.apply(*args)``; while ``torch.compile`` traces, the same through the
        custom ops."""
        if not active():
            return self.fn.apply(*args)
        sig, tensors = _encode(args)
        results = _FORWARD(self.name, sig, tensors)
        n_out = self.n_outputs(args)
        return results[0] if n_out == 1 else tuple(results[:n_out])


def active() -> bool:
    """Whether the kernels run as these custom ops now: ``torch.compile`` tracing (not
    ``torch.export``, outside torch.func transforms) on a torch that defines them."""
    return (
        AVAILABLE
        and torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not torch._C._are_functorch_transforms_active()
    )


def _first_two(args: Sequence[Any]) -> tuple[Tensor, Tensor]:
    tensors = [a for a in args if isinstance(a, Tensor)]
    return tensors[0], tensors[1]


_SPECS: dict[str, Spec] = {}  # by name, as the ops get it


def register(spec: Spec) -> Spec:
    """Make ``spec.fn`` runnable inside the custom ops (:meth:`Spec.apply`)."""
    spec.name = f"{spec.fn.__module__}.{spec.fn.__qualname__}"
    _SPECS[spec.name] = spec
    return spec


class _Ctx:
    """What the kernels' ``Function`` s use of autograd's context, outside autograd."""

    def __init__(self, needs: tuple[bool, ...] = ()) -> None:
        self.needs_input_grad = needs
        self.saved_tensors: tuple[Any, ...] = ()
        self.sched: Schedule | None = None

    def save_for_backward(self, *tensors: Any) -> None:
        self.saved_tensors = tensors

    def set_materialize_grads(self, value: bool) -> None:
        pass


def _encode(args: Sequence[Any]) -> tuple[str, list[Tensor]]:
    """``(sig, tensors)``: one token of ``sig`` per argument, ``t`` a tensor (in
    ``tensors``), ``n`` ``None``, ``s`` the schedule, ``i<value>`` an int or bool,
    ``w<a.b>`` a tuple of words."""
    sig, tensors = [], []
    for a in args:
        if a is None:
            sig.append("n")
        elif isinstance(a, Tensor):
            sig.append("t")
            tensors.append(a)
        elif isinstance(a, Schedule):
            if not a.uniform:  # (the plans send lengths to the scan)
                raise AssertionError("the kernel ops run on the uniform layout only")
            sig.append("s")
        elif isinstance(a, (bool, int)):
            sig.append(f"i{int(a)}")
        elif isinstance(a, tuple) and all(isinstance(w, str) and w.isalnum() for w in a):
            sig.append("w" + ".".join(a))
        else:  # pragma: no cover (a kernel's own argument list)
            raise TypeError(f"a kernel op cannot carry {type(a).__name__}")
    return ",".join(sig), tensors


def _decode(sig: str, tensors: Sequence[Tensor]) -> list[Any]:
    """The ``Function``'s arguments from :func:`_encode`'s; the schedule a placeholder
    until :func:`_with_schedule` can size it."""
    args: list[Any] = []
    it = iter(tensors)
    for token in sig.split(","):
        if token == "t":
            args.append(next(it))
        elif token == "n":
            args.append(None)
        elif token == "s":
            args.append(_UNIFORM)
        elif token[0] == "w":
            args.append(tuple(token[1:].split(".")) if len(token) > 1 else ())
        else:
            args.append(int(token[1:]))
    return args


_UNIFORM = object()  # the schedule's place, until _with_schedule can size it


def _with_schedule(spec: Spec, args: list[Any]) -> list[Any]:
    """``args`` with the placeholder replaced by the uniform schedule of ``T = N / B``
    (:attr:`Spec.rows`)."""
    n_rows, b_rows = spec.rows(args)
    N, B = int(n_rows.shape[0]), int(b_rows.shape[0])
    sched = Schedule.of_uniform(N // B, B)
    return [sched if a is _UNIFORM else a for a in args]


def _forward(name: str, sig: str, tensors: list[Tensor]) -> list[Tensor]:
    spec = _SPECS[name]
    args = _with_schedule(spec, _decode(sig, tensors))
    ctx = _Ctx(tuple(isinstance(a, Tensor) for a in args))
    outs = spec.fn.forward(ctx, *args)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    new: list[Tensor] = []
    for (kind, where), t in zip(spec.saved(args), ctx.saved_tensors, strict=True):
        if kind == NEW:
            assert tuple(t.shape) == tuple(where), (name, tuple(t.shape), where)
            new.append(t)
        else:  # (the declared layout must be what forward saved)
            want = args[where] if kind == IN else outs[where] if kind == OUT else None
            assert t is want, (name, kind, where)
    return [*_unaliased(outs, [*tensors, *new]), *new]


def _unaliased(outs: list[Tensor], others: list[Tensor]) -> list[Tensor]:
    """``outs``, each copied where it shares memory with ``others`` or an earlier output
    (a custom op's results may not alias; below autograd a view has no ``_base`` to
    tell, so storages are compared)."""
    seen = {t.untyped_storage().data_ptr() for t in others}
    found = []
    for o in outs:
        if o.untyped_storage().data_ptr() in seen:
            o = o.clone()
        seen.add(o.untyped_storage().data_ptr())
        found.append(o)
    return found


def _forward_fake(name: str, sig: str, tensors: list[Tensor]) -> list[Tensor]:
    spec = _SPECS[name]
    args = _decode(sig, tensors)
    like = tensors[0]  # (every buffer has the kernel's dtype and device)
    new = [like.new_empty(shape) for kind, shape in spec.saved(args) if kind == NEW]
    return [*spec.outputs(args), *new]


def _backward(
    name: str,
    sig: str,
    tensors: list[Tensor],
    results: list[Tensor],
    grads: list[Tensor | None],
) -> list[Tensor]:
    spec = _SPECS[name]
    args = _with_schedule(spec, _decode(sig, tensors))
    n_out = len(grads)
    outs, new = results[:n_out], iter(results[n_out:])
    saved: list[Tensor | None] = []
    for kind, where in spec.saved(args):
        if kind == NEW:
            saved.append(next(new))
        else:
            saved.append(args[where] if kind == IN else outs[where] if kind == OUT else None)
    ctx = _Ctx(tuple(isinstance(a, Tensor) for a in args))
    ctx.saved_tensors = tuple(saved)
    ctx.sched = next(a for a in args if isinstance(a, Schedule))
    spec.attrs(ctx, args)
    grads = [g if g is not None else torch.zeros_like(o) for g, o in zip(grads, outs)]
    found = spec.fn.backward(ctx, *grads)
    out = []
    for a, g in zip(args, found, strict=True):
        if isinstance(a, Tensor):
            out.append(g if g is not None else torch.zeros_like(a))
    return out


def _backward_fake(name: str, sig: str, tensors: list[Tensor], *rest: Any) -> list[Tensor]:
    return [torch.empty_like(t) for t in tensors]  # a gradient per given tensor


def _setup(ctx: Any, inputs: tuple[Any, ...], output: list[Tensor]) -> None:
    name, sig, tensors = inputs
    ctx.call = (name, sig, len(tensors))
    ctx.n_out = _SPECS[name].n_outputs(_decode(sig, tensors))
    ctx.save_for_backward(*tensors, *output)


def _autograd(ctx: Any, grads: list[Tensor | None]) -> tuple[Any, ...]:
    name, sig, k = ctx.call
    saved = list(ctx.saved_tensors)
    tensors, results = saved[:k], saved[k:]
    return None, None, _BACKWARD(name, sig, tensors, results, list(grads[: ctx.n_out]))


_NAMESPACE = __name__.split(".")[0]
"""The ops' namespace: ``recurrentkit``, or the name a second copy of the package is
imported under (``benchmarks/ab.py`` imports an earlier revision as ``rkbase``), so that
copy's ops do not replace these (each copy's ops read its own registry of specs)."""


def _define() -> tuple[Any, Any]:
    forward = torch.library.custom_op(
        f"{_NAMESPACE}::kernel_forward",
        _forward,
        mutates_args=(),
        schema="(str name, str sig, Tensor[] tensors) -> Tensor[]",
    )
    forward.register_fake(_forward_fake)
    backward = torch.library.custom_op(
        f"{_NAMESPACE}::kernel_backward",
        _backward,
        mutates_args=(),
        schema=(
            "(str name, str sig, Tensor[] tensors, Tensor[] results, Tensor?[] grads) -> Tensor[]"
        ),
    )
    backward.register_fake(_backward_fake)
    forward.register_autograd(_autograd, setup_context=_setup)
    return forward, backward


AVAILABLE = hasattr(torch.library, "custom_op")
"""Whether this torch defines custom ops in Python (torch >= 2.4); without, compiled
stacks keep the scan."""
_FORWARD: Any
_BACKWARD: Any
_FORWARD, _BACKWARD = _define() if AVAILABLE else (None, None)
