"""Render the built documentation site in headless Chromium and check what a reader would see.

Builds the site (``mkdocs build --strict``), serves it on 127.0.0.1, opens pages in
headless Chromium (Debian's ``chromium`` package) with every host but 127.0.0.1
unresolvable, and fails when a page shows

- an image that did not load (missing file, broken reference, a remote URL);
- a mermaid block that did not render to SVG;
- a math block that MathJax did not typeset, or typeset as an error or with an undefined
  macro (which MathJax draws in red);
- a request for anything outside the site (the site must work with no network),

and takes a PNG screenshot of each page. To see inside Material's mermaid output (an SVG
in a *closed* shadow root), the server injects a small probe script into the pages it
serves to the checker only; the built site is not changed.

Usage::

    python docs/check_render.py                      # home, routing and study pages
    python docs/check_render.py --screenshots /tmp/docs-shots --pages index.html study/

Exit status 0 when every page passes, 1 otherwise, 2 when Chromium or mkdocs is missing.
"""

from __future__ import annotations

import argparse
import functools
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PAGES = ("index.html", "concepts/routing/index.html", "study/index.html")
PROBE_QUERY = "render-check"
REPORT_ID = "rk-render-report"

# Injected first thing in <head>: open every shadow root (Material renders mermaid into a
# closed one), record load errors, and keep writing a JSON report into a hidden element that
# Chromium's --dump-dom serialises at the end of the virtual-time budget.
PROBE = """<script>(function () {
  var attach = Element.prototype.attachShadow;
  Element.prototype.attachShadow = function (init) {
    return attach.call(this, Object.assign({}, init, { mode: "open" }));
  };
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    errors.push(t && t !== window ? "failed to load " + (t.src || t.href) : String(e.message));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { errors.push(String(e.reason)); });
  function report() {
    var mer = Array.prototype.slice.call(document.querySelectorAll("div.mermaid"));
    var math = Array.prototype.slice.call(document.querySelectorAll(".arithmatex"));
    var r = {
      mermaid_divs: mer.length,
      mermaid_svg: mer.filter(function (d) {
        return d.shadowRoot && d.shadowRoot.querySelector("svg");
      }).length,
      mermaid_error: mer.filter(function (d) {
        var svg = d.shadowRoot ? d.shadowRoot.innerHTML : "";
        return /Syntax error|aria-roledescription="error"/.test(svg);
      }).length,
      mermaid_unrendered: document.querySelectorAll("pre.mermaid").length,
      math_total: math.length,
      math_svg: math.filter(function (m) { return m.querySelector("mjx-container svg"); }).length,
      math_error: document.querySelectorAll(
        'mjx-merror, [data-mml-node="merror"], [data-mjx-error], ' +
        '[data-mml-node="mtext"][fill="red"]'
      ).length,
      images: Array.prototype.slice.call(document.images).map(function (i) {
        return { src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0 };
      }),
      external: performance.getEntriesByType("resource")
        .map(function (e) { return e.name; })
        .filter(function (n) {
          return n.indexOf(location.origin) !== 0 && !/^(data|blob):/.test(n);
        }),
      errors: errors
    };
    var el = document.getElementById("__REPORT_ID__");
    if (!el) {
      el = document.createElement("pre");
      el.id = "__REPORT_ID__";
      el.hidden = true;
      document.body.appendChild(el);
    }
    el.textContent = JSON.stringify(r);
  }
  window.addEventListener("load", function () { report(); setInterval(report, 250); });
})();</script>""".replace("__REPORT_ID__", REPORT_ID)


@dataclass
class PageResult:
    """What one page showed."""

    page: str
    expected_mermaid: int
    expected_math: int
    report: dict = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


class _Handler(SimpleHTTPRequestHandler):
    """Serves the site; injects the probe into HTML asked for with ``?render-check``."""

    log: list[tuple[str, int]]

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path, _, query = self.path.partition("?")
        if PROBE_QUERY in query.split("&"):
            local = Path(self.translate_path(path))
            if local.is_dir():
                local = local / "index.html"
            if local.suffix == ".html" and local.is_file():
                body = local.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1)
                data = body.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.log.append((path, 200))
                return
        super().do_GET()

    def send_response(self, code: int, message: str | None = None) -> None:
        self.log.append((self.path.partition("?")[0], code))
        super().send_response(code, message)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def find_chromium() -> str | None:
    """The Chromium executable, or ``None`` when none is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def build_site(site_dir: Path) -> None:
    """``mkdocs build --strict`` into ``site_dir``; raises ``CalledProcessError`` on failure."""
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def static_problems(site_dir: Path) -> list[str]:
    """Remote scripts, stylesheets, images or fonts referenced by any built page."""
    remote = re.compile(
        r"<(?:script[^>]*\ssrc|link[^>]*rel=\"?(?:stylesheet|preload|preconnect)\"?[^>]*\shref"
        r"|img[^>]*\ssrc|source[^>]*\ssrcset)=\"?(?:https?:)?//",
        re.IGNORECASE,
    )
    out = []
    for page in sorted(site_dir.rglob("*.html")):
        for m in remote.finditer(page.read_text(encoding="utf-8")):
            out.append(f"{page.relative_to(site_dir)}: remote asset {m.group(0)!r}")
    return out


def _chromium_args(chromium: str, profile: Path) -> list[str]:
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        # The site must need no network: every other host fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
    ]


def check_page(
    chromium: str,
    base_url: str,
    site_dir: Path,
    page: str,
    log: list[tuple[str, int]],
    *,
    budget_ms: int,
    screenshot: Path | None,
    window: str,
) -> PageResult:
    """Render one page; collect the probe's report and judge it."""
    built = (site_dir / page).read_text(encoding="utf-8")
    result = PageResult(
        page=page,
        expected_mermaid=len(re.findall(r"<pre class=\"mermaid\"", built)),
        expected_math=len(re.findall(r"class=\"arithmatex\"", built)),
    )
    url = f"{base_url}/{page}?{PROBE_QUERY}"
    with tempfile.TemporaryDirectory() as profile:
        before = len(log)
        proc = subprocess.run(
            [
                *_chromium_args(chromium, Path(profile)),
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        requests = log[before:]
    m = re.search(rf'<pre id="{REPORT_ID}"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    if not m:
        result.problems.append(
            f"no render report (chromium exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
        return result
    r = result.report = json.loads(html.unescape(m.group(1)))
    result.missing = sorted({p for p, code in requests if code >= 400})
    if result.missing:
        result.problems.append(f"requests that failed on the site: {result.missing}")
    if r["mermaid_svg"] != result.expected_mermaid or r["mermaid_unrendered"]:
        result.problems.append(
            f"mermaid: {r['mermaid_svg']} of {result.expected_mermaid} blocks rendered to SVG, "
            f"{r['mermaid_unrendered']} left as source"
        )
    if r["mermaid_error"]:
        result.problems.append(f"mermaid: {r['mermaid_error']} blocks rendered as a syntax error")
    if r["math_svg"] != result.expected_math or r["math_total"] != result.expected_math:
        result.problems.append(
            f"math: {r['math_svg']} of {result.expected_math} blocks typeset by MathJax"
        )
    if r["math_error"]:
        result.problems.append(f"math: {r['math_error']} TeX errors or undefined macros")
    broken = [i["src"] for i in r["images"] if not i["ok"]]
    if broken:
        result.problems.append(f"images that did not load: {broken}")
    if r["external"]:
        result.problems.append(f"requests outside the site: {r['external']}")
    if r["errors"]:
        result.problems.append(f"page errors: {r['errors']}")
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [
                    *_chromium_args(chromium, Path(profile)),
                    f"--virtual-time-budget={budget_ms}",
                    f"--window-size={window}",
                    f"--screenshot={screenshot}",
                    f"{base_url}/{page}",
                ],
                capture_output=True,
                timeout=180,
            )
        if screenshot.is_file():
            result.screenshot = screenshot
        else:
            result.problems.append(f"no screenshot written to {screenshot}")
    return result


def check_site(
    pages: tuple[str, ...] = DEFAULT_PAGES,
    *,
    site_dir: Path | None = None,
    screenshots: Path | None = None,
    budget_ms: int = 30000,
    window: str = "1280,2400",
    chromium: str | None = None,
) -> tuple[list[str], list[PageResult]]:
    """Build (unless ``site_dir`` is given), serve and render ``pages``.

    Returns:
        ``(site_problems, page_results)``: problems found in the built HTML, and one
        result per page.

    Raises:
        FileNotFoundError: no Chromium executable.
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        if site_dir is None:
            site_dir = Path(tmp) / "site"
            build_site(site_dir)
        site_problems = static_problems(site_dir)
        log: list[tuple[str, int]] = []
        handler = functools.partial(
            type("Handler", (_Handler,), {"log": log}), directory=str(site_dir)
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base_url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            results = []
            for page in pages:
                page = page if page.endswith(".html") else page.rstrip("/") + "/index.html"
                shot = None
                if screenshots is not None:
                    name = page.removesuffix(".html").replace("/", "_") + ".png"
                    shot = screenshots / name
                results.append(
                    check_page(
                        chromium,
                        base_url,
                        site_dir,
                        page,
                        log,
                        budget_ms=budget_ms,
                        screenshot=shot,
                        window=window,
                    )
                )
        finally:
            server.shutdown()
            server.server_close()
    return site_problems, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pages",
        nargs="+",
        default=list(DEFAULT_PAGES),
        help="pages of the built site, e.g. index.html study/ (default: %(default)s)",
    )
    parser.add_argument(
        "--site-dir",
        type=Path,
        default=None,
        help="check an already built site instead of building one",
    )
    parser.add_argument(
        "--screenshots",
        type=Path,
        default=Path(tempfile.gettempdir()) / "docs-shots",
        help="folder for one PNG per page (default: %(default)s)",
    )
    parser.add_argument(
        "--window", default="1280,2400", help="screenshot size W,H (default: %(default)s)"
    )
    parser.add_argument(
        "--budget-ms",
        type=int,
        default=30000,
        help="Chromium virtual-time budget per page (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if find_chromium() is None:
        print("check_render: no chromium found (Debian: apt-get install -y chromium)")
        return 2
    try:
        site_problems, results = check_site(
            tuple(args.pages),
            site_dir=args.site_dir,
            screenshots=args.screenshots,
            budget_ms=args.budget_ms,
            window=args.window,
        )
    except subprocess.CalledProcessError as err:
        print(f"check_render: mkdocs build --strict failed:\n{err.stdout}\n{err.stderr}")
        return 1
    ok = not site_problems
    for p in site_problems:
        print(f"FAIL site: {p}")
    for r in results:
        rep = r.report
        summary = (
            f"mermaid {rep.get('mermaid_svg', 0)}/{r.expected_mermaid} svg, "
            f"math {rep.get('math_svg', 0)}/{r.expected_math} typeset, "
            f"images {sum(i['ok'] for i in rep.get('images', []))}/{len(rep.get('images', []))}"
        )
        shot = f", screenshot {r.screenshot}" if r.screenshot else ""
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.page}: {summary}{shot}")
        for p in r.problems:
            print(f"       {p}")
        ok = ok and r.ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
