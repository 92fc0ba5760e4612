"""The HTML checks of .ci/check_html.py on a tiny synthetic book: one failing page per check.

Only the checks that read the HTML files run here; the browser part (the `browser` extra)
is never imported.
"""

import importlib.util
import struct
import sys
import zlib

import pytest


@pytest.fixture(scope="module")
def check(repo_root):
    spec = importlib.util.spec_from_file_location("check_html", repo_root / ".ci" / "check_html.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def png(width, height):
    """The bytes of a PNG file's signature and header chunk (all the checker reads)."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + bytes([8, 6, 0, 0, 0])
    chunk = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def html(body, nav=""):
    """A page shaped like the theme's: navigation, then the content in an <article>."""
    return (
        "<!DOCTYPE html><html><head><title>t</title><script>var a = '| x | y |';</script>"
        f'</head><body><nav><a href="#main">skip</a>{nav}</nav><main id="main">'
        f'<article class="bd-article"><section id="top"><h1>T</h1>{body}</section>'
        "</article></main></body></html>"
    )


FIGURE = '<img alt="" src="../_images/plot.png" />'
PAGES = {
    "book/good": html(
        '<p>See <a href="other.html#sec">the other page</a>, <a href="#top">the top</a>, '
        '<a href="https://example.org/x">a site</a>, <a href="#">nothing</a> and '
        '<a href="../_sources/good.md">the source</a>; the norm <span class="math">'
        "\\(|x| + |y|\\)</span> and <code>| a | b |</code>.</p>"
        '<div class="cell"><div class="cell_input"><pre>x = 1\n\ny = 2\n</pre></div>'
        '<div class="cell_output"><pre>| printed | table |\n</pre></div></div>'
        "<table><tr><td>a</td><td>b</td></tr></table>" + FIGURE,
        nav='<a href="../book/other.html">other</a>',
    ),
    "book/other": html('<section id="sec"><p>Two<br>lines.</p></section>' + FIGURE),
    "book/table": html("<p>| a | <strong>b</strong> |\n|---|---|\n| 1 | 2 |</p>" + FIGURE),
    "book/nofig": html('<p>An icon is no figure.</p><img src="../_images/icon.png" />'),
    "book/badimg": html(
        FIGURE + '<img src="../_images/gone.png" /><img src="https://x.org/a.png">'
    ),
    "book/badlink": html(
        FIGURE + '<a href="missing.html">a</a><a href="other.html#nowhere">b</a>'
        '<a href="#gone">c</a><a href="../../outside.html">d</a>'
    ),
    "book/bibliography": html("<p>References need no figure.</p>"),
}
TOC = """\
root: book/good
chapters:
  - file: book/other
  - file: book/table.md
  - file: book/nofig
  - file: book/badimg
  - file: book/badlink
  - file: book/bibliography
"""


@pytest.fixture
def book(tmp_path):
    for doc, text in PAGES.items():
        (tmp_path / f"{doc}.html").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{doc}.html").write_text(text)
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "plot.png").write_bytes(png(640, 480))
    (tmp_path / "_images" / "icon.png").write_bytes(png(16, 16))
    (tmp_path / "_sources").mkdir()
    (tmp_path / "_sources" / "good.md").write_text("# T\n")
    (tmp_path / "_toc.yml").write_text(TOC)
    return tmp_path


def problems(check, book, doc, needs_figure=True):
    found, _ = check.page_problems(doc, book, needs_figure, check.page_ids(book))
    return found


@pytest.mark.parametrize(
    "line, table",
    [
        ("| a | b |", True),
        ("|---|", True),
        ("| :--- | ---: |", True),
        ("--- | ---", True),
        ("|x| + 1", False),
        ("a | b | c", False),
        ("| a |", False),
        ("----", False),
    ],
)
def test_table_lines(check, line, table):
    assert check.is_table_line(line) is table


def test_a_passing_page(check, book):
    assert problems(check, book, "book/good") == []
    assert problems(check, book, "book/other") == []


def test_raw_table_text(check, book):
    found = problems(check, book, "book/table")
    assert found == [
        "raw Markdown table text: '| a | b |'",
        "raw Markdown table text: '|---|---|'",
        "raw Markdown table text: '| 1 | 2 |'",
    ]


def test_no_figure(check, book):
    assert problems(check, book, "book/nofig") == [
        "no figure (an image or SVG of at least 32 x 32 pixels)"
    ]
    assert problems(check, book, "book/nofig", needs_figure=False) == []
    assert problems(check, book, "book/bibliography", needs_figure=False) == []


def test_svg_figures(check, book):
    page = check.parse_page(
        html(
            '<svg width="400pt" height="300pt"><title>| a | b |</title></svg>'
            '<svg viewBox="0 0 640 480"></svg><svg width="1.5em" height="1.5em"></svg>'
        )
    )
    assert check.figure_count(page, "book/x.html", book) == 2
    assert check.raw_table_lines(page) == []


def test_images_that_do_not_load(check, book):
    assert problems(check, book, "book/badimg") == [
        "image is not in the build: ../_images/gone.png",
        "image from off the book's server: https://x.org/a.png",
    ]


def test_broken_links(check, book):
    assert problems(check, book, "book/badlink") == [
        "link to a page that is not in the build: missing.html",
        "link to an anchor that is not on its page: other.html#nowhere",
        "link to an anchor that is not on its page: #gone",
        "link to a page that is not in the build: ../../outside.html",
    ]


def test_code_share(check):
    page = check.parse_page(PAGES["book/good"])
    code, lines = check.code_lines(page)
    assert code == 2  # x = 1 and y = 2; the blank line and the output are not code
    assert lines == code + 1 + 2 + 1 + 1  # the output, two table cells, heading, paragraph
    assert check.code_lines(check.parse_page(PAGES["book/other"])) == (0, 3)


def test_main_names_each_failing_page(check, book, capsys, monkeypatch):
    monkeypatch.chdir(book)
    status = check.main([str(book), "--toc", "_toc.yml", "--no-browser"])
    out = capsys.readouterr().out.splitlines()
    assert status == 1
    failing = {line.split()[1].rstrip(":") for line in out if line.startswith("FAIL")}
    assert failing == {f"book/{name}.html" for name in ("table", "nofig", "badimg", "badlink")}
    assert all(line.startswith("FAIL book/") for line in out if ": " in line and "FAIL" in line)
    assert "ok   book/good.html (1 figures, code 29%)" in out
    assert "ok   book/bibliography.html (0 figures, code 0%)" in out
    assert any(line.startswith("code: ") for line in out)
    assert "playwright" not in sys.modules
