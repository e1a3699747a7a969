r"""Measures of generated names, and the mean ± 95% confidence interval used to report them.

Each function takes plain strings (or flags) so it can be checked on hand-made
samples. A *sample* here is the text a sampler produced before its end token.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence

from recurrentkit._validation import check_int, describe
from recurrentkit.errors import ConfigError, InputTypeError

__all__ = [
    "binomial_upper",
    "distinct_n",
    "empty_rate",
    "first_letter_distribution",
    "has_loop",
    "loop_rate",
    "mean_ci",
    "mean_length",
    "nonempty_novelty",
    "novelty",
    "paired_difference",
    "repeats",
    "repetition_rate",
    "reproduction_rate",
    "runaway_rate",
    "runaway_upper",
    "total_variation",
]


def _check_texts(name: str, samples: object) -> Sequence[str]:
    if isinstance(samples, str) or not isinstance(samples, Sequence):
        raise InputTypeError(name, "a sequence of strings", describe(samples))
    for i, s in enumerate(samples):
        if not isinstance(s, str):
            raise InputTypeError(f"{name}[{i}]", "a string", describe(s))
    return samples


def _nonempty(name: str, samples: Sequence[object]) -> None:
    if len(samples) == 0:
        raise ConfigError(name, "at least one sample", "an empty sequence")


def runaway_rate(ended: Sequence[bool]) -> float:
    """Share of samples that never produced the end token within the step limit.

    Args:
        ended: one flag per sample, ``True`` if it ended (``Sample.ended``).

    Example:
        >>> runaway_rate([True, False, True, True])
        0.25
    """
    if isinstance(ended, str) or not isinstance(ended, Sequence):
        raise InputTypeError("ended", "a sequence of bools", describe(ended))
    for i, e in enumerate(ended):
        if not isinstance(e, bool) and not (isinstance(e, numbers.Integral) and e in (0, 1)):
            raise InputTypeError(f"ended[{i}]", "a bool", describe(e))
    _nonempty("ended", ended)
    return sum(1 for e in ended if not e) / len(ended)


def binomial_upper(k: int, n: int, confidence: float = 0.95) -> float:
    r"""Exact one-sided upper confidence bound of a proportion (Clopper–Pearson).

    The largest $p$ still consistent with seeing at most ``k`` events in ``n`` trials:
    the $p$ solving

    $$
    P(X \le k \mid n, p) = \sum_{i=0}^{k} \binom{n}{i} p^i (1 - p)^{n-i} = 1 - c,
    $$

    with $c$ the ``confidence``; 1.0 when ``k == n``. For ``k = 0`` it is
    $1 - (1 - c)^{1/n}$, about $3/n$ at 95% (the rule of three): 0 of 1,000 gives
    0.30%. Found by bisection to 1e-12 (the tail is monotone in $p$).

    Args:
        k: events seen (``0 <= k <= n``).
        n: trials (``>= 1``).
        confidence: the one-sided level ``c`` in (0, 1).

    Example:
        >>> round(binomial_upper(0, 1000), 5)
        0.00299
        >>> binomial_upper(5, 5)
        1.0
    """
    check_int("n", n)
    check_int("k", k, minimum=0)
    if k > n:
        raise ConfigError("k", f"at most n = {n}", k)
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real):
        raise InputTypeError("confidence", "a float in (0, 1)", describe(confidence))
    if not 0.0 < float(confidence) < 1.0:
        raise ConfigError("confidence", "a float in (0, 1)", confidence)
    if k == n:
        return 1.0
    alpha = 1.0 - float(confidence)
    if k == 0:
        return 1.0 - alpha ** (1.0 / n)

    def tail(p: float) -> float:  # P(X <= k), summed in log space (n may be large)
        lp, lq = math.log(p), math.log1p(-p)
        terms = [
            math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(k + 1)
        ]
        top = max(terms)
        return math.exp(top) * sum(math.exp(t - top) for t in terms)

    lo, hi = k / n, 1.0
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        if tail(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def runaway_upper(ended: Sequence[bool], confidence: float = 0.95) -> float:
    """One-sided 95% upper bound of the runaway rate
    ([`binomial_upper`][recurrentkit.study.metrics.binomial_upper] of the runaways).

    A runaway rate of 0 out of 1,000 samples is reported as "≤ 0.3%", not "0 ± 0".

    Example:
        >>> round(runaway_upper([True] * 1000), 4)
        0.003
    """
    rate = runaway_rate(ended)
    return binomial_upper(round(rate * len(ended)), len(ended), confidence)


def mean_length(samples: Sequence[str]) -> float:
    """Mean number of characters per sample.

    Example:
        >>> mean_length(["ab", "abcd"])
        3.0
    """
    _check_texts("samples", samples)
    _nonempty("samples", samples)
    return sum(len(s) for s in samples) / len(samples)


def _ngrams(s: str, n: int) -> list[str]:
    return [s[i : i + n] for i in range(len(s) - n + 1)]


def distinct_n(samples: Sequence[str], n: int) -> float:
    r"""Distinct character ``n``-grams over all ``n``-grams (Li et al. 2016's distinct-n).

    $$
    \text{distinct-}n = \frac{|\{\text{n-grams}\}|}{\#\text{n-grams}}
    $$

    ``n``-grams are taken inside each sample (never across samples). Lower means more
    repetitive output. Returns 0.0 when no sample is ``n`` characters long.

    Example:
        >>> distinct_n(["abab"], 2)   # ab, ba, ab: 2 distinct of 3
        0.6666666666666666
    """
    _check_texts("samples", samples)
    check_int("n", n)
    counts: Counter[str] = Counter()
    for s in samples:
        counts.update(_ngrams(s, n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def repeats(sample: str, ns: Iterable[int] = (2, 3), min_count: int = 3) -> bool:
    """Whether some ``n``-gram (``n`` in ``ns``) occurs at least ``min_count`` times.

    Occurrences may overlap.

    Example:
        >>> repeats("abababababab"), repeats("annabella")
        (True, False)
    """
    if not isinstance(sample, str):
        raise InputTypeError("sample", "a string", describe(sample))
    ns = _check_ns(ns)
    check_int("min_count", min_count, minimum=2)
    for n in ns:
        if any(c >= min_count for c in Counter(_ngrams(sample, n)).values()):
            return True
    return False


def has_loop(sample: str, min_len: int = 2, min_count: int = 3) -> bool:
    """Whether some substring of at least ``min_len`` characters occurs ``min_count`` times
    or more, counting **non-overlapping** occurrences.

    Occurrences are counted as ``str.count`` does (left to right, each match starting after
    the previous one ends), which is the largest number of non-overlapping copies: in
    ``"aaaa"`` the substring ``"aa"`` occurs twice, not three times. Any length counts,
    so a long unit that loops (``"nitanitanita"``) is caught as well as a syllable.

    Of the six shared-memory samples the original study shows, this flags five
    ("Manitanitanitanitani": ``"nita"`` 4 times; "Yanidandindediddiddi": ``"di"``;
    "Lintinzitinititielit": ``"it"``; "Lanikyunlikyunlejanl": ``"nl"``;
    "Lanlikyunelanaranlik": ``"an"``); "Laneronelanarisyutyu" repeats ``"lan"`` only twice
    and is not flagged at the default ``min_count = 3``.

    Args:
        sample: the text.
        min_len: shortest substring that counts (``>= 1``).
        min_count: occurrences that make a loop (``>= 2``).

    Example:
        >>> has_loop("manitanitanitanitani"), has_loop("annabella"), has_loop("aaaa")
        (True, False, False)
    """
    if not isinstance(sample, str):
        raise InputTypeError("sample", "a string", describe(sample))
    check_int("min_len", min_len)
    check_int("min_count", min_count, minimum=2)
    n = len(sample)
    for length in range(min_len, n // min_count + 1):
        seen: set[str] = set()
        for i in range(n - length + 1):
            unit = sample[i : i + length]
            if unit not in seen:
                seen.add(unit)
                if sample.count(unit) >= min_count:
                    return True
    return False


def loop_rate(samples: Sequence[str], min_len: int = 2, min_count: int = 3) -> float:
    """Share of samples with a loop ([`has_loop`][recurrentkit.study.metrics.has_loop]).

    Example:
        >>> loop_rate(["manitanitanitanitani", "anna", "abcabcabc", "bob"])
        0.5
    """
    _check_texts("samples", samples)
    _nonempty("samples", samples)
    return sum(has_loop(s, min_len, min_count) for s in samples) / len(samples)


def _check_ns(ns: object) -> tuple[int, ...]:
    if isinstance(ns, (str, bytes)) or not isinstance(ns, Iterable):
        raise InputTypeError("ns", "a sequence of n-gram sizes (ints >= 1)", describe(ns))
    out = tuple(ns)
    for i, n in enumerate(out):
        check_int(f"ns[{i}]", n)
    return out


def repetition_rate(
    samples: Sequence[str], ns: Sequence[int] = (2, 3), min_count: int = 3
) -> float:
    """Share of samples in which some 2- or 3-gram occurs at least 3 times.

    The original study's failure ("Manitanitanitanitani") scores 1; real names rarely
    do (``"lalalalia"`` does).

    Args:
        samples: the texts.
        ns: the ``n``-gram sizes checked.
        min_count: occurrences that count as a repeat.

    Example:
        >>> repetition_rate(["manitanitanitani", "anna", "olivia", "bob"])
        0.25
    """
    _check_texts("samples", samples)
    _nonempty("samples", samples)
    ns = _check_ns(ns)
    check_int("min_count", min_count, minimum=2)
    return sum(repeats(s, ns, min_count) for s in samples) / len(samples)


def novelty(samples: Sequence[str], training: Collection[str]) -> float:
    """Share of samples that are not a training name.

    Args:
        samples: the texts.
        training: the training names (a ``set`` makes this fast).

    Example:
        >>> novelty(["emma", "zorblax"], {"emma", "olivia"})
        0.5
    """
    return 1.0 - reproduction_rate(samples, training)


def empty_rate(samples: Sequence[str]) -> float:
    """Share of empty samples: no letter before the end token (``.`` drawn first).

    Example:
        >>> empty_rate(["", "anna", "", "bob"])
        0.5
    """
    _check_texts("samples", samples)
    _nonempty("samples", samples)
    return sum(1 for s in samples if not s) / len(samples)


def nonempty_novelty(samples: Sequence[str], training: Collection[str]) -> float | None:
    """Share of the *non-empty* samples that are not a training name.

    [`novelty`][recurrentkit.study.metrics.novelty] counts an empty sample as novel;
    this leaves them out (report them with
    [`empty_rate`][recurrentkit.study.metrics.empty_rate]). ``None`` when every sample
    is empty.

    Example:
        >>> nonempty_novelty(["", "", "emma", "zed"], {"emma"})
        0.5
    """
    _check_texts("samples", samples)
    _nonempty("samples", samples)
    kept = [s for s in samples if s]
    return novelty(kept, training) if kept else None


def reproduction_rate(samples: Sequence[str], training: Collection[str]) -> float:
    """Share of samples equal to a training name (``1 - novelty``).

    Example:
        >>> reproduction_rate(["emma", "emma", "zed"], {"emma"})
        0.6666666666666666
    """
    _check_texts("samples", samples)
    _nonempty("samples", samples)
    if isinstance(training, (str, bytes)) or not isinstance(training, Collection):
        raise InputTypeError("training", "a collection of names (a set)", describe(training))
    names = training if isinstance(training, (set, frozenset, dict)) else set(training)
    return sum(1 for s in samples if s in names) / len(samples)


def first_letter_distribution(words: Iterable[str]) -> dict[str, float]:
    """Share of words starting with each letter (empty words are skipped).

    Example:
        >>> first_letter_distribution(["ab", "ac", "b", ""])
        {'a': 0.6666666666666666, 'b': 0.3333333333333333}
    """
    if isinstance(words, (str, bytes)) or not isinstance(words, Iterable):
        raise InputTypeError("words", "an iterable of strings", describe(words))
    words = list(words)
    for i, w in enumerate(words):
        if not isinstance(w, str):
            raise InputTypeError(f"words[{i}]", "a string", describe(w))
    counts = Counter(w[0] for w in words if w)
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())} if total else {}


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    r"""Total-variation distance between two discrete distributions.

    $$
    \text{TV}(p, q) = \tfrac12 \sum_k |p_k - q_k| \in [0, 1]
    $$

    Example:
        >>> total_variation({"a": 1.0}, {"a": 0.5, "b": 0.5})
        0.5
    """
    for name, dist in (("p", p), ("q", q)):
        if not isinstance(dist, Mapping):
            raise InputTypeError(name, "a mapping {outcome: probability}", describe(dist))
        for k, v in dist.items():
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise InputTypeError(f"{name}[{k!r}]", "a probability (a float)", describe(v))
    keys = sorted(set(p) | set(q))  # a fixed order: the sum is the same in every process
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def paired_difference(
    a: Mapping[object, float], b: Mapping[object, float]
) -> tuple[float, float | None, int]:
    r"""Mean and 95% CI half-width of ``a - b`` over the keys both have (paired by seed).

    $$
    d_i = a_i - b_i, \qquad \bar d \pm t_{0.975,\,n-1}\, s_d / \sqrt n
    $$

    Pairing removes what two runs of one seed share (the split, the shuffling), so the
    interval is the one to read when asking whether ``a`` and ``b`` differ: an interval
    that contains 0 is no measurable difference.

    Args:
        a: pairing key (e.g. the seed) → value.
        b: the same keys → value.

    Returns:
        ``(mean, half_width or None, n)``: ``None`` with one pair.

    Raises:
        ConfigError: no key in common.

    Example:
        >>> m, h, n = paired_difference({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5, 2: 9.0})
        >>> m, h, n
        (0.5, 0.0, 2)
    """
    for name, d in (("a", a), ("b", b)):
        if not isinstance(d, Mapping):
            raise InputTypeError(name, "a mapping {pairing key: value}", describe(d))
    keys = [k for k in a if k in b]
    if not keys:
        raise ConfigError("b", "values paired with a's (a key in common)", sorted(map(str, b)))
    mean, half = mean_ci([float(a[k]) - float(b[k]) for k in keys])
    return mean, half, len(keys)


# Student's t quantiles t_{0.975, df} for df = 1..30 (beyond: the normal's 1.96).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def mean_ci(values: Sequence[float]) -> tuple[float, float | None]:
    r"""Mean and half-width of its 95% confidence interval (Student's t, ``n - 1`` df).

    $$
    \bar x \pm t_{0.975,\,n-1} \, \frac{s}{\sqrt n}
    $$

    Args:
        values: one value per seed.

    Returns:
        ``(mean, half_width)``; ``half_width`` is ``None`` for a single value (no
        interval can be estimated from one seed).

    Example:
        >>> mean_ci([1.0, 2.0, 3.0])
        (2.0, 2.484...)
        >>> mean_ci([5.0])
        (5.0, None)
    """
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InputTypeError("values", "a sequence of numbers", describe(values))
    _nonempty("values", values)
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise InputTypeError(f"values[{i}]", "a number", describe(v))
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return mean, t * math.sqrt(var / n)
