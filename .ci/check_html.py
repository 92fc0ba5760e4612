"""Open every page of the built book in headless Chromium and check what a reader sees.

For each page in _toc.yml: it loads over HTTP from a local server, every request stays
on that server (the book must work offline), MathJax typesets every formula, every
image loads, and the console logs no errors. Exits 1 with one line per problem.

    python .ci/check_html.py _build/html [--chromium /usr/bin/chromium]
"""

import argparse
import functools
import http.server
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import yaml
from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def toc_pages(toc_file):
    """Document paths (without suffix) in the order of the table of contents."""
    toc = yaml.safe_load(Path(toc_file).read_text())
    pages = [toc["root"]]

    def walk(node):
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key, []):
                if "file" in child:
                    pages.append(child["file"])
                walk(child)

    walk(toc)
    return pages


def serve(directory):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def check_page(page, url):
    problems = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    response = page.goto(url, wait_until="load")
    if response is None or response.status != 200:
        return [f"HTTP status {response.status if response else 'none'}"]
    n_math = page.locator(".math").count()
    if n_math:
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
    broken = page.evaluate(
        "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.src)"
    )
    problems += [f"image did not load: {src}" for src in broken]
    page.wait_for_timeout(300)  # late console messages
    return problems, n_math, page.locator("img").count()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the built book, e.g. _build/html")
    parser.add_argument("--toc", default="_toc.yml")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    server = serve(str(args.html))
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    failures = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        for doc in toc_pages(args.toc):
            if not (args.html / f"{doc}.html").exists():
                print(f"FAIL {doc}.html: not built")
                failures += 1
                continue
            context = browser.new_context()
            external = []

            def route(r, external=external):
                if urlparse(r.request.url).hostname in ("127.0.0.1", None):
                    return r.continue_()
                external.append(r.request.url)
                return r.abort()

            context.route("**/*", route)
            page = context.new_page()
            result = check_page(page, base + f"{doc}.html")
            problems, n_math, n_img = result if isinstance(result, tuple) else (result, 0, 0)
            problems = [p for p in problems if "request failed" not in p or not external]
            problems += [f"requests a resource off the book's server: {u}" for u in external]
            status = "FAIL" if problems else "ok  "
            print(f"{status} {doc}.html ({n_math} formulas, {n_img} images)")
            for problem in problems:
                print(f"       {problem}")
            failures += bool(problems)
            context.close()
        browser.close()
    server.shutdown()
    if failures:
        print(f"{failures} page(s) failed the browser check")
        return 1
    print("every page loaded, typeset its math, loaded its images, and logged no errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
