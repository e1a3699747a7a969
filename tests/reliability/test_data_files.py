"""Word-list files for ``data.load_words`` and the study's ``--data``: every awkward file
is either handled as the docstring says or refused with a clear one-line error."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path
from typing import Any

import pytest
from reliability_harness import add_figure

import recurrentkit as rk
from recurrentkit.study import data

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "names_memory_ablation.py"

# name: (bytes, the words load_words returns, or None for a one-line error)
CASES: dict[str, tuple[bytes, list[str] | None]] = {
    "empty file": (b"", None),
    "only blank lines and spaces": (b"\n \n\t\n\r\n", None),
    "LF line endings": (b"anna\nbob\n", ["anna", "bob"]),
    "CRLF line endings (Windows)": (b"anna\r\nbob\r\n", ["anna", "bob"]),
    "CR line endings (old Mac)": (b"anna\rbob\r", ["anna", "bob"]),
    "mixed line endings, no final newline": (b"anna\r\nbob\rcy\ndee", ["anna", "bob", "cy", "dee"]),
    "UTF-8 byte-order mark": (b"\xef\xbb\xbfanna\nbob\n", ["anna", "bob"]),
    "byte-order mark and CRLF": (b"\xef\xbb\xbfanna\r\nbob\r\n", ["anna", "bob"]),
    "blank lines between names": (b"\n\nanna\n\n\nbob\n\n", ["anna", "bob"]),
    "spaces and tabs around names": (b"  anna \t\n\tbob  \n", ["anna", "bob"]),
    "a 100,000-letter line": (b"anna\n" + b"z" * 100_000 + b"\n", ["anna", "z" * 100_000]),
    "non-ASCII letters (UTF-8)": ("anna\nren\u00e9e\n".encode(), None),
    "uppercase": (b"Anna\nbob\n", None),
    "a space inside a name": (b"anna maria\n", None),
    "digits": (b"anna\nbob2\n", None),
    "a line separator character (U+2028) inside a name": ("an\u2028na\n".encode(), None),
    "binary junk (not UTF-8)": (bytes(range(256)) * 4, None),
    "NUL bytes": (b"anna\x00\nbob\n", None),
    "latin-1 text (not UTF-8)": ("anna\nren\u00e9e\n".encode("latin-1"), None),
    "a 100,000-character line with a digit at the end": (b"z" * 100_000 + b"7\n", None),
}


def load_study() -> Any:
    study = sys.modules.get("names_memory_ablation")
    if study is None:
        spec = importlib.util.spec_from_file_location("names_memory_ablation", SCRIPT)
        assert spec is not None and spec.loader is not None
        study = importlib.util.module_from_spec(spec)
        sys.modules["names_memory_ablation"] = study
        spec.loader.exec_module(study)
    return study


RESULTS: dict[str, str] = {}


@pytest.mark.parametrize("case", list(CASES))
def test_awkward_word_files_are_handled_or_refused_in_one_line(case: str, tmp_path: Path) -> None:
    content, words = CASES[case]
    path = tmp_path / "names.txt"
    path.write_bytes(content)
    if words is not None:
        assert data.load_words(path) == words
        RESULTS[case] = "handled"
    else:
        with pytest.raises(rk.RecurrentKitError) as info:
            data.load_words(path)
        message = str(info.value)
        assert "\n" not in message and len(message) < 400, message[:500]
        assert message.startswith("path: expected") and "names.txt" in message
        RESULTS[case] = f"refused: {message.split(', got ')[0]}"
    # The study's --data: a one-line error and exit status 2, or (for files it can use)
    # no error about the data at all.
    study = load_study()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        argv = ["--data", str(path), "--out", str(tmp_path / "out"), "--epochs", "1",
                "--models", "tiny", "--preset", "tiny", "--samples", "2", "--no-progress",
                "--routing", "independent"]  # fmt: skip
        try:
            code = study.main(argv)
        except SystemExit as e:
            code = e.code
    text = err.getvalue()
    assert "Traceback" not in text
    if code == 2:
        assert text.count("\n") == 1 and "--data" in text, text[:500]
        if words is not None:  # usable by load_words, refused by the study: say why
            assert "at least 2 names" in text or "at most 16 characters" in text, text
    else:
        assert code == 0 and words is not None and len(words) >= 2, (code, text[:500])
    if len(RESULTS) == len(CASES):
        handled = sum(v == "handled" for v in RESULTS.values())
        add_figure(
            "data files",
            f"{len(CASES)} kinds of word-list file: {handled} handled as documented "
            f"(line endings, byte-order mark, blank lines, whitespace, long lines), "
            f"{len(CASES) - handled} refused with a one-line error naming the file (and "
            "the line, for a bad word); the study's --data: a one-line error (exit 2) or a "
            "normal run, no traceback",
        )


def test_the_docstring_documents_what_is_handled() -> None:
    doc = data.load_words.__doc__ or ""
    for phrase in ("\\r\\n", "byte-order mark", "blank lines", "whitespace", "any length",
                   "uppercase", "binary"):  # fmt: skip
        assert phrase in doc, phrase
