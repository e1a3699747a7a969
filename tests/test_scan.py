"""recurrentkit.scan.linear: every method against a Python loop, in float64, with gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import recurrentkit as rk
from recurrentkit import scan

D = torch.float64
C = torch.complex128
TOL = 1e-10
METHODS = ("sequential", "parallel", "log")


def loop(a: Tensor, b: Tensor, h0: Tensor, lengths: Tensor | None = None) -> Tensor:
    """The definition: ``h_t = a_t h_{t-1} + b_t``, frozen past each sequence's end."""
    a = a.expand_as(b)
    h, out = h0, []
    for t in range(b.shape[0]):
        new = a[t] * h + b[t]
        if lengths is not None:
            new = torch.where((t < lengths)[:, None], new, h)
        h = new
        out.append(h)
    return torch.stack(out)


def coefficients(T: int, B: int, N: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``a`` in (0.05, 1.05) (positive, as "log" needs; complex with a phase), ``b`` and
    ``h0`` of both signs."""
    a = torch.rand(T, B, N, dtype=D) + 0.05
    if dtype == C:
        a = torch.polar(a, torch.rand(T, B, N, dtype=D) * 6.0)
    return a, torch.randn(T, B, N, dtype=dtype), torch.randn(B, N, dtype=dtype)


def methods_for(dtype: torch.dtype) -> tuple[str, ...]:
    return METHODS if dtype == D else ("sequential", "parallel")


@pytest.mark.parametrize("dtype", [D, C], ids=["real", "complex"])
@pytest.mark.parametrize("T", [1, 2, 3, 8, 13])
def test_every_method_equals_the_loop(dtype: torch.dtype, T: int) -> None:
    torch.manual_seed(T)
    a, b, h0 = coefficients(T, 3, 4, dtype)
    lengths = torch.tensor([T, 0, max(T - 2, 1)])
    for method in methods_for(dtype):
        for lens in (None, lengths):
            got = scan.linear(a, b, h0, method=method, lengths=lens)
            torch.testing.assert_close(got, loop(a, b, h0, lens), rtol=0, atol=TOL)


PAIRS = [(D, m) for m in METHODS] + [(C, m) for m in methods_for(C)]
"""Every method on real tensors, and the ones that take complex tensors."""


def grads_of(out: Tensor, cot: Tensor, leaves: list[Tensor]) -> tuple[Tensor, ...]:
    return torch.autograd.grad((out * cot.conj()).real.sum(), leaves)


@pytest.mark.parametrize(("dtype", "method"), PAIRS)
def test_gradients_equal_the_loops(dtype: torch.dtype, method: str) -> None:
    torch.manual_seed(0)
    a, b, h0 = coefficients(9, 2, 3, dtype)
    cot = torch.randn(9, 2, 3, dtype=dtype)
    for lens in (None, torch.tensor([9, 4])):
        leaves = [t.clone().requires_grad_() for t in (a, b, h0)]
        got = grads_of(scan.linear(*leaves, method=method, lengths=lens), cot, leaves)
        want = grads_of(loop(*leaves, lens), cot, leaves)
        for g_got, g_want in zip(got, want, strict=True):
            torch.testing.assert_close(g_got, g_want, rtol=0, atol=TOL)


@pytest.mark.parametrize(("dtype", "method"), PAIRS)
def test_gradcheck(dtype: torch.dtype, method: str) -> None:
    torch.manual_seed(1)
    a, b, h0 = coefficients(5, 2, 3, dtype)
    lengths = torch.tensor([5, 2])
    leaves = tuple(t.clone().requires_grad_() for t in (a, b, h0))
    assert torch.autograd.gradcheck(
        lambda a, b, h: scan.linear(a, b, h, method=method, lengths=lengths), leaves
    )
    assert torch.autograd.gradgradcheck(lambda a, b, h: scan.linear(a, b, h, method=method), leaves)


@pytest.mark.parametrize("shape", [(), (4,), (3, 4), (1, 3, 4), (1, 1, 4), (6, 1, 4)])
@pytest.mark.parametrize("dtype", [D, C], ids=["real", "complex"])
def test_a_broadcasts_and_its_gradient_is_summed(
    shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    torch.manual_seed(2)
    lam = torch.rand(shape, dtype=D) * 0.9 + 0.05
    if dtype == C:
        lam = torch.polar(lam, torch.rand(shape, dtype=D) * 6.0)
    lam.requires_grad_()
    _, b, h0 = coefficients(6, 3, 4, dtype)
    cot = torch.randn(6, 3, 4, dtype=dtype)
    for method in methods_for(dtype):
        got = scan.linear(lam, b, h0, method=method)
        want = loop(lam.expand(6, 3, 4), b, h0)
        torch.testing.assert_close(got, want, rtol=0, atol=TOL)
        (g_got,) = grads_of(got, cot, [lam])
        (g_want,) = grads_of(want, cot, [lam])
        torch.testing.assert_close(g_got, g_want, rtol=0, atol=TOL)


def test_the_last_state_is_each_sequences_final_state() -> None:
    torch.manual_seed(3)
    a, b, h0 = coefficients(7, 3, 2, D)
    lengths = torch.tensor([7, 1, 4])
    h = scan.linear(a, b, h0, lengths=lengths)
    for row, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(h[-1, row], loop(a[:n], b[:n], h0)[-1, row], rtol=0, atol=TOL)


def test_sequential_backward_keeps_only_what_it_needs() -> None:
    """The op saves ``a``, ``h0`` and its output; ``b`` is not kept."""
    a, b, h0 = (t.requires_grad_() for t in coefficients(5, 2, 3, D))
    out = scan.linear(a, b, h0, method="sequential")
    saved = {t.data_ptr() for t in out.grad_fn.saved_tensors}
    assert b.data_ptr() not in saved
    assert {a.data_ptr(), h0.data_ptr(), out.data_ptr()} <= saved


def test_auto_is_sequential_on_cpu_and_parallel_elsewhere() -> None:
    assert scan.resolve_method("auto", "cpu") == "sequential"
    assert scan.resolve_method("auto", "cuda") == "parallel"
    assert scan.resolve_method("log", "cpu") == "log"


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 20),
    B=st.integers(1, 3),
    N=st.integers(1, 3),
    method=st.sampled_from(METHODS),
    seed=st.integers(0, 2**16),
)
def test_any_shape(T: int, B: int, N: int, method: str, seed: int) -> None:
    torch.manual_seed(seed)
    a, b, h0 = coefficients(T, B, N, D)
    lengths = torch.randint(0, T + 1, (B,))
    got = scan.linear(a, b, h0, method=method, lengths=lengths)
    torch.testing.assert_close(got, loop(a, b, h0, lengths), rtol=0, atol=TOL)


def test_bad_input_is_refused() -> None:
    a, b, h0 = coefficients(4, 2, 3, D)
    with pytest.raises(rk.InputTypeError, match="b"):
        scan.linear(a, b.tolist(), h0)  # type: ignore[arg-type]
    with pytest.raises(rk.InputTypeError, match="h0"):
        scan.linear(a, b, h0.long())
    with pytest.raises(rk.ShapeError, match=r"b: expected shape \(T, B, N\)"):
        scan.linear(a, b[0], h0)
    with pytest.raises(rk.ShapeError, match="a: expected a shape broadcastable"):
        scan.linear(a[:, :, :2], b, h0)
    with pytest.raises(rk.ShapeError, match="h0"):
        scan.linear(a, b, h0[:1])
    with pytest.raises(rk.DeviceError, match="a: expected dtype"):
        scan.linear(a.float(), b, h0)
    with pytest.raises(rk.ConfigError, match="method"):
        scan.linear(a, b, h0, method="fast")
    with pytest.raises(rk.ShapeError, match="lengths"):
        scan.linear(a, b, h0, lengths=torch.tensor([5, 1]))
    with pytest.raises(rk.ShapeError, match="lengths"):
        scan.linear(a, b, h0, lengths=torch.tensor([1]))
    with pytest.raises(rk.InputTypeError, match="lengths"):
        scan.linear(a, b, h0, lengths=torch.tensor([1.0, 2.0]))


def test_log_needs_positive_real_decays() -> None:
    a, b, h0 = coefficients(4, 2, 3, D)
    with pytest.raises(rk.ConfigError, match="a: expected values > 0 for method 'log'"):
        scan.linear(-a, b, h0, method="log")
    ac, bc, hc = coefficients(4, 2, 3, C)
    with pytest.raises(rk.ConfigError, match="a: expected a real tensor for method 'log'"):
        scan.linear(ac, bc, hc, method="log")


@pytest.mark.parametrize("dtype", [D, C], ids=["real", "complex"])
def test_gradcheck_one_decay_for_every_step(dtype: torch.dtype) -> None:
    torch.manual_seed(4)
    a, b, h0 = coefficients(5, 2, 3, dtype)
    leaves = (a[0, 0].clone().requires_grad_(), b.requires_grad_(), h0.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda a, b, h: scan.linear(a, b, h, method="sequential"), leaves
    )
    assert torch.autograd.gradgradcheck(
        lambda a, b, h: scan.linear(a, b, h, method="sequential"), leaves
    )
