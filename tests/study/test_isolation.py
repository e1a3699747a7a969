"""The study is a subpackage the library does not depend on.

``import recurrentkit`` (and ``import recurrentkit.analysis``) loads no module of
``recurrentkit.study``, nor matplotlib; no module outside ``recurrentkit/study/`` imports
the study, at the top or inside a function; ``import recurrentkit.study`` works and
re-exports the public names of its modules.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "recurrentkit"


def loaded_after(statement: str) -> list[str]:
    """The modules in ``sys.modules`` after running ``statement`` in a fresh interpreter."""
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "statement", ["import recurrentkit", "import recurrentkit.analysis", "import recurrentkit.nn"]
)
def test_the_library_loads_no_study_module_and_no_matplotlib(statement: str) -> None:
    modules = loaded_after(statement)
    assert "recurrentkit" in modules
    assert [m for m in modules if m.startswith("recurrentkit.study")] == []
    assert [m for m in modules if m == "matplotlib" or m.startswith("matplotlib.")] == []


def test_no_module_outside_the_study_imports_it() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("recurrentkit", "study"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            if any(n == "recurrentkit.study" or n.startswith("recurrentkit.study.") for n in names):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_the_study_imports_and_re_exports_its_public_names() -> None:
    code = (
        "import importlib, json, recurrentkit.study as s\n"
        "mods = ['data', 'lm', 'train', 'sample', 'metrics', 'cells', 'report']\n"
        "out = {'all': s.__all__, 'missing': [n for n in s.__all__ if not hasattr(s, n)],\n"
        "       'modules': {m: importlib.import_module('recurrentkit.study.' + m).__all__\n"
        "                   for m in mods},\n"
        "       'same': {n: getattr(s, n) is getattr(importlib.import_module(\n"
        "                   'recurrentkit.study.' + m), n)\n"
        "                for m in mods for n in importlib.import_module(\n"
        "                   'recurrentkit.study.' + m).__all__ if n in s.__all__}}\n"
        "print(json.dumps(out))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["missing"] == []
    exported = set(out["all"])
    assert {"ablation", "data", "metrics"} <= exported  # re-exported as modules
    for module, names in out["modules"].items():
        if module in ("data", "metrics"):
            continue
        assert sorted(set(names) - exported) == [], module
    assert out["same"] and all(out["same"].values())
    for name in ("CharLM", "fit", "generate", "StudyGRUCell", "StudyReport", "compare_reach"):
        assert name in exported
