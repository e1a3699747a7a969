"""The original's shared setup, written literally, is recurrentkit's ``handoff``.

The original notebook's layers each loop the cell over the whole padded sequence and
return their state after the last (padded) step; its shared-memory snippet hands layer 2
layer 1's returned state (``gru_layer_2(h1, h_prev_1)``) and, in GRU-γ, layer 3 layer 2's
(``gru_layer_3(h2, h_prev_2)``). Training calls ``model(xb)`` from a zero state on the
padded batch; sampling calls ``model(x, h_prev)`` with one token (T = 1) and the carried
``(h_prev_1, h_prev_2[, h_prev_3])``, from ``<PAD>``. These tests write those models over
the study's own cell and check that they compute ``Stack(..., "handoff")``'s forward and
step, in float64, to 1e-12.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import recurrentkit as rk
from recurrentkit.routing import LeakWarning
from recurrentkit.study import data
from recurrentkit.study.cells import StudyGRUCell
from recurrentkit.study.lm import CharLM
from recurrentkit.study.sample import generate

NAMES = ["anna", "bob", "emmeline", "zed", "olivia", "christopher"]
TOL = 1e-12


class LiteralLayer(nn.Module):
    """The original's GRU layer: the cell looped over every position of ``x``; returns the
    outputs and the state after the last position (a padded one for a short name)."""

    def __init__(self, cell: StudyGRUCell) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor, h_prev: Tensor) -> tuple[Tensor, Tensor]:
        outs, h = [], h_prev
        for t in range(x.shape[1]):
            h, _ = self.cell(x[:, t], h)  # (B, H)
            outs.append(h)
        return torch.stack(outs, dim=1), h  # (B, T, H), (B, H)


class LiteralShared(nn.Module):
    """The original's Setup-1 ("shared memory"), GRU-β (2 layers) or GRU-γ (3 layers),
    wired as its snippet: ``layer_2(h1, h_prev_1)``, ``layer_3(h2, h_prev_2)``. It
    borrows a ``CharLM``'s embedding, cells, norm and head (the same parameters)."""

    def __init__(self, lm: CharLM) -> None:
        super().__init__()
        self.embedding, self.norm, self.head = lm.embedding, lm.norm, lm.head
        self.layers = nn.ModuleList(LiteralLayer(c) for c in lm.stack.cells)

    def forward(
        self, x: Tensor, h_prev: tuple[Tensor, ...] | None = None
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        e = self.embedding(x)  # (B, T, E)
        H = self.layers[0].cell.hidden_size
        if h_prev is None:
            h_prev = tuple(e.new_zeros(x.shape[0], H) for _ in self.layers)
        h1, h_prev_1 = self.layers[0](e, h_prev[0])
        h2, h_prev_2 = self.layers[1](h1, h_prev_1)  # the snippet: layer 1's state
        states = [h_prev_1, h_prev_2]
        top = h2
        if len(self.layers) == 3:
            h3, h_prev_3 = self.layers[2](h2, h_prev_2)  # GRU-γ: layer 2's state
            states.append(h_prev_3)
            top = h3
        return self.head(self.norm(top)), tuple(states)


def handoff_lm(layers: int, layer_norm: bool, dropout: float = 0.0) -> CharLM:
    torch.manual_seed(layers)
    E, H = 5, 7
    cells = [StudyGRUCell(E if k == 0 else H, H, dropout) for k in range(layers)]
    stack = rk.Stack(cells, "handoff", batch_first=True)
    lm = CharLM(stack, data.vocab_size("seed"), E, layer_norm=layer_norm).double()
    if layer_norm:  # move LayerNorm off its identity initialisation
        with torch.no_grad():
            lm.norm.weight.uniform_(0.5, 1.5)
            lm.norm.bias.uniform_(-0.5, 0.5)
    return lm


MODELS = [pytest.param(2, False, id="beta"), pytest.param(3, True, id="gamma")]


@pytest.mark.parametrize(("layers", "layer_norm"), MODELS)
def test_the_training_call_is_handoffs_forward(layers: int, layer_norm: bool) -> None:
    lm = handoff_lm(layers, layer_norm).eval()
    literal = LiteralShared(lm)
    x, y = data.encode(NAMES, "seed", 16)  # (B, 16): each name, then <PAD> = 0
    want, states = literal(x)
    got, _ = lm(x)
    assert (got - want).abs().max() <= TOL
    # The leak, literally: layer 2's first output already depends on the last letters.
    x2 = x.clone()
    x2[:, -1] = data.stoi["q"]
    assert not torch.allclose(literal(x2)[0][:, 0], want[:, 0])
    # And the final states are handoff's, layer by layer.
    _, finals = lm.stack(lm.embedding(x))
    for k in range(layers):
        assert (finals[k] - states[k]).abs().max() <= TOL


@pytest.mark.parametrize(("layers", "layer_norm"), MODELS)
def test_the_training_call_matches_in_train_mode_too(layers: int, layer_norm: bool) -> None:
    lm = handoff_lm(layers, layer_norm, dropout=0.3).train()
    literal = LiteralShared(lm)
    x, _ = data.encode(NAMES, "seed", 16)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        want, _ = literal(x)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        with pytest.warns(LeakWarning):  # handoff in training mode says it leaks
            got, _ = lm(x)  # layer-major, as the literal loop: the same dropout masks
    assert (got - want).abs().max() <= TOL


@pytest.mark.parametrize(("layers", "layer_norm"), MODELS)
def test_the_t1_sampler_is_handoffs_step(layers: int, layer_norm: bool) -> None:
    lm = handoff_lm(layers, layer_norm).eval()
    literal = LiteralShared(lm)
    g = torch.Generator().manual_seed(0)
    path = torch.randint(2, 28, (4, 12), generator=g)  # (B, S): letters fed after <PAD>
    path = torch.cat([torch.full((4, 1), data.PAD), path], dim=1)
    h_prev = None
    state = None
    with torch.no_grad():
        for t in range(path.shape[1]):
            want, h_prev = literal(path[:, t : t + 1], h_prev)  # T = 1, carried states
            got, state = lm.step(path[:, t], state)
            assert (got - want[:, 0]).abs().max() <= TOL
            for k in range(layers):
                assert (state[k] - h_prev[k]).abs().max() <= TOL


def literal_generate(literal: LiteralShared, n: int, seed: int, steps: int = 20) -> list[tuple]:
    """The original's ``generate_names`` over the literal model: from ``<PAD>``, T = 1 calls
    with the carried states, a categorical draw per step (by inverse CDF from the same
    uniforms ``generate`` draws), at most ``steps`` ids, stop at ``.``."""
    u = torch.rand(n, steps, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = []
    with torch.no_grad():
        for i in range(n):
            x, h_prev, ids = torch.tensor([[data.PAD]]), None, []
            for t in range(steps):
                logits, h_prev = literal(x, h_prev)
                cdf = torch.softmax(logits[0, -1].double(), -1).cumsum(-1)
                nxt = int(torch.searchsorted(cdf, u[i, t : t + 1] * cdf[-1:], right=True))
                ids.append(min(nxt, cdf.shape[0] - 1))
                if ids[-1] == data.END:
                    break
                x = torch.tensor([[ids[-1]]])
            out.append(tuple(ids))
    return out


@pytest.mark.parametrize(("layers", "layer_norm"), MODELS)
def test_the_originals_sampler_draws_what_generate_draws(layers: int, layer_norm: bool) -> None:
    lm = handoff_lm(layers, layer_norm).eval()
    samples = generate(lm, 12, seed=4)
    assert [s.tokens for s in samples] == literal_generate(LiteralShared(lm), 12, seed=4)
