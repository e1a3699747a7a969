"""Bad-input fuzzing of the study's command line, ``examples/names_memory_ablation.py``.

Each malformed command line is one bad option among legal ones, in a random order, run
through the script's ``main(argv)``. A clear answer is exit status 2 and one line on
stderr that names the option (or the unknown argument), with no traceback; anything
that escapes ``main`` is an internal error; a run that starts (status 0) is a silent
wrong result. Legal command lines (``--dry-run``) must print one JSON line per run.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from reliability_harness import (
    ACCEPTED,
    CLEAR,
    FUZZ,
    INTERNAL,
    LEDGER,
    SILENT,
    UNCLEAR,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "names_memory_ablation.py"
TMP = Path(tempfile.mkdtemp(prefix="rk-cli-"))
atexit.register(shutil.rmtree, TMP, ignore_errors=True)


def load_study() -> ModuleType:
    name = "names_memory_ablation"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


study = load_study()


def data_files() -> dict[str, Path]:
    files = {
        "empty": b"",
        "blank lines": b"\n\n  \n",
        "one name": b"anna\n",
        "uppercase": b"anna\nBob\n",
        "a digit": b"anna\nb0b\n",
        "accents": "anna\nren\u00e9e\n".encode(),
        "a 17-letter name": b"anna\n" + b"a" * 17 + b"\n",
        "a 100,000-letter line": b"anna\n" + b"a" * 100_000 + b"\n",
        "binary junk": bytes(range(256)),
        "latin-1": "anna\nren\u00e9e\n".encode("latin-1"),
        "NUL bytes": b"anna\x00\nbob\n",
    }
    out = {}
    for name, content in files.items():
        path = TMP / (name.replace(" ", "_").replace(",", "") + ".txt")
        path.write_bytes(content)
        out[name] = path
    out["missing"] = TMP / "missing.txt"
    out["a folder"] = TMP
    return out


DATA = data_files()
NOT_A_FOLDER = TMP / "a-file"
NOT_A_FOLDER.write_text("x")

# (option, bad value or None for a flag-like mistake, what the option is called in messages)
BAD: list[tuple[str, list[str]]] = [
    ("--preset", ["nope", "", "QUICK"]),
    ("--models", ["delta", "", "alpha,omega", ",,"]),
    ("--routing", ["diagonal", "shared;handoff", ","]),
    ("--protocol", ["makemore", "seed,fixed,extra"]),
    ("--seeds", ["-1", "a,b", "", "1.5", "0,,x"]),
    ("--epochs", ["0", "-2", "1.5", "abc", "1e3", ""]),
    ("--samples", ["0", "many"]),
    ("--max-names", ["0", "-5"]),
    ("--threads", ["0", "two"]),
    ("--device", ["tpu", "CPU", "cuda:0"]),
    ("--data", [str(p) for p in DATA.values()]),
]
GOOD = [["--models", "alpha"], ["--routing", "independent,shared"], ["--protocol", "seed"],
        ["--seeds", "0"], ["--no-progress"], ["--threads", "1"]]  # fmt: skip
# Appended (unless the option under test): should a bad value be accepted, the run that
# starts is tiny and the figure shows it, instead of the suite training for minutes.
SAFETY = {"--preset": "tiny", "--max-names": "8", "--epochs": "1", "--samples": "2"}


def run_main(argv: list[str]) -> tuple[Any, str, str]:
    """``main(argv)`` → (exit status or the exception that escaped, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: Any = study.main(argv)
        except SystemExit as e:  # argparse
            code = e.code
        except Exception as e:  # noqa: BLE001 - escaping main is what is measured
            frames = traceback.extract_tb(e.__traceback__)
            where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
            code = f"{type(e).__name__}: {str(e)[:150]}{where}"
    return code, out.getvalue(), err.getvalue()


def judge(argv: list[str], option: str, value: str) -> tuple[str, str]:
    code, out, err = run_main(argv)
    if isinstance(code, str):
        return INTERNAL, code
    lines = err.strip().splitlines()
    if code in (0, 1, None):
        return SILENT, f"exit status {code}: the run started (stdout {out[:120]!r})"
    if "Traceback" in err:
        return INTERNAL, f"a traceback on stderr: {err[-200:]!r}"
    if code != 2 or len(lines) != 1:
        return UNCLEAR, f"exit status {code}, {len(lines)} stderr lines: {err[:200]!r}"
    line = lines[0]
    if len(line) > 400:
        return UNCLEAR, f"a {len(line)}-character message: {line[:150]!r}"
    named = option in line or option.lstrip("-") in line or (value and value in line)
    if not named:
        return UNCLEAR, f"the message does not name {option}: {line!r}"
    return CLEAR, line


@FUZZ
@given(data=st.data())
def fuzz_cli(option: str, value: str, data: st.DataObject) -> None:
    context = data.draw(
        st.lists(st.sampled_from([g for g in GOOD if g[0] != option]), max_size=3, unique_by=tuple),
        label="legal options",
    )
    pieces = [*context, [option, value]]
    order = data.draw(st.permutations(range(len(pieces))), label="order")
    argv = [a for i in order for a in pieces[i]] + ["--out", str(TMP / "out")]
    argv += [a for k, v in SAFETY.items() if k != option for a in (k, v)]
    if option == "--device" and value == "cuda:0":
        argv = [a if a != "cuda:0" else "cuda" for a in argv]
        import torch

        if torch.cuda.is_available():
            return  # legal on this machine: not a malformed call here
    outcome, detail = judge(argv, option, value)
    LEDGER.record(f"{' '.join(argv)[:160]}", outcome, detail)


@FUZZ
@given(data=st.data())
def fuzz_cli_structure(kind: str, data: st.DataObject) -> None:
    argv = {
        "unknown flag": ["--foo"],
        "missing value": [
            data.draw(st.sampled_from(["--epochs", "--seeds", "--models", "--data"]))
        ],  # noqa: E501
        "positional junk": ["alpha"],
        "--out is a file": ["--preset", "tiny", "--out", str(NOT_A_FOLDER)],
        "--resume without runs": ["--preset", "tiny", "--resume", "--routing", "nope"],
    }[kind]
    if kind != "--out is a file":
        argv = [*argv, "--out", str(TMP / "out")]
    option = {"unknown flag": "--foo", "positional junk": "alpha", "--out is a file": "--out",
              "--resume without runs": "--routing"}.get(kind, argv[0])  # fmt: skip
    outcome, detail = judge(argv, option, "")
    LEDGER.record(f"{kind}: {' '.join(argv)[:120]}", outcome, detail)


def test_cli_rejects_bad_arguments_with_one_line() -> None:
    with LEDGER.entry("CLI", "names_memory_ablation.py") as run:
        for option, values in BAD:
            for value in values:
                fuzz_cli(option, value)
        for kind in ("unknown flag", "missing value", "positional junk", "--out is a file",
                     "--resume without runs"):  # fmt: skip
            fuzz_cli_structure(kind)
        for argv in (["--preset", "seed", "--dry-run"], ["--models", "β", "--dry-run"],
                     ["--preset", "full", "--seeds", "3", "--dry-run"]):  # fmt: skip
            code, out, err = run_main(argv)
            try:
                lines = [json.loads(line) for line in out.splitlines()]
                ok = code == 0 and lines and all("params" in d for d in lines)
            except json.JSONDecodeError:
                ok = False
            LEDGER.record(" ".join(argv), ACCEPTED if ok else SILENT, "" if ok else out[:200])
    run.assert_clean()
