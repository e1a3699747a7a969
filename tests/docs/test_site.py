"""The documentation site: navigation, no network, runnable examples, and the rendering check.

- Every page under ``docs/`` is in ``mkdocs.yml``'s navigation, and every navigation
  entry exists.
- The site loads nothing from the network (no CDN scripts, no web fonts).
- Every ```` ```python ```` block of the pages in ``RUN_PAGES`` runs, in order, in one
  namespace per page, so the guides cannot rot; the claims they make are ``assert``s.
  Illustrative fragments that are not meant to run are fenced as ```` ```py ````
  (highlighted the same) or ```` ```bash ````.
- ``docs/check_render.py`` builds the site, renders the home, routing and study pages in
  headless Chromium and finds every mermaid block drawn, every formula typeset and every
  image loaded. Skipped when Chromium (Debian: ``apt-get install -y chromium``) or mkdocs
  is not installed.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch

yaml = pytest.importorskip("yaml")  # installed with mkdocs

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUN_PAGES = [
    "concepts/cells.md",
    "concepts/stack.md",
    "concepts/routing.md",
    "concepts/interop.md",
    "guides/custom-cell.md",
    "guides/fast-cell.md",
    "guides/custom-policy.md",
    "guides/connectivity.md",
    "guides/deploy-onnx.md",
    "guides/state.md",
]


class _Loader(yaml.SafeLoader):
    """mkdocs.yml with its ``!!python/name:`` tags read as plain strings."""


_Loader.add_multi_constructor(
    "tag:yaml.org,2002:python/", lambda loader, suffix, node: loader.construct_scalar(node)
)


def _config() -> dict:
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)


def _nav_pages(nav: list) -> list[str]:
    out: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            out += _nav_pages(value)
        elif isinstance(value, str) and not re.match(r"[a-z]+://", value):
            out.append(value)
    return out


def _excluded(config: dict) -> set[str]:
    return {line.strip() for line in config.get("exclude_docs", "").splitlines() if line.strip()}


def _not_in_nav(config: dict, pages: set[str]) -> set[str]:
    """Pages matched by ``not_in_nav``'s patterns (the separate runs a merged study report
    was made from; linked from that report)."""
    patterns = [line.strip() for line in config.get("not_in_nav", "").splitlines()]
    return {p for p in pages if any(fnmatch.fnmatch(p, pat) for pat in patterns if pat)}


def test_every_page_is_in_the_navigation_and_every_entry_exists() -> None:
    config = _config()
    nav = _nav_pages(config["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")} - _excluded(config)
    unlisted = _not_in_nav(config, pages)
    assert unlisted <= {p for p in pages if "/runs/" in p}, "not_in_nav hides a real page"
    assert sorted(pages - set(nav) - unlisted) == [], "pages missing from mkdocs.yml's nav"
    assert sorted(set(nav) - pages) == [], "nav entries without a page"
    assert len(nav) == len(set(nav)), "a page listed twice in the nav"


def test_the_site_needs_no_network() -> None:
    config = _config()
    assert config["theme"].get("font") is False, "theme.font must be false (no Google Fonts)"
    for key in ("extra_javascript", "extra_css"):
        for entry in config.get(key, []):
            path = entry if isinstance(entry, str) else entry["path"]
            assert not re.match(r"(https?:)?//", path), f"{key} loads {path} from the network"
            assert (DOCS / path).is_file(), f"{key} entry {path} is not in docs/"


def _python_blocks(page: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.parametrize("page", RUN_PAGES)
def test_the_python_blocks_of_a_page_run(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # files a page writes (figures) land in a temporary folder
    if page == "guides/connectivity.md":
        pytest.importorskip("matplotlib")
    if page == "guides/deploy-onnx.md":
        pytest.importorskip("onnxruntime", reason="the [export] extra is not installed")
    blocks = _python_blocks(page)
    assert blocks, f"{page} has no ```python blocks to run"
    namespace: dict = {"__name__": f"docs_{Path(page).stem.replace('-', '_')}"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is fastest on a shared machine
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the LeakWarning a handoff example triggers
            for i, code in enumerate(blocks):
                try:
                    exec(compile(code, f"{page} block {i + 1}", "exec"), namespace)
                except Exception as err:  # pragma: no cover - the message is the point
                    raise AssertionError(f"{page}, python block {i + 1} failed:\n{code}") from err
    finally:
        torch.set_num_threads(threads)


def _check_render_module():
    spec = importlib.util.spec_from_file_location("check_render", DOCS / "check_render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium)",
)
def test_home_routing_and_study_pages_render(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    check = _check_render_module()
    site_problems, results = check.check_site(screenshots=tmp_path)
    assert site_problems == []
    for r in results:
        assert r.ok, f"{r.page}: {r.problems}"
        assert r.screenshot is not None and r.screenshot.stat().st_size > 10_000
    by_page = {r.page: r for r in results}
    # The pages hold what the check is for: diagrams on the routing page, math on all three.
    assert by_page["concepts/routing/index.html"].expected_mermaid >= 5
    assert by_page["concepts/routing/index.html"].expected_math > 0


def _public_modules() -> list:
    import importlib
    import pkgutil

    import recurrentkit

    modules = [recurrentkit]
    for info in pkgutil.walk_packages(recurrentkit.__path__, "recurrentkit."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except ImportError:  # a module whose optional dependency is missing
            continue
    return modules


def _documented_objects() -> set[int]:
    """ids of every object a ``::: identifier`` directive in docs/api/ renders."""
    import importlib
    import inspect

    covered: set[int] = set()
    for page in sorted((DOCS / "api").glob("*.md")):
        for ident in re.findall(r"^:::\s*([\w.]+)", page.read_text(encoding="utf-8"), re.M):
            parts = ident.split(".")
            obj = None
            for cut in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
                break
            assert obj is not None, f"{page.name}: cannot import {ident}"
            covered.add(id(obj))
            if inspect.ismodule(obj):  # a module directive renders its public members
                covered |= {id(getattr(obj, n)) for n in getattr(obj, "__all__", [])}
    return covered


def test_the_api_reference_renders_every_public_object() -> None:
    covered = _documented_objects()
    missing = []
    for module in _public_modules():
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if id(obj) in covered or isinstance(obj, type(re)):  # submodules: their own names
                continue
            missing.append(f"{module.__name__}.{name}")
    assert missing == [], "public objects missing from docs/api/*.md"


def _png(path: Path) -> None:
    """Write a valid 1×1 PNG."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.mark.skipif(
    shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium)",
)
def test_the_render_check_fails_on_a_broken_image_diagram_or_formula(tmp_path: Path) -> None:
    """The check itself: a good page passes, each kind of breakage is reported."""
    import subprocess

    pytest.importorskip("material")
    check = _check_render_module()
    docs = tmp_path / "docs"
    (docs / "javascripts" / "vendor").mkdir(parents=True)
    for name in ("mathjax.js", "vendor/mathjax-tex-svg-full.js", "vendor/mermaid.tiny.js"):
        shutil.copy(DOCS / "javascripts" / name, docs / "javascripts" / name)
    _png(docs / "dot.png")
    fence = "```"
    (docs / "index.md").write_text(
        f"# good\n\n$$ x^2 $$\n\n{fence}mermaid\nflowchart LR\n  A --> B\n{fence}\n\n"
        "![a dot](dot.png)\n"
    )
    (docs / "image.md").write_text("# missing image\n\n![gone](gone.png)\n")
    (docs / "diagram.md").write_text(
        f"# bad diagram\n\n{fence}mermaid\nflowchart LR\n  A -->\n{fence}\n"
    )
    (docs / "formula.md").write_text("# bad formula\n\n$$ \\notamacro x $$\n")
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: t\ntheme:\n  name: material\n  font: false\nmarkdown_extensions:\n"
        "  - pymdownx.arithmatex:\n      generic: true\n  - pymdownx.superfences:\n"
        "      custom_fences:\n        - name: mermaid\n          class: mermaid\n"
        "          format: !!python/name:pymdownx.superfences.fence_code_format\n"
        "extra_javascript:\n  - javascripts/mathjax.js\n"
        "  - javascripts/vendor/mathjax-tex-svg-full.js\n  - javascripts/vendor/mermaid.tiny.js\n"
    )
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "-q", "--site-dir", str(site)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    pages = ("index.html", "image/", "diagram/", "formula/")
    site_problems, results = check.check_site(pages, site_dir=site, budget_ms=15000)
    good, image, diagram, formula = results
    assert site_problems == []
    assert good.ok, good.problems
    assert good.expected_mermaid == 1 and good.expected_math == 1
    assert any("images that did not load" in p for p in image.problems), image.problems
    assert any(p.startswith("mermaid:") for p in diagram.problems), diagram.problems
    assert any(p.startswith("math:") for p in formula.problems), formula.problems
