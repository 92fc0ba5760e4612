"""Local Sphinx extension for the book: small fixes to Jupyter Book 1.x's defaults.

1. In CI (the CI environment variable is set) every chapter is executed afresh
   (`nb_execution_mode = "force"`); locally `_config.yml` asks for `cache`.
2. Each script is included in a page once. sphinx-thebe registers its configuration
   script on every `env-before-read-docs`, so pages otherwise carry it twice and the
   browser logs "Identifier 'THEBE_JS_URL' has already been declared".
3. Every chapter offers its executed notebook (.ipynb) in the download menu, which
   sphinx-book-theme only does when online launch buttons are configured.
4. Exported cells (tag `export` or `export:PATH`) get a caption naming the module
   that `make tangle` writes them into, so a reader sees where each listing lives.
   The tags are read by the tangler's own `export_marker`, so the caption and the
   package cannot disagree; a bad marker is a build warning (an error with -W).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from docutils import nodes
from sphinx.util import logging

from mlscratch.tangle import MarkerError, export_marker

MODULE_BADGE_CLASS = "mlscratch-module"
logger = logging.getLogger(__name__)


def force_execution_in_ci(app, config):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        config.nb_execution_mode = "force"


def dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # The same file or inline body, whatever priority each copy was added with.
        attributes = getattr(script, "attributes", {}) or {}
        filename = getattr(script, "filename", None)  # None or "" for inline scripts
        key = (str(filename or ""), tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def offer_notebook_download(app, pagename, templatename, context, doctree):
    source = context.get("sourcename") or ""
    if app.builder.format != "html" or not source.endswith((".md", ".md.txt")):
        return
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.exists():
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def caption_exported_cells(app, doctree):
    """Put 'src/mlscratch/....py' above each exported listing."""
    default = app.env.metadata.get(app.env.docname, {}).get("tangle")
    for cell in doctree.findall(nodes.container):
        if cell.get("nb_element") != "cell_code":
            continue
        tags = cell.get("cell_metadata", {}).get("tags", [])
        try:
            target = export_marker(tags, default)
        except MarkerError as err:
            logger.warning(f"{err} (`make tangle` names the line)", location=cell)
            continue
        if target is None:
            continue
        badge = nodes.paragraph(classes=[MODULE_BADGE_CLASS])
        badge += nodes.literal(text=target)
        cell.insert(0, badge)


def setup(app):
    app.connect("config-inited", force_execution_in_ci)
    app.connect("doctree-read", caption_exported_cells)
    app.connect("html-page-context", offer_notebook_download, priority=400)
    app.connect("html-page-context", dedupe_scripts, priority=900)
    app.add_css_file("mlscratch.css")
    app.connect("builder-inited", add_static_path)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def add_static_path(app):
    app.config.html_static_path.append(str(Path(__file__).parent / "static"))
