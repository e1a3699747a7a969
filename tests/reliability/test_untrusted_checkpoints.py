"""Untrusted checkpoints: malicious pickles are refused and run nothing; truncated and
corrupted files are refused with a clear error instead of loading wrong weights."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_harness import add_figure

import recurrentkit as rk
from recurrentkit.study import data
from recurrentkit.study import train as train_module
from recurrentkit.study.lm import CharLM
from recurrentkit.study.train import TrainConfig, fit, load_checkpoint, save_checkpoint

WORDS = data.load_words()[:24]
TRAIN, VAL = data.encode(WORDS[:16]), data.encode(WORDS[16:])


def make() -> CharLM:
    torch.manual_seed(0)
    return CharLM(rk.Stack([rk.GRUCell(6, 8)], batch_first=True), 28, 6)


class Touch:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.write_text, (self.marker, "the payload ran"))


class Exec:
    """Unpickling this runs Python source through ``builtins.exec``."""

    def __init__(self, marker: Path) -> None:
        self.source = f"open({str(marker)!r}, 'w').write('ran')"

    def __reduce__(self) -> Any:
        return (builtins.exec, (self.source,))


class System:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self) -> Any:
        return (os.system, (self.command,))


def real_payload() -> dict[str, Any]:
    """A genuine checkpoint's content (from one epoch of training)."""
    return {"format": "recurrentkit.train/1", "model": make().state_dict(), "epoch": 1}


def malicious_files(tmp: Path, marker: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for name, evil in (("write_text", Touch), ("exec", Exec), ("os.system", System)):
        path = tmp / f"torch-save-{name}.pt"
        payload = real_payload()
        payload["model"]["embedding.weight"] = evil(marker)  # hidden among real weights
        torch.save(payload, path)
        files[f"torch.save of a checkpoint with a {name} payload"] = path
    raw = tmp / "raw-pickle.pt"
    raw.write_bytes(pickle.dumps({"model": Touch(marker)}, protocol=2))
    files["a plain pickle file (legacy format) with a payload"] = raw
    # A genuine zip checkpoint whose data.pkl is swapped for a payload; the CRC-32s are
    # recomputed, so the file passes the integrity check and must be refused on content.
    genuine = tmp / "genuine.pt"
    save_checkpoint(genuine, real_payload())
    swapped = tmp / "swapped-data-pkl.pt"
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(swapped, "w") as dst:
        for info in src.infolist():
            blob = src.read(info)
            if info.filename.endswith("data.pkl"):
                blob = pickle.dumps({"model": Exec(marker)}, protocol=2)
            dst.writestr(info, blob)
    files["a genuine checkpoint whose data.pkl was swapped (valid CRCs)"] = swapped
    return files


def test_malicious_pickles_are_refused_and_run_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    files = malicious_files(tmp_path, marker)
    # The payloads are live: unpickled without protection, each creates the marker.
    for name, path in files.items():
        if "plain pickle" in name:
            pickle.loads(path.read_bytes())
        else:
            torch.load(path, weights_only=False)
        assert marker.exists(), f"the payload of {name!r} did not run unprotected"
        marker.unlink()
    refused = 0
    for name, path in files.items():
        with pytest.raises(rk.RecurrentKitError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert "\n" not in message and len(message) < 400, message
        assert not marker.exists(), f"{name}: the payload ran"
        # Resuming a run from it: refused the same way, nothing ran.
        cfg = TrainConfig(epochs=1, batch_size=8, checkpoint=path)
        with pytest.raises(rk.RecurrentKitError):
            fit(make(), TRAIN, VAL, cfg, resume=True)
        assert not marker.exists(), f"{name}: the payload ran on resume"
        refused += 1
    add_figure(
        "untrusted checkpoints",
        f"malicious pickles refused by load_checkpoint and by fit(resume=True): "
        f"{refused}/{len(files)} (each payload shown to run when unpickled unprotected; "
        "none ran through recurrentkit)",
    )


def test_the_study_refuses_a_malicious_checkpoint_in_its_output_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util
    import sys

    script = Path(__file__).resolve().parents[2] / "examples" / "names_memory_ablation.py"
    study = sys.modules.get("names_memory_ablation")
    if study is None:
        spec = importlib.util.spec_from_file_location("names_memory_ablation", script)
        assert spec is not None and spec.loader is not None
        study = importlib.util.module_from_spec(spec)
        sys.modules["names_memory_ablation"] = study
        spec.loader.exec_module(study)
    marker = tmp_path / "PWNED"
    out = tmp_path / "out"
    argv = ["--preset", "tiny", "--routing", "independent", "--max-names", "20",
            "--epochs", "1", "--samples", "2", "--no-progress", "--out", str(out)]  # fmt: skip
    keys = study.plan_runs(study.PRESETS["tiny"], None, ("independent",), None, None)
    ckpt = out / "checkpoints" / f"{keys[0].id}.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": Touch(marker)}, ckpt)
    assert study.main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint" in err and "Traceback" not in err, err
    assert not marker.exists()
    add_figure(
        "untrusted checkpoints",
        "the study's --resume on a malicious checkpoint: exit status 2, one line on stderr, "
        "the payload did not run",
    )


def corruptions(blob: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    size = len(blob)
    cases = [("empty file", b""), ("one byte", blob[:1]), ("all but the last byte", blob[:-1])]
    for cut in sorted(rng.sample(range(2, size - 1), n)):
        cases.append((f"truncated to {cut} of {size} bytes", blob[:cut]))
    for pos in sorted(rng.sample(range(size), n)):
        flipped = bytearray(blob)
        flipped[pos] ^= 1 << rng.randrange(8)
        cases.append((f"one bit flipped at byte {pos}", bytes(flipped)))
    cases.append(("random bytes", bytes(rng.randrange(256) for _ in range(size))))
    cases.append(("zeros", bytes(size)))
    other = io.BytesIO()
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("notes.txt", "not a checkpoint")
    cases.append(("a zip archive of something else", other.getvalue()))
    cases.append(("a text file", b"epoch: 3\nweights: ...\n"))
    return cases


def test_truncated_and_corrupted_checkpoints_never_load_wrong_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "ck.pt"
    fit(make(), TRAIN, VAL, TrainConfig(epochs=1, batch_size=8, checkpoint=ckpt))
    blob = ckpt.read_bytes()
    original = load_checkpoint(ckpt)
    rng = random.Random(7)
    n = int(os.environ.get("RK_CORRUPTIONS", "60"))
    refused, unchanged, wrong, unclear = 0, 0, [], []
    cases = corruptions(blob, rng, n)
    # The control: with the archive check switched off (torch.load alone), how many of
    # these files load with wrong content? It shows what the check is there for.
    with monkeypatch.context() as m:
        m.setattr(train_module, "_damage", lambda path: None)
        unchecked_wrong = 0
        for _, content in cases:
            (tmp_path / "bad.pt").write_bytes(content)
            try:
                unchecked_wrong += not _equal(load_checkpoint(tmp_path / "bad.pt"), original)
            except rk.RecurrentKitError:
                pass
    for name, content in cases:
        bad = tmp_path / "bad.pt"
        bad.write_bytes(content)
        try:
            loaded = load_checkpoint(bad)
        except rk.RecurrentKitError as e:
            message = str(e)
            if "\n" in message or len(message) > 400 or "bad.pt" not in message:
                unclear.append(f"{name}: {message[:200]!r}")
            refused += 1
            continue
        except Exception as e:  # noqa: BLE001 - what escapes is what is measured
            unclear.append(f"{name}: {type(e).__name__}: {str(e)[:150]}")
            continue
        if _equal(loaded, original):
            unchanged += 1  # the flipped bit was in bytes that carry no data
        else:
            wrong.append(name)
    # A resume from a corrupted checkpoint is refused too (one case is enough here).
    (tmp_path / "bad.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(rk.RecurrentKitError, match="bad.pt"):
        fit(make(), TRAIN, VAL, TrainConfig(epochs=2, batch_size=8, checkpoint=tmp_path / "bad.pt"),
            resume=True)  # fmt: skip
    add_figure(
        "untrusted checkpoints",
        f"truncated or corrupted checkpoints: {len(cases)} tried; refused with a one-line "
        f"recurrentkit error: {refused}; loaded and identical to the original (a flipped bit "
        f"in bytes that carry no data): {unchanged}; loaded with wrong content: {len(wrong)}; "
        f"other errors: {len(unclear)} (with the archive check off, torch.load alone: "
        f"{unchecked_wrong} loaded with wrong content)",
    )
    assert not wrong, wrong
    assert not unclear, unclear


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b
