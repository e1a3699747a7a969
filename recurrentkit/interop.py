"""Conversions between torch.nn's recurrent modules and recurrentkit's, weights copied.

- :func:`stack_from_torch` / :func:`stack_to_torch`: a unidirectional ``nn.RNN``,
  ``nn.GRU`` or ``nn.LSTM`` ↔ a :class:`~recurrentkit.Stack` with independent routing
  (this module owns them: :class:`~recurrentkit.Stack` sits below the torch.nn
  layer and does not import it).
- :func:`dropin_from_torch` / :func:`dropin_to_torch`: a torch.nn module ↔ the
  matching drop-in :class:`recurrentkit.RNN`/:class:`~recurrentkit.GRU`/
  :class:`~recurrentkit.LSTM` (any direction count); defined beside the drop-ins in
  :mod:`recurrentkit.nn` (their ``from_torch``/``to_torch``) and re-exported here.

- :func:`quantize_dynamic`: ``torch.ao.quantization.quantize_dynamic`` for models that
  hold drop-ins (torch's own function matches exact types: it leaves them, like any
  subclass of ``nn.LSTM``, unquantized).

Every conversion keeps dtype, device, ``batch_first``, ``dropout`` and the training
mode; the result owns copies of the weights (changing one side leaves the other alone).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from recurrentkit._validation import describe
from recurrentkit.cells import GRUCell, LSTMCell, RNNCell
from recurrentkit.errors import ConfigError, DeviceError, InputTypeError
from recurrentkit.nn import (
    GRU,
    LSTM,
    PARAMETER_KINDS,
    RNN,
    RecurrentBase,
    dropin_from_torch,
    dropin_to_torch,
    mode_of,
)
from recurrentkit.routing import Independent
from recurrentkit.stack import Stack

__all__ = [
    "dropin_from_torch",
    "dropin_to_torch",
    "quantize_dynamic",
    "stack_from_torch",
    "stack_to_torch",
]


def stack_from_torch(module: nn.Module) -> Stack:
    """A :class:`~recurrentkit.Stack` equal to a unidirectional torch.nn recurrent module.

    Layer ``k`` becomes an ``RNNCell``/``GRUCell``/``LSTMCell`` holding copies of
    ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` (and
    ``weight_hr_l{k}``); the stack uses independent routing, the module's dropout,
    ``batch_first``, dtype, device and training mode. ``stack(x, state)`` then equals
    ``module(x, hx)`` with ``state[k]`` = ``hx[k]`` (``LSTMState(h_0[k], c_0[k])``).

    Args:
        module: an ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM`` with ``bidirectional=False``
            (a recurrentkit drop-in is accepted too).

    Returns:
        A new :class:`~recurrentkit.Stack` with ``module.num_layers`` layers.

    Raises:
        InputTypeError: ``module`` is not one of those modules.
        ConfigError: ``module.bidirectional`` is true (a Stack reads one direction).

    Example:
        >>> import torch, recurrentkit as rk
        >>> gru = torch.nn.GRU(3, 4, num_layers=2)
        >>> stack = stack_from_torch(gru)
        >>> x = torch.randn(5, 2, 3)
        >>> torch.allclose(stack(x)[0], gru(x)[0], atol=1e-6)
        True
    """
    mode = mode_of(module)
    m: Any = module  # attributes as nn.RNNBase declares them
    if m.bidirectional:
        raise ConfigError(
            "module.bidirectional",
            "False (a Stack reads one direction; for two use recurrentkit.GRU/LSTM/RNN "
            "with bidirectional=True, or recurrentkit.bidirectional.Bidirectional)",
            True,
        )
    ref = next(m.parameters())
    factory: dict[str, Any] = {"device": ref.device, "dtype": ref.dtype}
    H, out = m.hidden_size, m.proj_size or m.hidden_size
    cells: list[nn.Module] = []
    for k in range(m.num_layers):
        width = m.input_size if k == 0 else out
        cell: nn.Module
        if mode == "GRU":
            cell = GRUCell(width, H, m.bias, **factory)
        elif mode == "LSTM":
            cell = LSTMCell(width, H, m.bias, proj_size=m.proj_size, **factory)
        else:
            nonlinearity = "tanh" if mode == "RNN_TANH" else "relu"
            cell = RNNCell(width, H, m.bias, nonlinearity, **factory)
        _copy_layer(cell, module, k, to_cell=True)
        cells.append(cell)
    stack = Stack(cells, "independent", dropout=m.dropout, batch_first=m.batch_first)
    return stack.train(module.training)


def stack_to_torch(stack: Stack) -> nn.Module:
    """The ``nn.RNN``/``nn.GRU``/``nn.LSTM`` equal to a :class:`~recurrentkit.Stack`.

    Possible exactly when the stack is what torch.nn computes: independent routing and
    layers that are all ``RNNCell`` (one nonlinearity), all ``GRUCell`` with
    ``reset="after"``, or all ``LSTMCell`` (one ``proj_size``), with one
    ``hidden_size`` and one ``bias`` setting, layer ``k > 0`` reading the width of the
    layer below, and every parameter on one dtype and device.

    Args:
        stack: the stack to convert.

    Returns:
        A torch.nn module with ``num_layers = stack.num_layers``, ``bidirectional=False``,
        the stack's dropout, ``batch_first`` and training mode, and copies of its weights.

    Raises:
        InputTypeError: ``stack`` is not a :class:`~recurrentkit.Stack`.
        ConfigError: anything torch.nn has no equivalent for (the message names it):
            another routing policy, a cell that is not ``RNNCell``/``GRUCell``/
            ``LSTMCell`` (``NestedLSTMCell``, a user cell, a stack used as a cell),
            mixed cell types, ``GRUCell(reset="before")``, per-layer hidden sizes,
            bias settings, nonlinearities or projection sizes.
        DeviceError: parameters on more than one dtype or device.

    Example:
        >>> import torch, recurrentkit as rk
        >>> stack = rk.Stack([rk.LSTMCell(3, 8, proj_size=4), rk.LSTMCell(4, 8, proj_size=4)])
        >>> lstm = stack_to_torch(stack)
        >>> type(lstm).__name__, lstm.num_layers, lstm.proj_size
        ('LSTM', 2, 4)
    """
    if not isinstance(stack, Stack):
        raise InputTypeError("stack", "a recurrentkit.Stack", describe(stack))
    if type(stack.routing) is not Independent:
        raise ConfigError(
            "stack.routing",
            "independent routing (torch.nn's multi-layer modules keep one memory per layer)",
            f"{stack.routing.name!r} ({type(stack.routing).__name__})",
        )
    cells = list(stack.cells)
    first = cells[0]
    for k, c in enumerate(cells):
        if type(c) not in (RNNCell, GRUCell, LSTMCell):
            raise ConfigError(
                f"stack.cells[{k}]",
                "an RNNCell, GRUCell or LSTMCell (torch.nn has no module running other cells)",
                type(c).__name__,
            )
        if type(c) is not type(first):
            raise ConfigError(
                f"stack.cells[{k}]",
                f"a {type(first).__name__} like cells[0] (a torch.nn module has one cell type)",
                type(c).__name__,
            )
        _check_same(k, c, first, "hidden_size", "torch.nn uses one hidden_size for all layers")
        _check_same(k, c, first, "bias", "torch.nn's bias switch covers all layers")
        if isinstance(c, GRUCell) and c.reset != "after":
            raise ConfigError(
                f"stack.cells[{k}].reset", "'after' (torch.nn.GRU's form)", repr(c.reset)
            )
        if isinstance(c, RNNCell):
            _check_same(k, c, first, "nonlinearity", "torch.nn.RNN has one nonlinearity")
        if isinstance(c, LSTMCell):
            _check_same(k, c, first, "proj_size", "torch.nn.LSTM has one proj_size")
        if k > 0 and c.input_size != first.output_size:
            raise ConfigError(
                f"stack.cells[{k}].input_size",
                f"{first.output_size} (torch.nn's layer k > 0 reads H_out features)",
                c.input_size,
            )
    ref = next(stack.parameters())
    for name, p in stack.named_parameters():
        if p.dtype != ref.dtype or p.device != ref.device:
            raise DeviceError(
                name,
                f"{ref.dtype} on {ref.device} like the first parameter (a torch.nn module "
                "keeps one dtype and device)",
                f"{p.dtype} on {p.device}",
            )
    kwargs: dict[str, Any] = {
        "num_layers": len(cells),
        "bias": first.bias,
        "batch_first": stack.batch_first,
        "dropout": stack.dropout,
        "device": ref.device,
        "dtype": ref.dtype,
    }
    if isinstance(first, RNNCell):
        kwargs["nonlinearity"] = first.nonlinearity
    if isinstance(first, LSTMCell):
        kwargs["proj_size"] = first.proj_size
    classes: dict[type, type[nn.Module]] = {RNNCell: nn.RNN, GRUCell: nn.GRU, LSTMCell: nn.LSTM}
    cls = classes[type(first)]
    with warnings.catch_warnings():  # torch warns on dropout with one layer; both ignore it
        warnings.simplefilter("ignore", UserWarning)
        module = cls(first.input_size, first.hidden_size, **kwargs)
    for k, c in enumerate(cells):
        _copy_layer(c, module, k, to_cell=False)
    return module.train(stack.training)


def _check_same(k: int, cell: Any, first: Any, attr: str, why: str) -> None:
    if getattr(cell, attr) != getattr(first, attr):
        raise ConfigError(
            f"stack.cells[{k}].{attr}",
            f"{getattr(first, attr)!r} like cells[0] ({why})",
            repr(getattr(cell, attr)),
        )


def _copy_layer(cell: nn.Module, module: nn.Module, k: int, *, to_cell: bool) -> None:
    """Copy layer ``k``'s weights between a cell (``weight_ih``, ...) and a torch.nn-named
    module (``weight_ih_l{k}``, ...), into the cell if ``to_cell``; no autograd."""
    with torch.no_grad():
        for kind in PARAMETER_KINDS:
            ours, theirs = getattr(cell, kind, None), getattr(module, f"{kind}_l{k}", None)
            if ours is None or theirs is None:
                continue
            (ours if to_cell else theirs).copy_(theirs if to_cell else ours)


_TORCH_OF: dict[type, type[nn.Module]] = {RNN: nn.RNN, GRU: nn.GRU, LSTM: nn.LSTM}


def quantize_dynamic(
    model: nn.Module,
    qconfig_spec: Any = None,
    dtype: torch.dtype = torch.qint8,
    mapping: Any = None,
    inplace: bool = False,
) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` for a model that holds drop-ins.

    torch's function picks the modules to quantize by their exact type
    (``type(m) is nn.LSTM``, and ``nn.quantized.dynamic.LSTM.from_float`` asserts it), so
    it leaves a :class:`recurrentkit.LSTM` — or any subclass of ``nn.LSTM`` — as it is.
    This function takes the same arguments and gives what torch gives for the same
    model built from ``nn.RNN``/``nn.GRU``/``nn.LSTM``: each drop-in is first replaced by
    its ``torch.nn`` module (:func:`dropin_to_torch`, the weights it runs with, its hooks
    and ``qconfig``), torch's function runs, and every replaced module that torch did not
    quantize (an ``RNN``, a module outside ``qconfig_spec``) is the drop-in again. A
    ``qconfig_spec`` naming ``recurrentkit.GRU``/``LSTM``/``RNN`` means their torch
    classes.

    As with torch's function, only submodules are replaced: a drop-in passed as the
    model itself is returned as it is (wrap it, e.g. in ``nn.Sequential``).

    Args:
        model: the float model.
        qconfig_spec: as torch's: a set of module types or names, or a dict of them to
            qconfigs; ``None``: torch's default (``nn.Linear``, ``nn.LSTM``, ``nn.GRU``
            and the cells).
        dtype: as torch's (``torch.qint8`` or ``torch.float16`` for recurrent layers).
        mapping: as torch's (``None``: its dynamic-quantization mapping).
        inplace: quantize ``model`` itself instead of a deep copy.

    Returns:
        The quantized model (``model`` itself if ``inplace``).

    Raises:
        InputTypeError: ``model`` is not an ``nn.Module``.

    Example:
        >>> import torch, recurrentkit as rk
        >>> model = torch.nn.Sequential(rk.LSTM(3, 4), )
        >>> q = quantize_dynamic(model, {torch.nn.LSTM})
        >>> type(q[0]).__module__
        'torch.ao.nn.quantized.dynamic.modules.rnn'
        >>> type(model[0]).__name__     # not inplace: the model is untouched
        'LSTM'
    """
    from torch.ao.quantization import quantize_dynamic as torch_quantize_dynamic

    if not isinstance(model, nn.Module):
        raise InputTypeError("model", "an nn.Module", describe(model))
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(qconfig_spec, (set, dict)):
        spec = [(_TORCH_OF.get(k, k) if isinstance(k, type) else k) for k in qconfig_spec]
        if isinstance(qconfig_spec, dict):
            qconfig_spec = dict(zip(spec, qconfig_spec.values()))
        else:
            qconfig_spec = set(spec)
    replaced = []
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, RecurrentBase):
                twin = _torch_twin(child)
                parent._modules[name] = twin
                replaced.append((parent, name, twin, child))
    with warnings.catch_warnings():  # torch.ao.quantization warns that it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch_quantize_dynamic(model, qconfig_spec, dtype=dtype, mapping=mapping, inplace=True)
    for parent, name, twin, child in replaced:
        if parent._modules[name] is twin:  # not quantized: the drop-in goes back
            parent._modules[name] = child
    return model


def _torch_twin(dropin: RecurrentBase) -> nn.Module:
    """The drop-in's torch.nn module, with its hooks and ``qconfig`` (which torch's
    quantization reads and carries over to the quantized module)."""
    twin = dropin_to_torch(dropin)
    twin._forward_pre_hooks.update(dropin._forward_pre_hooks)
    twin._forward_hooks.update(dropin._forward_hooks)
    if "qconfig" in dropin.__dict__:
        twin.qconfig = dropin.qconfig
    return twin
