"""Compare two ``bench.py --json`` results: the same rows, before and after a change.

Both runs must come from the same command on the same machine, one after the other
(A/B); ratios to torch.nn are compared, never milliseconds. Prints one Markdown table per
thread count: each row's train, sampling and memory ratios, before → after, marking an
``after`` that is worse by more than ``--noise`` (default 0.05, this machine's
run-to-run spread of a ratio).

    python benchmarks/compare.py before.json after.json [--noise 0.05]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MEASURES = ("train_ratio", "sample_b1_ratio", "sample_b64_ratio", "peak_ratio")


def rows_by_key(result: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Every measured row, keyed by (threads, size, implementation, routing, executor)."""
    out = {}
    for threads, run in result["by_threads"].items():
        for size in run["sizes"]:
            for r in size["rows"]:
                key = (threads, r["size"], r["implementation"], r["routing"], r["executor"])
                out[key] = r
    return out


def compare(before: dict[str, Any], after: dict[str, Any], noise: float) -> tuple[str, int]:
    """The Markdown report and the number of row measures worse by more than ``noise``."""
    a, b = rows_by_key(before), rows_by_key(after)
    lines, worse = [], 0
    threads = sorted({k[0] for k in b}, key=lambda t: -int(t))
    default = str(after.get("default_threads"))
    for t in threads:
        label = f"{t} threads (torch's default)" if t == default else f"{t} thread(s)"
        lines += [
            f"\n### {label}\n",
            "| size | implementation | routing | executor | train | sample B=1 "
            "| sample B=64 | peak memory |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key, row in b.items():
            if key[0] != t:
                continue
            old = a.get(key)
            cells = []
            for m in MEASURES:
                new_v = row.get(m)
                old_v = old.get(m) if old else None
                if new_v is None:
                    cells.append("–")
                elif old_v is None:
                    cells.append(f"new {new_v:.2f}")
                else:
                    mark = ""
                    if new_v > old_v + noise:
                        mark, worse = " **worse**", worse + 1
                    cells.append(f"{old_v:.2f} → {new_v:.2f}{mark}")
            lines.append(
                f"| {key[1]} | {key[2]} | {key[3]} | {key[4]} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines), worse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--noise", type=float, default=0.05)
    args = parser.parse_args(argv)
    before, after = (json.loads(p.read_text()) for p in (args.before, args.after))
    report, worse = compare(before, after, args.noise)
    print(f"before: {before.get('command')} ({before.get('date')})")
    print(f"after:  {after.get('command')} ({after.get('date')})")
    print(report)
    print(f"\nmeasures worse by more than {args.noise}: {worse}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
