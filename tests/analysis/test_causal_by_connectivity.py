"""is_causal_by_connectivity(): every causal policy passes, handoff under teacher forcing fails."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from recurrentkit.analysis import connectivity, connectivity_violation, is_causal_by_connectivity

X = torch.randint(0, 6, (2, 5), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("routing", ["independent", "shared", "residual", "cross_layer"])
def test_causal_policies_pass_exactly(lm, routing: str) -> None:
    assert connectivity_violation(lm(routing), X) == 0.0
    assert is_causal_by_connectivity(lm(routing, cell="lstm"), X)


def test_handoff_fails_under_teacher_forcing(lm) -> None:
    model = lm("handoff")
    assert not model.training
    assert connectivity_violation(model, X) > 1e-6
    assert not is_causal_by_connectivity(model, X)
    assert is_causal_by_connectivity(model, X, atol=1e6)


class PeeksInAMinorLogit(nn.Module):
    """Logit 0 always wins and is causal; logit 1 sums the embeddings of *later* inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, 2)

    def forward(self, idx: Tensor) -> Tensor:
        e = self.embed(idx)  # (B, T, 2)
        future = e.flip(1).cumsum(1).flip(1)  # (B, T, 2): sum over s >= t
        return torch.cat([100 + 0.01 * e[..., :1], future[..., :1], e[..., 1:]], dim=-1)


def test_a_leak_in_any_logit_is_seen() -> None:
    model, x = PeeksInAMinorLogit(), torch.tensor([[0, 1, 2, 3]])
    assert bool((connectivity(model, x).triu(1) == 0).all())  # the top class looks causal
    assert not is_causal_by_connectivity(model, x)  # the random projection sees logit 1
