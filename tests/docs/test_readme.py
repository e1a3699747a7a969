"""The README's API tour runs as written, and its quick start names the CI's test command."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_api_tour_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "the README has no python block"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})  # noqa: S102 (our own README)


def test_the_quick_start_test_command_is_the_ci_s() -> None:
    readme = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    command = (
        'pip install "torch==2.13.0" && pip install -e ".[dev,study,export]" && python -m pytest'
    )
    assert command in readme
    assert command in ci
