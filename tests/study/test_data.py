"""recurrentkit.study.data: vocabulary, loading, the two protocols, the seeded split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from recurrentkit.errors import ConfigError, InputTypeError, RecurrentKitError
from recurrentkit.study import data

words_st = st.lists(st.text(alphabet=data.LETTERS, min_size=1, max_size=15), min_size=1, max_size=8)


def test_vocabulary_ids() -> None:
    assert (data.PAD, data.END, data.START) == (0, 1, 28)
    assert data.stoi["a"] == 2 and data.stoi["z"] == 27 and data.itos[1] == "."
    assert data.vocab_size("seed") == 28 and data.vocab_size("fixed") == 29
    assert all(data.stoi[s] == i for i, s in enumerate(data.itos))


def test_packaged_names_load_without_network() -> None:
    words = data.load_words()
    assert len(words) == 32_033
    assert words[:2] == ["emma", "olivia"]
    assert max(map(len, words)) == 15 and set("".join(words)) == set(data.LETTERS)


def test_any_word_list_loads(tmp_path: Path) -> None:
    f = tmp_path / "w.txt"
    f.write_text("  anna\n\nbob \n\n")
    assert data.load_words(f) == ["anna", "bob"]
    assert data.load_words(str(f)) == ["anna", "bob"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "empty"),
        ("\n  \n", "empty"),
        ("anna\nZoe\n", "line 2"),
        ("anna\nélise\n", "'é'"),
        ("an na\n", "' '"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path: Path, content: str, needle: str) -> None:
    f = tmp_path / "w.txt"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        data.load_words(f)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        data.load_words(tmp_path / "nope.txt")
    f = tmp_path / "bin.txt"
    f.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(ConfigError, match="UTF-8"):
        data.load_words(f)
    with pytest.raises(InputTypeError):
        data.load_words(3)  # type: ignore[arg-type]


def test_seed_protocol_matches_the_original() -> None:
    x, y = data.encode(["emma"], "seed", max_len=6)
    e, m, a = data.stoi["e"], data.stoi["m"], data.stoi["a"]
    assert x.tolist() == [[e, m, m, a, data.PAD, data.PAD]]
    assert y.tolist() == [[m, m, a, data.END, -100, -100]]
    assert x.dtype == y.dtype == torch.long


def test_fixed_protocol_predicts_every_character() -> None:
    x, y = data.encode(["emma"], "fixed", max_len=6)
    e, m, a = data.stoi["e"], data.stoi["m"], data.stoi["a"]
    assert x.tolist() == [[data.START, e, m, m, a, data.PAD]]
    assert y.tolist() == [[e, m, m, a, data.END, -100]]


@given(words_st)
def test_encoding_round_trips(words: list[str]) -> None:
    for protocol in data.PROTOCOLS:
        x, y = data.encode(words, protocol, max_len=16)
        assert x.shape == y.shape == (len(words), 16)
        for i, w in enumerate(words):
            assert data.decode(x[i]) == w
            n = len(w) if protocol == "seed" else len(w) + 1
            assert int((y[i] != data.IGNORE_INDEX).sum()) == n
            assert int(y[i, n - 1]) == data.END
            assert bool((x[i, n:] == data.PAD).all())
            # The target at t is the input at t + 1: next-character prediction.
            assert y[i, : n - 1].tolist() == x[i, 1:n].tolist()


def test_length_limits_depend_on_the_protocol() -> None:
    data.encode(["a" * 16], "seed", max_len=16)
    with pytest.raises(ConfigError, match="at most 16"):
        data.encode(["a" * 17], "seed", max_len=16)
    data.encode(["a" * 15], "fixed", max_len=16)
    with pytest.raises(ConfigError, match="at most 15"):
        data.encode(["a" * 16], "fixed", max_len=16)


@pytest.mark.parametrize("word", ["a.b", "Ab", "", "a b"])
def test_encode_rejects_words_outside_the_vocabulary(word: str) -> None:
    with pytest.raises(ConfigError):
        data.encode(["ok", word])


def test_encode_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        data.encode(["a"], "other")
    with pytest.raises(InputTypeError):
        data.encode("anna")  # type: ignore[arg-type]
    with pytest.raises(RecurrentKitError):
        data.encode(["a"], max_len=1)


def test_split_is_seeded_disjoint_and_complete() -> None:
    words = [f"{a}{b}" for a in data.LETTERS for b in data.LETTERS[:4]]
    train, val = data.split(words, 0.8, seed=0)
    assert (len(train), len(val)) == (83, 21)
    assert sorted(train + val) == sorted(words) and not set(train) & set(val)
    assert data.split(words, 0.8, seed=0) == (train, val)
    assert data.split(words, 0.8, seed=1) != (train, val)


def test_split_rejects_bad_fractions() -> None:
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError):
            data.split(["a", "b"], bad)
    with pytest.raises(ConfigError):
        data.split(["a"], 0.5)


@given(words_st, st.integers(16, 40))
def test_stream_rows_hold_whole_words_with_the_fixed_protocols_targets(
    words: list[str], row_len: int
) -> None:
    x, y = data.encode_stream(words, row_len)
    assert x.shape == y.shape and x.shape[1] == row_len and x.dtype == y.dtype == torch.long
    per_word = data.encode(words, "fixed", max_len=16)
    keep = per_word[1] != data.IGNORE_INDEX
    # every target, in order, and each input beside its target
    assert y[y != data.IGNORE_INDEX].tolist() == per_word[1][keep].tolist()
    assert x[y != data.IGNORE_INDEX].tolist() == per_word[0][keep].tolist()
    # a word never spans two rows: each row starts a word, padding only at a row's end
    assert bool((x[:, 0] == data.START).all())
    for r in range(x.shape[0]):
        n = int((y[r] != data.IGNORE_INDEX).sum())
        assert bool((y[r, :n] != data.IGNORE_INDEX).all()) and bool((x[r, n:] == data.PAD).all())
        if r + 1 < x.shape[0]:  # the next row's first word did not fit here
            first = int((y[r + 1] == data.END).nonzero()[0]) + 1
            assert n + first > row_len


def test_stream_rows_reject_long_words_and_bad_lengths() -> None:
    assert data.encode_stream([], 8)[0].shape == (0, 8)
    with pytest.raises(ConfigError, match="at most 7"):
        data.encode_stream(["a" * 8], 8)
    with pytest.raises(ConfigError):
        data.encode_stream(["ab"], 1)
    with pytest.raises(InputTypeError):
        data.encode_stream(["ab"], 8.0)  # type: ignore[arg-type]
