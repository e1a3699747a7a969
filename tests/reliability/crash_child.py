"""A tiny, deterministic training run that the crash test kills with SIGKILL and resumes.

Usage: ``python crash_child.py CHECKPOINT EPOCHS PAUSE``. It resumes from CHECKPOINT if
the file exists and prints, flushed, one line per event the parent watches:

- ``STEP e b``: optimizer step ``b`` of epoch ``e`` (0-based) is done;
- ``SAVED e bytes sha256``: the checkpoint after epoch ``e`` (1-based) is on disk;
- ``WRITING``: half of a checkpoint is written (only with ``PAUSE > 0``: the write then
  sleeps ``PAUSE`` seconds before the second half, so a kill lands inside it);
- ``DONE``: training finished.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import recurrentkit as rk
from recurrentkit.study import data
from recurrentkit.study.cells import StudyGRUCell
from recurrentkit.study.lm import CharLM
from recurrentkit.study.train import TrainConfig, fit


def slow_writes(pause: float) -> None:
    """Make every ``torch.save`` to a file stop halfway for ``pause`` seconds."""
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        blob = buffer.getvalue()
        half = len(blob) // 2
        f.write(blob[:half])
        f.flush()
        os.fsync(f.fileno())
        print("WRITING", flush=True)
        time.sleep(pause)
        f.write(blob[half:])

    torch.save = save  # type: ignore[assignment]


def main() -> None:
    checkpoint, epochs, pause = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    torch.set_num_threads(1)
    words = data.load_words()[:40]
    train, val = data.encode(words[:32]), data.encode(words[32:])
    torch.manual_seed(0)
    # Dropout on the carried state: the RNG state matters for an exact resume.
    cells = [StudyGRUCell(8, 16, dropout=0.2), StudyGRUCell(16, 16, dropout=0.2)]
    model = CharLM(rk.Stack(cells, "shared", batch_first=True), 28, 8)
    if pause > 0:
        slow_writes(pause)

    def on_batch(epoch: int, batch: int) -> None:
        print(f"STEP {epoch} {batch}", flush=True)

    def log(line: str) -> None:  # called once the epoch's checkpoint is written
        if line.startswith("epoch "):
            epoch = int(line.split()[1].split("/")[0])
            blob = checkpoint.read_bytes()
            print(f"SAVED {epoch} {len(blob)} {hashlib.sha256(blob).hexdigest()}", flush=True)

    config = TrainConfig(epochs=epochs, batch_size=8, lr=1e-2, seed=0, checkpoint=checkpoint)
    fit(model, train, val, config, resume=True, log=log, on_batch=on_batch)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
