"""Shared helpers for the cell tests: the executor tests' ``checks`` (``build``,
``inputs``, ``same_run``, ...) with the backbone cells and regularisers registered.

``tests/executors/conftest.py`` is loaded as a module of its own (a copy: its ``CELLS``
table here is not the executor tests' table), so its helpers are reused, not rewritten.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

import recurrentkit as rk


def _executor_checks() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "executors" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_cells_executor_checks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EX = _executor_checks()

BACKBONES = {
    "mgu": lambda i, h: rk.MGUCell(i, h),
    "mgu_nobias": lambda i, h: rk.MGUCell(i, h, bias=False),
    "coupled_lstm": lambda i, h: rk.CoupledLSTMCell(i, h),
    "coupled_lstm_nobias": lambda i, h: rk.CoupledLSTMCell(i, h, bias=False),
    "indrnn": lambda i, h: rk.IndRNNCell(i, h),
    "indrnn_tanh": lambda i, h: rk.IndRNNCell(i, h, nonlinearity="tanh"),
    "ln_gru": lambda i, h: rk.LayerNormGRUCell(i, h),
    "ln_gru_nobias": lambda i, h: rk.LayerNormGRUCell(i, h, bias=False),
    "ln_lstm": lambda i, h: rk.LayerNormLSTMCell(i, h),
    "ln_lstm_nobias": lambda i, h: rk.LayerNormLSTMCell(i, h, bias=False),
}
"""The backbone cells (round 2), by name, ``(input_size, hidden_size) -> cell``."""

WRAPPED = {
    # split-step cells inside: the wrapper passes their split step (and linear) on
    "zoneout_mgu": lambda i, h: rk.Zoneout(rk.MGUCell(i, h), 0.3),
    "zoneout_ln_lstm": lambda i, h: rk.Zoneout(rk.LayerNormLSTMCell(i, h), 0.3, p_cell=0.6),
    # built-in kernel cells and a user cell without a split step: identity projection
    "zoneout_lstm": lambda i, h: rk.Zoneout(rk.LSTMCell(i, h), 0.3, p_cell=0.6),
    "zoneout_nested": lambda i, h: rk.Zoneout(rk.NestedLSTMCell(i, h), 0.3),
    "zoneout_user": lambda i, h: rk.Zoneout(EX.LeakyCell(i, h), 0.3),
    "rdrop_gru": lambda i, h: rk.RecurrentDropout(rk.GRUCell(i, h), 0.4),
    "rdrop_coupled": lambda i, h: rk.RecurrentDropout(rk.CoupledLSTMCell(i, h), 0.4),
    "rdrop_indrnn": lambda i, h: rk.RecurrentDropout(rk.IndRNNCell(i, h), 0.4),
    "zoneout_rdrop_lstm": lambda i, h: rk.Zoneout(
        rk.RecurrentDropout(rk.LSTMCell(i, h), 0.4), 0.3, p_cell=0.2
    ),
    "weightdrop_mgu": lambda i, h: rk.WeightDrop(rk.MGUCell(i, h), 0.4),
}
"""The regularisers around cells of each kind, by name."""

EX.CELLS.update(BACKBONES)
EX.CELLS.update(WRAPPED)


@pytest.fixture
def checks() -> SimpleNamespace:
    """``tests/executors/conftest.py``'s helpers over the table above."""
    return SimpleNamespace(
        CELLS=EX.CELLS,
        LeakyCell=EX.LeakyCell,
        flat=EX.flat,
        build=EX.build,
        inputs=EX.inputs,
        same_run=EX.same_run,
    )


@pytest.fixture(autouse=True)
def _no_leak_warnings() -> Iterator[None]:
    """Handoff's LeakWarning is expected here (it is tested in tests/routing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rk.routing.LeakWarning)
        yield
