"""Machinery of the reliability suite: classify malformed calls, collect the figures.

Every malformed call a fuzz test makes goes through :meth:`Ledger.probe`, which runs it
and files it under one outcome:

- ``clear``: a :class:`recurrentkit.RecurrentKitError` whose one-line message reads
  ``<argument>: expected <what>, got <what>`` and names an argument of the call;
- ``unclear``: a recurrentkit error that does not (wrong argument, several lines, a
  message too long to read, a part missing);
- ``internal``: any other exception (torch's, Python's) — the user meets a traceback
  from inside a library;
- ``accepted``: the call returned and its result passed the reference check the test
  supplied (the input was legal after all, e.g. unbatched or a list for a tuple);
- ``silent``: the call returned but the result failed the reference check, or the
  call had to be rejected and was not: a silent wrong result;
- ``refused``: a call the documentation makes legal was rejected.

Fuzz tests never assert per call: they record every call, so the figures count every
failure, and then assert that their entry point had none (listing the first few).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import HealthCheck, settings

from recurrentkit.errors import RecurrentKitError

CLEAR, UNCLEAR, INTERNAL = "clear", "unclear", "internal"
ACCEPTED, SILENT, REFUSED = "accepted", "silent", "refused"
FAILURES = (UNCLEAR, INTERNAL, SILENT, REFUSED)
MAX_MESSAGE = 400
"""A message longer than this is not one a user reads: ``unclear``."""

EXAMPLES = int(os.environ.get("RK_FUZZ_EXAMPLES", "6"))
"""Examples generated per kind of malformation of each entry point (a fixed number, and
derandomized: every run makes the same calls, so the figures repeat)."""

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same calls on every run: the figures are reproducible
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Record:
    """One malformed call and what became of it."""

    family: str
    entry: str
    label: str
    outcome: str
    detail: str = ""


@dataclass
class EntryRun:
    """The records of one fuzz test (one entry point)."""

    family: str
    entry: str
    records: list[Record] = field(default_factory=list)

    def assert_clean(self, at_least: int = 1) -> None:
        """No unclear error, internal error or silent wrong result among the calls."""
        assert len(self.records) >= at_least, f"{self.entry}: only {len(self.records)} calls"
        bad = [r for r in self.records if r.outcome in FAILURES]
        if bad:
            lines = [f"  [{r.outcome}] {r.label}: {r.detail}" for r in bad[:12]]
            raise AssertionError(
                f"{self.entry}: {len(bad)} of {len(self.records)} malformed calls failed:\n"
                + "\n".join(lines)
            )


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else ""


def judge_error(e: RecurrentKitError, names: Iterable[str]) -> str | None:
    """Why a recurrentkit error is not clear, or ``None`` when it is."""
    msg = str(e)
    argument, expected, got = e.argument, e.expected, e.got
    if not argument or not expected or str(got).strip() == "":
        return f"a part of 'argument: expected X, got Y' is empty: {msg!r}"
    form = f"{argument}: expected {expected}, got {got}"
    torch_words = getattr(e, "torch_message", None)
    if torch_words is not None:  # torch.nn's own wording of the mistake, in parentheses
        if not torch_words.strip() or "\n" in torch_words:
            return f"torch.nn's wording is empty or spans lines: {msg!r}"
        form += f" (torch.nn: {torch_words})"
    if msg != form:
        return f"not of the form 'argument: expected X, got Y': {msg!r}"
    if "\n" in msg:
        return f"message spans {msg.count(chr(10)) + 1} lines: {msg[:200]!r}"
    if len(msg) > MAX_MESSAGE:
        return f"message of {len(msg)} characters: {msg[:200]!r}..."
    names = tuple(names)
    roots = {re.split(r"[\[.\s(]", part.strip(), maxsplit=1)[0] for part in argument.split(",")}
    if names and argument not in names and not roots & set(names):
        return f"names {argument!r}, expected one of {names}: {msg!r}"
    return None


def _where(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f" at {os.path.basename(f.filename)}:{f.lineno}"


class Ledger:
    """Every malformed call of the session, by entry point."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._current: EntryRun | None = None

    @contextlib.contextmanager
    def entry(self, family: str, entry: str) -> Iterator[EntryRun]:
        """Collect the calls of one fuzz test: ``with LEDGER.entry(...) as run:``."""
        run = EntryRun(family, entry)
        previous, self._current = self._current, run
        try:
            yield run
        finally:
            self._current = previous

    def probe(
        self,
        label: str,
        call: Callable[[], Any],
        *,
        names: Iterable[str],
        check: Callable[[Any], Any] | None = None,
        legal: bool = False,
    ) -> str:
        """Run ``call()`` and file it (see the module docstring).

        Args:
            label: what is malformed, for the failure list.
            call: the malformed call.
            names: the arguments an error may name (the root before ``[``, ``.``).
            check: for a call that may legally be accepted, a function of the result
                that raises ``AssertionError`` (or returns ``False``) when the result
                differs from the reference computation; ``None``: the call must be
                rejected.
            legal: the documentation makes the call legal: rejecting it is a failure
                (``refused``). Needs ``check``.
        """
        run = self._current
        assert run is not None, "probe() outside LEDGER.entry()"
        assert check is not None or not legal
        outcome, detail = _classify(call, names, check)
        if legal and outcome in (CLEAR, UNCLEAR):
            outcome, detail = REFUSED, f"a legal call was rejected: {detail}"
        record = Record(run.family, run.entry, label, outcome, detail)
        run.records.append(record)
        self.records.append(record)
        return outcome

    def record(self, label: str, outcome: str, detail: str = "") -> str:
        """File a call judged by the caller (e.g. a command line and its exit status)."""
        run = self._current
        assert run is not None, "record() outside LEDGER.entry()"
        record = Record(run.family, run.entry, label, outcome, detail)
        run.records.append(record)
        self.records.append(record)
        return outcome

    # -- figures -------------------------------------------------------------------

    def counts(self) -> Counter[str]:
        return Counter(r.outcome for r in self.records)

    def figure_lines(self) -> list[str]:
        """One line per bad-input figure (empty when no fuzz test ran)."""
        if not self.records:
            return []
        c = self.counts()
        tried = len(self.records)
        rejected = c[CLEAR] + c[UNCLEAR] + c[INTERNAL]
        entries = len({r.entry for r in self.records})
        accepted = c[ACCEPTED] + c[SILENT]
        return [
            f"bad input: {tried} malformed calls tried on {entries} entry points "
            f"({rejected} rejected, {accepted} accepted as legal)",
            f"bad input: rejected with a recurrentkit error naming argument, expected and got: "
            f"{c[CLEAR]}/{rejected} ({pct(c[CLEAR], rejected)}); unclear recurrentkit "
            f"errors: {c[UNCLEAR]}",
            f"bad input: answered by a torch-internal or Python-internal error: "
            f"{c[INTERNAL]}/{tried} ({pct(c[INTERNAL], tried)})",
            f"bad input: silent wrong results: {c[SILENT]}/{tried} "
            f"({c[ACCEPTED]} accepted calls matched their reference computation); "
            f"legal calls refused: {c[REFUSED]}",
        ]

    def family_table(self) -> list[tuple[str, int, int, int, int, int, int, int]]:
        """Per family: tried, clear, unclear, internal, accepted, silent, refused."""
        rows = []
        for fam in dict.fromkeys(r.family for r in self.records):
            c = Counter(r.outcome for r in self.records if r.family == fam)
            tried = sum(c.values())
            rows.append(
                (fam, tried, c[CLEAR], c[UNCLEAR], c[INTERNAL], c[ACCEPTED], c[SILENT], c[REFUSED])
            )
        return rows


def pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.1f}%" if b else "n/a"


def _classify(
    call: Callable[[], Any], names: Iterable[str], check: Callable[[Any], Any] | None
) -> tuple[str, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call()
    except RecurrentKitError as e:
        why = judge_error(e, names)
        return (CLEAR, str(e)) if why is None else (UNCLEAR, why)
    except Exception as e:  # noqa: BLE001 - classifying every failure is the point
        return INTERNAL, f"{type(e).__name__}: {_first_line(str(e))[:200]}{_where(e)}"
    if check is None:
        return SILENT, "accepted a call that has no legal reading"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            verdict = check(result)
    except AssertionError as e:
        return SILENT, f"result differs from the reference: {_first_line(str(e))[:200]}"
    if verdict is False:
        return SILENT, "result differs from the reference"
    return ACCEPTED, ""


LEDGER = Ledger()
"""The session's ledger (one per process; the conftest prints its figures)."""

FIGURES: dict[str, list[str]] = {}
"""Figures of the non-fuzz reliability tests: ``{topic: [line, ...]}``."""


def add_figure(topic: str, line: str) -> None:
    """Record one figure line (printed at the end of the session)."""
    FIGURES.setdefault(topic, []).append(line)


# -- reference comparisons -----------------------------------------------------------


def same(a: Any, b: Any, *, atol: float = 1e-10, rtol: float = 1e-9) -> None:
    """Assert two (nested) results are equal: tensors by value (NaN equals NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), (
            f"{type(a).__name__} vs {type(b).__name__}"
        )
        assert a.shape == b.shape, f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        assert a.dtype == b.dtype, f"dtype {a.dtype} vs {b.dtype}"
        assert a.device == b.device, f"device {a.device} vs {b.device}"
        a64, b64 = a.detach().double(), b.detach().double()
        ok = torch.isclose(a64, b64, atol=atol, rtol=rtol, equal_nan=True)
        assert bool(ok.all()), f"max difference {float((a64 - b64).abs().nan_to_num(0).max())}"
        return
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        assert isinstance(a, (tuple, list)) and isinstance(b, (tuple, list))
        assert len(a) == len(b), f"{len(a)} vs {len(b)} elements"
        for x, y in zip(a, b):
            same(x, y, atol=atol, rtol=rtol)
        return
    if isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(
            a, b, rel_tol=rtol, abs_tol=atol
        ), f"{a} vs {b}"
        return
    assert a == b, f"{a!r} vs {b!r}"


# -- malformed tensors (for modules whose parameters are float64 on the CPU) ---------------

ODD_DTYPES = (
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.complex128,
)
"""Every dtype a float64 module must refuse."""


def odd_dtype(data: Any, t: torch.Tensor) -> tuple[str, torch.Tensor]:
    """``t`` as a dtype other than the module's float64."""
    from hypothesis import strategies as st

    dtype = data.draw(st.sampled_from(ODD_DTYPES), label="dtype")
    return f"dtype {dtype}", t.to(dtype)


def non_tensor(data: Any, t: torch.Tensor) -> tuple[str, Any]:
    """Something that is not a tensor where ``t`` belongs."""
    from hypothesis import strategies as st

    kind = data.draw(st.sampled_from(["list", "numpy", "None", "str", "int", "tuple"]))
    value = {
        "list": lambda: t.tolist(),
        "numpy": lambda: t.numpy(),
        "None": lambda: None,
        "str": lambda: "x",
        "int": lambda: 3,
        "tuple": lambda: (t,),
    }[kind]()
    return f"a {kind} instead of a tensor", value


def odd_values(data: Any, t: torch.Tensor) -> tuple[str, torch.Tensor]:
    """``t`` with non-finite or extreme values (a legal call: the result must be right)."""
    from hypothesis import strategies as st

    kind = data.draw(st.sampled_from(["nan", "inf", "-inf", "huge", "tiny", "all nan"]))
    out = t.clone()
    flat = out.view(-1)
    if flat.numel() == 0:
        return "no values", out
    i = data.draw(st.integers(0, flat.numel() - 1), label="position")
    if kind == "all nan":
        flat.fill_(math.nan)
    else:
        value = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 1e300,
                 "tiny": 1e-310}[kind]  # fmt: skip
        flat[i] = value
    return f"{kind} value(s)", out


def odd_layout(data: Any, t: torch.Tensor) -> tuple[str, torch.Tensor]:
    """``t``'s values in another memory layout (a legal call)."""
    from hypothesis import strategies as st

    kind = data.draw(st.sampled_from(["non-contiguous", "offset view", "requires_grad"]))
    if kind == "non-contiguous" and t.dim() >= 2:
        return kind, t.transpose(0, -1).contiguous().transpose(0, -1)
    if kind == "offset view":
        big = torch.empty((t.shape[0] + 1, *t.shape[1:]), dtype=t.dtype)
        big[1:] = t
        return kind, big[1:]
    return "requires_grad", t.detach().clone().requires_grad_(True)


def meta(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the meta device (no data): the stand-in for another device."""
    return t.to("meta")
