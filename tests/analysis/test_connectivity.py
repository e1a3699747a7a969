"""connectivity(): known bands, finite differences, any policy and cell, model shapes, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import recurrentkit as rk
from recurrentkit.analysis import connectivity

CAUSAL = ["independent", "shared", "residual", "cross_layer"]
POLICIES = [*CAUSAL, "handoff"]


def tokens(B: int, T: int, V: int = 6, seed: int = 1) -> Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def lower(conn: Tensor) -> Tensor:
    """The entries on and below the diagonal, ``s <= t``."""
    T = conn.shape[-1]
    return conn[..., torch.ones(T, T, dtype=torch.bool).tril()]


# -- answers known by construction --------------------------------------------------------


@pytest.mark.parametrize("delay", [1, 2, 3])
def test_delay_cell_gives_exactly_the_band(delay_lm, delay: int) -> None:
    model = delay_lm([delay])
    x = tokens(2, 7)
    targets = tokens(2, 7, seed=2)
    conn = connectivity(model, x, targets=targets)  # (B, T, T)
    t = torch.arange(7)
    band = (t[:, None] - t[None, :]) == delay  # (T, T)
    assert bool((conn[:, ~band] == 0).all())
    # on the band: y_t = e_{t-d}, so d z_{t,k} / d e_s = W_head[k] and the one-hot
    # gradient is E @ W_head[k]
    E, W = model.embed.weight.detach(), model.head.weight.detach()
    expected = torch.linalg.vector_norm(W[targets] @ E.T, dim=-1)  # (B, T)
    rows = torch.arange(delay, 7)
    torch.testing.assert_close(conn[:, rows, rows - delay], expected[:, rows], rtol=1e-12, atol=0)


def test_stacked_delays_add_up(delay_lm) -> None:
    conn = connectivity(delay_lm([1, 2]), tokens(1, 8)[0])  # (T, T)
    t = torch.arange(8)
    band = (t[:, None] - t[None, :]) == 3
    assert bool((conn[~band] == 0).all())
    assert bool((conn[3:][band[3:]] > 0).all())


@pytest.mark.parametrize("routing", POLICIES)
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn", "nested_lstm"])
def test_upper_triangle_zero_iff_causal(lm, routing: str, cell: str) -> None:
    conn = connectivity(lm(routing, cell=cell), tokens(2, 5))  # (B, T, T)
    assert conn.shape == (2, 5, 5)
    assert bool((conn.diagonal(dim1=1, dim2=2) > 0).all())
    upper = conn.triu(1)
    if routing == "handoff":  # teacher forcing: layer 2 starts from layer 1's final state
        assert float(upper.max()) > 1e-6
    else:
        assert bool((upper == 0).all())


# -- agreement with a brute-force estimate ------------------------------------------------


def finite_difference(model: nn.Module, x: Tensor, targets: Tensor, directions: Tensor) -> Tensor:
    """d z[b, t, targets] / d(embedding output at b, s) along each direction, centrally.

    Returns ``(B, T, T, n_directions)``.
    """
    B, T = x.shape
    eps = 1e-6
    delta: dict[str, Tensor | None] = {"value": None}

    def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        return out if delta["value"] is None else out + delta["value"]

    handle = model.embed.register_forward_hook(hook)
    out = torch.zeros(B, T, T, directions.shape[0], dtype=torch.float64)
    try:
        with torch.no_grad():
            for s in range(T):
                for i, u in enumerate(directions):
                    z = []
                    for sign in (1.0, -1.0):
                        d = torch.zeros(B, T, directions.shape[1], dtype=torch.float64)
                        d[:, s] = sign * eps * u
                        delta["value"] = d
                        logits = model(x)  # (B, T, V)
                        z.append(logits.gather(-1, targets[..., None])[..., 0])  # (B, T)
                    out[:, :, s, i] = (z[0] - z[1]) / (2 * eps)
    finally:
        handle.remove()
    return out


@pytest.mark.parametrize("routing", ["independent", "handoff"])
def test_agrees_with_finite_differences(lm, routing: str) -> None:
    model = lm(routing, V=5, E=3, H=4)
    x, targets = tokens(2, 4, V=5), tokens(2, 4, V=5, seed=3)
    E = model.embed.weight.detach()  # (V, D)
    # one-hot input o_s -> o_s + eps * u_v moves the embedding output by eps * E[v]
    one_hot = finite_difference(model, x, targets, E)  # (B, T, T, V)
    fd_norm = torch.linalg.vector_norm(one_hot, dim=-1)
    conn = connectivity(model, x, targets=targets)
    torch.testing.assert_close(conn, fd_norm, rtol=1e-6, atol=1e-9)
    sq = connectivity(model, x, targets=targets, reduce="sq_sum")
    torch.testing.assert_close(sq, fd_norm.square(), rtol=1e-6, atol=1e-9)
    emb = finite_difference(model, x, targets, torch.eye(3, dtype=torch.float64))
    conn_e = connectivity(model, x, targets=targets, wrt="embedding")
    torch.testing.assert_close(conn_e, torch.linalg.vector_norm(emb, dim=-1), rtol=1e-6, atol=1e-9)


def test_sq_sum_is_the_square_of_the_norm(lm) -> None:
    model, x = lm("shared"), tokens(3, 5)
    norm = connectivity(model, x)
    torch.testing.assert_close(connectivity(model, x, reduce="sq_sum"), norm.square())


def test_one_hot_equals_embedding_for_an_orthonormal_embedding(lm) -> None:
    model = lm("independent", V=4, E=4)
    with torch.no_grad():
        model.embed.weight.copy_(torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0])
    x = tokens(2, 5, V=4)
    torch.testing.assert_close(connectivity(model, x), connectivity(model, x, wrt="embedding"))


# -- the batched backward pass and its fallback ----------------------------------------------


@pytest.mark.parametrize("routing", POLICIES)
@pytest.mark.parametrize("cell", ["gru", "lstm", "nested_lstm"])
def test_vectorized_equals_sequential_backward(lm, routing: str, cell: str) -> None:
    model, x = lm(routing, cell=cell), tokens(3, 5)
    fast = connectivity(model, x)
    slow = connectivity(model, x, vectorize=False)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-15)


class ItemInBackward(torch.autograd.Function):
    """tanh whose backward calls .item(): a batched (vmap) backward pass cannot run it."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        scale = 1.0 + 0.0 * float(grad.sum().item())
        return grad * (1 - y * y) * scale


class UnbatchableLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(6, 4)
        self.rnn = rk.Stack([rk.GRUCell(4, 5)], batch_first=True)
        self.head = nn.Linear(5, 6)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(ItemInBackward.apply(self.rnn(self.embed(idx))[0]))


def test_falls_back_to_sequential_backward_passes() -> None:
    model, x = UnbatchableLM().double(), tokens(2, 4)
    with pytest.raises(RuntimeError, match="item"):  # the batched pass really fails here
        out = model(x)
        torch.autograd.grad(
            out[..., 0],
            model.rnn.cells[0].weight_ih,
            grad_outputs=torch.ones(2, *out.shape[:2], dtype=out.dtype),
            is_grads_batched=True,
        )
    conn = connectivity(model, x)
    torch.testing.assert_close(conn, connectivity(model, x, vectorize=False))
    assert bool((conn.triu(1) == 0).all()) and bool((lower(conn) > 0).all())


# -- targets, batching, model shapes --------------------------------------------------------


def test_default_targets_are_the_top_class(lm) -> None:
    model, x = lm("independent"), tokens(2, 5)
    top = model(x).argmax(-1)
    torch.testing.assert_close(connectivity(model, x), connectivity(model, x, targets=top))
    other = (top + 1) % 6
    assert not torch.allclose(connectivity(model, x), connectivity(model, x, targets=other))


def test_ignored_targets_give_zero_rows(lm) -> None:
    model, x = lm("independent"), tokens(2, 5)
    targets = tokens(2, 5, seed=4)
    targets[0, 3:] = -100
    conn = connectivity(model, x, targets=targets)
    assert bool((conn[0, 3:] == 0).all()) and bool((conn[0, :3].sum(-1) > 0).all())
    full = connectivity(model, x, targets=targets.clamp_min(0))
    torch.testing.assert_close(conn[0, :3], full[0, :3])
    torch.testing.assert_close(conn[1], full[1])
    other = targets.clamp_min(0)
    other[1, 0] = -7
    with pytest.raises(rk.ConfigError, match="or -100 to skip"):
        connectivity(model, x, targets=other)
    conn7 = connectivity(model, x, targets=other, ignore_index=-7)
    assert bool((conn7[1, 0] == 0).all()) and bool((conn7[1, 1:].sum(-1) > 0).all())


@given(B=st.integers(1, 3), T=st.integers(1, 5), routing=st.sampled_from(POLICIES))
def test_batched_equals_unbatched_and_chunked(lm, B: int, T: int, routing: str) -> None:
    model, x = lm(routing, layers=2), tokens(B, T, seed=B * 10 + T)
    conn = connectivity(model, x)
    assert conn.shape == (B, T, T)
    for b in range(B):
        torch.testing.assert_close(connectivity(model, x[b]), conn[b], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(connectivity(model, x, batch_size=1), conn, rtol=1e-12, atol=1e-15)
    if routing != "handoff":
        assert bool((conn.triu(1) == 0).all())


def test_tuple_returning_model(lm) -> None:
    x = tokens(2, 5)
    plain = connectivity(lm("independent"), x)
    torch.testing.assert_close(connectivity(lm("independent", tuple_out=True), x), plain)


def test_plain_user_composition_in_float32(token_lm_class) -> None:
    torch.manual_seed(0)
    cells = [rk.GRUCell(8, 16), rk.GRUCell(16, 16)]
    model = token_lm_class(
        nn.Embedding(28, 8), rk.Stack(cells, batch_first=True), nn.Linear(16, 28)
    )
    conn = connectivity(model.eval(), torch.tensor([[0, 2, 3, 4, 1], [0, 5, 6, 1, 0]]))
    assert conn.dtype == torch.float32 and conn.shape == (2, 5, 5)
    assert bool((conn.triu(1) == 0).all()) and bool((lower(conn) > 0).all())


class TimeMajorLM(nn.Module):
    """Embeds the ids time-major, (T, B), as an nn.GRU-style model would."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(6, 4)
        self.rnn = rk.Stack([rk.GRUCell(4, 5)])
        self.head = nn.Linear(5, 6)

    def forward(self, idx: Tensor) -> Tensor:
        h, _ = self.rnn(self.embed(idx.T))  # (T, B, H)
        return self.head(h).transpose(0, 1)  # (B, T, V)


def test_time_major_embedding(lm) -> None:
    model = TimeMajorLM().double()
    x = tokens(3, 4)
    conn = connectivity(model, x)
    for b in range(3):
        torch.testing.assert_close(connectivity(model, x[b : b + 1])[0], conn[b])
    assert bool((conn.triu(1) == 0).all()) and bool((conn.diagonal(dim1=1, dim2=2) > 0).all())


def test_no_grad_context_and_parameters_untouched(lm) -> None:
    model, x = lm("independent"), tokens(2, 4)
    expected = connectivity(model, x)
    with torch.no_grad():
        conn = connectivity(model, x)
    torch.testing.assert_close(conn, expected)
    assert all(p.grad is None for p in model.parameters())


def test_frozen_embedding_still_works(lm) -> None:
    model, x = lm("independent"), tokens(2, 4)
    expected = connectivity(model, x)
    model.embed.weight.requires_grad_(False)
    torch.testing.assert_close(connectivity(model, x), expected)


# -- finding the embedding -------------------------------------------------------------------


class TwoEmbeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tok = nn.Embedding(6, 4)
        self.pos = nn.Embedding(8, 4)
        self.rnn = rk.Stack([rk.GRUCell(4, 4)], batch_first=True)
        self.head = nn.Linear(4, 6)

    def forward(self, idx: Tensor) -> Tensor:
        pos = torch.arange(idx.shape[1])
        return self.head(self.rnn(self.tok(idx) + self.pos.weight[pos])[0])


class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, idx: Tensor) -> Tensor:
        return self.inner(idx)


def test_embedding_found_named_or_given() -> None:
    model = Wrapper(TwoEmbeddings()).double()
    x = tokens(2, 5)
    by_path = connectivity(model, x, embedding="inner.tok")
    torch.testing.assert_close(connectivity(model, x, embedding=model.inner.tok), by_path)
    assert bool((by_path.triu(1) == 0).all()) and bool((lower(by_path) > 0).all())


def test_embedding_errors(lm) -> None:
    x = tokens(1, 4)
    with pytest.raises(rk.ConfigError, match=r"2 in TwoEmbeddings: 'tok', 'pos'"):
        connectivity(TwoEmbeddings(), x)
    no_embedding = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(rk.ConfigError, match="none in Sequential"):
        connectivity(no_embedding, x)
    with pytest.raises(rk.ConfigError, match="'nope'"):
        connectivity(TwoEmbeddings(), x, embedding="nope")
    with pytest.raises(rk.InputTypeError, match="'head'"):
        connectivity(TwoEmbeddings(), x, embedding="head")
    with pytest.raises(rk.InputTypeError, match="nn.Embedding"):
        connectivity(TwoEmbeddings(), x, embedding=nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(rk.ConfigError, match="never called"):
        connectivity(TwoEmbeddings(), x, embedding="pos")  # used through .weight only
    with pytest.raises(rk.InputTypeError, match="model"):
        connectivity(lambda idx: idx, x)  # type: ignore[arg-type]


class EmbedsTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.head = nn.Linear(4, 6)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.embed(idx) + self.embed(idx.flip(1)))


class EmbedsOther(EmbedsTwice):
    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.embed((idx + 1) % 6))


def test_embedding_must_see_the_tokens_once() -> None:
    with pytest.raises(rk.ConfigError, match="2 calls"):
        connectivity(EmbedsTwice(), tokens(1, 3))
    with pytest.raises(rk.ConfigError, match="differ from the tokens"):
        connectivity(EmbedsOther(), tokens(1, 3))


# -- bad input ---------------------------------------------------------------------------------


class WrongShape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 4)

    def forward(self, idx: Tensor) -> Tensor:
        return self.embed(idx).flatten(0, 1)  # (B*T, V): not (B, T, V)


def test_bad_input(lm) -> None:
    model, x = lm("independent"), tokens(2, 4)
    with pytest.raises(rk.InputTypeError, match="tokens"):
        connectivity(model, x.double())
    with pytest.raises(rk.InputTypeError, match="tokens"):
        connectivity(model, x.tolist())  # type: ignore[arg-type]
    with pytest.raises(rk.ShapeError, match="tokens"):
        connectivity(model, x[None])
    with pytest.raises(rk.ShapeError, match="tokens"):
        connectivity(model, x[:, :0])
    with pytest.raises(rk.ShapeError, match="targets"):
        connectivity(model, x, targets=x[:, :3])
    with pytest.raises(rk.ConfigError, match=r"tokens: expected ids in 0\.\.5"):
        connectivity(model, x + 6)
    with pytest.raises(rk.ConfigError, match=r"targets: expected ids in 0\.\.5"):
        connectivity(model, x, targets=x + 6)
    with pytest.raises(rk.ConfigError, match="reduce"):
        connectivity(model, x, reduce="l1")
    with pytest.raises(rk.ConfigError, match="wrt"):
        connectivity(model, x, wrt="input")
    with pytest.raises(rk.ConfigError, match="batch_size"):
        connectivity(model, x, batch_size=0)
    with pytest.raises(rk.InputTypeError, match="vectorize"):
        connectivity(model, x, vectorize=1)  # type: ignore[arg-type]
    with pytest.raises(rk.ShapeError, match=r"model\(tokens\)"):
        connectivity(WrongShape(), x)
