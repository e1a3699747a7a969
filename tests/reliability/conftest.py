"""The reliability suite's session hooks: print one line per measured figure at the end.

``python -m pytest tests/reliability -q`` ends with a "reliability figures" section.
With ``RK_RELIABILITY_JSON=path`` the figures (and the bad-input table per family) are
also written there as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # the harness module beside this file

import reliability_harness as harness  # noqa: E402


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = harness.LEDGER.figure_lines()
    for topic, topic_lines in harness.FIGURES.items():
        lines += [f"{topic}: {line}" for line in topic_lines]
    if not lines:
        return
    tr = terminalreporter
    tr.write_sep("=", "reliability figures")
    for line in lines:
        tr.write_line(line)
    if os.environ.get("RK_RELIABILITY_DETAIL") and harness.LEDGER.records:
        tr.write_line(
            "bad input by family: tried / clear / unclear / internal / accepted / silent / refused"
        )
        for row in harness.LEDGER.family_table():
            tr.write_line(f"  {row[0]}: " + " / ".join(str(v) for v in row[1:]))
        for r in harness.LEDGER.records:
            if r.outcome in harness.FAILURES:
                tr.write_line(f"  FAILED [{r.outcome}] {r.entry}: {r.label}: {r.detail}")
    out = os.environ.get("RK_RELIABILITY_JSON")
    if out:
        payload = {
            "lines": lines,
            "families": [
                dict(zip(("family", "tried", "clear", "unclear", "internal", "accepted", "silent",
                          "refused"), row))
                for row in harness.LEDGER.family_table()
            ],
        }  # fmt: skip
        Path(out).write_text(json.dumps(payload, indent=1) + "\n")
