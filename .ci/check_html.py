"""Check every page of the built book for what a reader sees.

Two kinds of checks run over each page of _toc.yml, and every problem prints one line
naming the page:

- Read from the HTML files (no browser; the functions below, tested by
  tests/test_check_html.py): no raw Markdown table text (a line such as `| a | b |` or
  `|---|` outside code, left over from a table that was not rendered); at least one figure
  (an image, or an inline SVG, of at least 32 x 32 pixels) in the content of every page but
  those given with --no-figure (the bibliography); every image is a file of the build;
  every link inside the book (`<a href>`, `#anchors` included) names a page of the build
  and an anchor on that page. It also counts the share of code in the book's lines.
- In headless Chromium (unless --no-browser; needs the `browser` extra): the page loads
  over HTTP from a local server, every request stays on that server (the book must work
  offline), MathJax typesets every formula, every image loads, and the console logs no
  errors.

    python .ci/check_html.py _build/html [--chromium /usr/bin/chromium] [--no-browser]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import posixpath
import re
import struct
import sys
import threading
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse, urlsplit

import yaml

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MIN_FIGURE_PX = 32  # smaller images and SVGs are icons, not figures
NO_FIGURE = ["book/bibliography"]  # pages that need no figure (besides genindex and search)
CODE_SHARE_TARGET = 0.55  # the book's code lines over all its lines, at most

# Elements that end a line of text when they open or close (so text in two paragraphs
# never joins into one line), elements whose text a reader does not see as text, and
# elements without a closing tag.
BLOCK = set(
    "address article aside blockquote br caption dd details div dl dt figcaption figure "
    "footer form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section summary table "
    "tbody td tfoot th thead tr ul".split()
)
INVISIBLE = {"script", "style", "template", "textarea", "head", "title", "noscript"}
VOID = set("area base br col embed hr img input link meta param source track wbr".split())


@dataclass
class Page:
    """What the checks need from one HTML page."""

    ids: set = field(default_factory=set)  # every id= and <a name=> on the page
    links: list = field(default_factory=list)  # every <a href>
    images: list = field(default_factory=list)  # (src, in the content) for every <img>
    svgs: list = field(default_factory=list)  # (width, height, viewBox) of content SVGs
    prose: list = field(default_factory=list)  # the content's text; "\n" between blocks
    code: list = field(default_factory=list)  # the text of each code listing (<pre>)
    outputs: list = field(default_factory=list)  # the text of each printed cell output
    has_article: bool = False


def classes(attrs):
    return (dict(attrs).get("class") or "").split()


class PageParser(HTMLParser):
    """Collect a Page. The content is the theme's <article>, or the whole page without one.

    Inline code and math stay in the prose as a placeholder word, so a line of prose keeps
    its shape, but pipes inside them never look like a table.
    """

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self.stack = []  # (tag, kind): kind is "article", "output", "math", "pre", ... or ""
        self.pre = None  # the text of the <pre> being read

    def kinds(self):
        return {kind for _, kind in self.stack}

    def content(self):
        return "article" in self.kinds() or not self.page.has_article

    def handle_starttag(self, tag, attrs):
        a, cls = dict(attrs), classes(attrs)
        for key in ("id",) + (("name",) if tag == "a" else ()):
            if a.get(key):
                self.page.ids.add(a[key])
        if tag == "a" and a.get("href") is not None:
            self.page.links.append(a["href"])
        if tag in BLOCK:
            self.page.prose.append("\n")
        if tag == "img":
            self.page.images.append((a.get("src") or "", self.content()))
        if tag == "svg" and self.content():
            self.page.svgs.append((a.get("width"), a.get("height"), a.get("viewbox")))
        if tag in VOID:
            return
        kind = ""
        if tag == "article" and ("bd-article" in cls or not self.page.has_article):
            if not self.page.has_article:  # text read before the article was not content
                self.page.prose.clear()
                self.page.code.clear()
                self.page.outputs.clear()
            self.page.has_article, kind = True, "article"
        elif tag in INVISIBLE or tag == "svg":
            kind = "invisible"
        elif tag == "pre":
            kind, self.pre = "pre", []
        elif tag in ("code", "kbd", "samp", "tt"):
            kind = "code"
        elif "math" in cls:
            kind = "math"
        elif "cell_output" in cls or "output" in cls:
            kind = "output"
        self.stack.append((tag, kind))
        if kind in ("code", "math") and self.visible_prose():
            self.page.prose.append(f" {kind.upper()} ")

    def visible_prose(self):
        """Whether text here is prose: content, not code, math or invisible."""
        kinds = self.kinds() - {"code", "math"}
        return self.content() and not kinds & {"invisible", "pre"}

    def handle_endtag(self, tag):
        if tag in VOID or tag not in (t for t, _ in self.stack):
            return
        while self.stack:
            top, kind = self.stack.pop()
            if kind == "pre" and self.pre is not None:
                text = "".join(self.pre)
                if self.content():
                    (self.page.outputs if "output" in self.kinds() else self.page.code).append(text)
                self.pre = None
            if top == tag:
                break
        if tag in BLOCK:
            self.page.prose.append("\n")

    def handle_data(self, data):
        kinds = self.kinds()
        if "invisible" in kinds:
            return
        if self.pre is not None:
            self.pre.append(data)
        elif self.content() and not kinds & {"code", "math"}:
            self.page.prose.append(data)


def parse_page(html):
    parser = PageParser()
    parser.feed(html)
    parser.close()
    return parser.page


def prose_lines(page):
    """The non-blank lines of text of the page's content, outside code listings."""
    return [line.strip() for line in "".join(page.prose).splitlines() if line.strip()]


def is_table_line(line):
    """Whether a line reads like Markdown table source: `| a | b |` or `|---|---|`."""
    line = line.strip()
    if "|" in line and "---" in line and set(line) <= set("|-: "):
        return True  # a separator row
    return line.startswith("|") and line.endswith("|") and line.count("|") >= 3


def raw_table_lines(page):
    """Lines of the content's prose that are Markdown table source a reader sees as text."""
    return [line for line in prose_lines(page) if is_table_line(line)]


def png_size(path):
    """(width, height) of a PNG file from its header, or None for another format."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def length_px(value):
    """A CSS length from an SVG attribute in pixels (pt and em converted), or None."""
    match = re.fullmatch(r"\s*([\d.]+)\s*(px|pt|em|rem)?\s*", value or "")
    if not match:
        return None
    scale = {"pt": 4 / 3, "em": 16, "rem": 16}.get(match[2], 1)
    return float(match[1]) * scale


def svg_size(width, height, viewbox):
    """An inline SVG's (width, height) in pixels, from its attributes or its viewBox."""
    w, h = length_px(width), length_px(height)
    if (w is None or h is None) and viewbox:
        parts = viewbox.replace(",", " ").split()
        if len(parts) == 4:
            w, h = float(parts[2]), float(parts[3])
    return w, h


def resolve(doc_path, url, root):
    """The build file that a URL on the page `doc_path` names, with its anchor.

    Returns (path relative to the root, anchor), ("", "") for a URL outside the book
    (another host, mailto:, javascript:...), or (None, anchor) for a path that climbs out
    of the build.
    """
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        return "", ""
    path = unquote(parts.path)
    if not path:
        target = doc_path
    else:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(doc_path), path))
        if target == ".." or target.startswith("../"):
            return None, unquote(parts.fragment)
        if path.endswith("/") or (Path(root) / target).is_dir():
            target = posixpath.join(target, "index.html")
    return target, unquote(parts.fragment)


def image_problems(page, doc_path, root):
    """An image that is not a file of the build, or that loads from off the book."""
    problems = []
    for src, _ in page.images:
        if src.startswith("data:"):
            continue
        target, _ = resolve(doc_path, src, root)
        if target == "":
            problems.append(f"image from off the book's server: {src}")
        elif target is None or not (Path(root) / target).is_file():
            problems.append(f"image is not in the build: {src}")
    return problems


def figure_count(page, doc_path, root):
    """Figures in the content: images and inline SVGs of at least MIN_FIGURE_PX a side."""
    count = 0
    for src, in_content in page.images:
        if not in_content:
            continue
        if src.startswith("data:"):
            count += 1
            continue
        target, _ = resolve(doc_path, src, root)
        path = Path(root) / target if target else None
        if path is None or not path.is_file():
            continue
        size = png_size(path)
        count += size is None or min(size) >= MIN_FIGURE_PX
    for width, height, viewbox in page.svgs:
        w, h = svg_size(width, height, viewbox)
        count += w is not None and h is not None and min(w, h) >= MIN_FIGURE_PX
    return count


def link_problems(page, doc_path, root, ids_of):
    """Links inside the book that name a missing page, or an anchor missing on its page.

    `ids_of(path)` returns the ids of the page at `path` (relative to the root).
    """
    problems = []
    for href in dict.fromkeys(h.strip() for h in page.links):  # each distinct link once
        if href.startswith(("javascript:", "mailto:")):
            continue
        target, anchor = resolve(doc_path, href, root)
        if target == "":
            continue
        if target is None or not (Path(root) / target).is_file():
            problems.append(f"link to a page that is not in the build: {href}")
        elif anchor and target.endswith(".html") and anchor not in ids_of(target):
            problems.append(f"link to an anchor that is not on its page: {href}")
    return problems


def code_lines(page):
    """(lines of code listings, all lines of text) of the content, blank lines not counted.

    Prose counts its lines as the HTML keeps them (the chapters' own line breaks), code
    and printed outputs their lines; the share of code is the first over the second.
    """
    code = sum(1 for text in page.code for line in text.splitlines() if line.strip())
    outputs = sum(1 for text in page.outputs for line in text.splitlines() if line.strip())
    return code, code + outputs + len(prose_lines(page))


def page_problems(doc, root, needs_figure, ids_of):
    """Every problem of one page found in its HTML, and its (figures, code, lines)."""
    doc_path = f"{doc}.html"
    page = parse_page((Path(root) / doc_path).read_text(encoding="utf-8"))
    problems = [f"raw Markdown table text: {line!r}" for line in raw_table_lines(page)]
    figures = figure_count(page, doc_path, root)
    if needs_figure and not figures:
        problems.append("no figure (an image or SVG of at least 32 x 32 pixels)")
    problems += image_problems(page, doc_path, root)
    problems += link_problems(page, doc_path, root, ids_of)
    return problems, (figures, *code_lines(page))


def page_ids(root):
    """A cached function: the ids of the page at a path relative to `root`."""

    @functools.cache
    def ids_of(path):
        return parse_page((Path(root) / path).read_text(encoding="utf-8")).ids

    return ids_of


def toc_pages(toc_file):
    """Document paths (without suffix) in the order of the table of contents."""
    toc = yaml.safe_load(Path(toc_file).read_text())
    pages = [str(toc["root"]).removesuffix(".md")]

    def walk(node):
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key, []):
                if "file" in child:
                    pages.append(str(child["file"]).removesuffix(".md"))
                walk(child)

    walk(toc)
    return pages


# ---- in the browser ---------------------------------------------------------------


def serve(directory):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def check_math(page, problems):
    """Wait for MathJax; a problem when it typesets fewer formulas than the page has."""
    n_math = page.locator(".math").count()
    if not n_math:
        return 0
    try:
        page.wait_for_function(
            "window.MathJax && MathJax.startup && MathJax.startup.promise"
            " && document.querySelectorAll('mjx-container').length > 0",
            timeout=20000,
        )
        page.evaluate("MathJax.startup.promise")
    except Exception as err:  # noqa: BLE001 - reported as a problem below
        problems.append(f"MathJax did not typeset: {err}")
    typeset = page.locator(".math mjx-container, mjx-container.MathJax").count()
    if typeset < n_math:
        problems.append(f"only {typeset} of {n_math} formulas were typeset by MathJax")
    return n_math


def check_page(page, url, needs_figure):
    """Problems a browser sees on one page: HTTP, console, math, images, figure sizes."""
    problems = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    response = page.goto(url, wait_until="load")
    if response is None or response.status != 200:
        return [f"HTTP status {response.status if response else 'none'}"]
    check_math(page, problems)
    broken = page.evaluate(
        "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.src)"
    )
    problems += [f"image did not load: {src}" for src in broken]
    figures = page.evaluate(
        f"""(() => {{
        const root = document.querySelector('article.bd-article') || document.body;
        const big = (w, h) => w >= {MIN_FIGURE_PX} && h >= {MIN_FIGURE_PX};
        const imgs = Array.from(root.querySelectorAll('img'))
            .filter(i => big(i.naturalWidth, i.naturalHeight));
        const svgs = Array.from(root.querySelectorAll('svg')).filter(s => {{
            const r = s.getBoundingClientRect(); return big(r.width, r.height); }});
        return imgs.length + svgs.length; }})()"""
    )
    if needs_figure and not figures:
        problems.append("no figure of real size in the browser")
    page.wait_for_timeout(300)  # late console messages
    return problems


def browser_problems(root, docs, needs_figure, chromium):
    """{doc: problems} from opening each page in headless Chromium."""
    from playwright.sync_api import sync_playwright  # the `browser` extra

    server = serve(str(root))
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    found = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        for doc in docs:
            context = browser.new_context()
            external = []

            def route(r, external=external):
                if urlparse(r.request.url).hostname in ("127.0.0.1", None):
                    return r.continue_()
                external.append(r.request.url)
                return r.abort()

            context.route("**/*", route)
            problems = check_page(context.new_page(), base + f"{doc}.html", needs_figure(doc))
            problems = [p for p in problems if "request failed" not in p or not external]
            problems += [f"requests a resource off the book's server: {u}" for u in external]
            found[doc] = problems
            context.close()
        browser.close()
    server.shutdown()
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the built book, e.g. _build/html")
    parser.add_argument("--toc", default="_toc.yml")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--no-browser", action="store_true", help="only the HTML checks")
    parser.add_argument(
        "--no-figure", nargs="*", default=NO_FIGURE, help="pages that need no figure"
    )
    args = parser.parse_args(argv)

    docs = toc_pages(args.toc)
    built = [doc for doc in docs if (args.html / f"{doc}.html").is_file()]
    report = {doc: ["not built"] for doc in docs if doc not in built}

    def needs_figure(doc):
        return doc not in args.no_figure

    ids_of = page_ids(args.html)
    stats = {}
    for doc in built:
        report[doc], stats[doc] = page_problems(doc, args.html, needs_figure(doc), ids_of)
    if not args.no_browser:
        for doc, problems in browser_problems(
            args.html, built, needs_figure, args.chromium
        ).items():
            report[doc] += problems

    for doc in docs:
        figures, code, lines = stats.get(doc, (0, 0, 0))
        share = f"{code / lines:.0%}" if lines else "-"
        print(f"{'FAIL' if report[doc] else 'ok  '} {doc}.html ({figures} figures, code {share})")
        for problem in report[doc]:
            print(f"FAIL {doc}.html: {problem}")
    code = sum(s[1] for s in stats.values())
    lines = sum(s[2] for s in stats.values())
    share = code / lines if lines else 0.0
    print(
        f"code: {code} of the book's {lines} lines of text ({share:.1%}; "
        f"the target is at most {CODE_SHARE_TARGET:.0%})"
    )
    failures = sum(bool(problems) for problems in report.values())
    if failures:
        print(f"{failures} page(s) failed the check")
        return 1
    print("every page passed: no raw table text, a figure on each chapter, images and links")
    return 0


if __name__ == "__main__":
    sys.exit(main())
