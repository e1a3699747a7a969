"""The backbone cells of round 2 (MGU, CIFG LSTM, IndRNN, layer-normalised GRU and LSTM).

Each cell over a sequence equals a hand-written loop of the equations in its docstring
(float64, products written as ``@``, sigmoids as ``1 / (1 + exp(-a))``, layer norm as
mean and variance); where a torch module computes the same function (an ``nn.LSTMCell``
with coupled gates, an ``nn.RNNCell`` with a diagonal recurrent matrix, ``nn.LayerNorm``)
it equals that too. Gradcheck on every input, state and parameter; the split step equals
the call; constructor errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

import recurrentkit as rk

D = torch.float64
T, B, I, H = 5, 3, 4, 6
TOL = 1e-12


def sig(a: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-a))


def lin(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    out = x @ w.T
    return out if b is None else out + b


def blocks(t: Tensor | None, k: int) -> list[Any]:
    """The ``k`` equal row blocks of a weight or bias (``None`` stays ``None``)."""
    if t is None:
        return [None] * k
    n = t.shape[0] // k
    return [t[j * n : (j + 1) * n] for j in range(k)]


def add(*terms: Tensor | None) -> Tensor:
    out = None
    for t in terms:
        if t is not None:
            out = t if out is None else out + t
    assert out is not None
    return out


def layer_norm(v: Tensor, gain: Tensor, shift: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Layer normalisation over the last axis, by its definition."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    out = (v - mean) / torch.sqrt(var + eps) * gain
    return out if shift is None else out + shift


# -- the equations, written out --------------------------------------------------------------------


def ref_mgu(cell: rk.MGUCell, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    W_if, W_in = blocks(cell.weight_ih, 2)
    W_hf, W_hn = blocks(cell.weight_hh, 2)
    b_if, b_in = blocks(cell.bias_ih, 2)
    b_hf, b_hn = blocks(cell.bias_hh, 2)
    f = sig(add(lin(x, W_if), b_if, lin(h, W_hf), b_hf))
    n = torch.tanh(add(lin(x, W_in), b_in, lin(f * h, W_hn), b_hn))
    h = (1 - f) * h + f * n
    return h, h


def ref_coupled(cell: rk.CoupledLSTMCell, x: Tensor, s: Any) -> tuple[Tensor, Any]:
    h, c = s
    pre = add(lin(x, cell.weight_ih), cell.bias_ih, lin(h, cell.weight_hh), cell.bias_hh)
    f, g, o = blocks(pre.T, 3)
    f, g, o = sig(f.T), torch.tanh(g.T), sig(o.T)
    c = f * c + (1 - f) * g
    h = o * torch.tanh(c)
    return h, (h, c)


def ref_indrnn(cell: rk.IndRNNCell, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    pre = add(lin(x, cell.weight_ih), cell.bias_ih, cell.weight_hh * h, cell.bias_hh)
    h = torch.clamp(pre, min=0) if cell.nonlinearity == "relu" else torch.tanh(pre)
    return h, h


def ref_ln_gru(cell: rk.LayerNormGRUCell, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    gi = add(layer_norm(lin(x, cell.weight_ih), cell.ln_ih.weight, cell.ln_ih.bias), cell.bias_ih)
    gh = add(layer_norm(lin(h, cell.weight_hh), cell.ln_hh.weight, cell.ln_hh.bias), cell.bias_hh)
    (i_r, i_z, i_n), (h_r, h_z, h_n) = blocks(gi.T, 3), blocks(gh.T, 3)
    r, z = sig(i_r.T + h_r.T), sig(i_z.T + h_z.T)
    n = torch.tanh(i_n.T + r * h_n.T)
    h = (1 - z) * n + z * h
    return h, h


def ref_ln_lstm(cell: rk.LayerNormLSTMCell, x: Tensor, s: Any) -> tuple[Tensor, Any]:
    h, c = s
    pre = add(
        layer_norm(lin(x, cell.weight_ih), cell.ln_ih.weight, cell.ln_ih.bias),
        layer_norm(lin(h, cell.weight_hh), cell.ln_hh.weight, cell.ln_hh.bias),
        cell.bias,
    )
    i, f, g, o = (t.T for t in blocks(pre.T, 4))
    c = sig(f) * c + sig(i) * torch.tanh(g)
    h = sig(o) * torch.tanh(layer_norm(c, cell.ln_c.weight, cell.ln_c.bias))
    return h, (h, c)


REFS: dict[str, tuple[Callable[..., nn.Module], Callable[..., Any]]] = {
    "mgu": (lambda bias: rk.MGUCell(I, H, bias=bias, dtype=D), ref_mgu),
    "coupled_lstm": (lambda bias: rk.CoupledLSTMCell(I, H, bias=bias, dtype=D), ref_coupled),
    "indrnn_relu": (lambda bias: rk.IndRNNCell(I, H, bias=bias, dtype=D), ref_indrnn),
    "indrnn_tanh": (
        lambda bias: rk.IndRNNCell(I, H, bias=bias, nonlinearity="tanh", dtype=D),
        ref_indrnn,
    ),
    "ln_gru": (lambda bias: rk.LayerNormGRUCell(I, H, bias=bias, dtype=D), ref_ln_gru),
    "ln_lstm": (lambda bias: rk.LayerNormLSTMCell(I, H, bias=bias, dtype=D), ref_ln_lstm),
}


def randomise(cell: nn.Module) -> nn.Module:
    """Every parameter random (the layer norms' gains and shifts too: not 1 and 0)."""
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.randn_like(p) / 2)
    return cell


def random_state(cell: nn.Module, batch: int = B) -> Any:
    s = cell.initial_state(batch)
    if isinstance(s, Tensor):
        return torch.randn_like(s)
    return type(s)(*(torch.randn_like(t) for t in s))


def as_plain(state: Any) -> Any:
    return state if isinstance(state, Tensor) else tuple(state)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", list(REFS))
def test_a_sequence_equals_the_equations_written_out(name: str, bias: bool) -> None:
    torch.manual_seed(0)
    make, ref = REFS[name]
    cell = randomise(make(bias))
    x = torch.randn(T, B, I, dtype=D)
    s = random_state(cell)
    s_ref = as_plain(s)
    with torch.no_grad():
        for t in range(T):
            y, s = cell(x[t], s)
            y_ref, s_ref = ref(cell, x[t], s_ref)
            torch.testing.assert_close(y, y_ref, rtol=0, atol=TOL)
            got = [s] if isinstance(s, Tensor) else list(s)
            want = [s_ref] if isinstance(s_ref, Tensor) else list(s_ref)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=0, atol=TOL)


def test_mgu_is_a_reset_before_gru_with_tied_gates() -> None:
    """``r := f`` and ``z := 1 - f = σ(-f)``: a GRUCell(reset="before") with r's rows
    copied from f's and z's negated computes the MGU exactly."""
    torch.manual_seed(1)
    mgu = randomise(rk.MGUCell(I, H, dtype=D))
    gru = rk.GRUCell(I, H, reset="before", dtype=D)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            f, n = blocks(getattr(mgu, name), 2)
            getattr(gru, name).copy_(torch.cat([f, -f, n]))
    x, h = torch.randn(B, I, dtype=D), torch.randn(B, H, dtype=D)
    torch.testing.assert_close(mgu(x, h)[0], gru(x, h)[0], rtol=0, atol=TOL)


def test_coupled_lstm_is_an_nn_lstm_cell_with_i_set_to_minus_f() -> None:
    torch.manual_seed(2)
    cell = randomise(rk.CoupledLSTMCell(I, H, dtype=D))
    torch_cell = nn.LSTMCell(I, H, dtype=D)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            f, g, o = blocks(getattr(cell, name), 3)
            getattr(torch_cell, name).copy_(torch.cat([-f, f, g, o]))  # torch: i | f | g | o
    x = torch.randn(T, B, I, dtype=D)
    s = random_state(cell)
    s_torch = tuple(s)
    for t in range(T):
        y, s = cell(x[t], s)
        s_torch = torch_cell(x[t], s_torch)
        torch.testing.assert_close(y, s_torch[0], rtol=0, atol=TOL)
        torch.testing.assert_close(s.c, s_torch[1], rtol=0, atol=TOL)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_indrnn_is_an_nn_rnn_cell_with_a_diagonal_recurrent_matrix(nonlinearity: str) -> None:
    torch.manual_seed(3)
    cell = randomise(rk.IndRNNCell(I, H, nonlinearity=nonlinearity, dtype=D))
    torch_cell = nn.RNNCell(I, H, nonlinearity=nonlinearity, dtype=D)
    with torch.no_grad():
        torch_cell.weight_ih.copy_(cell.weight_ih)
        torch_cell.weight_hh.copy_(torch.diag(cell.weight_hh))
        torch_cell.bias_ih.copy_(cell.bias_ih)
        torch_cell.bias_hh.copy_(cell.bias_hh)
    x, h = torch.randn(T, B, I, dtype=D), torch.randn(B, H, dtype=D)
    h_torch = h
    for t in range(T):
        y, h = cell(x[t], h)
        h_torch = torch_cell(x[t], h_torch)
        torch.testing.assert_close(y, h_torch, rtol=0, atol=TOL)


def test_the_layer_norm_cells_normalise_as_nn_layer_norm() -> None:
    """Their projections are ``nn.LayerNorm`` modules (their own ``ln_*``) applied to
    the products: the cell's steps equal the equations written with those modules."""
    torch.manual_seed(4)
    gru = randomise(rk.LayerNormGRUCell(I, H, dtype=D))
    lstm = randomise(rk.LayerNormLSTMCell(I, H, dtype=D))
    assert isinstance(gru.ln_ih, nn.LayerNorm) and gru.ln_ih.normalized_shape == (3 * H,)
    assert lstm.ln_hh.normalized_shape == (4 * H,) and lstm.ln_c.normalized_shape == (H,)
    x, h, c = (torch.randn(B, n, dtype=D) for n in (I, H, H))
    gi = gru.ln_ih(x @ gru.weight_ih.T) + gru.bias_ih
    gh = gru.ln_hh(h @ gru.weight_hh.T) + gru.bias_hh
    r, z = torch.sigmoid(gi[:, :H] + gh[:, :H]), torch.sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
    n = torch.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
    torch.testing.assert_close(gru(x, h)[0], (1 - z) * n + z * h, rtol=0, atol=TOL)
    gates = lstm.ln_ih(x @ lstm.weight_ih.T) + lstm.ln_hh(h @ lstm.weight_hh.T) + lstm.bias
    i, f, g, o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(lstm.ln_c(c_new))
    y, s = lstm(x, rk.LSTMState(h, c))
    torch.testing.assert_close(y, h_new, rtol=0, atol=TOL)
    torch.testing.assert_close(s.c, c_new, rtol=0, atol=TOL)


def test_the_layer_norm_cells_start_with_unit_gains_and_zero_shifts() -> None:
    for cell in (rk.LayerNormGRUCell(I, H), rk.LayerNormLSTMCell(I, H)):
        for name, p in cell.named_parameters():
            if name.startswith("ln_") and name.endswith("weight"):
                assert torch.equal(p, torch.ones_like(p)), name
            elif name.startswith("ln_"):
                assert torch.equal(p, torch.zeros_like(p)), name
            else:
                bound = 1 / H**0.5
                assert p.abs().max() <= bound and p.std() > 0, name


@pytest.mark.parametrize(
    "make, names",
    [
        (rk.MGUCell, [("weight_ih", (2 * H, I)), ("weight_hh", (2 * H, H))]),
        (rk.CoupledLSTMCell, [("weight_ih", (3 * H, I)), ("weight_hh", (3 * H, H))]),
        (rk.IndRNNCell, [("weight_ih", (H, I)), ("weight_hh", (H,))]),
        (rk.LayerNormGRUCell, [("weight_ih", (3 * H, I)), ("weight_hh", (3 * H, H))]),
        (rk.LayerNormLSTMCell, [("weight_ih", (4 * H, I)), ("weight_hh", (4 * H, H))]),
    ],
)
def test_parameter_names_and_shapes(make: Callable[..., nn.Module], names: list) -> None:
    cell = make(I, H)
    shapes = {n: tuple(p.shape) for n, p in cell.named_parameters()}
    for name, shape in names:
        assert shapes[name] == shape
    rows = names[0][1][0]
    if make is rk.LayerNormLSTMCell:
        expected = ["weight_ih", "weight_hh", "bias"]
        expected += [f"{ln}.{p}" for ln in ("ln_ih", "ln_hh", "ln_c") for p in ("weight", "bias")]
        assert shapes["bias"] == (rows,)
    else:
        expected = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        if make is rk.LayerNormGRUCell:
            expected += [f"{ln}.{p}" for ln in ("ln_ih", "ln_hh") for p in ("weight", "bias")]
        assert shapes["bias_ih"] == shapes["bias_hh"] == (rows,)
    assert list(shapes) == expected
    nobias = make(I, H, bias=False)
    assert all("bias" not in n for n, _ in nobias.named_parameters())


# -- gradcheck --------------------------------------------------------------------


def flat(state: Any) -> list[Tensor]:
    return [state] if isinstance(state, Tensor) else [t for s in state for t in flat(s)]


def unflat(template: Any, it: Any) -> Any:
    if isinstance(template, Tensor):
        return next(it)
    return type(template)(*(unflat(s, it) for s in template))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", list(REFS))
def test_gradcheck_two_steps(name: str, bias: bool) -> None:
    """gradcheck of two steps w.r.t. the input, the state and every parameter; and
    every one of them reaches the output (a gradient that is identically zero would
    pass gradcheck)."""
    torch.manual_seed(5)
    cell = randomise(REFS[name][0](bias))
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    state = random_state(cell, 2)
    leaves = [t.detach().clone().requires_grad_() for t in flat(state)]
    x = torch.randn(2, 2, I, dtype=D, requires_grad=True)

    def f(x: Tensor, *args: Tensor) -> tuple[Tensor, ...]:
        p = dict(zip(names, args[: len(names)]))
        s = unflat(state, iter(args[len(names) :]))
        y0, s = functional_call(cell, p, (x[0], s))
        y1, s = functional_call(cell, p, (x[1], s))
        return (y0, y1, *flat(s))

    inputs = (x, *params, *leaves)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)
    grads = torch.autograd.grad(sum(o.sum() for o in f(*inputs)), inputs)
    for label, g in zip(["x", *names, "state"], grads):
        assert g.abs().sum() > 0, label


# -- the split step --------------------------------------------------------------------


CELL_KINDS = [
    lambda i, h, bias: rk.MGUCell(i, h, bias=bias, dtype=D),
    lambda i, h, bias: rk.CoupledLSTMCell(i, h, bias=bias, dtype=D),
    lambda i, h, bias: rk.IndRNNCell(i, h, bias=bias, dtype=D),
    lambda i, h, bias: rk.IndRNNCell(i, h, bias=bias, nonlinearity="tanh", dtype=D),
    lambda i, h, bias: rk.LayerNormGRUCell(i, h, bias=bias, dtype=D),
    lambda i, h, bias: rk.LayerNormLSTMCell(i, h, bias=bias, dtype=D),
]


@given(
    kind=st.integers(0, len(CELL_KINDS) - 1),
    batch=st.integers(1, 5),
    input_size=st.integers(1, 6),
    hidden_size=st.integers(1, 6),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_for_every_shape_the_split_step_is_the_call_row_by_row(
    kind: int, batch: int, input_size: int, hidden_size: int, bias: bool, seed: int
) -> None:
    """``step_projected(input_projection(x), s) == cell(x, s)`` (to the bit: it is the
    call), each batch row on its own equal to the row run alone, unbatched equal to
    batched: what the executor relies on."""
    torch.manual_seed(seed)
    cell = randomise(CELL_KINDS[kind](input_size, hidden_size, bias))
    assert rk.cells.splits_step(cell) and rk.cells.takes_linear(cell)
    x = torch.randn(batch, input_size, dtype=D)
    s = random_state(cell, batch)
    y, new = cell(x, s)
    y_split, new_split = cell.step_projected(cell.input_projection(x), s)
    assert torch.equal(y, y_split)
    assert all(torch.equal(a, b) for a, b in zip(flat(new), flat(new_split)))
    for b in range(batch):
        y_b, new_b = cell(x[b], rk.cells.protocol.map_state(lambda t: t[b], s))  # noqa: B023
        torch.testing.assert_close(y_b, y[b], rtol=0, atol=1e-13)
        for a, w in zip(flat(new_b), flat(new)):
            torch.testing.assert_close(a, w[b], rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    "make",
    [rk.MGUCell, rk.CoupledLSTMCell, rk.IndRNNCell, rk.LayerNormGRUCell, rk.LayerNormLSTMCell],
)
def test_explain_shows_the_split_step_under_every_kind_of_plan(make: type) -> None:
    x = torch.randn(6, 2, 3)
    for policy, plan in (
        ("independent", "layer_by_layer"),
        ("residual", "layer_by_layer"),
        ("handoff", "layer_by_layer"),
        ("shared", "step_loop"),
        ("cross_layer", "step_loop"),
    ):
        stack = rk.Stack([make(3, 4), make(4, 4)], policy)
        e = stack.explain(x)
        assert (e.plan, e.layers) == (plan, ("split_step", "split_step")), policy
        assert stack.explain(x[0], step=True).layers == ("split_step", "split_step")
    assert rk.Stack([make(3, 4)]).explain(x).layers == ("split_step",)


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [rk.MGUCell, rk.CoupledLSTMCell, rk.IndRNNCell, rk.LayerNormGRUCell, rk.LayerNormLSTMCell],
)
def test_constructor_errors_name_the_argument(make: type) -> None:
    with pytest.raises(rk.ConfigError, match=r"^hidden_size: expected an int >= 1, got 0$"):
        make(3, 0)
    with pytest.raises(rk.InputTypeError, match=r"^input_size: expected an int >= 1"):
        make(3.0, 4)
    with pytest.raises(rk.InputTypeError, match=r"^bias: expected a bool"):
        make(3, 4, bias=1)
    with pytest.raises(rk.ConfigError, match=r"^dtype: expected a floating-point"):
        make(3, 4, dtype=torch.int64)
    cell = make(3, 4)
    with pytest.raises(rk.ShapeError, match=r"^x: expected shape \(B, 3\) or \(3,\) with last"):
        cell(torch.randn(2, 5))
    with pytest.raises((rk.StateError, rk.InputTypeError), match=r"^state"):
        cell(torch.randn(2, 3), torch.randn(3, 4))


def test_indrnn_nonlinearity_is_checked() -> None:
    with pytest.raises(rk.ConfigError, match=r"^nonlinearity: expected one of 'relu', 'tanh'"):
        rk.IndRNNCell(3, 4, nonlinearity="sigmoid")


@pytest.mark.parametrize(
    "make",
    [rk.MGUCell, rk.CoupledLSTMCell, rk.IndRNNCell, rk.LayerNormGRUCell, rk.LayerNormLSTMCell],
)
def test_dtype_and_device_arguments_and_unbatched_input(make: type) -> None:
    cell = make(3, 4, device="cpu", dtype=D)
    assert {p.dtype for p in cell.parameters()} == {D}
    x = torch.randn(3, dtype=D)
    y, s = cell(x)
    y_b, s_b = cell(x[None])
    assert y.shape == (4,) and torch.equal(y, y_b[0])
    assert all(torch.equal(a, b[0]) for a, b in zip(flat(s), flat(s_b)))
    y2, _ = cell(x, s)  # an unbatched state back in
    assert y2.shape == (4,)


def test_the_mgu_recurrent_rows_are_deferred_as_one_view_per_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The MGU's two recurrent products use row blocks of ``weight_hh``: in a whole run
    each block is one view (the deferred linear's ``rows``), so each has one slot whose
    pairs are recorded at every step and gathered once: two slots per layer, ``T``
    records each, and the gradient equals the reference's."""
    from recurrentkit.executors import deferred

    slots: dict[int, int] = {}
    real = deferred.Slot.record

    def spy(self: deferred.Slot, dy: Tensor, x: Tensor) -> None:
        slots[id(self)] = slots.get(id(self), 0) + 1
        real(self, dy, x)

    monkeypatch.setattr(deferred.Slot, "record", spy)
    torch.manual_seed(6)
    fast = rk.Stack([rk.MGUCell(3, 4)], executor="handbuilt").double()
    ref = rk.Stack([rk.MGUCell(3, 4)], executor="reference").double()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(7, 2, 3, dtype=D)
    g_fast = torch.autograd.grad(fast(x)[0].sum(), fast.cells[0].weight_hh)[0]
    assert sorted(slots.values()) == [7, 7]
    slots.clear()
    g_ref = torch.autograd.grad(ref(x)[0].sum(), ref.cells[0].weight_hh)[0]
    assert slots == {}  # the reference never defers
    torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-12)


def test_the_mgu_without_a_run_linear_slices_its_rows() -> None:
    """With ``F.linear`` (the reference, torch.compile, torch.func) the row blocks are
    plain slices: the same values."""
    torch.manual_seed(7)
    cell = rk.MGUCell(3, 4, dtype=D)
    x, h = torch.randn(2, 3, dtype=D), torch.randn(2, 4, dtype=D)
    gi = cell.input_projection(x)

    class KeepsViews:
        def __init__(self) -> None:
            self.asked: list[tuple[int, int]] = []

        def rows(self, t: Tensor, start: int, stop: int) -> Tensor:
            self.asked.append((start, stop))
            return t[start:stop]

        def __call__(self, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
            return F.linear(x, w, b)

    keeps = KeepsViews()
    y_views, _ = cell.step_projected(gi, h, linear=keeps)
    assert keeps.asked == [(0, 4), (4, 8)]
    assert torch.equal(y_views, cell.step_projected(gi, h)[0])


def test_the_layer_norm_cells_compute_the_same_in_training_and_eval_mode() -> None:
    """Layer normalisation has no running statistics: train() and eval() agree."""
    torch.manual_seed(8)
    for cell in (rk.LayerNormGRUCell(I, H, dtype=D), rk.LayerNormLSTMCell(I, H, dtype=D)):
        x, s = torch.randn(B, I, dtype=D), random_state(randomise(cell))
        y_train, _ = cell.train()(x, s)
        y_eval, _ = cell.eval()(x, s)
        assert torch.equal(y_train, y_eval)
        assert not any(True for _ in cell.buffers())
