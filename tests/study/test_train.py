"""recurrentkit.study.train: determinism, exact resume, atomic checkpoints, clean stops."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

import recurrentkit as rk
from recurrentkit.study import data
from recurrentkit.study.cells import StudyGRUCell
from recurrentkit.study.lm import CharLM
from recurrentkit.study.train import (
    TrainConfig,
    TrainingDiverged,
    fit,
    load_checkpoint,
    save_checkpoint,
)

WORDS = data.load_words()[:96]
TRAIN = data.encode(WORDS[:80])
VAL = data.encode(WORDS[80:])


def make(seed: int = 0) -> CharLM:
    """Two layers with dropout on the carried state: the RNG matters for exactness."""
    torch.manual_seed(seed)
    cells = [StudyGRUCell(6, 8, dropout=0.3), StudyGRUCell(8, 8, dropout=0.3)]
    return CharLM(rk.Stack(cells, "shared", batch_first=True), 28, 6)


def config(tmp_path: Path | None = None, **kw: object) -> TrainConfig:
    base: dict = {"epochs": 2, "batch_size": 16, "lr": 1e-2, "seed": 0}
    if tmp_path is not None:
        base["checkpoint"] = tmp_path / "ck.pt"
    base.update(kw)
    return TrainConfig(**base)


def same_params(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def losses(result: object) -> list[tuple[float, float]]:
    return [(h["train_loss"], h["val_loss"]) for h in result.history]  # type: ignore[attr-defined]


def test_training_learns_and_records_history() -> None:
    result = fit(make(), TRAIN, VAL, config(epochs=3))
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    best = min(result.history, key=lambda h: h["val_loss"])
    assert (result.best_epoch, result.best_val_loss) == (best["epoch"], best["val_loss"])
    assert result.status == "completed"


def test_runs_are_deterministic_whatever_ran_before() -> None:
    a, b = make(), make()
    ra = fit(a, TRAIN, VAL, config())
    torch.rand(100)  # disturb the global RNG: fit seeds it
    rb = fit(b, TRAIN, VAL, config())
    assert same_params(a, b) and losses(ra) == losses(rb)
    c = make()
    fit(c, TRAIN, VAL, config(seed=1))
    assert not same_params(a, c)


@pytest.mark.parametrize("stop_at", [(0, 1), (0, 4), (1, 2)])
def test_resume_after_an_interrupt_is_bit_identical(tmp_path: Path, stop_at: tuple) -> None:
    ref = make()
    r_ref = fit(ref, TRAIN, VAL, config())

    def interrupt(epoch: int, batch: int) -> None:
        if (epoch, batch) == stop_at:
            raise KeyboardInterrupt

    first = make()
    r1 = fit(first, TRAIN, VAL, config(tmp_path), on_batch=interrupt)
    assert r1.status == "interrupted"
    assert load_checkpoint(tmp_path / "ck.pt")["status"] == "interrupted"
    second = make(seed=123)  # a different init: everything must come from the checkpoint
    torch.rand(7)
    r2 = fit(second, TRAIN, VAL, config(tmp_path), resume=True)
    assert r2.status == "completed"
    assert same_params(second, ref)
    assert losses(r2) == losses(r_ref)


def test_ctrl_c_stops_after_the_batch_and_resumes_exactly(tmp_path: Path) -> None:
    ref = make()
    fit(ref, TRAIN, VAL, config())
    seen = []

    def ctrl_c(epoch: int, batch: int) -> None:
        seen.append((epoch, batch))
        if (epoch, batch) == (0, 2):
            os.kill(os.getpid(), signal.SIGINT)

    model = make()
    result = fit(model, TRAIN, VAL, config(tmp_path), on_batch=ctrl_c)
    assert result.status == "interrupted" and seen[-1] == (0, 2)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    resumed = make()
    fit(resumed, TRAIN, VAL, config(tmp_path), resume=True)
    assert same_params(resumed, ref)


def test_checkpoint_loads_with_weights_only_and_resume_extends(tmp_path: Path) -> None:
    model = make()
    fit(model, TRAIN, VAL, config(tmp_path, epochs=1))
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert ck["status"] == "completed" and ck["epoch"] == 1 and len(ck["history"]) == 1
    assert set(ck) >= {"model", "optimizer", "rng", "settings", "history"}
    ref = make()
    fit(ref, TRAIN, VAL, config(epochs=2))
    more = make()
    result = fit(more, TRAIN, VAL, config(tmp_path, epochs=2), resume=True)
    assert same_params(more, ref) and len(result.history) == 2
    again = fit(make(), TRAIN, VAL, config(tmp_path, epochs=2), resume=True)  # nothing left
    assert losses(again) == losses(result)


def test_resume_rejects_other_settings_and_models(tmp_path: Path) -> None:
    fit(make(), TRAIN, VAL, config(tmp_path, epochs=1))
    with pytest.raises(rk.ConfigError, match="lr"):
        fit(make(), TRAIN, VAL, config(tmp_path, lr=0.5), resume=True)
    other = CharLM(rk.Stack([StudyGRUCell(6, 8)], batch_first=True), 28, 6)
    with pytest.raises(rk.ConfigError, match="architecture"):
        fit(other, TRAIN, VAL, config(tmp_path), resume=True)
    fit(make(), TRAIN, VAL, config(tmp_path, epochs=2), resume=True)  # more epochs: fine
    with pytest.raises(rk.ConfigError, match="epochs"):
        fit(make(), TRAIN, VAL, config(tmp_path, epochs=1), resume=True)  # fewer than done


class Poisoned(nn.Module):
    """A makemore-style model whose loss turns NaN at one call."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.inner, self.at, self.calls = make(), at, 0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, loss = self.inner(x, y)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                loss = loss * float("nan")
        return logits, loss


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    model = Poisoned(at=7)  # 5 batches per epoch: batch 2 of epoch 2
    before: dict = {}

    def snapshot(epoch: int, batch: int) -> None:
        if (epoch, batch) == (1, 0):
            before["bytes"] = (tmp_path / "ck.pt").read_bytes()

    with pytest.raises(TrainingDiverged, match=r"nan at epoch 2, batch 2 of 5") as e:
        fit(model, TRAIN, VAL, config(tmp_path), on_batch=snapshot)
    assert "last good checkpoint" in str(e.value) and "\n" not in str(e.value)
    assert (tmp_path / "ck.pt").read_bytes() == before["bytes"]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no NaN step applied
    assert load_checkpoint(tmp_path / "ck.pt")["epoch"] == 1


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"v": torch.tensor([1.0])})

    class Unpicklable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"v": torch.tensor([2.0]), "bad": Unpicklable()})
    assert load_checkpoint(path)["v"].item() == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no temp file left

    def crash(*args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"v": torch.tensor([3.0])})
    monkeypatch.undo()
    assert load_checkpoint(path)["v"].item() == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


def test_bad_checkpoints_and_configs(tmp_path: Path) -> None:
    with pytest.raises(rk.ConfigError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(rk.ConfigError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    for bad in ({"epochs": 0}, {"lr": 0.0}, {"optimizer": "sgd"}, {"weight_decay": -1.0}):
        with pytest.raises(rk.RecurrentKitError):
            config(**bad)
    with pytest.raises(rk.ShapeError):
        fit(make(), (TRAIN[0], TRAIN[1][:3]), VAL, config())


def test_adamw_and_progress_bar_run(capsys: pytest.CaptureFixture[str]) -> None:
    lines: list[str] = []
    result = fit(
        make(),
        TRAIN,
        VAL,
        config(epochs=1, optimizer="adamw", weight_decay=0.01, progress=True),
        log=lines.append,
    )
    assert result.status == "completed" and lines and lines[0].startswith("epoch 1/1")


def test_ctrl_c_during_validation_stops_at_the_epoch_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recurrentkit.study.train as train_module

    original = train_module.evaluate

    def interrupted_evaluate(*args: object, **kw: object) -> float:
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "evaluate", interrupted_evaluate)
    result = fit(make(), TRAIN, VAL, config(tmp_path))
    assert result.status == "interrupted" and len(result.history) == 1
    monkeypatch.undo()
    ref = make()
    fit(ref, TRAIN, VAL, config())
    resumed = make()
    fit(resumed, TRAIN, VAL, config(tmp_path), resume=True)
    assert same_params(resumed, ref)


def test_on_epoch_sees_every_epoch_and_changes_nothing(tmp_path: Path) -> None:
    seen: list[tuple[int, float]] = []
    plain = make()
    hooked = make()
    a = fit(plain, TRAIN, VAL, config(epochs=3))
    b = fit(hooked, TRAIN, VAL, config(epochs=3), on_epoch=lambda e, v: seen.append((e, v)))
    assert seen == [(h["epoch"], h["val_loss"]) for h in b.history]
    assert losses(a) == losses(b) and same_params(plain, hooked)
