// MathJax 3 configuration for pymdownx.arithmatex (generic mode). Loaded before the vendored
// MathJax bundle (javascripts/vendor/mathjax-tex-svg-full.js): SVG output, so no web fonts and
// no network are needed; the "full" bundle holds every TeX extension, so nothing is autoloaded.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
  svg: { fontCache: "global" },
};

// Material's page-change stream: typeset again when a page's content changes. On the first
// load MathJax's own startup typesets the page; typesetPromise chains after it.
document$.subscribe(() => {
  if (!window.MathJax || typeof MathJax.typesetPromise !== "function") return;
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
