"""recurrentkit.study.sample: the sampler and the step-wise validation loss."""

from __future__ import annotations

import pytest
import torch

import recurrentkit as rk
from recurrentkit.errors import ConfigError, InputTypeError
from recurrentkit.study import data
from recurrentkit.study.cells import StudyGRUCell
from recurrentkit.study.lm import CharLM
from recurrentkit.study.sample import Sample, generate, stepwise_loss, teacher_forced_loss


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


# -- round 2: the step-wise loss carried as sampling carries it, and the samplers --------


def study_model(routing: str, dropout: float = 0.0) -> CharLM:
    """A small model of the study's own cell (dropout on the carried state), float64."""
    torch.manual_seed(1)
    cells = [StudyGRUCell(6, 8, dropout), StudyGRUCell(8, 8, dropout)]
    return CharLM(rk.Stack(cells, routing, batch_first=True), 28, 6).double()


NAMES = ["anna", "bob", "emmeline", "zed", "olivia"]


@pytest.mark.parametrize("routing", ["independent", "shared", "handoff"])
def test_the_pad_first_stepwise_loss_is_the_samplers_carry(routing: str) -> None:
    model = study_model(routing)
    x, y = data.encode(NAMES, "seed", 16)
    got = stepwise_loss(model, x, y, start_token=data.PAD)
    # By hand: the sampler's first call steps <PAD> from zeros, then each letter.
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(NAMES)):
            _, state = model.step(torch.tensor([data.PAD]), None)
            for t in range(x.shape[1]):
                logits, state = model.step(x[i : i + 1, t], state)
                if y[i, t] != -100:
                    total -= float(torch.log_softmax(logits[0], -1)[y[i, t]])
                    count += 1
    assert got == pytest.approx(total / count, abs=1e-12)
    # It differs from the zero-start loss (the PAD step moves the state).
    assert abs(got - stepwise_loss(model, x, y)) > 1e-6


@pytest.mark.parametrize("routing", ["independent", "shared"])
def test_for_a_causal_policy_the_pad_first_loss_is_the_teacher_forced_loss_of_pad_plus_name(
    routing: str,
) -> None:
    model = study_model(routing)
    x, y = data.encode(NAMES, "seed", 16)
    pad = torch.full((x.shape[0], 1), data.PAD, dtype=x.dtype)
    ignore = torch.full((y.shape[0], 1), -100, dtype=y.dtype)
    tf = teacher_forced_loss(model, torch.cat([pad, x], 1), torch.cat([ignore, y], 1))
    assert stepwise_loss(model, x, y, start_token=data.PAD) == pytest.approx(tf, abs=1e-12)


def test_the_prefix_sampler_equals_the_step_sampler_for_a_causal_policy() -> None:
    model = study_model("independent")
    step = generate(model, 30, max_steps=8, seed=2)
    assert generate(model, 30, max_steps=8, seed=2, sampler="prefix") == step


def test_the_prefix_sampler_differs_under_handoff() -> None:
    model = study_model("handoff")
    step = generate(model, 60, max_steps=8, seed=2)
    prefix = generate(model, 60, max_steps=8, seed=2, sampler="prefix")
    # The first draw is the same (a prefix of one token is one step); later ones differ.
    assert [s.tokens[0] for s in step] == [s.tokens[0] for s in prefix]
    assert step != prefix


def test_greedy_decoding_takes_the_argmax_whatever_the_seed() -> None:
    model = study_model("independent")
    a = generate(model, 5, max_steps=6, seed=0, greedy=True)
    assert a == generate(model, 5, max_steps=6, seed=9, greedy=True, temperature=0.3)
    assert len({s.tokens for s in a}) == 1  # one start token, no randomness: one sample
    idx, state, want = torch.tensor([data.PAD]), None, []
    with torch.no_grad():
        for _ in range(6):
            logits, state = model.step(idx, state)
            idx = logits.argmax(-1)
            want.append(int(idx))
            if want[-1] == data.END:
                break
    assert list(a[0].tokens) == want


def test_sampling_in_train_mode_turns_dropout_on_reproducibly() -> None:
    model = study_model("independent", dropout=0.5)
    model.eval()
    rng = torch.get_rng_state()
    train = generate(model, 40, max_steps=8, seed=1, mode="train")
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is left alone
    assert not model.training  # the mode is restored
    assert train == generate(model, 40, max_steps=8, seed=1, mode="train")
    assert train != generate(model, 40, max_steps=8, seed=1)  # eval: no dropout


def test_bad_sampling_options() -> None:
    model = make()
    with pytest.raises(ConfigError, match="sampler"):
        generate(model, 2, sampler="beam")
    with pytest.raises(ConfigError, match="mode"):
        generate(model, 2, mode="test")
    with pytest.raises(InputTypeError, match="greedy"):
        generate(model, 2, greedy=1)  # type: ignore[arg-type]
    x, y = data.encode(["anna"])
    with pytest.raises(ConfigError, match="start_token"):
        stepwise_loss(model, x, y, start_token=99)


def test_raw_keeps_the_pad_draws_that_text_drops() -> None:
    s = Sample("anna", True, (2, 15, 0, 15, 2, 1), 1)
    assert (s.text, s.raw) == ("anna", "an_na")  # "an_na" is no training name
    assert Sample("", True, (1,), 0).raw == ""  # "." first: empty
    assert Sample("", True, (0, 0, 1), 2).raw == "__"  # only <PAD>: not empty
    model = make()
    for sample in generate(model, 30, max_steps=6, seed=1):
        assert sample.raw.replace("_", "") == sample.text
        assert sample.raw.count("_") == sample.pad_count
