"""recurrentkit.study.metrics on hand-made samples whose answers are known."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recurrentkit.errors import ConfigError, InputTypeError
from recurrentkit.study import metrics

texts = st.lists(st.text(alphabet="abc", max_size=12), min_size=1, max_size=10)


def test_runaway_rate_counts_samples_that_never_ended() -> None:
    assert metrics.runaway_rate([True, True, True]) == 0.0
    assert metrics.runaway_rate([False, True, False, False]) == 0.75


def test_mean_length() -> None:
    assert metrics.mean_length(["", "abc", "abcde"]) == pytest.approx(8 / 3)


def test_distinct_n_counts_inside_samples_only() -> None:
    assert metrics.distinct_n(["abab"], 2) == pytest.approx(2 / 3)
    assert metrics.distinct_n(["ab", "ab"], 2) == 0.5  # "ba" across the boundary is not counted
    assert metrics.distinct_n(["abc"], 3) == 1.0
    assert metrics.distinct_n(["a", "b"], 2) == 0.0  # no 2-grams at all
    assert metrics.distinct_n(["aaaa"], 1) == 0.25


def test_repetition_finds_loops_and_spares_names() -> None:
    assert metrics.repeats("abababababab")
    assert metrics.repeats("manitanitanitanitani")
    assert metrics.repeats("ababab")  # "ab" three times
    assert not metrics.repeats("abab")  # only twice
    assert not metrics.repeats("annabella")
    assert metrics.repeats("aaaa")  # "aa" three times, overlapping
    assert metrics.repetition_rate(["abababababab", "emma", "olivia", "lanlikyunelan"]) == 0.25
    assert metrics.repetition_rate(["ab" * 5], ns=(2,), min_count=6) == 0.0


def test_a_training_name_is_not_novel() -> None:
    train = {"emma", "olivia"}
    assert metrics.novelty(["emma"], train) == 0.0
    assert metrics.novelty(["emma", "emmy", "zed", "olivia"], train) == 0.5
    assert metrics.reproduction_rate(["emma", "emmy"], ["emma"]) == 0.5  # any collection


@given(texts, texts)
def test_novelty_and_reproduction_are_complements(samples: list[str], train: list[str]) -> None:
    total = metrics.novelty(samples, set(train)) + metrics.reproduction_rate(samples, set(train))
    assert total == pytest.approx(1.0)


def test_first_letters_and_total_variation() -> None:
    p = metrics.first_letter_distribution(["anna", "ava", "bob", ""])
    assert p == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 3)}
    assert metrics.first_letter_distribution([]) == {}
    assert metrics.total_variation({"a": 1.0}, {"b": 1.0}) == 1.0
    assert metrics.total_variation(p, p) == 0.0


@given(texts, texts)
def test_total_variation_is_a_bounded_symmetric_distance(a: list[str], b: list[str]) -> None:
    p, q = metrics.first_letter_distribution(a), metrics.first_letter_distribution(b)
    if p and q:
        d = metrics.total_variation(p, q)
        assert 0.0 <= d <= 1.0 + 1e-12
        assert d == pytest.approx(metrics.total_variation(q, p))


def test_mean_ci_uses_students_t() -> None:
    mean, half = metrics.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    assert metrics.mean_ci([4.0]) == (4.0, None)
    assert metrics.mean_ci([2.0, 2.0]) == (2.0, 0.0)
    _, half = metrics.mean_ci([0.0, 1.0] * 40)  # beyond the table: the normal quantile
    assert half == pytest.approx(1.96 * math.sqrt(80 / 79 * 0.25 / 80))


def test_bad_input() -> None:
    with pytest.raises(ConfigError):
        metrics.mean_length([])
    with pytest.raises(ConfigError):
        metrics.runaway_rate([])
    with pytest.raises(InputTypeError):
        metrics.mean_length("emma")  # type: ignore[arg-type]
    with pytest.raises(InputTypeError):
        metrics.novelty([1], {"a"})  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        metrics.distinct_n(["ab"], 0)
    with pytest.raises(ConfigError):
        metrics.mean_ci([])
