"""Griffe extension: read a Google-style ``Example:`` section as ``Examples:``.

The package's docstrings head their runnable examples ``Example:``. Griffe's Google parser
knows only the plural as a section; the singular becomes an admonition whose ``>>>`` lines
Markdown reads as nested block quotes. This extension renames the heading when a docstring
is loaded, so the examples render as highlighted code. The docstrings themselves (and their
doctests) are unchanged.

Registered in ``mkdocs.yml`` under the python handler's ``extensions``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headings to ``Examples:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None and "Example:" in docstring.value:
            docstring.value = _HEADING.sub(r"\g<indent>Examples:", docstring.value)
