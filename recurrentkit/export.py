r"""Export to ONNX: :func:`onnx`, with any sequence length and batch size.

The torch.nn drop-ins (:class:`recurrentkit.RNN`, :class:`~recurrentkit.GRU`,
:class:`~recurrentkit.LSTM`), alone or inside any model, become ONNX's own ``RNN``,
``GRU`` and ``LSTM`` operators, one node per layer (both directions in one node), so
runtimes such as onnxruntime run their fused kernels:

- ``GRU`` → ``GRU`` with ``linear_before_reset=1`` (torch's GRU; ``0`` is the other
  GRU), rows ``r | z | n`` reordered to ONNX's ``z | r | h``;
- ``LSTM`` → ``LSTM``, rows ``i | f | g | o`` reordered to ``i | o | f | c`` (no
  ``proj_size``: ONNX's LSTM has no projection);
- ``RNN`` → ``RNN`` with ``activations=["Tanh"]`` or ``["Relu"]``;
- ``num_layers=L`` → ``L`` nodes, chained; ``bidirectional`` →
  ``direction="bidirectional"``; ``batch_first`` → a ``Transpose`` on each side.

Each node's bias is torch's two biases concatenated, ``[b_ih; b_hh]`` (ONNX's
``[W_b; R_b]``); ``hx`` (``h_0``, ``c_0``) becomes ``initial_h``/``initial_c`` and is
omitted where the model passes none. Dropout is inactive: the model is exported in eval
mode.

The same happens under ``torch.onnx.export(model.eval(), args, dynamo=True)`` called
directly (the drop-ins emit the ONNX operators through
``torch.onnx.ops.symbolic_multi_out`` while that exporter traces them; a drop-in in
training mode with dropout traces its plain-op parts instead); :func:`onnx` adds eval
mode, the dynamic axes, the checks, the names and an atomic write. Under
``torch.export.export`` the drop-ins are one custom op per layer
(``recurrentkit::gru_layer`` & co.), so the exported program keeps ``T`` and ``B``
symbolic. Any other module goes through the same exporter and becomes what its forward
traces to: a :class:`~recurrentkit.Stack` traces its time loop as torch's ``scan``, which
becomes one ONNX ``Scan`` node (one step of the whole stack as its body), so it too runs
at any length and batch size. The export runs under ``torch.no_grad()`` (torch 2.13's
exporter cannot decompose the scan's autograd split with a free length); call
``torch.onnx.export`` on a stack directly inside ``torch.no_grad()`` as well.

Needs the ``export`` extra: ``pip install "recurrentkit[export]"`` (onnx, onnxscript,
onnxruntime).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten_with_path

from recurrentkit._layer_ops import for_onnx
from recurrentkit._validation import check_bool, describe, shape_str
from recurrentkit.bidirectional import Bidirectional
from recurrentkit.errors import ConfigError, InputTypeError, ShapeError, UnsupportedError
from recurrentkit.nn import RecurrentBase
from recurrentkit.stack import Stack

__all__ = ["onnx"]


def onnx(
    module: nn.Module,
    example_input: Tensor | tuple[Any, ...],
    path: str | os.PathLike[str],
    *,
    dynamic_time: bool = True,
    dynamic_batch: bool = True,
) -> Path:
    r"""Write ``module`` as an ONNX model, the time and batch axes left free.

    Traces ``module`` in eval mode (its mode is restored afterwards) with
    ``torch.export.export(module, args, dynamic_shapes=...)``, once (an axis that cannot
    stay free is an error, never silently fixed to the example's size), converts the
    program with ``torch.onnx.export(program, dynamo=True)`` and writes the model to
    ``path`` atomically: to a temporary file beside it, then renamed, so a failed export
    leaves no file (and an earlier file at ``path`` untouched).

    Which axes are free: in the input (the first argument), ``T`` and ``B`` (axes
    ``(1, 0)`` if the module has ``batch_first=True``, else ``(0, 1)``; a 2-D input is
    unbatched, ``(T, F)``); in every other tensor argument (``hx``, ``(h_0, c_0)``,
    per-layer states), the batch axis, taken to be its second-to-last (``(D L, B, H)``,
    ``(B, H)``). The ONNX inputs are named after the forward's arguments (``input``,
    ``hx`` for a drop-in; ``x``, ``state_0_h``, ... for a stack), their free axes ``time``
    and ``batch``; the outputs ``output``, ``h_n`` (, ``c_n``) for a drop-in, ``output``
    and ``final_<layer>_<field>`` for a stack.

    Args:
        module: the model; drop-ins inside it become ONNX ``RNN``/``GRU``/``LSTM`` nodes
            (see the module docstring).
        example_input: the input tensor, or a tuple of the forward's positional
            arguments (``(x, hx)``). Free axes must have size >= 2 in it (torch.export
            fixes an axis of size 0 or 1 to that size).
        path: where to write the ``.onnx`` file; its folder must exist.
        dynamic_time: leave ``T`` free (else fixed to the example's).
        dynamic_batch: leave ``B`` free (else fixed to the example's).

    Returns:
        ``path``, as a :class:`pathlib.Path`.

    Raises:
        InputTypeError: ``module`` is not an ``nn.Module``, ``example_input`` is not a
            tensor or tuple, ``path`` is not a path, a flag is not a bool.
        ShapeError: a free axis of size < 2 in the example.
        ConfigError: ``path``'s folder does not exist, or ``path`` is a folder.
        UnsupportedError: onnx or onnxscript is not installed; an LSTM drop-in with
            ``proj_size`` (ONNX's LSTM has no projection); a stack with a complex state
            (``LRUCell``: ONNX has no complex tensors); a free axis that the module's
            forward fixes ("Constraints violated"; pass ``dynamic_time=False`` or
            ``dynamic_batch=False``).

    Example:
        >>> import torch, recurrentkit as rk, onnxruntime, tempfile, os
        >>> gru = rk.GRU(3, 5, num_layers=2, batch_first=True)
        >>> path = os.path.join(tempfile.mkdtemp(), "gru.onnx")
        >>> f = rk.export.onnx(gru, torch.randn(2, 4, 3), path)         # (B, T, I)
        >>> session = onnxruntime.InferenceSession(f)
        >>> y, h_n = session.run(None, {"input": torch.randn(1, 9, 3).numpy()})
        >>> y.shape, h_n.shape
        ((1, 9, 5), (2, 1, 5))
    """
    if not isinstance(module, nn.Module):
        raise InputTypeError("module", "a torch.nn.Module", describe(module))
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if not args or not isinstance(args[0], Tensor):
        raise InputTypeError(
            "example_input", "a tensor, or a tuple (input, ...) of the forward's arguments",
            describe(example_input),
        )  # fmt: skip
    if not isinstance(path, (str, os.PathLike)):
        raise InputTypeError("path", "a str or os.PathLike", describe(path))
    target = Path(path)
    check_bool("dynamic_time", dynamic_time)
    check_bool("dynamic_batch", dynamic_batch)
    if target.is_dir():
        raise ConfigError("path", "a file path (not a folder)", str(target))
    if not target.parent.is_dir():
        raise ConfigError("path", "a path in an existing folder", str(target))
    for name in ("onnx", "onnxscript"):
        if importlib.util.find_spec(name) is None:
            raise UnsupportedError(
                "recurrentkit.export.onnx",
                f'the {name} package: pip install "recurrentkit[export]"',
                f"{name} not installed",
            )
    for name, sub in module.named_modules():
        if isinstance(sub, RecurrentBase) and sub.proj_size:
            raise UnsupportedError(
                "proj_size",
                "0 to export an LSTM to ONNX (ONNX's LSTM operator has no projection; "
                "torch.export.export keeps it)",
                f"{name or 'module'} with proj_size={sub.proj_size}",
            )
    shapes = _dynamic_shapes(
        args, bool(getattr(module, "batch_first", False)), dynamic_time, dynamic_batch
    )
    was_training = module.training
    module.eval()
    handle, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=target.parent)
    os.close(handle)
    try:
        names = _output_names(module, args)
        # Under no_grad: the exporter's decomposition of torch's scan (the time loop of a
        # Stack with a free length) otherwise traces the scan's autograd split and stops
        # on a symbolic size (torch 2.13: "'SymInt' object has no attribute 'unsqueeze'").
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", "The axis name", UserWarning)
            program = torch.onnx.export(
                _export_program(module, args, shapes),
                dynamo=True,
                dynamic_shapes=shapes,  # names the free axes "time" and "batch"
                output_names=names,
                verbose=False,
            )
        assert program is not None  # dynamo=True always returns the program
        program.save(tmp, external_data=False)
        os.replace(tmp, target)
    finally:
        module.train(was_training)
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _output_names(module: nn.Module, args: tuple[Any, ...]) -> list[str] | None:
    """ONNX output names: a drop-in's ``output``, ``h_n`` (, ``c_n``); a stack's (or
    :class:`~recurrentkit.bidirectional.Bidirectional`'s) ``output`` and one
    ``final_<layer>_<field>`` per final state field (``final_<direction>_<layer>_<field>``
    for two directions), found by running the module once on the example; else torch's.
    A complex final state (the LRU's) is an UnsupportedError: ONNX has no complex type."""
    if isinstance(module, RecurrentBase):
        return ["output", "h_n", "c_n"] if module.mode == "LSTM" else ["output", "h_n"]
    if not isinstance(module, (Stack, Bidirectional)):
        return None
    with torch.no_grad():
        leaves = tree_flatten_with_path(module(*args))[0]
    if any(leaf.is_complex() for _, leaf in leaves if isinstance(leaf, Tensor)):
        raise UnsupportedError(
            "module",
            "real states to export to ONNX (ONNX has no complex tensors; torch.export keeps them)",
            f"{type(module).__name__} with a complex state (e.g. LRUCell's)",
        )
    names = ["output"]
    for path, _ in leaves[1:]:
        parts = [str(getattr(key, "idx", getattr(key, "name", key))) for key in path[1:]]
        names.append("_".join(["final", *parts]))
    return names


def _export_program(
    module: nn.Module, args: tuple[Any, ...], shapes: tuple[Any, ...]
) -> torch.export.ExportedProgram:
    """``torch.export.export(module, args, dynamic_shapes=shapes)``, once (the ONNX
    exporter, given the module, would retry without the free axes and succeed with the
    example's length fixed); an axis that cannot stay free is an UnsupportedError."""
    try:
        with for_onnx():
            return torch.export.export(module, args, dynamic_shapes=shapes)
    except Exception as error:
        if "Constraints violated" not in str(error):
            raise
        raise UnsupportedError(
            "dynamic_time, dynamic_batch",
            "a module whose forward torch.export traces with these axes free (the "
            "drop-ins do), or dynamic_time=False / dynamic_batch=False to fix them to "
            "the example's sizes",
            f"{type(module).__name__}: {str(error).strip().splitlines()[0]}",
        ) from error


def _dynamic_shapes(
    args: tuple[Any, ...], batch_first: bool, dynamic_time: bool, dynamic_batch: bool
) -> tuple[Any, ...]:
    """torch.export's ``dynamic_shapes`` for ``args``: the input's ``T``/``B``, every
    other tensor's batch axis (its second-to-last); a size < 2 there is a ShapeError."""
    time, batch = torch.export.Dim("time"), torch.export.Dim("batch")
    x = args[0]
    axes: dict[int, Any] = {}
    if x.dim() >= 2:
        t_axis, b_axis = (1, 0) if batch_first and x.dim() >= 3 else (0, 1)
        if dynamic_time:
            axes[t_axis] = time
        if dynamic_batch and x.dim() >= 3:
            axes[b_axis] = batch
    for axis in axes:
        if x.shape[axis] < 2:
            raise ShapeError(
                "example_input",
                f"size >= 2 on the free axis {axis} ({'time' if axes[axis] is time else 'batch'}"
                "; torch.export fixes an axis of size 0 or 1 to that size)",
                shape_str(x.shape),
            )

    def state_axes(value: Any, where: str) -> Any:
        if isinstance(value, Tensor):
            if not dynamic_batch or value.dim() < 2 or x.dim() < 3:
                return None
            if value.shape[-2] < 2:
                raise ShapeError(
                    where,
                    "size >= 2 on its batch axis (its second-to-last) to leave the batch free",
                    shape_str(value.shape),
                )
            return {value.dim() - 2: batch}
        if isinstance(value, (tuple, list)):
            parts = [state_axes(v, f"{where}[{i}]") for i, v in enumerate(value)]
            return type(value)(*parts) if hasattr(value, "_fields") else type(value)(parts)
        return None

    rest = [state_axes(a, f"example_input[{i}]") for i, a in enumerate(args[1:], 1)]
    return (axes or None, *rest)
