"""context_accuracy(): a hand-made model whose answers are known, both data protocols."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import recurrentkit as rk
from recurrentkit.analysis import ContextAccuracy, context_accuracy

V = 5


class Ranker(nn.Module):
    """Logits depend on the current id only: id ``v`` ranks ``v+1, v+2, ...`` (mod V) first."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(V, V)
        with torch.no_grad():
            for v in range(V):
                for j in range(1, V + 1):
                    self.table.weight[v, (v + j) % V] = float(V - j)

    def forward(self, idx: Tensor) -> tuple[Tensor, None]:
        return self.table(idx), None  # makemore-style (logits, loss)


# rank of the target = (y - x) mod V: 1 is a top-1 hit, 2 top-2, 3 top-3, 4 a miss
X = torch.tensor([[0, 1, 2, 3], [0, 2, 4, 0], [0, 3, 1, 0]])
Y = torch.tensor([[1, 3, 4, 1], [2, 1, -100, -100], [1, 2, -100, -100]])
# ranks:          [1, 2, 2, 3]   [2, 4]             [1, 4]
EXPECTED = {
    1: [2 / 3, 0 / 3, 0 / 1, 0 / 1],
    2: [3 / 3, 1 / 3, 1 / 1, 0 / 1],
    3: [3 / 3, 1 / 3, 1 / 1, 1 / 1],
}


def test_known_answers() -> None:
    acc = context_accuracy(Ranker(), X, Y)
    assert isinstance(acc, ContextAccuracy)
    assert acc.k == (1, 2, 3)
    assert acc.positions.tolist() == [0, 1, 2, 3] and acc.counts.tolist() == [3, 3, 1, 1]
    for k, expected in EXPECTED.items():
        torch.testing.assert_close(acc.at(k), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(
        acc.overall, torch.tensor([2 / 8, 5 / 8, 6 / 8], dtype=torch.float64)
    )


def test_first_position_shifts_what_position_means() -> None:
    # the seed protocol: column 0 already holds the first letter, so it is position 1
    acc = context_accuracy(Ranker(), X, Y, k=[3, 1], first_position=1)
    assert acc.k == (1, 3)
    assert acc.positions.tolist() == [0, 1, 2, 3, 4] and acc.counts.tolist() == [0, 3, 3, 1, 1]
    assert math.isnan(float(acc.at(1)[0]))
    torch.testing.assert_close(acc.at(1)[1:], torch.tensor(EXPECTED[1], dtype=torch.float64))
    assert acc.to_dict()["top1"][0] is None and acc.to_dict()["overall_top3"] == 6 / 8


def test_protocols_on_names() -> None:
    # "ab" under both protocols with ids . = 1, a = 2, b = 3, start = PAD = 0
    seed_x, seed_y = torch.tensor([[2, 3]]), torch.tensor([[3, 1]])  # a b -> b .
    fixed_x, fixed_y = torch.tensor([[0, 2, 3]]), torch.tensor([[2, 3, 1]])  # <s> a b -> a b .
    seed = context_accuracy(Ranker(), seed_x, seed_y, k=1, first_position=1)
    fixed = context_accuracy(Ranker(), fixed_x, fixed_y, k=1)
    # Ranker's top-1 after id v is v+1: a->b right, b->. wrong (predicts 4), <s>->a wrong (1)
    assert seed.counts.tolist() == [0, 1, 1] and seed.at(1)[1:].tolist() == [1.0, 0.0]
    assert fixed.counts.tolist() == [1, 1, 1] and fixed.at(1).tolist() == [0.0, 1.0, 0.0]


def test_batching_and_trailing_padding_do_not_change_the_result() -> None:
    whole = context_accuracy(Ranker(), X, Y)
    padded_y = torch.cat([Y, torch.full((3, 2), -100)], dim=1)
    padded_x = torch.cat([X, torch.zeros(3, 2, dtype=torch.long)], dim=1)
    one = context_accuracy(Ranker(), padded_x, padded_y, batch_size=1)
    assert one.positions.tolist() == whole.positions.tolist()
    torch.testing.assert_close(one.accuracy, whole.accuracy)
    torch.testing.assert_close(one.counts, whole.counts)


def test_with_a_stack_model(lm) -> None:
    model = lm("shared", tuple_out=True)
    x = torch.randint(0, 6, (7, 5), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 6, (7, 5), generator=torch.Generator().manual_seed(1))
    acc = context_accuracy(model, x, y, k=(1, 6))
    torch.testing.assert_close(acc.at(6), torch.ones(5, dtype=torch.float64))  # top-V: all
    top1 = model(x)[0].argmax(-1) == y  # (N, T)
    torch.testing.assert_close(acc.at(1), top1.double().mean(0))


def test_bad_input() -> None:
    model = Ranker()
    with pytest.raises(rk.InputTypeError, match="x"):
        context_accuracy(model, X.double(), Y)
    with pytest.raises(rk.ShapeError, match="x"):
        context_accuracy(model, X[0], Y[0])
    with pytest.raises(rk.ShapeError, match="y"):
        context_accuracy(model, X, Y[:, :3])
    with pytest.raises(rk.ConfigError, match="k"):
        context_accuracy(model, X, Y, k=0)
    with pytest.raises(rk.InputTypeError, match="k"):
        context_accuracy(model, X, Y, k=[])
    with pytest.raises(rk.ConfigError, match=r"k: expected values in 1\.\.5"):
        context_accuracy(model, X, Y, k=6)
    with pytest.raises(rk.ConfigError, match="y"):
        context_accuracy(model, X, torch.full_like(Y, -100))
    with pytest.raises(rk.ConfigError, match=r"y: expected ids in 0\.\.4"):
        context_accuracy(model, X, Y.where(Y != 4, 9))
    with pytest.raises(rk.ConfigError, match="first_position"):
        context_accuracy(model, X, Y, first_position=-1)
    with pytest.raises(rk.ConfigError, match="k"):
        context_accuracy(model, X, Y, k=(1, 2)).at(3)
