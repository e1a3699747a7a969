"""The example scripts, importable by their names (``import streaming_names``): their
folder on ``sys.path`` for the tests of this folder."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
