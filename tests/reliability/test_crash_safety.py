"""Crash safety: a real training run, killed with SIGKILL at random moments and resumed.

``crash_child.py`` trains a tiny two-layer model (dropout on, so the RNG state matters)
for 40 epochs (more for more kills), a checkpoint after every epoch. It is killed ``N`` times
(``RK_CRASH_KILLS``, default 12; seeded): at a random moment during the optimizer steps,
or in the middle of a checkpoint write (the child stops halfway through the file and the
kill lands there). After every kill it checks that a valid checkpoint is on disk and
that it is the last one the child reported complete, or newer; then it resumes. The
run finally completes, and its weights, optimizer state and loss history must equal
those of a run that was never killed, bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from reliability_harness import add_figure

from recurrentkit.errors import RecurrentKitError
from recurrentkit.study.train import load_checkpoint

CHILD = Path(__file__).with_name("crash_child.py")
KILLS = int(os.environ.get("RK_CRASH_KILLS", "12"))
EPOCHS = max(40, 3 * KILLS + 4)  # 4 steps each; a launch is killed within 3 epochs
WRITE_PAUSE = 5.0  # the child sleeps halfway through a write; the kill comes at once


def launch(checkpoint: Path, pause: float = 0.0) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(CHILD), str(checkpoint), str(EPOCHS), str(pause)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def tensors(payload: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a (nested) checkpoint payload, by path."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(payload, torch.Tensor):
        out[prefix] = payload
    elif isinstance(payload, dict):
        for k, v in payload.items():
            out.update(tensors(v, f"{prefix}/{k}"))
    elif isinstance(payload, (list, tuple)):
        for i, v in enumerate(payload):
            out.update(tensors(v, f"{prefix}/{i}"))
    return out


def test_sigkill_at_random_moments_loses_nothing_and_resumes_exactly(tmp_path: Path) -> None:
    rng = random.Random(20240608)
    ckpt = tmp_path / "killed" / "ck.pt"
    ckpt.parent.mkdir()
    reference_ckpt = tmp_path / "uninterrupted" / "ck.pt"
    reference_ckpt.parent.mkdir()
    reference = launch(reference_ckpt)  # runs beside the killed one

    last = (0, 0, "")  # (epoch, bytes, sha256) of the last checkpoint reported complete
    survived, in_write, in_step, lost_bytes, invalid = 0, 0, 0, 0, []
    for k in range(KILLS):
        during_write = rng.random() < 0.4
        proc = launch(ckpt, WRITE_PAUSE if during_write else 0.0)
        steps_before_kill = rng.randint(1, 12)
        steps, killed, writing_seen = 0, False, False
        assert proc.stdout is not None
        for line in proc.stdout:
            word, *rest = line.split()
            if word == "SAVED":
                last = (int(rest[0]), int(rest[1]), rest[2])
            elif word == "STEP":
                steps += 1
                if not during_write and steps >= steps_before_kill:
                    time.sleep(rng.uniform(0.0, 0.01))  # somewhere inside the next step
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    break
            elif word == "WRITING" and during_write:
                writing_seen = True
                time.sleep(rng.uniform(0.0, 0.05))
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        proc.wait(timeout=60)
        assert killed, f"launch {k} ended before its kill: {proc.stderr.read()[-500:]}"  # type: ignore[union-attr]
        assert proc.returncode == -signal.SIGKILL
        # A kill inside a write leaves that write's partial temporary file (the run on
        # the next launch removes it): proof the kill landed where it was aimed.
        partial = [p for p in ckpt.parent.iterdir() if p.suffix == ".tmp"]
        in_write += writing_seen and len(partial) == 1
        in_step += not writing_seen
        # What is on disk now: a valid checkpoint, the last one reported or a newer one.
        if last[0] == 0 and not ckpt.exists():
            survived += 1  # killed before the first checkpoint: nothing to lose yet
            continue
        try:
            saved = load_checkpoint(ckpt)
        except RecurrentKitError as e:
            invalid.append(f"kill {k}: {e}")
            lost_bytes += last[1]
            continue
        blob = ckpt.read_bytes()
        epoch_on_disk = int(saved["epoch"])
        unchanged = epoch_on_disk > last[0] or hashlib.sha256(blob).hexdigest() == last[2]
        if epoch_on_disk < last[0] or not unchanged:
            invalid.append(f"kill {k}: epoch {epoch_on_disk} on disk, {last[0]} reported")
            lost_bytes += last[1]
            continue
        survived += 1

    final = launch(ckpt)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0 and out.strip().endswith("DONE"), err[-2000:]
    ref_out, ref_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_err[-2000:]

    resumed, uninterrupted = load_checkpoint(ckpt), load_checkpoint(reference_ckpt)
    a, b = tensors(resumed["model"]), tensors(uninterrupted["model"])
    oa, ob = tensors(resumed["optimizer"]), tensors(uninterrupted["optimizer"])
    identical = (
        a.keys() == b.keys()
        and all(torch.equal(a[n], b[n]) for n in a)
        and oa.keys() == ob.keys()
        and all(torch.equal(oa[n], ob[n]) for n in oa)
    )
    same_history = [(h["train_loss"], h["val_loss"]) for h in resumed["history"]] == [
        (h["train_loss"], h["val_loss"]) for h in uninterrupted["history"]
    ]
    leftovers = sorted(p.name for p in ckpt.parent.iterdir() if p.name != ckpt.name)
    values = sum(t.numel() for t in a.values())

    add_figure(
        "crash safety",
        f"kills survived: {survived}/{KILLS} (SIGKILL {in_step} times at a random moment "
        f"after a random optimizer step, {in_write} times halfway through a checkpoint write, "
        f"its partial temporary file left on disk; {EPOCHS} epochs, a checkpoint "
        "after each)",
    )
    add_figure(
        "crash safety",
        f"a valid checkpoint, the last completed one or newer, after every kill: "
        f"{KILLS - len(invalid)}/{KILLS}; bytes of completed checkpoints lost: {lost_bytes}; "
        f"temporary files left after the final resume: {len(leftovers)}",
    )
    add_figure(
        "crash safety",
        "final weights and optimizer state equal to an uninterrupted run's: "
        + (f"bit-identical ({len(a)} weight tensors, {values} values" if identical else "NO (")
        + f"; loss history {'identical' if same_history else 'DIFFERENT'})",
    )
    assert not invalid, invalid
    assert survived == KILLS and lost_bytes == 0
    assert in_write >= 1 and in_step >= 1 and in_write + in_step == KILLS, (in_write, in_step)
    assert identical and same_history
    assert not leftovers, f"temporary files left behind: {leftovers}"
