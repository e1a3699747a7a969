"""Bad-input fuzzing of the study's parts in the package: ``data`` (word files, encoding,
splits), ``lm.CharLM``, ``sample``, ``metrics`` and ``train``.

Accepted calls are checked against references written here: the documented file format
parsed by hand, encodings built id by id, losses by explicit cross-entropy, samples by
their documented properties.
"""

from __future__ import annotations

import atexit
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reliability_harness import EXAMPLES, FUZZ, LEDGER, meta, same
from torch import nn
from torch.nn import functional as F

import recurrentkit as rk
from recurrentkit.study import data, metrics, sample
from recurrentkit.study.lm import CharLM
from recurrentkit.study.train import TrainConfig, fit, load_checkpoint

TMP = Path(tempfile.mkdtemp(prefix="rk-reliability-"))
atexit.register(shutil.rmtree, TMP, ignore_errors=True)


def tiny_lm(vocab: int = 28) -> CharLM:
    torch.manual_seed(0)
    return CharLM(rk.Stack([rk.GRUCell(5, 6)], batch_first=True), vocab, 5).double().eval()


LM = tiny_lm()


# -- load_words: random file contents against the documented format ------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyz"
PIECES = st.sampled_from(
    [*LETTERS[:6], "\n", "\r\n", "\r", " ", "\t", "A", "Z", "é", "1", "-", "'", "\x00",
     "\ufeff", "\x85", "\u2028", "\x0c", "ß"]
)  # fmt: skip


def documented_words(text: str) -> list[str] | None:
    """The docstring's contract: lines end with \\n, \\r\\n or \\r; a leading BOM is
    dropped; whitespace around a word is ignored, blank lines skipped; every word is
    a-z only (else ``None``: an error is due) and at least one word is needed."""
    if text.startswith("\ufeff"):
        text = text[1:]
    words = [w.strip() for w in re.split(r"\r\n|\r|\n", text)]
    words = [w for w in words if w]
    if not words or any(set(w) - set(LETTERS) for w in words):
        return None
    return words


@settings(FUZZ, max_examples=10 * EXAMPLES)  # random files: cheap, and many shapes
@given(data_=st.data())
def fuzz_load_words(kind: str, data_: st.DataObject) -> None:
    path = TMP / "words.txt"
    if kind == "text":
        text = "".join(data_.draw(st.lists(PIECES, max_size=40), label="text"))
        path.write_bytes(text.encode("utf-8"))
        want = documented_words(text)
    else:
        raw = data_.draw(st.binary(max_size=60), label="bytes")
        path.write_bytes(raw)
        try:
            want = documented_words(raw.decode("utf-8"))
        except UnicodeDecodeError:
            want = None
    label = f"load_words on {kind} {path.read_bytes()[:40]!r}"

    def check(words: list[str]) -> None:
        assert words == want, f"{words!r} vs the documented {want!r}"

    LEDGER.probe(label, lambda: data.load_words(path), names=("path",),
                 check=None if want is None else check, legal=want is not None)  # fmt: skip


def test_load_words_follows_its_documented_format() -> None:
    with LEDGER.entry("data", "data.load_words (random files)") as run:
        for kind in ("text", "bytes"):
            fuzz_load_words(kind)
    run.assert_clean()


def data_cases() -> list[tuple[str, tuple[str, ...], Any, Any]]:
    folder = TMP / "a-folder"
    folder.mkdir(exist_ok=True)
    latin1 = TMP / "latin1.txt"
    latin1.write_bytes("anna\nren\xe9e\n".encode("latin-1"))
    long_line = TMP / "long.txt"
    long_line.write_text("anna\n" + "a" * 100_000 + "\n")
    long_bad = TMP / "long-bad.txt"
    long_bad.write_text("anna\n" + "a" * 100_000 + "7\n")
    return [
        ("load_words(5)", ("path",), lambda: data.load_words(5), None),
        ("load_words(b'names.txt')", ("path",), lambda: data.load_words(b"names.txt"), None),
        ("load_words(missing)", ("path",), lambda: data.load_words(TMP / "missing.txt"), None),
        ("load_words(a folder)", ("path",), lambda: data.load_words(folder), None),
        ("load_words(latin-1 file)", ("path",), lambda: data.load_words(latin1), None),
        (
            "load_words(a 100,000-letter line)",
            ("path",),
            lambda: data.load_words(long_line),
            lambda w: w == ["anna", "a" * 100_000],
        ),  # fmt: skip
        (
            "load_words(a 100,001-character line with a digit)",
            ("path",),
            lambda: data.load_words(long_bad),
            None,
        ),  # noqa: E501
        ("encode('anna')", ("words",), lambda: data.encode("anna"), None),
        ("encode(None)", ("words",), lambda: data.encode(None), None),
        ("encode([3])", ("words",), lambda: data.encode([3]), None),
        ("encode([''])", ("words",), lambda: data.encode([""]), None),
        ("encode(['Anna'])", ("words",), lambda: data.encode(["Anna"]), None),
        ("encode(a 17-letter name)", ("words",), lambda: data.encode(["a" * 17]), None),
        ("encode(a 100,000-letter name)", ("words",), lambda: data.encode(["a" * 100_000]), None),
        (
            "encode(a 16-letter name, fixed)",
            ("words",),
            lambda: data.encode(["a" * 16], "fixed"),
            None,
        ),  # noqa: E501
        (
            "encode(protocol='makemore')",
            ("protocol",),
            lambda: data.encode(["ab"], "makemore"),
            None,
        ),  # noqa: E501
        ("encode(max_len=1)", ("max_len",), lambda: data.encode(["a"], max_len=1), None),
        ("encode(max_len='16')", ("max_len",), lambda: data.encode(["a"], max_len="16"), None),
        ("encode(a generator)", ("words",), lambda: data.encode(w for w in ["ab"]), None),
        (
            "encode([]) (no words)",
            ("words",),
            lambda: data.encode([]),
            lambda r: r[0].shape == (0, 16) and r[1].shape == (0, 16),
        ),  # fmt: skip
        (
            "encode(a tuple)",
            ("words",),
            lambda: data.encode(("ab", "c"), max_len=3),
            lambda r: (
                r[0].tolist() == [[2, 3, 0], [4, 0, 0]]
                and r[1].tolist() == [[3, 1, -100], [1, -100, -100]]
            ),
        ),  # noqa: E501
        ("split(fraction 0)", ("train_fraction",), lambda: data.split(["a", "b"], 0.0), None),
        ("split(fraction 1)", ("train_fraction",), lambda: data.split(["a", "b"], 1), None),
        (
            "split(fraction nan)",
            ("train_fraction",),
            lambda: data.split(["a", "b"], math.nan),
            None,
        ),  # noqa: E501
        ("split(fraction '0.8')", ("train_fraction",), lambda: data.split(["a", "b"], "0.8"), None),  # noqa: E501
        ("split(one word)", ("words",), lambda: data.split(["a"]), None),
        ("split(a set of words)", ("words",), lambda: data.split({"a", "b", "c"}), None),
        ("split(seed None)", ("seed",), lambda: data.split(["a", "b", "c"], seed=None), None),
        ("split(seed '1')", ("seed",), lambda: data.split(["a", "b", "c"], seed="1"), None),
        ("split(seed 1.5)", ("seed",), lambda: data.split(["a", "b", "c"], seed=1.5), None),
        ("split(words 5)", ("words",), lambda: data.split(5), None),
        (
            "split(legal)",
            ("words",),
            lambda: data.split(list("abcdefghij"), 0.7, seed=3),
            lambda r: len(r[0]) == 7 and sorted(r[0] + r[1]) == list("abcdefghij"),
        ),  # fmt: skip
        ("decode(None)", ("ids",), lambda: data.decode(None), None),
        ("decode(a float tensor)", ("ids",), lambda: data.decode(torch.tensor([2.0, 3.0])), None),
        ("decode(a 2-D tensor)", ("ids",), lambda: data.decode(torch.tensor([[2, 3]])), None),
        ("decode(['a'])", ("ids",), lambda: data.decode(["a"]), None),
        ("decode(ids out of range)", ("ids",), lambda: data.decode([2, 99, 3]), None),
        (
            "decode(legal)",
            ("ids",),
            lambda: data.decode(torch.tensor([28, 2, 0, 3, 1, 4])),
            lambda s: s == "ab",
        ),  # fmt: skip
        ("vocab_size('x')", ("protocol",), lambda: data.vocab_size("x"), None),
    ]


def test_data_functions_reject_bad_arguments_clearly() -> None:
    with LEDGER.entry("data", "data.load_words/encode/split/decode") as run:
        for label, names, call, check in data_cases():
            LEDGER.probe(label, call, names=names, check=check, legal=check is not None)
    run.assert_clean()


# -- CharLM --------------------------------------------------------------------------------


def lm_cases() -> list[tuple[str, tuple[str, ...], Any, Any]]:
    idx = torch.tensor([[2, 3, 4, 0], [5, 6, 1, 0]])
    y = torch.tensor([[3, 4, 1, -100], [6, 1, -100, -100]])

    def loss_ref(result: Any) -> None:
        logits, loss = result
        want = F.cross_entropy(LM(idx)[0].reshape(-1, 28), y.reshape(-1), ignore_index=-100)
        same(loss, want, atol=1e-12)
        same(logits, LM(idx)[0])

    stack = rk.Stack([rk.GRUCell(5, 6)], batch_first=True)
    return [
        ("CharLM(stack=a cell)", ("stack",), lambda: CharLM(rk.GRUCell(5, 6), 28, 5), None),
        ("CharLM(vocab_size=0)", ("vocab_size",), lambda: CharLM(stack, 0, 5), None),
        ("CharLM(embed_dim mismatch)", ("embed_dim",), lambda: CharLM(stack, 28, 7), None),
        (
            "CharLM(layer_norm='yes')",
            ("layer_norm",),
            lambda: CharLM(stack, 28, 5, layer_norm="yes"),
            None,
        ),  # noqa: E501
        (
            "CharLM(hidden_size=0)",
            ("hidden_size",),
            lambda: CharLM(stack, 28, 5, hidden_size=0),
            None,
        ),  # noqa: E501
        ("forward(idx float)", ("idx",), lambda: LM(idx.double()), None),
        ("forward(idx 1-D)", ("idx",), lambda: LM(idx[0]), None),
        ("forward(idx 3-D)", ("idx",), lambda: LM(idx[None]), None),
        ("forward(idx empty)", ("idx",), lambda: LM(idx[:0]), None),
        ("forward(idx = V)", ("idx",), lambda: LM(idx + 26), None),
        ("forward(idx negative)", ("idx",), lambda: LM(idx - 1), None),
        ("forward(idx meta)", ("idx",), lambda: LM(meta(idx)), None),
        ("forward(idx a list)", ("idx",), lambda: LM(idx.tolist()), None),
        ("forward(idx uint8)", ("idx",), lambda: LM(idx.to(torch.uint8), y), loss_ref),
        ("forward(targets shape)", ("targets",), lambda: LM(idx, y[:, :-1]), None),
        ("forward(targets float)", ("targets",), lambda: LM(idx, y.double()), None),
        ("forward(targets = V)", ("targets",), lambda: LM(idx, y.clamp(min=0) + 27), None),
        ("forward(targets bool)", ("targets",), lambda: LM(idx, y > 0), None),
        ("forward(legal)", ("idx",), lambda: LM(idx, y), loss_ref),
        ("step(idx_t 2-D)", ("idx_t",), lambda: LM.step(idx), None),
        ("step(idx_t float)", ("idx_t",), lambda: LM.step(idx[:, 0].double()), None),
        ("step(idx_t = V)", ("idx_t",), lambda: LM.step(idx[:, 0] + 40), None),
        (
            "step(state of another batch)",
            ("state", "x_t"),
            lambda: LM.step(idx[:, 0], LM.initial_state(3)),
            None,
        ),  # noqa: E501
        ("step(state a tensor)", ("state",), lambda: LM.step(idx[:, 0], torch.zeros(2, 6)), None),
        ("initial_state(-1)", ("batch_size",), lambda: LM.initial_state(-1), None),
        (  # B = 0: the Stack's empty states (legal since Stack accepts empty batches)
            "initial_state(0)",
            ("batch_size",),
            lambda: LM.initial_state(0),
            lambda s: all(t.shape[0] == 0 for t in s),
        ),
    ]


def test_charlm_rejects_bad_input_clearly() -> None:
    with LEDGER.entry("study parts", "lm.CharLM") as run:
        for label, names, call, check in lm_cases():
            LEDGER.probe(label, call, names=names, check=check, legal=check is not None)
    run.assert_clean()


# -- sampling and step-wise loss ------------------------------------------------------------


def check_samples(n: int, max_steps: int, forbid: tuple[int, ...] = ()) -> Any:
    def check(samples: list[sample.Sample]) -> None:
        assert len(samples) == n
        for s in samples:
            assert 1 <= len(s.tokens) <= max_steps
            assert all(0 <= t < 28 and t not in forbid for t in s.tokens)
            assert s.ended == (s.tokens[-1] == data.END) and data.END not in s.tokens[:-1]
            assert s.text == "".join(data.itos[t] for t in s.tokens if 2 <= t <= 27)

    return check


@FUZZ
@given(data_=st.data())
def fuzz_generate(arg: str, data_: st.DataObject) -> None:
    bad: dict[str, list[Any]] = {
        "model": [rk.Stack([rk.GRUCell(5, 6)]), None, "lm"],
        "num_samples": [0, -3, "5", 2.0, True],
        "max_steps": [0, -1, "20", None],
        "temperature": [0.0, -1.0, math.nan, "1", None],
        "start_token": [28, -1, 1.0, "a"],
        "forbid": [list(range(28)), [28], "ab", [1.5], 5],
        "seed": ["0", 1.5, None],
        "batch_size": [0, 2.5],
    }
    if arg == "legal":
        n = data_.draw(st.integers(1, 6))
        steps = data_.draw(st.integers(1, 8))
        forbid = tuple(data_.draw(st.sets(st.integers(0, 27), max_size=5)))
        temperature = data_.draw(st.sampled_from([0.5, 1.0, 3.0, math.inf]))
        LEDGER.probe(
            f"generate(legal, {n}, max_steps={steps}, forbid={forbid}, T={temperature})",
            lambda: sample.generate(LM, n, max_steps=steps, forbid=forbid, temperature=temperature),  # noqa: E501
            names=(),
            check=check_samples(n, steps, forbid),
            legal=True,
        )
        return
    value = data_.draw(st.sampled_from(bad[arg]), label=arg)
    kwargs: dict[str, Any] = {} if arg in ("model", "num_samples") else {arg: value}
    model = value if arg == "model" else LM
    n = value if arg == "num_samples" else 3
    LEDGER.probe(f"generate({arg}={value!r})", lambda: sample.generate(model, n, **kwargs),
                 names=(arg,))  # fmt: skip


def test_generate_rejects_bad_arguments_clearly() -> None:
    with LEDGER.entry("study parts", "sample.generate") as run:
        for arg in ("model", "num_samples", "max_steps", "temperature", "start_token", "forbid",
                    "seed", "batch_size", "legal"):  # fmt: skip
            fuzz_generate(arg)
    run.assert_clean()


def loss_cases() -> list[tuple[str, tuple[str, ...], Any, Any]]:
    x, y = data.encode(["anna", "bob", "eve"], max_len=6)

    def ref(result: float) -> None:
        logits = LM(x)[0].reshape(-1, 28)
        want = float(F.cross_entropy(logits, y.reshape(-1), ignore_index=-100, reduction="mean"))
        assert math.isclose(result, want, rel_tol=1e-9), (result, want)

    cases = []
    for fn in (sample.stepwise_loss, sample.teacher_forced_loss):
        name = fn.__name__
        cases += [
            (f"{name}(x float)", ("x",), lambda fn=fn: fn(LM, x.double(), y), None),
            (f"{name}(x 1-D)", ("x",), lambda fn=fn: fn(LM, x[0], y[0]), None),
            (f"{name}(y shape)", ("y",), lambda fn=fn: fn(LM, x, y[:, :-1]), None),
            (
                f"{name}(y all ignored)",
                ("y",),
                lambda fn=fn: fn(LM, x, torch.full_like(y, -100)),
                None,
            ),  # noqa: E501
            (f"{name}(x = V)", ("x", "idx", "idx_t"), lambda fn=fn: fn(LM, x + 30, y), None),
            (
                f"{name}(batch_size 0)",
                ("batch_size",),
                lambda fn=fn: fn(LM, x, y, batch_size=0),
                None,
            ),  # noqa: E501
            (
                f"{name}(model a Stack)",
                ("model",),
                lambda fn=fn: fn(rk.Stack([rk.GRUCell(2, 2)]), x, y),
                None,
            ),  # noqa: E501
            (f"{name}(x empty)", ("x", "y"), lambda fn=fn: fn(LM, x[:0], y[:0]), None),
            (f"{name}(legal, batch_size 2)", ("x",), lambda fn=fn: fn(LM, x, y, batch_size=2), ref),  # noqa: E501
        ]
    return cases


def test_losses_reject_bad_input_clearly() -> None:
    with LEDGER.entry("study parts", "sample.stepwise_loss / teacher_forced_loss") as run:
        for label, names, call, check in loss_cases():
            LEDGER.probe(label, call, names=names, check=check, legal=check is not None)
    run.assert_clean()


# -- metrics --------------------------------------------------------------------------------


def metric_cases() -> list[tuple[str, tuple[str, ...], Any, Any]]:
    return [
        ("runaway_rate(5)", ("ended",), lambda: metrics.runaway_rate(5), None),
        ("runaway_rate([])", ("ended",), lambda: metrics.runaway_rate([]), None),
        ("runaway_rate(['no'])", ("ended",), lambda: metrics.runaway_rate(["no"]), None),
        (
            "runaway_rate(legal)",
            ("ended",),
            lambda: metrics.runaway_rate([True, False]),
            lambda v: v == 0.5,
        ),  # noqa: E501
        ("mean_length('abc')", ("samples",), lambda: metrics.mean_length("abc"), None),
        ("mean_length([])", ("samples",), lambda: metrics.mean_length([]), None),
        ("mean_length([1])", ("samples",), lambda: metrics.mean_length([1]), None),
        ("distinct_n(n=0)", ("n",), lambda: metrics.distinct_n(["ab"], 0), None),
        ("distinct_n(n='2')", ("n",), lambda: metrics.distinct_n(["ab"], "2"), None),
        ("distinct_n(samples None)", ("samples",), lambda: metrics.distinct_n(None, 2), None),
        ("repeats(123)", ("sample",), lambda: metrics.repeats(123), None),
        ("repeats(ns=[0])", ("ns",), lambda: metrics.repeats("abab", ns=[0]), None),
        (
            "repeats(min_count=0)",
            ("min_count",),
            lambda: metrics.repeats("abab", min_count=0),
            None,
        ),  # noqa: E501
        ("repeats(legal)", ("sample",), lambda: metrics.repeats("abababab"), lambda v: v is True),
        (
            "repetition_rate(min_count=1)",
            ("min_count",),
            lambda: metrics.repetition_rate(["ab"], min_count=1),
            None,
        ),  # noqa: E501
        (
            "repetition_rate(ns=['2'])",
            ("ns",),
            lambda: metrics.repetition_rate(["ab"], ns=["2"]),
            None,
        ),  # noqa: E501
        ("novelty(training=5)", ("training",), lambda: metrics.novelty(["ab"], 5), None),
        ("novelty(training=None)", ("training",), lambda: metrics.novelty(["ab"], None), None),
        ("novelty(samples [])", ("samples",), lambda: metrics.novelty([], {"a"}), None),
        (
            "novelty(legal)",
            ("samples",),
            lambda: metrics.novelty(["ab", "c"], ["ab"]),
            lambda v: v == 0.5,
        ),  # noqa: E501
        (
            "first_letter_distribution(5)",
            ("words",),
            lambda: metrics.first_letter_distribution(5),
            None,
        ),  # noqa: E501
        (
            "first_letter_distribution([3])",
            ("words",),
            lambda: metrics.first_letter_distribution([3]),
            None,
        ),  # noqa: E501
        (
            "total_variation(p a list)",
            ("p",),
            lambda: metrics.total_variation([1.0], {"a": 1.0}),
            None,
        ),  # noqa: E501
        (
            "total_variation(q values str)",
            ("q",),
            lambda: metrics.total_variation({"a": 1.0}, {"a": "1"}),
            None,
        ),  # noqa: E501
        (
            "total_variation(legal)",
            ("p",),
            lambda: metrics.total_variation({"a": 1.0}, {"b": 1.0}),
            lambda v: v == 1.0,
        ),  # noqa: E501
        ("mean_ci([])", ("values",), lambda: metrics.mean_ci([]), None),
        ("mean_ci(['a'])", ("values",), lambda: metrics.mean_ci(["a"]), None),
        ("mean_ci(None)", ("values",), lambda: metrics.mean_ci(None), None),
        (
            "mean_ci([nan, 1]): the mean is unknown",
            ("values",),
            lambda: metrics.mean_ci([math.nan, 1.0]),
            lambda r: math.isnan(r[0]),
        ),  # noqa: E501
        (
            "mean_ci(legal)",
            ("values",),
            lambda: metrics.mean_ci([1.0, 3.0]),
            lambda r: r[0] == 2.0 and math.isclose(r[1], 12.706),
        ),  # noqa: E501
    ]


def test_metrics_reject_bad_input_clearly() -> None:
    with LEDGER.entry("study parts", "metrics") as run:
        for label, names, call, check in metric_cases():
            LEDGER.probe(label, call, names=names, check=check, legal=check is not None)
    run.assert_clean()


# -- the trainer ------------------------------------------------------------------------------


class _NoParams(nn.Module):
    def forward(self, x: Any, y: Any) -> Any:
        return x, torch.tensor(0.0)


class _Returns(nn.Module):
    def __init__(self, what: str) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.what = what

    def forward(self, x: Any, y: Any) -> Any:
        loss = (self.w * 0).sum() + 1.0
        return {"loss only": loss, "a vector loss": (x, loss.repeat(3)),
                "a string": "logits", "an int loss": (x, 3)}[self.what]  # fmt: skip


def train_cases() -> list[tuple[str, tuple[str, ...], Any, Any]]:
    x, y = data.encode(["anna", "bob", "eve", "otto"], max_len=6)
    cfg = TrainConfig(epochs=1, batch_size=2)

    def model() -> CharLM:
        torch.manual_seed(0)
        return CharLM(rk.Stack([rk.GRUCell(4, 4)], batch_first=True), 28, 4)

    junk = TMP / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    return [
        *[
            (
                f"TrainConfig({k}={v!r})",
                (k,),
                lambda k=k, v=v: TrainConfig(**{"epochs": 1, k: v}),
                None,
            )  # noqa: E501
            for k, v in [
                ("epochs", 0),
                ("epochs", "5"),
                ("epochs", 2.0),
                ("batch_size", 0),
                ("lr", 0.0),
                ("lr", -1e-3),
                ("lr", math.nan),
                ("lr", math.inf),
                ("lr", "1e-3"),
                ("optimizer", "sgd"),
                ("optimizer", None),
                ("weight_decay", -0.1),
                ("weight_decay", math.nan),
                ("seed", -1),
                ("seed", "0"),
                ("eval_batch_size", 0),
                ("checkpoint", 5),
                ("checkpoint", ["ck.pt"]),
                ("progress", "yes"),
            ]
        ],
        (
            "fit(model a function)",
            ("model",),
            lambda: fit(lambda a, b: None, (x, y), (x, y), cfg),
            None,
        ),  # noqa: E501
        (
            "fit(model without parameters)",
            ("model",),
            lambda: fit(_NoParams(), (x, y), (x, y), cfg),
            None,
        ),  # noqa: E501
        ("fit(train a tensor)", ("train",), lambda: fit(model(), x, (x, y), cfg), None),
        (
            "fit(train x/y lengths differ)",
            ("train",),
            lambda: fit(model(), (x, y[:2]), (x, y), cfg),
            None,
        ),  # noqa: E501
        ("fit(train empty)", ("train",), lambda: fit(model(), (x[:0], y[:0]), (x, y), cfg), None),
        ("fit(val a list)", ("val",), lambda: fit(model(), (x, y), [x], cfg), None),
        (
            "fit(config a dict)",
            ("config",),
            lambda: fit(model(), (x, y), (x, y), {"epochs": 1}),
            None,
        ),  # noqa: E501
        (
            "fit(train x float)",
            ("train", "idx"),
            lambda: fit(model(), (x.float(), y), (x, y), cfg),
            None,
        ),  # noqa: E501
        (
            "fit(train ids = V)",
            ("train", "idx"),
            lambda: fit(model(), (x + 28, y), (x, y), cfg),
            None,
        ),  # noqa: E501
        *[
            (
                f"fit(model returns {what})",
                ("model", "model(x, y)"),
                lambda what=what: fit(_Returns(what), (x, y), (x, y), cfg),
                None,
            )  # noqa: E501
            for what in ("loss only", "a vector loss", "a string", "an int loss")
        ],
        ("load_checkpoint(None)", ("path", "checkpoint"), lambda: load_checkpoint(None), None),
        ("load_checkpoint(5)", ("path", "checkpoint"), lambda: load_checkpoint(5), None),
        ("load_checkpoint(a folder)", ("path", "checkpoint"), lambda: load_checkpoint(TMP), None),
        ("load_checkpoint(zeros)", ("path", "checkpoint"), lambda: load_checkpoint(junk), None),
        (
            "fit(resume from zeros)",
            ("checkpoint", "resume"),
            lambda: fit(
                model(), (x, y), (x, y), TrainConfig(epochs=1, checkpoint=junk), resume=True
            ),
            None,
        ),  # noqa: E501
    ]


def test_trainer_rejects_bad_input_clearly() -> None:
    with LEDGER.entry("study parts", "train.TrainConfig / fit / load_checkpoint") as run:
        for label, names, call, check in train_cases():
            LEDGER.probe(label, call, names=names, check=check, legal=check is not None)
    run.assert_clean()
