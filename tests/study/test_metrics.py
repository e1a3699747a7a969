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


# -- round 2: runaway bound, loops, empty samples, paired differences --------------------

# The six shared-memory samples the original study shows (Setup-1, its β and γ).
ORIGINAL_SHARED = {
    "laneronelanarisyutyu": False,  # "lan" twice only: no unit occurs 3 times
    "lanikyunlikyunlejanl": True,  # "nl" 3 times
    "lanlikyunelanaranlik": True,  # "an" 3 times
    "yanidandindediddiddi": True,  # "di" 4 times
    "manitanitanitanitani": True,  # "nita" 4 times
    "lintinzitinititielit": True,  # "it" 4 times
}


def _tail(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def test_the_runaway_bound_is_the_exact_one_sided_clopper_pearson_bound() -> None:
    assert metrics.binomial_upper(0, 1000) == pytest.approx(1 - 0.05 ** (1 / 1000))
    assert metrics.binomial_upper(0, 1000) <= 0.003  # "≤ 0.3%": the rule of three
    assert metrics.binomial_upper(4, 4) == 1.0
    for k, n in [(1, 10), (7, 1000), (180, 1000), (3, 50)]:
        upper = metrics.binomial_upper(k, n)
        assert k / n < upper < 1.0
        assert _tail(k, n, upper) == pytest.approx(0.05, abs=1e-9)  # P(X <= k | upper) = 5%
    assert metrics.binomial_upper(1, 10, 0.99) > metrics.binomial_upper(1, 10)
    assert metrics.runaway_upper([True] * 999 + [False]) == metrics.binomial_upper(1, 1000)


@given(st.integers(1, 60), st.data())
def test_the_bound_grows_with_the_count(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n - 1))
    assert metrics.binomial_upper(k, n) < metrics.binomial_upper(k + 1, n)


def test_the_loop_detector_on_the_originals_shared_samples() -> None:
    for sample, looped in ORIGINAL_SHARED.items():
        assert metrics.has_loop(sample) is looped, sample
        assert metrics.has_loop(sample.capitalize()) is looped  # as printed
    # The one it misses repeats "lan" twice: a 3-letter unit twice catches it.
    assert metrics.has_loop("laneronelanarisyutyu", min_len=3, min_count=2)
    assert metrics.loop_rate(list(ORIGINAL_SHARED)) == pytest.approx(5 / 6)
    # The tiny handoff run's sample repeats no substring of 2+ letters 3 times ("an"
    # twice): this definition does not flag it either.
    assert not metrics.has_loop("analanlisariabevelre")


@pytest.mark.parametrize(
    ("sample", "looped"),
    [
        ("abcabcabc", True),  # a 3-letter unit 3 times
        ("xyzwxyzwxyzw", True),
        ("aaaa", False),  # "aa" twice without overlapping (repeats() counts it 3 times)
        ("aaaaaa", True),
        ("ababa", False),  # "ab" twice, "ba" twice
        ("ababab", True),
        ("emma", False),
        ("annabella", False),
        ("", False),
        ("ab", False),
    ],
)
def test_the_loop_detector_counts_non_overlapping_occurrences(sample: str, looped: bool) -> None:
    assert metrics.has_loop(sample) is looped


def _loop_reference(s: str, min_len: int, min_count: int) -> bool:
    """The definition, by brute force: a set of min_count disjoint equal substrings."""

    def disjoint(unit: str) -> int:
        count, i = 0, 0
        while i + len(unit) <= len(s):
            if s[i : i + len(unit)] == unit:
                count, i = count + 1, i + len(unit)
            else:
                i += 1
        return count

    return any(
        disjoint(s[i : i + n]) >= min_count
        for n in range(min_len, len(s) + 1)
        for i in range(len(s) - n + 1)
    )


@given(st.text(alphabet="ab", max_size=14), st.integers(1, 4), st.integers(2, 4))
def test_the_loop_detector_matches_its_definition(s: str, min_len: int, min_count: int) -> None:
    assert metrics.has_loop(s, min_len, min_count) is _loop_reference(s, min_len, min_count)


@given(st.text(alphabet="abcd", min_size=2, max_size=5), st.text(alphabet="xyz", max_size=6))
def test_a_unit_written_three_times_is_a_loop(unit: str, filler: str) -> None:
    assert metrics.has_loop(filler + unit * 3 + filler)


def test_empty_samples_and_novelty_over_the_non_empty() -> None:
    samples = ["", "emma", "", "zed"]
    assert metrics.empty_rate(samples) == 0.5
    assert metrics.novelty(samples, {"emma"}) == 0.75  # empty counted as novel
    assert metrics.nonempty_novelty(samples, {"emma"}) == 0.5
    assert metrics.reproduction_rate(samples, {"emma"}) == 0.25  # share that are training names
    assert metrics.nonempty_novelty(["", ""], {"emma"}) is None


def test_paired_difference_pairs_by_key() -> None:
    mean, half, n = metrics.paired_difference(
        {0: 1.70, 1: 1.72, 2: 1.71}, {2: 1.7, 0: 1.71, 1: 1.7}
    )
    assert n == 3
    assert (mean, half) == metrics.mean_ci([1.70 - 1.71, 1.72 - 1.7, 1.71 - 1.7])
    assert metrics.paired_difference({0: 2.0}, {0: 1.0, 5: 0.0}) == (1.0, None, 1)


def test_bad_input_round_2() -> None:
    with pytest.raises(ConfigError, match="k: expected at most n = 3"):
        metrics.binomial_upper(4, 3)
    with pytest.raises(ConfigError, match="confidence"):
        metrics.binomial_upper(0, 3, 1.0)
    with pytest.raises(InputTypeError, match="sample"):
        metrics.has_loop(["ab"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="min_count"):
        metrics.has_loop("abab", min_count=1)
    with pytest.raises(ConfigError, match="b: expected values paired"):
        metrics.paired_difference({0: 1.0}, {1: 1.0})
    with pytest.raises(ConfigError):
        metrics.empty_rate([])
