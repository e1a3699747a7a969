r"""A small, exact trainer for makemore-style models: ``model(x, y) -> (logits, loss)``.

What it guarantees:

- **Seeded and resumable.** Shuffling is a function of ``(seed, epoch)``; the
  checkpoint holds the model, the optimizer, the RNG state and the position inside
  the epoch, so a stopped run resumed with ``resume=True`` ends bit-identical (on
  CPU) to one that never stopped.
- **Safe checkpoints.** Written atomically (temporary file, ``fsync``,
  ``os.replace``): a process killed at any moment leaves the previous checkpoint or
  the new one, never a partial file (the temporary file a killed write leaves behind
  is removed by the next run on that checkpoint). They hold only tensors and plain
  data, load with ``torch.load(weights_only=True)``, and are verified (CRC-32 of
  every record) before loading, so a truncated or corrupted file is refused.
- **Clean stops.** Ctrl-C finishes the current batch, writes a checkpoint and returns
  with ``status="interrupted"`` (a second Ctrl-C aborts at once). A NaN or infinite
  loss, or gradient, raises :class:`TrainingDiverged` naming the epoch and batch before
  the update is applied, and the last good checkpoint is never overwritten.
- **Scale.** Under ``torchrun`` (an initialised ``torch.distributed`` process group)
  the model is wrapped in ``DistributedDataParallel``, each process reads its share
  of every epoch (``DistributedSampler``) and only rank 0 writes.

Losses: an epoch's training loss is the mean of its batch losses; the validation loss
is the token-weighted mean over the whole validation set (targets ``-100`` ignored),
computed in eval mode.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import pickle
import signal
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch import distributed as dist
from torch.utils.data.distributed import DistributedSampler

from recurrentkit._validation import check_bool, check_choice, check_int, describe
from recurrentkit.errors import ConfigError, InputTypeError, RecurrentKitError, ShapeError
from recurrentkit.study.data import IGNORE_INDEX

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT = "recurrentkit.train/1"  # the checkpoint format's name, kept: saved files carry it
OPTIMIZERS = ("adam", "adamw")
# Settings a resumed run must share with the checkpoint (epochs may grow).
_RESUME_KEYS = ("batch_size", "lr", "optimizer", "weight_decay", "seed")


class TrainingDiverged(RecurrentKitError, FloatingPointError):
    """The loss or a gradient became NaN or infinite; training stopped before the update
    and no checkpoint was written."""


@dataclass
class TrainConfig:
    """Settings of one training run.

    Attributes:
        epochs: passes over the training set.
        batch_size: sequences per step (per process under ``torchrun``).
        lr: learning rate.
        optimizer: ``"adam"`` or ``"adamw"``.
        weight_decay: AdamW's decoupled decay (Adam: L2 added to the gradient).
        seed: seeds shuffling and the RNG (dropout) of a fresh run.
        eval_batch_size: sequences per forward pass when computing the validation loss.
        checkpoint: where to write the checkpoint (``None``: no checkpoints).
        progress: show a progress bar per epoch (needs ``tqdm``; silently off without it).
    """

    epochs: int
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    eval_batch_size: int = 1024
    checkpoint: str | Path | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, os.PathLike)):
            raise InputTypeError(
                "checkpoint", "a file path (str or Path) or None", describe(self.checkpoint)
            )
        check_bool("progress", self.progress)
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size)
        check_int("eval_batch_size", self.eval_batch_size)
        check_int("seed", self.seed, minimum=0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputTypeError(name, "a float", describe(v))
            if not math.isfinite(v) or v < 0 or (name == "lr" and v == 0):
                raise ConfigError(name, "a finite float > 0" if name == "lr" else ">= 0", v)


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per completed epoch: ``epoch`` (1-based), ``train_loss``,
            ``val_loss``, ``seconds``.
        best_epoch: the epoch with the lowest validation loss (0 if none completed).
        best_val_loss: that loss (``inf`` if no epoch completed).
        status: ``"completed"`` or ``"interrupted"``.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    status: str = "completed"

    @classmethod
    def from_history(cls, history: list[dict[str, float]], status: str) -> TrainResult:
        if not history:
            return cls([], 0, math.inf, status)
        best = min(history, key=lambda h: h["val_loss"])
        return cls(list(history), int(best["epoch"]), float(best["val_loss"]), status)


# -- checkpoints --------------------------------------------------------------------------


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically: temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the previous file or the new one, never a
    partial file.

    Example:
        >>> import tempfile, torch
        >>> p = tempfile.mkdtemp() + "/ck.pt"
        >>> save_checkpoint(p, {"w": torch.ones(2)})
        >>> load_checkpoint(p)["w"]
        tensor([1., 1.])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code can run).

    The file is verified first: a checkpoint is a zip archive whose every record
    carries a CRC-32 (torch writes them), so a truncated or corrupted file is refused
    rather than loaded with wrong weights (``torch.load`` itself does not check them).
    A file holding Python objects other than tensors and plain data (a pickle that
    could run code) is refused and nothing of it runs.

    Raises:
        InputTypeError: ``path`` is not a ``str`` or ``Path``.
        ConfigError: the file is missing, truncated, corrupted, not a checkpoint, or
            holds objects that ``weights_only=True`` refuses.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputTypeError("path", "a checkpoint file path (str or Path)", describe(path))
    path = Path(path)
    where = repr(str(path))
    if not path.is_file():
        raise ConfigError("checkpoint", "an existing checkpoint file", f"{where} (not found)")
    damage = _damage(path)
    if damage is not None:
        expected = "a complete checkpoint written by recurrentkit.study.train"
        raise ConfigError("checkpoint", expected, f"{where} ({damage})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(
            "checkpoint",
            "tensors and plain data only (loaded with weights_only=True)",
            f"{where}, which holds other Python objects: refused, none of it ran (load it with "
            "torch.load(weights_only=False) only if you trust its source)",
        ) from None
    except Exception as e:  # torch raises several types for files it cannot read
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise ConfigError(
            "checkpoint", "a checkpoint written by recurrentkit.study.train", f"{where} ({first})"
        ) from None


def _nonfinite_gradient(model: nn.Module) -> str | None:
    """The name of a parameter whose gradient holds NaN or inf, or ``None``."""
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(g).all() for _, g in named])  # one sync
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0, 0])][0]


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of writes to ``path`` that were killed halfway.

    ``save_checkpoint`` names them ``.<name>.<random>.tmp`` beside ``path``; a run about
    to write ``path`` is their only possible owner.
    """
    if not path.parent.is_dir():
        return
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _damage(path: Path) -> str | None:
    """Why ``path`` is not an intact zip archive (every record's CRC-32 checked), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as e:  # a damaged archive fails in many ways
        text = str(e).strip().splitlines()[0][:80] if str(e).strip() else type(e).__name__
        return f"not a complete zip archive: truncated or not a checkpoint; {text}"
    if bad is not None:
        return f"record {bad!r} fails its CRC-32 check: the file is corrupted"
    return None


# -- the loop ----------------------------------------------------------------------------


class _StopFlag:
    """Ctrl-C sets a flag (the loop stops after the current batch); a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


def _check_pair(name: str, pair: object) -> tuple[Tensor, Tensor]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise InputTypeError(name, "a pair (x, y) of tensors", describe(pair))
    x, y = pair
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise InputTypeError(name, "a pair (x, y) of tensors", f"({describe(x)}, {describe(y)})")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ShapeError(
            name,
            "x and y with the same, non-zero first dimension",
            f"{tuple(x.shape)} and {tuple(y.shape)}",
        )
    return x, y


def _loss_of(result: object) -> Tensor:
    """The loss in what ``model(x, y)`` returned: ``(logits, loss)``, a scalar float loss."""
    loss = result[1] if isinstance(result, (tuple, list)) and len(result) == 2 else None
    if not isinstance(loss, Tensor) or loss.dim() != 0 or not loss.is_floating_point():
        raise InputTypeError(
            "model(x, y)",
            "a pair (logits, loss) with a scalar floating-point loss tensor",
            describe(result) if loss is None else f"a loss that is {describe(loss)}",
        )
    return loss


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Token-weighted mean loss of ``model(x, y)`` over a whole set, in eval mode.

    Each batch's loss (a token mean) is weighted by its number of targets that are
    not ``-100``, so the result is the mean over every counted target.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for lo in range(0, x.shape[0], batch_size):
            xb, yb = x[lo : lo + batch_size].to(device), y[lo : lo + batch_size].to(device)
            loss = _loss_of(model(xb, yb))
            n = int((yb != IGNORE_INDEX).sum())
            total += float(loss) * n
            count += n
    finally:
        model.train(was_training)
    return total / count if count else math.nan


def _batches(n: int, epoch: int, config: TrainConfig, rank: int, world: int) -> list[Tensor]:
    """This process's index batches for ``epoch``: a function of (seed, epoch) only."""
    indices: Any = range(n)  # a sized sequence is all the sampler reads
    sampler: DistributedSampler[int] = DistributedSampler(
        indices, num_replicas=world, rank=rank, shuffle=True, seed=config.seed
    )
    sampler.set_epoch(epoch)
    order = torch.tensor(list(iter(sampler)), dtype=torch.long)
    return list(order.split(config.batch_size))


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is in the [study] extra
            enabled = False
        else:
            return tqdm(total=total, initial=initial, desc=desc, leave=False, unit="batch")
    return None


def fit(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    config: TrainConfig,
    *,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    r"""Train ``model`` on ``train``, measuring ``val`` after every epoch.

    Args:
        model: a module whose call ``model(x, y)`` returns ``(logits, loss)`` with a
            scalar loss. It stays on its device; batches are moved there.
        train: ``(x, y)`` tensors with one row per sequence.
        val: ``(x, y)`` for the validation loss.
        config: the run's settings.
        resume: continue from ``config.checkpoint`` if that file exists (its settings
            must match; ``epochs`` may be larger). Without a file, start fresh.
        log: called with one line per epoch (rank 0 only).
        on_batch: called as ``on_batch(epoch, batch)`` (0-based) after each completed
            optimizer step; raising ``KeyboardInterrupt`` there acts like Ctrl-C.
        on_epoch: called as ``on_epoch(epoch, val_loss)`` (1-based epoch) on rank 0 after
            each completed epoch, once its checkpoint is written: a place to keep
            snapshots of the model (it must not change the model or the RNG).

    Returns:
        A :class:`TrainResult`: the per-epoch history, best epoch and status.

    Raises:
        TrainingDiverged: a non-finite training loss, gradient or validation loss.
        ConfigError: a checkpoint that does not match the model or the settings.

    Example:
        >>> import torch, recurrentkit as rk
        >>> from recurrentkit.study.lm import CharLM
        >>> from recurrentkit.study import data
        >>> x, y = data.encode(["anna", "bob", "eve", "otto"])
        >>> model = CharLM(rk.Stack([rk.GRUCell(8, 8)], batch_first=True), 28, 8)
        >>> result = fit(model, (x, y), (x, y), TrainConfig(epochs=2, batch_size=2))
        >>> [h["epoch"] for h in result.history], result.status
        ([1, 2], 'completed')
    """
    if not isinstance(config, TrainConfig):
        raise InputTypeError("config", "a TrainConfig", describe(config))
    if not isinstance(model, nn.Module):
        raise InputTypeError("model", "an nn.Module", describe(model))
    x_tr, y_tr = _check_pair("train", train)
    x_va, y_va = _check_pair("val", val)
    if next(model.parameters(), None) is None:
        raise ConfigError("model", "a module with parameters to train", describe(model))
    device = next(model.parameters()).device
    rank, world = _rank_world()
    ckpt = Path(config.checkpoint) if config.checkpoint is not None else None
    if ckpt is not None and rank == 0:
        _remove_stale_temporaries(ckpt)
    settings = {k: v for k, v in asdict(config).items() if k in _RESUME_KEYS}

    optimizer = _make_optimizer(model, config)
    history: list[dict[str, float]] = []
    start_epoch, start_step, partial_sum = 0, 0, 0.0
    if resume and ckpt is not None and ckpt.is_file():
        saved = load_checkpoint(ckpt, map_location=device)
        _restore(saved, model, optimizer, settings, ckpt)
        history = list(saved["history"])
        start_epoch, start_step = int(saved["epoch"]), int(saved["step"])
        if start_epoch > config.epochs:
            raise ConfigError(
                "epochs",
                f"at least {start_epoch} (the checkpoint {str(ckpt)!r} has that many epochs done)",
                config.epochs,
            )
        partial_sum = float(saved["partial_loss_sum"])
        _set_rng_state(saved["rng"], device)
    else:
        torch.manual_seed(config.seed + rank)

    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def payload(epoch: int, step: int, loss_sum: float, rng: dict[str, Any], status: str) -> dict:
        return {
            "format": FORMAT,
            "settings": settings,
            "epochs": config.epochs,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "step": step,
            "partial_loss_sum": loss_sum,
            "history": history,
            "rng": rng,
            "status": status,
        }

    def write(epoch: int, step: int, loss_sum: float, rng: dict[str, Any], status: str) -> None:
        if ckpt is not None and rank == 0:
            save_checkpoint(ckpt, payload(epoch, step, loss_sum, rng, status))

    def saved_where() -> str:
        if ckpt is None:
            return "nothing saved (no checkpoint path was set)"
        return f"state saved to {str(ckpt)!r} — rerun with resume to continue"

    def last_good() -> str:
        if ckpt is None:
            return "no checkpoint is kept (set a checkpoint path)"
        if ckpt.is_file():
            return f"the last good checkpoint {str(ckpt)!r} was kept"
        return "no checkpoint had been written yet"

    n_train = x_tr.shape[0]
    with _StopFlag() as stop:
        for epoch in range(start_epoch, config.epochs):
            batches = _batches(n_train, epoch, config, rank, world)
            first = start_step if epoch == start_epoch else 0
            loss_sum = partial_sum if epoch == start_epoch else 0.0
            bar = _progress(
                len(batches),
                first,
                f"epoch {epoch + 1}/{config.epochs}",
                config.progress and rank == 0,
            )
            t0 = time.perf_counter()
            net.train()
            step = first
            interrupted = False
            try:
                for step in range(first, len(batches)):
                    rng_before = _rng_state(device)
                    try:
                        loss_value, stop_all = _forward_backward(
                            net,
                            optimizer,
                            x_tr,
                            y_tr,
                            batches[step],
                            device,
                            stop.requested,
                            world,
                        )
                    except KeyboardInterrupt:
                        # Nothing of this batch was applied: save the state before it.
                        write(epoch, step, loss_sum, rng_before, "interrupted")
                        interrupted = True
                        break
                    if not math.isfinite(loss_value):
                        raise TrainingDiverged(
                            "loss",
                            "a finite value",
                            f"{loss_value} at epoch {epoch + 1}, batch {step + 1} of "
                            f"{len(batches)}; training stopped and {last_good()} — lower the "
                            "learning rate, or resume from the checkpoint",
                        )
                    bad_grad = _nonfinite_gradient(model)
                    if bad_grad is not None:  # a finite loss can still have NaN gradients
                        raise TrainingDiverged(
                            "gradient",
                            "finite values",
                            f"NaN or inf in the gradient of {bad_grad} at epoch {epoch + 1}, "
                            f"batch {step + 1} of {len(batches)}; training stopped before the "
                            f"update and {last_good()} — lower the learning rate, or resume "
                            "from the checkpoint",
                        )
                    # A KeyboardInterrupt inside the update (a second Ctrl-C) propagates:
                    # the parameters may be half-updated, so nothing is written.
                    optimizer.step()
                    loss_sum += loss_value
                    if bar is not None:
                        bar.update(1)
                        if step % 10 == 0:
                            bar.set_postfix(loss=f"{loss_value:.4f}")
                    try:
                        if on_batch is not None:
                            on_batch(epoch, step)
                    except KeyboardInterrupt:
                        stop_all = True
                    if stop_all or stop.requested:
                        write(epoch, step + 1, loss_sum, _rng_state(device), "interrupted")
                        interrupted = True
                        break
            finally:
                if bar is not None:
                    bar.close()
            if interrupted:
                if log is not None and rank == 0:
                    log(f"interrupted at epoch {epoch + 1}, batch {step + 1}; {saved_where()}")
                return TrainResult.from_history(history, "interrupted")
            val_loss = evaluate(model, x_va, y_va, config.eval_batch_size)
            if not math.isfinite(val_loss):
                raise TrainingDiverged(
                    "val_loss",
                    "a finite value",
                    f"{val_loss} after epoch {epoch + 1}; training stopped and {last_good()}",
                )
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(1, len(batches)),
                "val_loss": val_loss,
                "seconds": time.perf_counter() - t0,
            }
            history.append(record)
            done = epoch + 1 == config.epochs
            write(epoch + 1, 0, 0.0, _rng_state(device), "completed" if done else "running")
            if on_epoch is not None and rank == 0:
                on_epoch(epoch + 1, val_loss)
            if log is not None and rank == 0:
                log(
                    f"epoch {epoch + 1}/{config.epochs}  train {record['train_loss']:.4f}  "
                    f"val {val_loss:.4f}  ({record['seconds']:.1f} s)"
                )
            if not done and _any_process(stop.requested, world, device):
                # Ctrl-C during the validation pass: the epoch's checkpoint is written.
                if log is not None and rank == 0:
                    log(f"interrupted after epoch {epoch + 1}; {saved_where()}")
                return TrainResult.from_history(history, "interrupted")
    return TrainResult.from_history(history, "completed")


def _any_process(flag: bool, world: int, device: torch.device) -> bool:
    """``flag`` or-ed over every process (all of them must stop at the same step)."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def _forward_backward(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    idx: Tensor,
    device: torch.device,
    stop_requested: bool,
    world: int,
) -> tuple[float, bool]:
    """Gradients of one batch; returns (loss averaged over processes, any process stopping)."""
    xb, yb = x[idx].to(device), y[idx].to(device)  # (B, T)
    optimizer.zero_grad(set_to_none=True)
    loss = _loss_of(net(xb, yb))
    loss.backward()
    value = float(loss.detach())
    if world == 1:
        return value, stop_requested
    stats = torch.tensor([value, float(stop_requested)], dtype=torch.float64, device=device)
    dist.all_reduce(stats)
    return float(stats[0]) / world, bool(stats[1] > 0)


def _restore(
    saved: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: dict[str, Any],
    path: Path,
) -> None:
    if saved.get("format") != FORMAT:
        raise ConfigError("checkpoint", f"format {FORMAT!r}", f"{saved.get('format')!r} in {path}")
    for key, value in settings.items():
        if saved["settings"].get(key) != value:
            raise ConfigError(
                "resume",
                f"a checkpoint made with {key}={value!r} (this run's setting)",
                f"{key}={saved['settings'].get(key)!r} in {str(path)!r} — use the same settings "
                "or another checkpoint path",
            )
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(
            "resume", "a checkpoint of this model (same architecture)", f"{str(path)!r}: {first}"
        ) from None
    optimizer.load_state_dict(saved["optimizer"])
