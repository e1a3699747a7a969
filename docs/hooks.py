"""MkDocs hook: render the Sphinx roles found in docstrings as links and math.

The package's docstrings use a few reStructuredText roles (``:class:`~recurrentkit.Stack```,
``:meth:`Stack.step```, ``:math:`U^{k \\to l}```). mkdocstrings renders docstrings as
Markdown, where a role shows up as ``:class:<code>~recurrentkit.Stack</code>``. This hook
rewrites, in each page's HTML:

- ``:class:``/``:meth:``/``:func:``/``:mod:``/``:attr:``/``:exc:``/``:data:``/``:obj:`` roles
  into mkdocs-autorefs cross-references (a link where the object is documented on the site,
  plain code otherwise; ``~`` shows the last component only, as in Sphinx). Names without a
  package prefix (``Stack.step``) are looked up among recurrentkit's public objects.
- ``:math:`` roles into inline math for MathJax (``pymdownx.arithmatex``'s markup).

Registered in ``mkdocs.yml`` under ``hooks:``; not part of the built site.
"""

from __future__ import annotations

import functools
import html
import importlib
import inspect
import pkgutil
import re
from typing import Any

ROLE = re.compile(
    r":(?:py:)?(?P<role>class|meth|func|mod|attr|exc|data|obj|const):"
    r"<code>(?P<tilde>~?)(?P<target>[\w.]+?)(?P<parens>\(\))?</code>"
)
MATH = re.compile(r":math:<code>(?P<tex>.*?)</code>", re.S)


@functools.cache
def _index() -> dict[str, str]:
    """Short names (``Stack``, ``Stack.step``, ``routing.Shared``) → full public paths."""
    import recurrentkit

    found: dict[str, set[str]] = {}

    def add(short: str, full: str) -> None:
        found.setdefault(short, set()).add(full)

    modules = [recurrentkit]
    for info in pkgutil.walk_packages(recurrentkit.__path__, "recurrentkit."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            try:
                modules.append(importlib.import_module(info.name))
            except ImportError:
                continue
    for module in modules:
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name, None)
            full = f"{module.__name__}.{name}"
            add(name, full)
            add(f"{module.__name__.removeprefix('recurrentkit.')}.{name}", full)
            if inspect.isclass(obj):
                for member in vars(obj):
                    if not member.startswith("_"):
                        add(f"{name}.{member}", f"{full}.{member}")
    # Prefer the shortest public path (``recurrentkit.Stack`` over ``recurrentkit.stack.Stack``).
    return {short: min(paths, key=lambda p: (p.count("."), p)) for short, paths in found.items()}


def _identifier(target: str) -> str:
    if target.startswith(("recurrentkit.", "torch.")) or target == "recurrentkit":
        return target
    return _index().get(target, target)


def _role(match: re.Match[str]) -> str:
    target = match["target"]
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    if match["role"] in ("meth", "func"):
        shown += "()"
    identifier = html.escape(_identifier(target))
    return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'


def _math(match: re.Match[str]) -> str:
    return f'<span class="arithmatex">\\({match["tex"]}\\)</span>'


def on_page_content(html_text: str, **kwargs: Any) -> str:
    """Rewrite the roles; mkdocs-autorefs resolves the references afterwards (``on_env``)."""
    if ":" not in html_text:
        return html_text
    return MATH.sub(_math, ROLE.sub(_role, html_text))
