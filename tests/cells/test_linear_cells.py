"""The linear-recurrence cells: MinGRUCell, MinLSTMCell, LRUCell.

Each cell's step equals its docstring's equations written out (float64, sigmoids as
``1 / (1 + exp(-a))``, complex arithmetic for the LRU); a step loop equals the
whole-sequence computation (the projection over every step, one
:func:`recurrentkit.scan.linear`, the outputs from every state) to 1e-10 in outputs,
states and gradients; gradcheck; constructor errors; the LRU's initialisation and its
refusal by the policies that pass states between layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import recurrentkit as rk
from recurrentkit import scan

D = torch.float64
T, B, I, H = 6, 3, 4, 5
TOL = 1e-10

CELLS: dict[str, Callable[[int, int], Any]] = {
    "min_gru": lambda i, h: rk.MinGRUCell(i, h),
    "min_gru_nobias": lambda i, h: rk.MinGRUCell(i, h, bias=False),
    "min_lstm": lambda i, h: rk.MinLSTMCell(i, h),
    "min_lstm_nobias": lambda i, h: rk.MinLSTMCell(i, h, bias=False),
    "lru": lambda i, h: rk.LRUCell(i, h),  # D dense (I != H), N = H
    "lru_n7": lambda i, h: rk.LRUCell(i, h, state_size=7, r_min=0.4, r_max=0.95),
    "lru_diag": lambda i, h: rk.LRUCell(h, h, state_size=3),  # D diagonal
}


def make(name: str) -> Any:
    torch.manual_seed(7)
    cell = CELLS[name](I, H)
    return cell.to(D)


def sig(a: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-a))


def g(v: Tensor) -> Tensor:
    return torch.where(v >= 0, v + 0.5, sig(v))


def lin(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return x @ w.T if b is None else x @ w.T + b


def ref_step(cell: Any, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """The docstring's equations, written out."""
    if isinstance(cell, rk.MinGRUCell):
        pre = lin(x, cell.weight_ih, cell.bias_ih)
        z, h_tilde = sig(pre[:, :H]), g(pre[:, H:])
        new = (1 - z) * h + z * h_tilde
        return new, new
    if isinstance(cell, rk.MinLSTMCell):
        pre = lin(x, cell.weight_ih, cell.bias_ih)
        f, i, h_tilde = sig(pre[:, :H]), sig(pre[:, H : 2 * H]), g(pre[:, 2 * H :])
        new = f / (f + i) * h + i / (f + i) * h_tilde
        return new, new
    lam = torch.exp(-torch.exp(cell.nu_log) + 1j * torch.exp(cell.theta_log))
    gamma = torch.sqrt(1 - lam.abs() ** 2)
    B_mat = cell.weight_ih[0::2] + 1j * cell.weight_ih[1::2]  # (N, I), rows interleaved
    C_mat = cell.weight_out[:, 0::2] - 1j * cell.weight_out[:, 1::2]  # (H, N)
    new = lam * h + gamma * (x.to(B_mat.dtype) @ B_mat.T)
    skip = cell.weight_skip
    dx = x * skip if skip.dim() == 1 else x @ skip.T
    return (new @ C_mat.T).real + dx, new


def inputs(cell: Any, seed: int = 0) -> tuple[Tensor, Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(T, B, cell.input_size, dtype=D)
    h0 = torch.randn_like(cell.initial_state(B))
    return x, h0


@pytest.mark.parametrize("name", list(CELLS))
def test_a_step_equals_the_equations_written_out(name: str) -> None:
    cell = make(name)
    x, h = inputs(cell)
    for t in range(T):
        y, new = cell(x[t], h)
        y_ref, h_ref = ref_step(cell, x[t], h)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=TOL)
        torch.testing.assert_close(new, h_ref, rtol=0, atol=TOL)
        h = new


def whole_sequence(cell: Any, x: Tensor, h0: Tensor, method: str) -> tuple[Tensor, Tensor]:
    gi = cell.input_projection(x.reshape(T * B, -1)).reshape(T, B, -1)  # (T, B, G)
    a, b = cell.linear_coefficients(gi)
    h = scan.linear(a, b, h0, method=method)
    return cell.linear_output(h, gi), h


def step_loop(cell: Any, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    ys, hs, h = [], [], h0
    for t in range(T):
        y, h = cell(x[t], h)
        ys.append(y)
        hs.append(h)
    return torch.stack(ys), torch.stack(hs)


def real_loss(outs: list[Tensor], cots: list[Tensor]) -> Tensor:
    return sum(((o * c.conj()).real.sum() for o, c in zip(outs, cots)), torch.zeros((), dtype=D))


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("method", ["sequential", "parallel", "log"])
def test_steps_equal_the_whole_sequence_outputs_states_and_gradients(
    name: str, method: str
) -> None:
    cell = make(name)
    x, h0 = inputs(cell, seed=1)
    if method == "log" and isinstance(cell, rk.LRUCell):
        with pytest.raises(rk.ConfigError, match="method 'log'"):
            whole_sequence(cell, x, h0, method)
        return
    x.requires_grad_()
    h0.requires_grad_()
    wrt = [x, h0, *cell.parameters()]
    step = step_loop(cell, x, h0)
    whole = whole_sequence(cell, x, h0, method)
    cots = [torch.randn_like(t) for t in step]
    grads = []
    for outs in (step, whole):
        grads.append(torch.autograd.grad(real_loss(list(outs), cots), wrt))
    for a, b in zip(step, whole):
        torch.testing.assert_close(b, a, rtol=0, atol=TOL)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=0, atol=TOL)


@pytest.mark.parametrize("name", list(CELLS))
def test_gradcheck_two_steps(name: str) -> None:
    cell = make(name)
    x, h0 = inputs(cell, seed=2)
    params = dict(cell.named_parameters())
    names = list(params)

    def two_steps(x: Tensor, h0: Tensor, *ps: Tensor) -> tuple[Tensor, ...]:
        swapped = dict(zip(names, ps))
        y1, h1 = torch.func.functional_call(cell, swapped, (x[0], h0))
        y2, h2 = torch.func.functional_call(cell, swapped, (x[1], h1))
        return y1, y2, h2

    leaves = (x[:2].clone().requires_grad_(), h0.clone().requires_grad_())
    ps = tuple(p.detach().clone().requires_grad_() for p in params.values())
    assert torch.autograd.gradcheck(two_steps, leaves + ps)


def test_parameter_names_and_shapes() -> None:
    shapes = lambda c: {n: tuple(p.shape) for n, p in c.named_parameters()}  # noqa: E731
    assert shapes(rk.MinGRUCell(I, H)) == {"weight_ih": (2 * H, I), "bias_ih": (2 * H,)}
    assert shapes(rk.MinLSTMCell(I, H, bias=False)) == {"weight_ih": (3 * H, I)}
    assert shapes(rk.LRUCell(I, H, state_size=7)) == {
        "nu_log": (7,),
        "theta_log": (7,),
        "weight_ih": (14, I),
        "weight_out": (H, 14),
        "weight_skip": (H, I),
    }
    assert shapes(rk.LRUCell(H, H))["weight_skip"] == (H,)


def test_the_lru_state_is_complex_and_its_output_real() -> None:
    cell = rk.LRUCell(I, H, state_size=7, dtype=D)
    s = cell.initial_state(2)
    assert s.dtype == torch.complex128 and s.shape == (2, 7)
    assert cell.initial_state(2, dtype=torch.float32).dtype == torch.complex64
    y, h = cell(torch.randn(2, I, dtype=D))
    assert y.dtype == D and y.shape == (2, H) and h.dtype == torch.complex128
    y1, h1 = cell(torch.randn(I, dtype=D))  # unbatched
    assert y1.shape == (H,) and h1.shape == (7,)
    with pytest.raises(rk.InputTypeError, match="state: expected a complex tensor"):
        cell(torch.randn(2, I, dtype=D), torch.zeros(2, 7, dtype=D))
    with pytest.raises(rk.InputTypeError, match="state: expected a floating-point tensor"):
        rk.MinGRUCell(I, H)(torch.randn(2, I), torch.zeros(2, H, dtype=torch.complex64))


@pytest.mark.parametrize(
    ("r_min", "r_max", "max_phase"), [(0.0, 1.0, 2 * math.pi), (0.5, 0.9, 0.3)]
)
def test_the_lru_starts_on_the_papers_ring(r_min: float, r_max: float, max_phase: float) -> None:
    torch.manual_seed(0)
    cell = rk.LRUCell(I, H, state_size=2000, r_min=r_min, r_max=r_max, max_phase=max_phase)
    lam, gamma = cell.decay()
    radius, phase = lam.abs(), torch.exp(cell.theta_log)
    assert bool((radius >= r_min - 1e-6).all()) and bool((radius <= r_max + 1e-6).all())
    assert bool((radius < 1).all())  # stable whatever nu_log becomes
    assert bool((phase >= 0).all()) and bool((phase <= max_phase + 1e-6).all())
    # uniform by area: |λ|² is uniform on [r_min², r_max²]
    mid = (r_min**2 + r_max**2) / 2
    assert abs(float((radius**2 < mid).double().mean()) - 0.5) < 0.05
    torch.testing.assert_close(gamma, torch.sqrt(1 - radius**2))


@pytest.mark.parametrize("make_cell", [rk.MinGRUCell, rk.MinLSTMCell])
def test_min_cell_constructor_errors(make_cell: type) -> None:
    with pytest.raises(rk.ConfigError, match="hidden_size"):
        make_cell(3, 0)
    with pytest.raises(rk.InputTypeError, match="input_size"):
        make_cell(3.0, 4)
    with pytest.raises(rk.InputTypeError, match="bias"):
        make_cell(3, 4, bias="yes")


def test_lru_constructor_errors() -> None:
    with pytest.raises(rk.ConfigError, match="state_size"):
        rk.LRUCell(3, 4, state_size=0)
    with pytest.raises(rk.ConfigError, match="r_min, r_max"):
        rk.LRUCell(3, 4, r_min=0.9, r_max=0.5)
    with pytest.raises(rk.ConfigError, match="r_min, r_max"):
        rk.LRUCell(3, 4, r_max=1.5)
    with pytest.raises(rk.ConfigError, match="max_phase"):
        rk.LRUCell(3, 4, max_phase=0.0)
    with pytest.raises(rk.InputTypeError, match="r_min"):
        rk.LRUCell(3, 4, r_min="0")


@pytest.mark.parametrize("policy", ["shared", "cross_layer", "handoff"])
def test_policies_that_pass_states_between_layers_refuse_the_lru(policy: str) -> None:
    cells = [rk.LRUCell(3, 4), rk.LRUCell(4, 4)]
    with pytest.raises(
        rk.ConfigError, match=rf"cells\[0\]: expected a cell with a real state: {policy}"
    ):
        rk.Stack(cells, policy)


@pytest.mark.parametrize("policy", ["independent", "residual", "shared", "handoff", "cross_layer"])
def test_one_lru_layer_and_min_cells_run_under_every_policy(policy: str) -> None:
    x = torch.randn(5, 2, 3, dtype=D)
    rk.Stack([rk.LRUCell(3, 4)], policy).to(D)(x)
    stack = rk.Stack([rk.MinGRUCell(3, 4), rk.MinLSTMCell(4, 4)], policy).to(D)
    y, _ = stack(x)
    assert y.shape == (5, 2, 4)


def test_the_linear_cells_declare_their_recurrence() -> None:
    for name in CELLS:
        assert rk.cells.scans_linearly(make(name))
    assert not rk.cells.scans_linearly(rk.GRUCell(3, 4))

    class Doubled(rk.MinGRUCell):  # new equations: the declaration is not inherited
        def step_projected(self, gi: Tensor, state: Tensor, linear: Any = None) -> Any:
            y, h = super().step_projected(gi, state)
            return 2 * y, 2 * h

    assert not rk.cells.scans_linearly(Doubled(3, 4))
    assert isinstance(rk.MinGRUCell(3, 4), nn.Module)


def test_the_lru_under_learned_initial_states_and_wrappers() -> None:
    torch.manual_seed(3)
    stack = rk.Stack([rk.LRUCell(3, 4)], "independent", initial_state="learned").to(D)
    (name,) = dict(stack.initial_states.named_parameters())
    p = stack.initial_states[name]
    assert p.dtype == D and p.shape == (4, 2)  # a complex state, learned as real pairs
    with torch.no_grad():
        p.copy_(torch.randn(4, 2, dtype=D))
    x = torch.randn(5, 2, 3, dtype=D)
    y, _ = stack(x)
    ref = rk.Stack([rk.LRUCell(3, 4)], "independent", executor="reference").to(D)
    ref.cells.load_state_dict(stack.cells.state_dict())
    h0 = torch.view_as_complex(p.detach()).expand(2, 4)
    torch.testing.assert_close(y, ref(x, (h0,))[0], rtol=0, atol=TOL)
    for wrap in (lambda c: rk.Zoneout(c, 0.2), lambda c: rk.RecurrentDropout(c, 0.2)):
        with pytest.raises(rk.ConfigError, match="cell: expected a cell with a real state h"):
            wrap(rk.LRUCell(3, 4))
        rk.Stack([wrap(rk.MinGRUCell(3, 4))], "independent")(x.float())


@pytest.mark.parametrize(("hidden", "view"), [(6, True), (5, False)])
def test_the_lru_coefficients_are_a_view_where_strides_allow(hidden: int, view: bool) -> None:
    """An even ``2N + H`` lets ``b`` be a view of the projection; both layouts compute
    the same states and gradients as the step loop."""
    torch.manual_seed(8)
    cell = rk.LRUCell(I, hidden, state_size=3).to(D)
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    gi = cell.input_projection(x.reshape(T * B, I)).reshape(T, B, -1)
    _, b = cell.linear_coefficients(gi)
    assert (b._base is not None) == view
    h0 = torch.randn(B, 3, dtype=torch.complex128)
    ys, h = [], h0
    for t in range(T):
        y, h = cell(x[t], h)
        ys.append(y)
    y_step = torch.stack(ys)
    y_whole, hs = whole_sequence(cell, x, h0, "sequential")
    torch.testing.assert_close(y_whole, y_step, rtol=0, atol=TOL)
    torch.testing.assert_close(hs[-1], h, rtol=0, atol=TOL)
    wrt = [x, *cell.parameters()]
    cot = torch.randn_like(y_step)
    for g_whole, g_step in zip(
        torch.autograd.grad((y_whole * cot).sum(), wrt),
        torch.autograd.grad((y_step * cot).sum(), wrt),
        strict=True,
    ):
        torch.testing.assert_close(g_whole, g_step, rtol=0, atol=TOL)


def test_the_lru_keeps_its_scaled_weights_only_while_its_parameters_stay() -> None:
    """Without autograd the LRU keeps λ and γ-scaled B between steps; an in-place
    change of a parameter (an optimiser step) or a new set of parameters recomputes."""
    torch.manual_seed(9)
    cell = rk.LRUCell(I, H, state_size=3).to(D)
    x, h = torch.randn(2, I, dtype=D), torch.randn(2, 3, dtype=torch.complex128)

    def fresh() -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            return cell(x, h)

    with torch.no_grad():
        for change in (
            lambda: cell.nu_log.add_(0.3),
            lambda: cell.theta_log.mul_(0.5),
            lambda: cell.weight_ih.add_(1.0),
            lambda: cell.load_state_dict({k: v + 0.1 for k, v in cell.state_dict().items()}),
        ):
            cell(x, h)  # fills the cache
            change()
            for got, want in zip(cell(x, h), fresh(), strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=TOL)
    copy = rk.LRUCell(I, H, state_size=3).to(D)
    with torch.no_grad():
        cell(x, h)
        y_copy, _ = copy(x, h)
    with torch.enable_grad():
        torch.testing.assert_close(y_copy, copy(x, h)[0], rtol=0, atol=TOL)
