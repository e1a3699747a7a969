"""Bad-input fuzzing of the analysis functions and of the perturbation causality check.

Accepted calls are checked against naive references written here: connectivity by one
backward pass per output position from the embedded inputs, decay and accuracy by
explicit loops.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st
from reliability_harness import FUZZ, LEDGER, meta, same
from torch import Tensor, nn

import recurrentkit as rk
from recurrentkit.analysis import (
    connectivity,
    connectivity_decay,
    connectivity_violation,
    context_accuracy,
    is_causal_by_connectivity,
)

V, D, H = 6, 4, 5


class TokenLM(nn.Module):
    """ids (B, T) → logits (B, T, V); ``from_embedded`` for the naive reference."""

    def __init__(self, routing: str = "independent") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(V, D, dtype=torch.float64)
        cells = [rk.GRUCell(D, H, dtype=torch.float64), rk.GRUCell(H, H, dtype=torch.float64)]
        self.rnn = rk.Stack(cells, routing, batch_first=True)
        self.head = nn.Linear(H, V, dtype=torch.float64)

    def from_embedded(self, e: Tensor) -> Tensor:
        return self.head(self.rnn(e)[0])

    def forward(self, idx: Tensor) -> Tensor:
        return self.from_embedded(self.embed(idx))


MODEL = TokenLM().eval()
LEAKY = TokenLM("handoff").eval()


def naive_connectivity(
    model: TokenLM, ids: Tensor, targets: Tensor | None, reduce: str, wrt: str, ignore: int
) -> Tensor:
    """``conn[b, t, s]`` from one backward pass per (b, t)."""
    ids = ids if ids.dim() == 2 else ids[None]
    B, T = ids.shape
    E = model.embed.weight.detach()
    out = torch.zeros(B, T, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            e = model.embed(ids[b : b + 1]).detach().requires_grad_(True)  # (1, T, D)
            logits = model.from_embedded(e)[0, t]  # (V,)
            if targets is None:
                k = int(logits.argmax())
            else:
                tgt = targets if targets.dim() == 2 else targets[None]
                k = int(tgt[b, t])
                if k == ignore:
                    continue
            (g,) = torch.autograd.grad(logits[k], e)  # (1, T, D)
            g = g[0] @ E.T if wrt == "one_hot" else g[0]
            out[b, t] = g.norm(dim=-1) if reduce == "norm" else g.square().sum(-1)
    return out


# -- connectivity -------------------------------------------------------------------------

CONN_MUTATIONS = (
    "tokens float", "tokens bool", "tokens rank 0", "tokens rank 3", "tokens empty batch",
    "tokens empty time", "tokens too large", "tokens negative", "tokens meta", "tokens list",
    "tokens int32", "tokens uint8", "tokens unbatched", "tokens non-contiguous",
    "targets shape", "targets float", "targets out of range", "targets legal",
    "targets all ignored", "ignore_index float", "reduce", "wrt", "batch_size", "vectorize",
    "model a function", "model without embedding", "model with two embeddings",
    "embedding path missing", "embedding not an Embedding", "model returns (B, V)",
    "model returns a string", "reduce sq_sum", "wrt embedding",
)  # fmt: skip


class _TwoEmbeddings(TokenLM):
    def __init__(self) -> None:
        super().__init__()
        self.extra = nn.Embedding(3, 2)


class _NoEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, V)

    def forward(self, idx: Tensor) -> Tensor:
        return self.lin(idx[..., None].double().float())


class _Flat(TokenLM):
    def forward(self, idx: Tensor) -> Any:
        return super().forward(idx)[:, -1]  # (B, V)


class _Str(TokenLM):
    def forward(self, idx: Tensor) -> Any:
        super().forward(idx)
        return "logits"


@FUZZ
@given(data=st.data())
def fuzz_connectivity(mutation: str, data: st.DataObject) -> None:
    B = data.draw(st.integers(1, 2), label="B")
    T = data.draw(st.integers(1, 4), label="T")
    tokens = torch.tensor(
        data.draw(
            st.lists(
                st.lists(st.integers(0, V - 1), min_size=T, max_size=T), min_size=B, max_size=B
            )
        )
    )  # noqa: E501
    targets = torch.tensor(
        data.draw(
            st.lists(
                st.lists(st.integers(0, V - 1), min_size=T, max_size=T), min_size=B, max_size=B
            )
        )
    )  # noqa: E501
    m = mutation
    kw: dict[str, Any] = {}
    model: Any = MODEL
    tok: Any = tokens
    check = None
    names = ("tokens", "targets", "model", "embedding", "reduce", "wrt", "batch_size",
             "vectorize", "ignore_index", "model(tokens)")  # fmt: skip

    def expect(ids: Tensor, tg: Tensor | None = None, reduce: str = "norm", wrt: str = "one_hot",
               unbatched: bool = False) -> Any:  # fmt: skip
        def check(result: Tensor) -> None:
            want = naive_connectivity(MODEL, ids.long(), tg, reduce, wrt, -100)
            same(result, want[0] if unbatched else want, atol=1e-9, rtol=1e-7)

        return check

    if m == "tokens float":
        tok = tokens.double()
    elif m == "tokens bool":
        tok = tokens > 2
    elif m == "tokens rank 0":
        tok = tokens[0, 0]
    elif m == "tokens rank 3":
        tok = tokens[None]
    elif m == "tokens empty batch":
        tok = tokens[:0]
    elif m == "tokens empty time":
        tok = tokens[:, :0]
    elif m == "tokens too large":
        tok = tokens.clone()
        tok[0, 0] = V
    elif m == "tokens negative":
        tok = tokens.clone()
        tok[0, -1] = -1
    elif m == "tokens meta":
        tok = meta(tokens)
    elif m == "tokens list":
        tok = tokens.tolist()
    elif m in ("tokens int32", "tokens uint8"):
        tok = tokens.to(torch.int32 if m.endswith("32") else torch.uint8)
        check = expect(tokens)
    elif m == "tokens unbatched":
        tok = tokens[0]
        check = expect(tokens[:1], unbatched=True)
    elif m == "tokens non-contiguous":
        tok = tokens.T.contiguous().T
        check = expect(tokens)
    elif m == "targets shape":
        kw["targets"] = targets[:, :-1] if T > 1 else targets[None]
    elif m == "targets float":
        kw["targets"] = targets.double()
    elif m == "targets out of range":
        bad = targets.clone()
        bad[-1, 0] = V + 3
        kw["targets"] = bad
    elif m == "targets legal":
        kw["targets"] = targets
        check = expect(tokens, targets)
    elif m == "targets all ignored":
        kw["targets"] = torch.full_like(targets, -100)
        check = expect(tokens, kw["targets"])
    elif m == "ignore_index float":
        kw["ignore_index"] = -100.0
    elif m == "reduce":
        kw["reduce"] = data.draw(st.sampled_from(["l1", None, "NORM"]))
    elif m == "wrt":
        kw["wrt"] = data.draw(st.sampled_from(["input", 0]))
    elif m == "batch_size":
        kw["batch_size"] = data.draw(st.sampled_from([0, -1, "2", 1.5, True]))
    elif m == "vectorize":
        kw["vectorize"] = data.draw(st.sampled_from(["yes", 1, None]))
    elif m == "model a function":
        model = MODEL.forward
    elif m == "model without embedding":
        model = _NoEmbedding()
    elif m == "model with two embeddings":
        model = _TwoEmbeddings()
    elif m == "embedding path missing":
        kw["embedding"] = "encoder.tokens"
    elif m == "embedding not an Embedding":
        kw["embedding"] = data.draw(st.sampled_from(["head", 3]))
    elif m == "model returns (B, V)":
        model = _Flat()
    elif m == "model returns a string":
        model = _Str()
    elif m == "reduce sq_sum":
        kw["reduce"] = "sq_sum"
        check = expect(tokens, None, reduce="sq_sum")
    else:
        kw["wrt"] = "embedding"
        kw["vectorize"] = data.draw(st.booleans())
        check = expect(tokens, None, wrt="embedding")
    LEDGER.probe(f"connectivity: {m}", lambda: connectivity(model, tok, **kw), names=names,
                 check=check, legal=check is not None)  # fmt: skip


def test_connectivity_rejects_bad_input_clearly() -> None:
    with LEDGER.entry("analysis", "connectivity") as run:
        for m in CONN_MUTATIONS:
            fuzz_connectivity(m)
    run.assert_clean()


# -- connectivity_decay ---------------------------------------------------------------------


def naive_decay(conn: Tensor, far: int, lengths: Tensor | None) -> dict[str, Any]:
    c = conn if conn.dim() == 3 else conn[None]
    B, T = c.shape[0], c.shape[-1]
    rows = []
    for b in range(B):
        for t in range(T):
            total = float(c[b, t].sum())
            if total > 0 and (lengths is None or t < int(lengths[b])):
                rows.append((t, [float(v) / total for v in c[b, t]]))
    curve = []
    for d in range(T):
        vals = [r[t - d] for t, r in rows if t >= d]
        curve.append(sum(vals) / len(vals) if vals else math.nan)
    fars = [sum(r[: t - far + 1]) for t, r in rows if t >= far]
    futures = [sum(r[t + 1 :]) for t, r in rows]
    return {
        "curve": curve,
        "far_share": sum(fars) / len(fars) if fars else math.nan,
        "future_share": sum(futures) / len(futures) if futures else math.nan,
        "rows": len(rows),
    }


DECAY_MUTATIONS = (
    "int", "rank 1", "rank 4", "not square", "negative", "nan", "inf", "far 0", "far str",
    "far bool", "lengths float", "lengths count", "lengths zero", "lengths too long",
    "lengths 2-D", "legal", "legal with lengths", "zero rows", "non-tensor", "meta",
)  # fmt: skip


@FUZZ
@given(data=st.data())
def fuzz_decay(mutation: str, data: st.DataObject) -> None:
    B = data.draw(st.integers(1, 3), label="B")
    T = data.draw(st.integers(1, 5), label="T")
    vals = data.draw(st.lists(st.floats(0, 10), min_size=B * T * T, max_size=B * T * T))
    conn = torch.tensor(vals, dtype=torch.float64).reshape(B, T, T)
    lengths = torch.tensor(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    far = data.draw(st.integers(1, 4), label="far")
    m = mutation
    kw: dict[str, Any] = {"far": far}
    c: Any = conn
    check = None
    names = ("conn", "far", "lengths")

    def expect(cc: Tensor, ll: Tensor | None) -> Any:
        def check(result: Any) -> None:
            want = naive_decay(cc, far, ll)
            same(result.curve.tolist(), want["curve"], atol=1e-12)
            same(result.far_share, want["far_share"], atol=1e-12)
            same(result.future_share, want["future_share"], atol=1e-12)
            assert result.rows == want["rows"]

        return check

    if m == "int":
        c = conn.long()
    elif m == "rank 1":
        c = conn.reshape(-1)
    elif m == "rank 4":
        c = conn[None]
    elif m == "not square":
        c = torch.rand(B, T, T + 1, dtype=torch.float64)
    elif m == "negative":
        c = conn.clone()
        c[0, -1, 0] = -1.0
    elif m in ("nan", "inf"):
        c = conn.clone()
        c[-1, -1, 0] = math.nan if m == "nan" else math.inf
    elif m == "far 0":
        kw["far"] = 0
    elif m == "far str":
        kw["far"] = "3"
    elif m == "far bool":
        kw["far"] = True
    elif m == "lengths float":
        kw["lengths"] = lengths.double()
    elif m == "lengths count":
        kw["lengths"] = torch.ones(B + 1, dtype=torch.long)
    elif m == "lengths zero":
        kw["lengths"] = torch.zeros(B, dtype=torch.long)
    elif m == "lengths too long":
        kw["lengths"] = torch.full((B,), T + 1)
    elif m == "lengths 2-D":
        kw["lengths"] = lengths[None]
    elif m == "legal":
        c = conn[0] if data.draw(st.booleans()) else conn
        check = expect(c, None)
    elif m == "legal with lengths":
        kw["lengths"] = lengths
        check = expect(conn, lengths)
    elif m == "zero rows":
        c = torch.zeros(B, T, T, dtype=torch.float64)
        check = expect(c, None)
    elif m == "non-tensor":
        c = conn.tolist()
    else:
        c = meta(conn)
    LEDGER.probe(f"connectivity_decay: {m}", lambda: connectivity_decay(c, **kw), names=names,
                 check=check, legal=check is not None)  # fmt: skip


def test_connectivity_decay_rejects_bad_input_clearly() -> None:
    with LEDGER.entry("analysis", "connectivity_decay") as run:
        for m in DECAY_MUTATIONS:
            fuzz_decay(m)
    run.assert_clean()


# -- context_accuracy -----------------------------------------------------------------------


def naive_accuracy(x: Tensor, y: Tensor, ks: tuple[int, ...], first: int) -> dict[str, Any]:
    logits = MODEL(x)
    hits: dict[tuple[int, int], int] = {}
    counts: dict[int, int] = {}
    for n in range(x.shape[0]):
        for i in range(x.shape[1]):
            tgt = int(y[n, i])
            if tgt == -100:
                continue
            p = i + first
            counts[p] = counts.get(p, 0) + 1
            order = logits[n, i].topk(max(ks)).indices.tolist()
            for k in ks:
                hits[(k, p)] = hits.get((k, p), 0) + (tgt in order[:k])
    return {"counts": counts, "hits": hits}


ACC_MUTATIONS = (
    "x float", "x 1-D", "y shape", "x empty", "k 0", "k empty", "k str", "k too large",
    "first_position -1", "ignore_index float", "batch_size 0", "y all ignored",
    "y out of range", "model not callable", "model returns (B, V)", "x out of range",
    "legal", "legal int32",
)  # fmt: skip


@FUZZ
@given(data=st.data())
def fuzz_context_accuracy(mutation: str, data: st.DataObject) -> None:
    N = data.draw(st.integers(1, 4), label="N")
    T = data.draw(st.integers(1, 4), label="T")
    ids = st.lists(st.lists(st.integers(0, V - 1), min_size=T, max_size=T), min_size=N, max_size=N)  # noqa: E501
    x = torch.tensor(data.draw(ids))
    y = torch.tensor(data.draw(ids))
    y[0, -1] = -100
    y[-1, 0] = int(x[-1, 0])  # at least one scored target
    ks = tuple(sorted(set(data.draw(st.lists(st.integers(1, V), min_size=1, max_size=3)))))
    first = data.draw(st.integers(0, 2), label="first_position")
    m = mutation
    args: list[Any] = [MODEL, x, y]
    kw: dict[str, Any] = {"k": ks, "first_position": first}
    check = None
    names = ("x", "y", "k", "first_position", "ignore_index", "batch_size", "model",
             "model(tokens)")  # fmt: skip

    def expect(xx: Tensor) -> Any:
        def check(result: Any) -> None:
            want = naive_accuracy(xx.long(), y, ks, first)
            assert result.k == ks
            for p, n in want["counts"].items():
                assert int(result.counts[p]) == n
                for i, k in enumerate(ks):
                    assert math.isclose(float(result.accuracy[i, p]), want["hits"][(k, p)] / n)
            assert int(result.counts.sum()) == sum(want["counts"].values())

        return check

    if m == "x float":
        args[1] = x.double()
    elif m == "x 1-D":
        args[1], args[2] = x[0], y[0]
    elif m == "y shape":
        args[2] = y[:, :-1] if T > 1 else y[None]
    elif m == "x empty":
        args[1], args[2] = x[:0], y[:0]
    elif m == "k 0":
        kw["k"] = 0
    elif m == "k empty":
        kw["k"] = ()
    elif m == "k str":
        kw["k"] = "1"
    elif m == "k too large":
        kw["k"] = V + 1
    elif m == "first_position -1":
        kw["first_position"] = -1
    elif m == "ignore_index float":
        kw["ignore_index"] = -100.0
    elif m == "batch_size 0":
        kw["batch_size"] = 0
    elif m == "y all ignored":
        args[2] = torch.full_like(y, -100)
    elif m == "y out of range":
        bad = y.clone()
        bad[0, 0] = V
        args[2] = bad
    elif m == "model not callable":
        args[0] = "model"
    elif m == "model returns (B, V)":
        args[0] = _Flat().eval()
    elif m == "x out of range":
        bad = x.clone()
        bad[0, 0] = V + 2
        args[1] = bad
    elif m == "legal":
        check = expect(x)
    else:
        args[1] = x.int()
        check = expect(x)
    LEDGER.probe(f"context_accuracy: {m}", lambda: context_accuracy(*args, **kw), names=names,
                 check=check, legal=check is not None)  # fmt: skip


def test_context_accuracy_rejects_bad_input_clearly() -> None:
    with LEDGER.entry("analysis", "context_accuracy") as run:
        for m in ACC_MUTATIONS:
            fuzz_context_accuracy(m)
    run.assert_clean()


# -- causality checks: by connectivity and by perturbation ----------------------------------


def causal_cases() -> list[tuple[str, tuple[str, ...], Any, Any]]:
    tokens = torch.tensor([[1, 2, 3, 4], [0, 5, 1, 2]])
    x = torch.randn(5, 2, D, dtype=torch.float64)
    stack = rk.Stack([rk.GRUCell(D, H, dtype=torch.float64)]).eval()
    leaky = rk.Stack(
        [rk.GRUCell(D, H, dtype=torch.float64)] * 1 + [rk.GRUCell(H, H, dtype=torch.float64)],
        "handoff",
    ).eval()  # noqa: E501
    nan_x = x.clone()
    nan_x[3, 0, 0] = math.nan
    return [
        (
            "connectivity_violation: tokens float",
            ("tokens",),
            lambda: connectivity_violation(MODEL, tokens.double()),
            None,
        ),  # noqa: E501
        (
            "connectivity_violation: tokens 3-D",
            ("tokens",),
            lambda: connectivity_violation(MODEL, tokens[None]),
            None,
        ),  # noqa: E501
        (
            "connectivity_violation: tokens out of range",
            ("tokens",),
            lambda: connectivity_violation(MODEL, tokens + V),
            None,
        ),  # noqa: E501
        (
            "connectivity_violation: seed str",
            ("seed",),
            lambda: connectivity_violation(MODEL, tokens, seed="0"),
            None,
        ),  # noqa: E501
        (
            "connectivity_violation: model None",
            ("model",),
            lambda: connectivity_violation(None, tokens),
            None,
        ),  # noqa: E501
        (
            "connectivity_violation: causal model",
            ("tokens",),
            lambda: connectivity_violation(MODEL, tokens),
            lambda v: v == 0.0,
        ),  # noqa: E501
        (
            "connectivity_violation: leaky model",
            ("tokens",),
            lambda: connectivity_violation(LEAKY, tokens),
            lambda v: v > 0.0,
        ),  # noqa: E501
        (
            "is_causal_by_connectivity: atol str",
            ("atol",),
            lambda: is_causal_by_connectivity(MODEL, tokens, atol="0"),
            None,
        ),  # noqa: E501
        (
            "is_causal_by_connectivity: atol nan",
            ("atol",),
            lambda: is_causal_by_connectivity(LEAKY, tokens, atol=math.nan),
            None,
        ),  # noqa: E501
        (
            "is_causal_by_connectivity: atol -1",
            ("atol",),
            lambda: is_causal_by_connectivity(MODEL, tokens, atol=-1.0),
            None,
        ),  # noqa: E501
        (
            "is_causal_by_connectivity: tokens empty",
            ("tokens",),
            lambda: is_causal_by_connectivity(MODEL, tokens[:, :0]),
            None,
        ),  # noqa: E501
        (
            "is_causal_by_connectivity: legal",
            ("tokens",),
            lambda: is_causal_by_connectivity(LEAKY, tokens[0]),
            lambda v: v is False,
        ),  # noqa: E501
        (
            "causality_violation: x int",
            ("x",),
            lambda: rk.causality_violation(stack, x.long()),
            None,
        ),  # noqa: E501
        (
            "causality_violation: x 1-D",
            ("x",),
            lambda: rk.causality_violation(stack, x[:, 0, 0]),
            None,
        ),  # noqa: E501
        (
            "causality_violation: x 6-D",
            ("x",),
            lambda: rk.causality_violation(stack, x[None, None, None]),
            None,
        ),  # noqa: E501
        ("causality_violation: T = 1", ("x",), lambda: rk.causality_violation(stack, x[:1]), None),  # noqa: E501
        (
            "causality_violation: time_dim 7",
            ("time_dim",),
            lambda: rk.causality_violation(stack, x, time_dim=7),
            None,
        ),  # noqa: E501
        (
            "causality_violation: time_dim 1.0",
            ("time_dim",),
            lambda: rk.causality_violation(stack, x, time_dim=1.0),
            None,
        ),  # noqa: E501
        (
            "causality_violation: scale nan",
            ("scale",),
            lambda: rk.causality_violation(stack, x, scale=math.nan),
            None,
        ),  # noqa: E501
        (
            "causality_violation: scale str",
            ("scale",),
            lambda: rk.causality_violation(stack, x, scale="1"),
            None,
        ),  # noqa: E501
        (
            "causality_violation: seed 0.5",
            ("seed",),
            lambda: rk.causality_violation(stack, x, seed=0.5),
            None,
        ),  # noqa: E501
        (
            "causality_violation: model not callable",
            ("model",),
            lambda: rk.causality_violation(3, x),
            None,
        ),  # noqa: E501
        (
            "causality_violation: NaN in x",
            ("x",),
            lambda: rk.causality_violation(stack, nan_x),
            None,
        ),  # noqa: E501
        (
            "causality_violation: x on meta",
            ("x",),
            lambda: rk.causality_violation(stack, meta(x)),
            None,
        ),  # noqa: E501
        (
            "causality_violation: causal stack",
            ("x",),
            lambda: rk.causality_violation(stack, x),
            lambda v: v == 0.0,
        ),  # noqa: E501
        (
            "check_causal: leaky stack",
            ("x",),
            lambda: rk.check_causal(leaky, x),
            lambda v: v is False,
        ),  # noqa: E501
        ("check_causal: atol str", ("atol",), lambda: rk.check_causal(stack, x, atol="0"), None),  # noqa: E501
    ]


def test_causality_checks_reject_bad_input_clearly() -> None:
    with LEDGER.entry("analysis", "causality checks") as run:
        for label, names, call, check in causal_cases():
            LEDGER.probe(label, call, names=names, check=check, legal=check is not None)
    run.assert_clean()
