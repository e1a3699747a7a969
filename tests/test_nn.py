"""The torch.nn drop-ins equal torch.nn: outputs, states, gradients, names, state_dicts."""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import recurrentkit as rk

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

TORCH = {"RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN, "GRU": nn.GRU, "LSTM": nn.LSTM}
OURS = {"RNN_TANH": rk.RNN, "RNN_RELU": rk.RNN, "GRU": rk.GRU, "LSTM": rk.LSTM}


@dataclass
class Config:
    mode: str
    I: int  # noqa: E741
    H: int
    L: int
    bidirectional: bool
    batch_first: bool
    bias: bool
    proj: int
    dropout: float
    executor: str = "auto"

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            num_layers=self.L,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
        )
        if self.mode.startswith("RNN"):
            kw["nonlinearity"] = "tanh" if self.mode == "RNN_TANH" else "relu"
        if self.mode == "LSTM":
            kw["proj_size"] = self.proj
        return kw

    def pair(self, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, nn.Module]:
        """(torch module, our drop-in with the torch module's weights), both eval if dropout."""
        with warnings.catch_warnings():  # dropout with one layer: both warn, as they should
            warnings.simplefilter("ignore", UserWarning)
            theirs = TORCH[self.mode](self.I, self.H, dtype=dtype, **self.kwargs())
            ours = OURS[self.mode](
                self.I, self.H, dtype=dtype, executor=self.executor, **self.kwargs()
            )
        ours.load_state_dict(theirs.state_dict())
        if self.dropout:
            theirs.eval(), ours.eval()
        return theirs, ours

    @property
    def D(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def H_out(self) -> int:
        return self.proj or self.H


@st.composite
def configs(draw, mode: str, dropout: bool = True) -> Config:
    H = draw(st.integers(1, 5))
    proj = draw(st.sampled_from([0, *range(1, H)])) if mode == "LSTM" else 0
    return Config(
        mode=mode,
        I=draw(st.integers(1, 4)),
        H=H,
        L=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
        proj=proj,
        dropout=draw(st.sampled_from([0.0, 0.0, 0.4])) if dropout else 0.0,
        executor=draw(st.sampled_from(["auto", "handbuilt", "reference"])),
    )


def make_hx(cfg: Config, B: int | None, dtype: torch.dtype) -> list[Tensor]:
    lead = (cfg.D * cfg.L,) if B is None else (cfg.D * cfg.L, B)
    h = torch.randn(*lead, cfg.H_out, dtype=dtype).requires_grad_()
    if cfg.mode != "LSTM":
        return [h]
    return [h, torch.randn(*lead, cfg.H, dtype=dtype).requires_grad_()]


def as_hx(cfg: Config, hx: list[Tensor] | None) -> Any:
    if hx is None:
        return None
    return tuple(hx) if cfg.mode == "LSTM" else hx[0]


def flat(result: Any) -> list[Tensor]:
    """Every tensor of a (output, h_n) / (output, (h_n, c_n)) result; packed → its data."""
    out, state = result
    data = out.data if isinstance(out, PackedSequence) else out
    return [data, *(state if isinstance(state, tuple) else (state,))]


def cotangent_loss(outputs: list[Tensor], seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return sum(  # type: ignore[return-value]
        (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs
    )


def check_equal(
    cfg: Config, theirs: nn.Module, ours: nn.Module, inp: Any, hx: list[Tensor] | None,
    leaves: list[Tensor], tol: float,
) -> None:  # fmt: skip
    """Outputs, final states and grads (leaves, hx, every parameter by name) agree."""
    r_t, r_o = theirs(inp, as_hx(cfg, hx)), ours(inp, as_hx(cfg, hx))
    if isinstance(r_t[0], PackedSequence):
        assert isinstance(r_o[0], PackedSequence)
        assert torch.equal(r_t[0].batch_sizes, r_o[0].batch_sizes)
        assert torch.equal(r_t[0].sorted_indices, r_o[0].sorted_indices)
        assert torch.equal(r_t[0].unsorted_indices, r_o[0].unsorted_indices)
    out_t, out_o = flat(r_t), flat(r_o)
    assert [o.shape for o in out_t] == [o.shape for o in out_o]
    for a, b in zip(out_o, out_t):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)
    names = [n for n, _ in theirs.named_parameters()]
    assert names == [n for n, _ in ours.named_parameters()]
    wrt_t = [*leaves, *(hx or []), *theirs.parameters()]
    wrt_o = [*leaves, *(hx or []), *ours.parameters()]
    g_t = torch.autograd.grad(cotangent_loss(out_t), wrt_t, retain_graph=True)  # packing's
    g_o = torch.autograd.grad(cotangent_loss(out_o), wrt_o)
    for a, b in zip(g_o, g_t):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)


# -- equivalence, property-based ------------------------------------------------------------


MODES = list(TORCH)
DTYPES = st.sampled_from([torch.float64, torch.float64, torch.float32])


@pytest.mark.parametrize("mode", MODES)
@given(
    data=st.data(),
    B=st.integers(1, 4),
    T=st.integers(1, 5),
    unbatched=st.booleans(),
    with_hx=st.booleans(),
    dtype=DTYPES,
)
def test_padded_and_unbatched_equal_torch(mode, data, B, T, unbatched, with_hx, dtype) -> None:
    cfg = data.draw(configs(mode))
    theirs, ours = cfg.pair(dtype)
    if unbatched:
        x = torch.randn(T, cfg.I, dtype=dtype, requires_grad=True)  # (T, I)
        hx = make_hx(cfg, None, dtype) if with_hx else None
    else:
        shape = (B, T, cfg.I) if cfg.batch_first else (T, B, cfg.I)
        x = torch.randn(shape, dtype=dtype, requires_grad=True)
        hx = make_hx(cfg, B, dtype) if with_hx else None
    check_equal(cfg, theirs, ours, x, hx, [x], TOL[dtype])


@pytest.mark.parametrize("mode", MODES)
@given(data=st.data(), with_hx=st.booleans(), dtype=DTYPES)
def test_packed_sequences_equal_torch(mode, data, with_hx, dtype) -> None:
    cfg = data.draw(configs(mode))
    B, T = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6))
    lengths = data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B))  # unsorted
    theirs, ours = cfg.pair(dtype)
    x = torch.randn(B, T, cfg.I, dtype=dtype, requires_grad=True)  # (B, T, I)
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
    hx = make_hx(cfg, B, dtype) if with_hx else None
    check_equal(cfg, theirs, ours, packed, hx, [x], TOL[dtype])


@pytest.mark.parametrize("mode", MODES)
@given(data=st.data(), B=st.integers(1, 3), T=st.integers(1, 4))
def test_dropout_one_in_training_equals_torch(mode, data, B, T) -> None:
    # dropout=1.0 is deterministic: it zeroes each non-top layer's output in training mode
    # (in both libraries), and nothing after the top layer.
    cfg = data.draw(configs(mode, dropout=False))
    cfg.dropout = 1.0
    theirs, ours = cfg.pair()
    theirs.train(), ours.train()
    x = torch.randn(T, B, cfg.I, dtype=torch.float64, requires_grad=True)
    check_equal(cfg, theirs, ours, x.transpose(0, 1) if cfg.batch_first else x, None, [x], 1e-10)


def test_dropout_is_random_in_training_and_off_in_eval() -> None:
    gru = rk.GRU(3, 4, num_layers=2, dropout=0.5, bidirectional=True).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.manual_seed(0)
    a = gru(x)[0]
    b = gru(x)[0]
    assert not torch.equal(a, b)
    gru.eval()
    torch.testing.assert_close(gru(x)[0], gru(x)[0], rtol=0, atol=0)


# -- names, state_dicts, init -------------------------------------------------------------

NAMED = [
    ("RNN_TANH", dict(num_layers=2)),
    ("RNN_RELU", dict(num_layers=3, bidirectional=True, bias=False)),
    ("GRU", dict(num_layers=2, bidirectional=True)),
    ("GRU", dict(bias=False)),
    ("LSTM", dict(num_layers=3, bidirectional=True, proj_size=2)),
    ("LSTM", dict(num_layers=2, proj_size=1, bias=False)),
    ("LSTM", dict(num_layers=2, bidirectional=True)),
]


def build(mode: str, kw: dict[str, Any], lib: str) -> nn.Module:
    kw = dict(kw)
    if mode.startswith("RNN"):
        kw["nonlinearity"] = "tanh" if mode == "RNN_TANH" else "relu"
    return (TORCH if lib == "torch" else OURS)[mode](3, 4, **kw)


@pytest.mark.parametrize(("mode", "kw"), NAMED)
def test_named_parameters_equal_torch_in_order(mode, kw) -> None:
    theirs, ours = build(mode, kw, "torch"), build(mode, kw, "ours")
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in theirs.named_parameters()
    ]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [[p.shape for p in ws] for ws in ours.all_weights] == [
        [p.shape for p in ws] for ws in theirs.all_weights
    ]
    # torch's repr omits nonlinearity='relu'; ours shows it.
    assert repr(ours).replace(", nonlinearity='relu'", "") == repr(theirs)


@pytest.mark.parametrize(("mode", "kw"), NAMED)
def test_state_dict_loads_both_ways(mode, kw) -> None:
    theirs, ours = build(mode, kw, "torch").double(), build(mode, kw, "ours").double()
    ours.load_state_dict(theirs.state_dict())  # torch -> ours, strict
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=0, atol=1e-10)
    back = build(mode, kw, "torch").double()
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(0.5)
    back.load_state_dict(ours.state_dict())  # ours -> torch, strict
    torch.testing.assert_close(back(x)[0], ours(x)[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize(("mode", "kw"), NAMED)
def test_same_seed_gives_torchs_initial_weights(mode, kw) -> None:
    torch.manual_seed(7)
    theirs = build(mode, kw, "torch")
    torch.manual_seed(7)
    ours = build(mode, kw, "ours")
    for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(p, q), n
        assert p.abs().max() <= 1 / 4**0.5  # U(-1/sqrt(H), 1/sqrt(H)), H = 4


def test_parameters_by_torch_name_are_what_runs() -> None:
    torch.manual_seed(0)
    theirs = nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = rk.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    assert isinstance(ours.weight_hh_l1_reverse, nn.Parameter)
    assert ours.weight_hh_l1_reverse is dict(ours.named_parameters())["weight_hh_l1_reverse"]
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    before = ours(x)[0]
    for m in (theirs, ours):  # the usual init-by-name idiom, applied to both
        for name, p in m.named_parameters():
            if "weight_hh" in name:
                nn.init.eye_(p.data[: p.shape[1]])
            if name == "bias_ih_l0_reverse":
                nn.init.constant_(p, 0.25)
    after = ours(x)[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, theirs(x)[0], rtol=0, atol=1e-10)


def test_load_state_dict_assign_and_functional_call() -> None:
    torch.manual_seed(0)
    theirs = nn.GRU(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = rk.GRU(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict(), assign=True)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=0, atol=1e-10)
    params = {n: p * 1.5 for n, p in theirs.named_parameters()}
    y_t = torch.func.functional_call(theirs, params, (x,))[0]
    y_o = torch.func.functional_call(ours, params, (x,))[0]
    torch.testing.assert_close(y_o, y_t, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=0, atol=1e-10)  # restored


def test_double_deepcopy_and_pickle_keep_working() -> None:
    torch.manual_seed(0)
    theirs = nn.LSTM(3, 4, num_layers=2, proj_size=2)
    ours = rk.LSTM(3, 4, num_layers=2, proj_size=2)
    ours.load_state_dict(theirs.state_dict())
    theirs.double(), ours.double()
    assert ours.weight_ih_l0.dtype == torch.float64
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=0, atol=1e-10)
    twin = copy.deepcopy(ours)
    with torch.no_grad():
        twin.weight_hr_l1.zero_()
    assert torch.count_nonzero(twin(x)[0]) == 0  # the copy runs its own weights
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=0, atol=1e-10)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(x)[0], theirs(x)[0], rtol=0, atol=1e-10)


def test_from_torch_and_to_torch_on_dropins() -> None:
    theirs = nn.RNN(3, 4, 2, "relu", bidirectional=True, batch_first=True).double()
    ours = rk.RNN.from_torch(theirs)
    assert isinstance(ours, rk.RNN) and ours.batch_first and ours.nonlinearity == "relu"
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[1], theirs(x)[1], rtol=0, atol=1e-10)
    back = ours.to_torch()
    assert type(back) is nn.RNN and back.nonlinearity == "relu"
    torch.testing.assert_close(back(x)[0], theirs(x)[0], rtol=0, atol=0)
    with pytest.raises(rk.InputTypeError, match="module"):
        rk.GRU.from_torch(theirs)


def test_internal_parts_are_library_parts() -> None:
    uni, bi = rk.GRU(3, 4, num_layers=2), rk.GRU(3, 4, num_layers=2, bidirectional=True)
    assert isinstance(uni.stack, rk.Stack) and uni.bidirectional_layers == ()
    assert isinstance(uni.stack.routing, rk.routing.Independent)
    assert uni.stack.cells[1].weight_hh is uni.weight_hh_l1
    assert bi.stack is None and len(bi.bidirectional_layers) == 2
    assert bi.bidirectional_layers[1].backward_stack.cells[0].bias_hh is bi.bias_hh_l1_reverse
    assert list(uni.children()) == []  # not submodules: the state_dict has torch's keys only


def test_dropout_with_one_layer_warns_like_torch() -> None:
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        rk.GRU(3, 4, dropout=0.2)


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "argument"),
    [
        (lambda: rk.GRU(3, 4, num_layers=0), rk.ConfigError, "num_layers"),
        (lambda: rk.GRU(0, 4), rk.ConfigError, "input_size"),
        (lambda: rk.LSTM(3, 0), rk.ConfigError, "hidden_size"),
        (lambda: rk.GRU(3, 4, 2, dropout=1.5), rk.ConfigError, "dropout"),
        (lambda: rk.GRU(3, 4, 2, dropout=-0.1), rk.ConfigError, "dropout"),
        (lambda: rk.GRU(3, 4, 2, dropout="0.1"), rk.InputTypeError, "dropout"),
        (lambda: rk.LSTM(3, 4, proj_size=4), rk.ConfigError, "proj_size"),
        (lambda: rk.LSTM(3, 4, proj_size=-1), rk.ConfigError, "proj_size"),
        (lambda: rk.GRU(3, 4, proj_size=2), rk.ConfigError, "proj_size"),
        (lambda: rk.RNN(3, 4, proj_size=2), rk.ConfigError, "proj_size"),
        (lambda: rk.RNN(3, 4, nonlinearity="gelu"), rk.ConfigError, "nonlinearity"),
        (lambda: rk.GRU(3, 4, bidirectional="yes"), rk.InputTypeError, "bidirectional"),
        (lambda: rk.GRU(3, 4, batch_first=1), rk.InputTypeError, "batch_first"),
        (lambda: rk.GRU(3, 4, bias=None), rk.InputTypeError, "bias"),
        (lambda: rk.GRU(3.0, 4), rk.InputTypeError, "input_size"),
    ],
)
def test_bad_construction_raises(make, error, argument) -> None:
    with pytest.raises(error) as info:
        make()
    assert info.value.argument == argument


GRU2 = dict(num_layers=2, bidirectional=True)  # hx: (4, B, 5)


@pytest.mark.parametrize(
    ("cls", "x", "hx", "error", "argument"),
    [
        (rk.GRU, torch.randn(2, 3, 4, 3), None, rk.ShapeError, "input"),  # rank 4
        (rk.GRU, torch.randn(3), None, rk.ShapeError, "input"),  # rank 1
        (rk.GRU, torch.randn(5, 2, 4), None, rk.ShapeError, "input"),  # feature size
        (rk.GRU, torch.randint(0, 3, (5, 2, 3)), None, rk.InputTypeError, "input"),
        (rk.GRU, torch.randn(5, 2, 3, dtype=torch.float64), None, rk.DeviceError, "input"),
        (rk.GRU, torch.randn(5, 2, 3, device="meta"), None, rk.DeviceError, "input"),
        (rk.GRU, torch.randn(0, 2, 3), None, rk.ShapeError, "input"),  # empty sequence
        (rk.GRU, torch.randn(0, 3), None, rk.ShapeError, "input"),  # empty, unbatched
        (rk.GRU, "abc", None, rk.InputTypeError, "input"),
        (rk.GRU, torch.randn(5, 2, 3), torch.zeros(2, 2, 5), rk.StateError, "hx"),  # layers
        (rk.GRU, torch.randn(5, 2, 3), torch.zeros(4, 3, 5), rk.StateError, "hx"),  # batch
        (rk.GRU, torch.randn(5, 2, 3), torch.zeros(4, 2, 4), rk.StateError, "hx"),  # width
        (rk.GRU, torch.randn(5, 3), torch.zeros(4, 1, 5), rk.StateError, "hx"),  # unbatched
        (rk.GRU, torch.randn(5, 2, 3), torch.zeros(4, 5), rk.StateError, "hx"),  # batched
        (rk.GRU, torch.randn(5, 2, 3), (torch.zeros(4, 2, 5),), rk.InputTypeError, "hx"),
        (rk.GRU, torch.randn(5, 2, 3), torch.zeros(4, 2, 5).long(), rk.InputTypeError, "hx"),
        (rk.GRU, torch.randn(5, 2, 3), torch.zeros(4, 2, 5).double(), rk.DeviceError, "hx"),
        (
            rk.GRU,
            torch.randn(5, 2, 3),
            torch.zeros(4, 2, 5, device="meta"),
            rk.DeviceError,
            "hx",
        ),  # fmt: skip
        (rk.LSTM, torch.randn(5, 2, 3), torch.zeros(4, 2, 5), rk.InputTypeError, "hx"),
        (rk.LSTM, torch.randn(5, 2, 3), (torch.zeros(4, 2, 5),) * 3, rk.StateError, "hx"),
        (
            rk.LSTM,
            torch.randn(5, 2, 3),
            (torch.zeros(4, 2, 5), torch.zeros(4, 2, 4)),
            rk.StateError,
            "hx[1] (c_0)",
        ),  # fmt: skip
        (
            rk.LSTM,
            torch.randn(5, 2, 3),
            (torch.zeros(2, 2, 5), torch.zeros(4, 2, 5)),
            rk.StateError,
            "hx[0] (h_0)",
        ),  # fmt: skip
        (
            rk.LSTM,
            torch.randn(5, 2, 3),
            (torch.zeros(4, 2, 5), "c"),
            rk.InputTypeError,
            "hx[1] (c_0)",
        ),  # fmt: skip
    ],
)
def test_bad_forward_input_raises(cls, x, hx, error, argument) -> None:
    model = cls(3, 5, **GRU2)
    with pytest.raises(error) as info:
        model(x, hx)
    assert info.value.argument == argument
    assert "expected" in str(info.value)


def test_packed_integer_data_raises() -> None:
    packed = pack_padded_sequence(torch.ones(4, 2, 3, dtype=torch.long), torch.tensor([4, 2]))
    with pytest.raises(rk.InputTypeError, match="PackedSequence"):
        rk.GRU(3, 5)(packed)


def test_hx_error_message_names_layout() -> None:
    with pytest.raises(rk.StateError, match=r"\(D\*num_layers, B, H\) = \(4, 2, 5\)"):
        rk.GRU(3, 5, **GRU2)(torch.randn(5, 2, 3), torch.zeros(2, 2, 5))


def test_data_parallel_replicas_get_their_own_parts() -> None:
    # What torch.nn.parallel.replicate does to a module, minus the devices: each replica
    # must run its own tensors without rebinding the original's cells.
    torch.manual_seed(0)
    gru = rk.GRU(3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    before = gru(x)[0]
    replica = gru._replicate_for_data_parallel()
    for name, p in gru.named_parameters():
        setattr(replica, name, p.detach() * 2)  # replicate() sets plain tensors
    assert replica.bidirectional_layers[0] is not gru.bidirectional_layers[0]
    doubled = copy.deepcopy(gru)
    with torch.no_grad():
        for p in doubled.parameters():
            p.mul_(2)
    torch.testing.assert_close(replica(x)[0], doubled(x)[0], rtol=0, atol=0)
    torch.testing.assert_close(gru(x)[0], before, rtol=0, atol=0)
