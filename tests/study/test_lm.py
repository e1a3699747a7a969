"""recurrentkit.study.lm.CharLM: shapes, the loss, stepping, validation."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import recurrentkit as rk
from recurrentkit.study import data
from recurrentkit.study.cells import StudyGRUCell
from recurrentkit.study.lm import CharLM, count_parameters


def make(routing: str = "independent", *, batch_first: bool = True, **kw: object) -> CharLM:
    stack = rk.Stack([rk.GRUCell(6, 8), rk.GRUCell(8, 8)], routing, batch_first=batch_first)
    return CharLM(stack, 28, 6, **kw).double()  # type: ignore[arg-type]


def test_shapes_and_loss_is_token_mean_over_counted_targets() -> None:
    torch.manual_seed(0)
    model = make()
    x, y = data.encode(["anna", "bob", "christopher"])
    logits, loss = model(x, y)
    assert logits.shape == (3, 16, 28)
    assert loss is not None and loss.shape == ()
    keep = y != -100
    manual = -F.log_softmax(logits, -1).gather(-1, y.clamp(min=0)[..., None])[..., 0][keep].mean()
    torch.testing.assert_close(loss, manual)
    assert model(x)[1] is None


def test_padding_after_a_name_cannot_change_its_loss_under_a_causal_policy() -> None:
    torch.manual_seed(0)
    model = make("shared").eval()
    x, y = data.encode(["anna"])
    x2 = x.clone()
    x2[0, 6:] = 5  # junk where PAD was: only ignored targets can see it
    torch.testing.assert_close(model(x, y)[1], model(x2, y)[1], rtol=0, atol=0)


@pytest.mark.parametrize("routing", ["independent", "shared", "residual", "cross_layer"])
def test_stepping_gives_the_teacher_forced_logits_for_causal_policies(routing: str) -> None:
    torch.manual_seed(0)
    model = make(routing, layer_norm=True).eval()
    x, _ = data.encode(["anna", "bo"])
    logits, _ = model(x)
    state = None
    for t in range(x.shape[1]):
        logits_t, state = model.step(x[:, t], state)
        torch.testing.assert_close(logits_t, logits[:, t], rtol=0, atol=1e-12)


def test_stepping_differs_from_teacher_forcing_under_handoff() -> None:
    torch.manual_seed(0)
    model = make("handoff").eval()
    x, _ = data.encode(["anna", "bo"])
    logits, _ = model(x)
    state = None
    gaps = []
    for t in range(x.shape[1]):
        logits_t, state = model.step(x[:, t], state)
        gaps.append(float((logits_t - logits[:, t]).detach().abs().max()))
    assert max(gaps) > 1e-3


def test_time_major_stack_gives_the_same_model() -> None:
    torch.manual_seed(0)
    a = make(batch_first=True)
    b = make(batch_first=False)
    b.load_state_dict(a.state_dict())
    x, y = data.encode(["anna", "bob"])
    torch.testing.assert_close(a(x, y)[0], b(x, y)[0], rtol=0, atol=0)


def test_layer_norm_adds_its_parameters() -> None:
    assert count_parameters(make(layer_norm=True)) - count_parameters(make()) == 16


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ((1, 64, 128, False), 79_772),
        ((2, 96, 256, False), 675_996),
        ((3, 128, 512, True), 4_155_420),
    ],
)
def test_the_original_models_parameter_counts(spec: tuple, expected: int) -> None:
    layers, E, H, ln = spec
    cells = [StudyGRUCell(E if k == 0 else H, H) for k in range(layers)]
    model = CharLM(rk.Stack(cells, "shared", batch_first=True), 28, E, layer_norm=ln)
    assert count_parameters(model) == expected


def test_bad_input_raises_recurrentkit_errors() -> None:
    model = make()
    x, y = data.encode(["anna"])
    with pytest.raises(rk.InputTypeError):
        model(x.double())
    with pytest.raises(rk.ShapeError, match=r"\[0, 28\)"):
        model(x + 30)
    with pytest.raises(rk.ShapeError):
        model(x[0])
    with pytest.raises(rk.ShapeError):
        model(x, y[:, :3])
    with pytest.raises(rk.ShapeError):
        model(x, y.clamp(min=0) + 40)
    with pytest.raises(rk.InputTypeError):
        model(x, y.double())
    with pytest.raises(rk.ShapeError):
        model.step(x)
    with pytest.raises(rk.ConfigError, match="embed_dim"):
        CharLM(rk.Stack([rk.GRUCell(6, 8)]), 28, 5)
    with pytest.raises(rk.InputTypeError):
        CharLM(rk.GRUCell(6, 8), 28, 6)  # type: ignore[arg-type]


def test_reset_token_makes_a_row_of_names_compute_each_name_alone() -> None:
    torch.manual_seed(0)
    V = data.vocab_size("fixed")
    for batch_first in (True, False):
        stacks = [
            rk.Stack([rk.LSTMCell(6, 8), rk.LSTMCell(8, 8)], batch_first=batch_first) for _ in "ab"
        ]
        plain = CharLM(stacks[0], V, 6).double()
        resetting = CharLM(stacks[1], V, 6, reset_token=data.START).double()
        resetting.load_state_dict(plain.state_dict())
        words = ["anna", "bo", "christopher", "eve"]
        x, y = data.encode(words, "fixed", max_len=16)
        xs, ys = data.encode_stream(words, row_len=20)  # rows: anna bo | christopher eve
        alone, loss = plain(x, y)
        together, loss_s = resetting(xs, ys)
        keep, keep_s = y != data.IGNORE_INDEX, ys != data.IGNORE_INDEX
        torch.testing.assert_close(together[keep_s], alone[keep], rtol=0, atol=1e-12)
        torch.testing.assert_close(loss_s, loss, rtol=0, atol=1e-12)
        # without resets each name reads the one before it
        assert float((plain(xs)[0][keep_s] - alone[keep]).detach().abs().max()) > 1e-3


def test_reset_token_is_checked() -> None:
    with pytest.raises(rk.ConfigError, match="reset_token"):
        make(reset_token=28)
    with pytest.raises(rk.InputTypeError, match="reset_token"):
        make(reset_token=1.0)
