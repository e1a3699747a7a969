r"""The names dataset: vocabulary, loading, the two encoding protocols, a seeded split.

Vocabulary (28 symbols, plus a start token for the ``"fixed"`` protocol):

| id | symbol | role |
|---|---|---|
| 0 | ``<PAD>`` | padding of inputs; the original study's sampling start |
| 1 | ``.`` | end of a name |
| 2..27 | ``a``..``z`` | letters |
| 28 | ``<S>`` | start of a name (``protocol="fixed"`` only) |

Two protocols turn a name into an input/target pair of length ``max_len``:

- ``"seed"`` (the original study's): ``x`` = the characters, ``y`` = characters[1:] +
  ``.``, so the first letter is never a target; ``x`` is padded with ``<PAD>``, ``y``
  with the ignore index ``-100``.
- ``"fixed"`` (makemore's convention): ``x`` = ``<S>`` + characters, ``y`` =
  characters + ``.``; every character is predicted.

Example:
    >>> from recurrentkit.study import data
    >>> x, y = data.encode(["ab"], protocol="seed", max_len=4)
    >>> x.tolist(), y.tolist()
    ([[2, 3, 0, 0]], [[3, 1, -100, -100]])
    >>> x, y = data.encode(["ab"], protocol="fixed", max_len=4)
    >>> x.tolist(), y.tolist()
    ([[28, 2, 3, 0]], [[2, 3, 1, -100]])
"""

from __future__ import annotations

import importlib.resources
import numbers
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from recurrentkit._validation import check_choice, check_int, describe
from recurrentkit.errors import ConfigError, InputTypeError

__all__ = [
    "END",
    "IGNORE_INDEX",
    "LETTERS",
    "PAD",
    "PROTOCOLS",
    "START",
    "decode",
    "encode",
    "encode_stream",
    "itos",
    "load_words",
    "split",
    "stoi",
    "vocab_size",
]

PAD = 0
"""Padding token id (``<PAD>``); the ``"seed"`` protocol's sampling start."""
END = 1
"""End-of-name token id (``.``)."""
START = 28
"""Start-of-name token id (``<S>``), used only by the ``"fixed"`` protocol."""
IGNORE_INDEX = -100
"""Target value that the loss ignores (torch's ``cross_entropy`` default)."""
LETTERS = "abcdefghijklmnopqrstuvwxyz"
PROTOCOLS = ("seed", "fixed")
_ALLOWED = frozenset(LETTERS)

itos: list[str] = ["<PAD>", "."] + list(LETTERS) + ["<S>"]
"""Token id → symbol."""
stoi: dict[str, int] = {ch: i for i, ch in enumerate(itos)}
"""Symbol → token id."""


def vocab_size(protocol: str = "seed") -> int:
    """Number of token ids a model must embed: 28 for ``"seed"``, 29 for ``"fixed"``.

    Example:
        >>> vocab_size("seed"), vocab_size("fixed")
        (28, 29)
    """
    check_choice("protocol", protocol, PROTOCOLS)
    return 28 if protocol == "seed" else 29


def _show(word: str, limit: int = 40) -> str:
    """A word for an error message: its repr, shortened if long (messages stay one line)."""
    if len(word) <= limit:
        return repr(word)
    return f"{word[:limit]!r}... ({len(word)} characters)"


def load_words(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Read a newline-separated word list (default: the packaged 32,033 names).

    The file is UTF-8 text, one word per line. Lines end with ``\\n``, ``\\r\\n``
    (Windows) or ``\\r``; a leading byte-order mark is dropped; blank lines and
    whitespace around a word are ignored; lines may be of any length (``encode``
    limits a name to the padding length). Every word must use only the lowercase
    letters ``a``–``z``: uppercase, accented letters, digits, spaces inside a word
    and control characters are refused with the line number, as are binary files
    (not UTF-8) and files with no word at all.

    Args:
        path: a text file, one word per line; ``None`` reads the names shipped in
            the package (no network).

    Returns:
        The words, in file order.

    Raises:
        ConfigError: the file is missing, unreadable, empty, or a word holds a character
            outside ``a``–``z`` (the message gives the line).

    Example:
        >>> words = load_words()
        >>> len(words), words[:3]
        (32033, ['emma', 'olivia', 'ava'])
    """
    if path is None:
        text = importlib.resources.files(__name__).joinpath("names.txt").read_text()
        where = "the packaged names.txt"
    else:
        if not isinstance(path, (str, Path)):
            raise InputTypeError("path", "a file path (str or Path)", describe(path))
        p = Path(path)
        where = str(p)
        if not p.is_file():
            why = "a folder" if p.is_dir() else "not found"
            raise ConfigError(
                "path", "an existing text file with one name per line", f"{where!r} ({why})"
            )
        try:
            text = p.read_bytes().decode("utf-8-sig")  # no newline translation: done below
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                "path", "a readable UTF-8 text file with one name per line", f"{where!r} ({e})"
            ) from None
    words = []
    for lineno, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        word = line.strip()
        if not word:
            continue
        bad = sorted(set(word) - _ALLOWED)
        if bad:
            raise ConfigError(
                "path",
                "names made of the lowercase letters a-z only (lowercase the list and drop "
                "other characters)",
                f"{_show(word)} on line {lineno} of {where} (characters {''.join(bad)[:20]!r})",
            )
        words.append(word)
    if not words:
        raise ConfigError("path", "a file with at least one name, one per line", f"{where} (empty)")
    return words


def encode(
    words: Sequence[str], protocol: str = "seed", max_len: int = 16
) -> tuple[Tensor, Tensor]:
    """Encode words as padded input/target id tensors.

    Args:
        words: names made of ``a``–``z``.
        protocol: ``"seed"`` (the original study's) or ``"fixed"`` (a start token).
        max_len: ``T``, the padded length. A name may have at most ``T`` characters
            under ``"seed"`` and ``T - 1`` under ``"fixed"``.

    Returns:
        ``(x, y)``, int64 tensors of shape ``(N, T)``: inputs padded with ``PAD`` and
        targets padded with ``IGNORE_INDEX``.

    Raises:
        ConfigError: unknown protocol, an empty word, a character outside the vocabulary,
            or a word too long for ``max_len``.

    Shape:
        - x, y: ``(N, T)`` with ``N = len(words)``, ``T = max_len``.
    """
    check_choice("protocol", protocol, PROTOCOLS)
    check_int("max_len", max_len, minimum=2)
    if isinstance(words, str) or not isinstance(words, Sequence):
        raise InputTypeError("words", "a sequence of strings", describe(words))
    limit = max_len if protocol == "seed" else max_len - 1
    x = torch.full((len(words), max_len), PAD, dtype=torch.long)  # (N, T)
    y = torch.full((len(words), max_len), IGNORE_INDEX, dtype=torch.long)  # (N, T)
    for i, w in enumerate(words):
        if not isinstance(w, str) or not w:
            raise ConfigError(f"words[{i}]", "a non-empty string", describe(w))
        if len(w) > limit:
            raise ConfigError(
                f"words[{i}]",
                f"at most {limit} characters (the padding length {max_len}"
                f"{' minus the start token' if protocol == 'fixed' else ''}; raise max_len "
                "or drop longer names)",
                _show(w) if len(w) > 40 else f"{w!r} ({len(w)} characters)",
            )
        bad = sorted(set(w) - _ALLOWED)
        if bad:
            chars = "".join(bad)[:20]
            raise ConfigError(
                f"words[{i}]", "only the letters a-z", f"{_show(w)} (characters {chars!r})"
            )
        ids = [stoi[c] for c in w]
        if protocol == "seed":
            xs, ys = ids, ids[1:] + [END]
        else:
            xs, ys = [START] + ids, ids + [END]
        x[i, : len(xs)] = torch.tensor(xs)
        y[i, : len(ys)] = torch.tensor(ys)
    return x, y


def encode_stream(words: Sequence[str], row_len: int) -> tuple[Tensor, Tensor]:
    """Words laid end to end in one stream, cut into rows of ``row_len`` tokens.

    Each word is encoded as the ``"fixed"`` protocol encodes it (``<S>`` + characters
    as inputs, characters + ``.`` as targets) and the words follow one another in the
    given order; the stream is cut at word boundaries into rows of ``row_len`` tokens,
    each row holding as many whole words as fit (a word never spans two rows), the
    rest of a row padded (``PAD`` inputs, ``IGNORE_INDEX`` targets). A word's ``<S>``
    marks where a model's state must restart
    (:class:`~recurrentkit.study.lm.CharLM`'s ``reset_token``): with it, every target
    is predicted from its own word's prefix, as in :func:`encode`'s one row per word.

    Args:
        words: names made of ``a``–``z``, each at most ``row_len - 1`` characters.
        row_len: ``T``, the tokens per row (``>= 2``).

    Returns:
        ``(x, y)``, int64 tensors of shape ``(R, T)``: the same targets as
        ``encode(words, "fixed", ...)``, in fewer rows.

    Raises:
        ConfigError: an empty word, a character outside the vocabulary, or a word too
            long for ``row_len``.

    Example:
        >>> x, y = encode_stream(["ab", "c", "de"], row_len=6)
        >>> x.tolist()
        [[28, 2, 3, 28, 4, 0], [28, 5, 6, 0, 0, 0]]
        >>> y.tolist()
        [[2, 3, 1, 4, 1, -100], [5, 6, 1, -100, -100, -100]]
    """
    check_int("row_len", row_len, minimum=2)
    longest = max((len(w) + 1 for w in words if isinstance(w, str)), default=2)
    width = max(2, min(row_len, longest))  # (a word too long: encode says so, with row_len)
    xs, ys = encode(words, "fixed", width)  # (N, width): each word in a row of its own
    rows: list[list[int]] = []
    for i, n in enumerate((ys != IGNORE_INDEX).sum(1).tolist()):
        if not rows or len(rows[-1]) + n > row_len:
            rows.append([])
        rows[-1].extend(i * width + t for t in range(n))
    x = torch.full((len(rows), row_len), PAD, dtype=torch.long)  # (R, T)
    y = torch.full((len(rows), row_len), IGNORE_INDEX, dtype=torch.long)  # (R, T)
    for r, src in enumerate(rows):
        pick = torch.tensor(src, dtype=torch.long)
        x[r, : len(src)] = xs.flatten()[pick]
        y[r, : len(src)] = ys.flatten()[pick]
    return x, y


def decode(ids: Sequence[int] | Tensor) -> str:
    """Token ids → text, stopping at the first ``.``; ``<PAD>`` and ``<S>`` are dropped.

    Raises:
        InputTypeError: ``ids`` is not a 1-D integer tensor or a sequence of ints.
        ConfigError: an id outside the vocabulary ``0..28``.

    Example:
        >>> decode([2, 3, 1, 5])
        'ab'
    """
    expected = "a 1-D integer tensor or a sequence of int token ids"
    if isinstance(ids, Tensor):
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise InputTypeError("ids", expected, describe(ids))
        items: list[int] = ids.tolist()
    elif isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise InputTypeError("ids", expected, describe(ids))
    else:
        items = []
        for i, t in enumerate(ids):
            if isinstance(t, bool) or not isinstance(t, numbers.Integral):
                raise InputTypeError(f"ids[{i}]", "an int token id", describe(t))
            items.append(int(t))
    for i, t in enumerate(items):
        if not 0 <= t < len(itos):
            raise ConfigError(f"ids[{i}]", f"a token id in 0..{len(itos) - 1}", t)
    out = []
    for t in items:
        if t == END:
            break
        if 2 <= t <= 27:
            out.append(itos[t])
    return "".join(out)


def split(
    words: Sequence[str], train_fraction: float = 0.8, seed: int = 0
) -> tuple[list[str], list[str]]:
    """A seeded random split into training and validation words.

    Args:
        words: the word list.
        train_fraction: share of words for training, in ``(0, 1)``.
        seed: seed of the permutation (the original study's split was unseeded).

    Returns:
        ``(train, val)``: ``round(train_fraction * N)`` words and the rest, each in
        permutation order.

    Raises:
        ConfigError: a fraction outside ``(0, 1)`` or fewer than 2 words.
        InputTypeError: ``words`` not a sequence, ``seed`` not an int.

    Example:
        >>> train, val = split(["a", "b", "c", "d", "e"], 0.8, seed=0)
        >>> len(train), len(val), sorted(train + val)
        (4, 1, ['a', 'b', 'c', 'd', 'e'])
    """
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)):
        raise InputTypeError("train_fraction", "a float in (0, 1)", describe(train_fraction))
    if not 0.0 < float(train_fraction) < 1.0:
        raise ConfigError("train_fraction", "a float in (0, 1)", train_fraction)
    if isinstance(words, str) or not isinstance(words, Sequence):
        raise InputTypeError("words", "a sequence of words (a list)", describe(words))
    if len(words) < 2:
        raise ConfigError("words", "at least 2 words to split", len(words))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputTypeError("seed", "an int", describe(seed))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(words), generator=g).tolist()
    n_train = min(max(1, round(train_fraction * len(words))), len(words) - 1)
    return [words[i] for i in perm[:n_train]], [words[i] for i in perm[n_train:]]
