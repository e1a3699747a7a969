"""Non-finite training: a NaN or infinite loss stops the run with a message naming the
step; the last good checkpoint is kept, byte for byte, and resuming from it works."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_harness import add_figure
from torch import Tensor, nn

import recurrentkit as rk
from recurrentkit.study import data
from recurrentkit.study.cells import StudyGRUCell
from recurrentkit.study.lm import CharLM
from recurrentkit.study.train import TrainConfig, TrainingDiverged, fit, load_checkpoint

WORDS = data.load_words()[:40]
TRAIN, VAL = data.encode(WORDS[:32]), data.encode(WORDS[32:])  # 4 batches of 8 per epoch
RESULTS: list[str] = []


def make() -> CharLM:
    torch.manual_seed(0)
    cells = [StudyGRUCell(6, 8, dropout=0.2), StudyGRUCell(8, 8, dropout=0.2)]
    return CharLM(rk.Stack(cells, "shared", batch_first=True), 28, 6)


def config(tmp: Path, epochs: int = 4) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=8, lr=1e-2, checkpoint=tmp / "ck.pt")


class LossAt(nn.Module):
    """Wraps a model; the ``at``-th training loss (1-based) becomes ``value``."""

    def __init__(self, inner: nn.Module, at: int, value: float, *, in_eval: bool = False):
        super().__init__()
        self.inner, self.at, self.value, self.in_eval, self.calls = inner, at, value, in_eval, 0

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits, loss = self.inner(x, y)
        if self.training != self.in_eval and self.at > 0:
            self.calls += 1
            if self.calls == self.at:
                loss = loss + self.value  # keeps the graph: backward runs as it would
        return logits, loss


def digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def poison_weight(model: nn.Module, name: str, epoch: int, batch: int) -> Any:
    """An ``on_batch`` that writes inf into weight ``name`` after step (epoch, batch), as
    a real numerical blow-up would."""

    def hook(e: int, b: int) -> None:
        if (e, b) == (epoch, batch):
            with torch.no_grad():
                model.get_parameter(name).view(-1)[0] = math.inf

    return hook


def healthy() -> nn.Module:
    return LossAt(make(), at=0, value=0.0)  # the wrapper, never firing: same state_dict keys


CASES = {
    # name: (the model, its on_batch, a healthy model of the same architecture,
    #        the expected message, epochs completed before the failure)
    "NaN loss (an output bias became inf)": (
        lambda: (lambda m: (m, poison_weight(m, "head.bias", 1, 0), make))(make()),
        r"loss: expected a finite value, got nan at epoch 2, batch 2 of 4",
        1,
    ),
    "NaN gradient, finite loss (the PAD embedding became inf)": (
        lambda: (lambda m: (m, poison_weight(m, "embedding.weight", 1, 0), make))(make()),
        r"gradient: expected finite values, got NaN or inf in the gradient of "
        r"\S+ at epoch 2, batch 2 of 4",
        1,
    ),
    "+inf training loss": (
        lambda: (LossAt(make(), at=11, value=math.inf), None, healthy),
        r"loss: expected a finite value, got inf at epoch 3, batch 3 of 4",
        2,
    ),
    "-inf training loss": (
        lambda: (LossAt(make(), at=5, value=-math.inf), None, healthy),
        r"loss: expected a finite value, got -inf at epoch 2, batch 1 of 4",
        1,
    ),
    "NaN validation loss": (
        lambda: (LossAt(make(), at=3, value=math.nan, in_eval=True), None, healthy),
        r"val_loss: expected a finite value, got nan after epoch 3",
        2,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_nonfinite_loss_stops_names_the_step_and_keeps_the_last_checkpoint(
    case: str, tmp_path: Path
) -> None:
    build, pattern, done = CASES[case]
    model, hook, fresh = build()
    seen: dict[int, tuple[str, int]] = {}

    def log(line: str) -> None:  # called once an epoch's checkpoint is written
        if line.startswith("epoch "):
            seen[int(line.split()[1].split("/")[0])] = digest(tmp_path / "ck.pt")

    with pytest.raises(TrainingDiverged) as info:
        fit(model, TRAIN, VAL, config(tmp_path), on_batch=hook, log=log)
    message = str(info.value)
    assert re.search(pattern, message), message
    assert "\n" not in message and "last good checkpoint" in message
    ck = tmp_path / "ck.pt"
    kept = load_checkpoint(ck)
    assert kept["epoch"] == done and len(kept["history"]) == done
    assert digest(ck) == seen[done]  # not rewritten, not even touched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]
    assert all(torch.isfinite(t).all() for t in kept["model"].values())
    # Resuming from the kept checkpoint (with a healthy model) ends where an
    # uninterrupted run ends, bit for bit.
    resumed = fresh()
    fit(resumed, TRAIN, VAL, config(tmp_path), resume=True)
    reference = fresh()
    fit(reference, TRAIN, VAL, config(tmp_path / "ref"))
    ra, rb = resumed.state_dict(), reference.state_dict()
    assert ra.keys() == rb.keys() and all(torch.equal(ra[k], rb[k]) for k in ra)
    RESULTS.append(case)
    if len(RESULTS) == len(CASES):
        add_figure(
            "non-finite training",
            f"{len(CASES)}/{len(CASES)} runs stopped with TrainingDiverged naming the step "
            f"({', '.join(CASES)}); the last good checkpoint byte-identical and untouched "
            "after each; resuming from it bit-identical to an uninterrupted run",
        )


def test_divergence_before_any_checkpoint_says_so(tmp_path: Path) -> None:
    model = LossAt(make(), at=1, value=math.nan)
    with pytest.raises(TrainingDiverged, match="epoch 1, batch 1 of 4") as info:
        fit(model, TRAIN, VAL, config(tmp_path))
    assert "no checkpoint had been written yet" in str(info.value)
    assert list(tmp_path.iterdir()) == []
