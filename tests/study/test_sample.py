"""recurrentkit.study.sample: the sampler and the step-wise validation loss."""

from __future__ import annotations

import pytest
import torch

import recurrentkit as rk
from recurrentkit.study import data
from recurrentkit.study.lm import CharLM
from recurrentkit.study.sample import generate, stepwise_loss, teacher_forced_loss


def make(routing: str = "independent", vocab: int = 28) -> CharLM:
    torch.manual_seed(0)
    stack = rk.Stack([rk.GRUCell(6, 8), rk.GRUCell(8, 8)], routing, batch_first=True)
    return CharLM(stack, vocab, 6)


def rigged(token: int, vocab: int = 28) -> CharLM:
    """A model that puts (almost) all probability on ``token`` whatever its input."""
    model = make(vocab=vocab)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-30.0)
        model.head.bias[token] = 30.0
    return model


def test_samples_are_seeded_and_bounded() -> None:
    model = make()
    a = generate(model, 40, max_steps=7, seed=3)
    assert len(a) == 40
    assert a == generate(model, 40, max_steps=7, seed=3, batch_size=9)  # batching is invisible
    assert a != generate(model, 40, max_steps=7, seed=4)
    for s in a:
        assert len(s.tokens) <= 7
        assert s.ended == (data.END in s.tokens) and (not s.ended) == (len(s.tokens) == 7)
        assert s.text == data.decode(s.tokens) and s.pad_count == s.tokens.count(data.PAD)


def test_an_end_token_model_gives_empty_names_and_a_letter_model_runs_away() -> None:
    ends = generate(rigged(data.END), 5)
    assert all(s.ended and s.text == "" and s.tokens == (data.END,) for s in ends)
    loops = generate(rigged(data.stoi["a"]), 5, max_steps=20)
    assert all(not s.ended and s.text == "a" * 20 for s in loops)


def test_pad_can_be_sampled_and_is_counted() -> None:
    samples = generate(rigged(data.PAD), 3, max_steps=5)
    assert all(s.pad_count == 5 and s.text == "" and not s.ended for s in samples)


def test_forbidden_tokens_are_never_sampled() -> None:
    model = rigged(data.PAD, vocab=29)
    samples = generate(model, 20, start_token=data.START, forbid=(data.PAD, data.START))
    assert all(s.pad_count == 0 and data.START not in s.tokens for s in samples)


def test_sampling_restores_the_training_mode() -> None:
    model = make().train()
    generate(model, 2)
    stepwise_loss(model, *data.encode(["anna"]))
    assert model.training


@pytest.mark.parametrize("routing", ["independent", "shared", "residual", "cross_layer"])
def test_stepwise_equals_teacher_forced_loss_for_causal_policies(routing: str) -> None:
    model = make(routing).double()
    x, y = data.encode(["anna", "bob", "christopher", "eve"])
    assert stepwise_loss(model, x, y, batch_size=3) == pytest.approx(
        teacher_forced_loss(model, x, y), abs=1e-12
    )


def test_stepwise_differs_from_teacher_forced_loss_under_handoff() -> None:
    model = make("handoff").double()
    with torch.no_grad():  # larger weights: states far from zero, as after training
        for p in model.stack.parameters():
            p.mul_(4.0)
    x, y = data.encode(["anna", "bob", "christopher", "eve"])
    gap = stepwise_loss(model, x, y) - teacher_forced_loss(model, x, y)
    assert abs(gap) > 1e-2


def test_bad_arguments() -> None:
    model = make()
    with pytest.raises(rk.ConfigError):
        generate(model, 2, temperature=0.0)
    with pytest.raises(rk.ConfigError):
        generate(model, 2, start_token=28)  # outside a 28-id vocabulary
    with pytest.raises(rk.ConfigError):
        generate(model, 2, forbid=tuple(range(28)))
    with pytest.raises(rk.ConfigError):
        generate(model, 0)
    x, y = data.encode(["anna"])
    with pytest.raises(rk.ShapeError):
        stepwise_loss(model, x, y[:, :4])
    with pytest.raises(rk.InputTypeError):
        teacher_forced_loss(model, x.float(), y)
    with pytest.raises(rk.ConfigError):
        stepwise_loss(model, x, torch.full_like(y, -100))
