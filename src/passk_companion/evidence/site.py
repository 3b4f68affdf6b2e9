"""A static site of the executed notebooks, readable offline: results/site/.

* ``index.html``: a summary line (claims counted by verdict and by kind), then the claims grouped
  by notebook. Each row has a verdict badge coloured by verdict, the claim's kind, where the paper
  states it, what was measured, the claim's figure as a thumbnail linked to the full image (copied
  to ``figures/``), and a link to the notebook page anchored at the cell that records the claim.
* ``<notebook>.html``: the executed notebook rendered by nbconvert's ``lab`` template, with a table
  of contents (its claims, then its headings) and an anchor ``claim-<id>`` before the cell that
  recorded each claim (the claims file names its execution count: :func:`claim_cells`).

Offline only: the template's CDN scripts (require.js, MathJax, mermaid, widget manager) are removed,
notebook HTML and JavaScript outputs are sanitized, every output's metadata is reduced to numeric
image sizes (:func:`clean_output_metadata`), and the pages carry no script of their own, so
viewing a page requests nothing from another host (tests/test_site.py checks this in Chromium).
Math therefore shows as its TeX source. Every text taken from the results (claim text, notebook
file names, figure names) is escaped, in element text and in attributes. A link's scheme is read
as a browser reads it (tab, CR and LF removed anywhere, leading spaces and controls ignored), so
``da&#x09;ta:`` is a data: link, and refused.

Only regular files are read: a figure or a notebook that is a symbolic link (to ``/etc/passwd``,
say) is never copied or rendered; figures are copied from results/figures into site/figures by
atomic writes (a planted link there is replaced, not written through). A notebook that is not a
valid notebook is a ValueError naming it.
"""

from __future__ import annotations

import html
import os
import re
import stat
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import bleach
import nbformat
from jinja2 import DictLoader
from nbconvert import HTMLExporter

from passk_companion.evidence.claims import Claim, read_all
from passk_companion.evidence.report import summary
from passk_companion.evidence.verdicts import VERDICTS
from passk_companion.files import (
    atomic_write,
    atomic_write_text,
    open_regular,
    own_folder,
    writable_dir,
)
from passk_companion.runtime import repo_root

__all__ = [
    "build_site",
    "claim_cells",
    "claim_anchor",
    "clean_html",
    "clean_output_metadata",
    "table_of_contents",
]

_NAV = "<!--companion-nav-->"

# nbconvert's lab page without anything fetched from a CDN and without interactive outputs.
_PAGE_TEMPLATE = (
    """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}<style>{{ resources.companion_css }}</style>{%- endblock extra_css -%}
{%- block body_header -%}{{ super() }}"""
    + _NAV
    + """{%- endblock body_header -%}
{%- block codecell -%}
{%- set anchors = cell.metadata.get('companion_anchors', []) -%}
{%- if anchors -%}
<div class="claim-cell">
{%- for anchor in anchors -%}
<a class="claim-anchor" id="{{ anchor | escape_html }}"></a>
{%- endfor -%}
{{ super() }}</div>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock codecell -%}
{%- block data_widget_view -%}{%- endblock data_widget_view -%}
{%- block footer_js -%}{%- endblock footer_js -%}
"""
)

_COLOURS = {  # verdict -> (text, background); the badge also spells the verdict out
    "holds": ("#ffffff", "#1a7f37"),
    "fails": ("#ffffff", "#cf222e"),
    "partly": ("#3b2300", "#f2c94c"),
    "inconclusive": ("#ffffff", "#6e7781"),
}
_BADGE_CSS = "".join(
    f".badge.{v}{{color:{fg};background:{bg}}}" for v, (fg, bg) in _COLOURS.items()
)
_COMMON_CSS = (
    ".badge{display:inline-block;min-width:6.5em;padding:2px 8px;border-radius:10px;"
    "font:600 12px/1.6 sans-serif;text-align:center;white-space:nowrap}" + _BADGE_CSS
)
_PAGE_CSS = (
    _COMMON_CSS
    + "#toc{margin:1em auto;max-width:1100px;padding:0.6em 1.2em;border:1px solid #d0d7de;"
    "border-radius:6px;background:#f6f8fa;font:14px/1.5 sans-serif}"
    "#toc ul{margin:0.2em 0;padding-left:1.2em}#toc li.toc-h3{margin-left:1.2em}"
    "#toc .claims li{list-style:none;margin:2px 0}"
    "#toc a{color:#0969da;text-decoration:underline}"
    ".claim-cell:has(>.claim-anchor:target)>.jp-Cell{outline:3px solid #0969da;outline-offset:2px}"
)
_INDEX_CSS = (
    _COMMON_CSS
    + "body{font:14px/1.5 sans-serif;margin:2em auto;max-width:1280px;padding:0 1em;color:#1f2328}"
    "table{border-collapse:collapse;width:100%;margin-bottom:1.5em}"
    "td,th{border-bottom:1px solid #d0d7de;padding:6px 8px;text-align:left;vertical-align:top}"
    "th{background:#f6f8fa;font-size:12px;text-transform:uppercase;color:#57606a}"
    ".summary{font-size:15px;padding:0.6em 1em;background:#f6f8fa;border-radius:6px}"
    ".summary .badge{min-width:0;margin-left:0.6em}"
    ".kind{font-size:12px;color:#57606a;font-style:italic}"
    ".measured{font-size:12px;color:#57606a;max-width:26em}"
    ".thumb{width:180px;height:auto;border:1px solid #d0d7de;border-radius:4px;display:block}"
    ".missing{color:#cf222e;font-size:12px}h2{margin-top:1.6em}h2 a{text-decoration:none}"
)


_TAGS = (
    "a abbr b blockquote br caption cite code col colgroup dd del details div dl dt em figcaption "
    "figure h1 h2 h3 h4 h5 h6 hr i img kbd li mark ol p pre q s samp small span strong sub summary "
    "sup table tbody td tfoot th thead tr u ul var"
).split()
_DROPPED = re.compile(r"<(script|style)\b.*?</\1\s*>", flags=re.IGNORECASE | re.DOTALL)
_NO_SOURCE = re.compile(r"<img(?![^>]*\ssrc=)[^>]*>")  # an image whose source was refused
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_URL_IGNORED = re.compile(r"[\t\n\r]")  # browsers drop these anywhere in a URL (WHATWG URL)
_URL_EDGES = "".join(map(chr, range(0x21)))  # ... and C0 controls and spaces at either end


def _as_browsers_read(url: str) -> str:
    """`url` as a browser parses it: character references decoded (the sanitizer keeps them as
    written), then tab, CR and LF removed, and controls and spaces stripped at either end."""
    return _URL_IGNORED.sub("", html.unescape(url)).strip(_URL_EDGES)


def _allowed_attribute(tag: str, name: str, value: str) -> bool:
    if name in ("class", "id", "title"):
        return True
    value = _as_browsers_read(value) if name in ("src", "href") else value
    if name == "src":  # only embedded images: a page never fetches from anywhere
        return tag == "img" and value.startswith("data:image/")
    if name == "href":  # links are navigation, not requests; no javascript: or data: links
        scheme = _SCHEME.match(value)
        return tag == "a" and (
            scheme is None or scheme.group(1).lower() in ("http", "https", "mailto")
        )
    return name in {
        "img": ("alt", "width", "height"),
        "td": ("colspan", "rowspan", "align"),
        "th": ("colspan", "rowspan", "align"),
        "table": ("border",),
        "ol": ("start",),
    }.get(tag, ())


def clean_html(element: str | bytes) -> str:
    """Sanitize notebook HTML (markdown cells, HTML outputs, highlighted code) for the site:
    <script> and <style> elements are dropped with their content; other tags outside a plain
    document allow-list are stripped (their text kept); attributes are limited to an allow-list,
    images to embedded ``data:image/`` sources (others are removed) and links to relative,
    http(s) or mailto targets.
    Used in place of nbconvert's own ``clean_html``, which drops headings, paragraphs and images."""
    text = element.decode() if isinstance(element, bytes) else str(element)
    clean = bleach.clean(
        _DROPPED.sub("", text),
        tags=_TAGS,
        attributes=_allowed_attribute,
        protocols=["http", "https", "mailto", "data"],
        strip=True,
        strip_comments=True,
    )
    return _NO_SOURCE.sub("", clean)


def claim_anchor(claim_id: str) -> str:
    """The element id of the anchor that marks the cell recording `claim_id`."""
    return f"claim-{claim_id}"


def claim_cells(nb: nbformat.NotebookNode, claims: list[Claim]) -> dict[str, int]:
    """Map each claim id to the index of the code cell that recorded it: the cell whose
    execution count is the claim's `cell` (written by passk_companion.evidence.claims.record in the
    kernel). Claims without one, or whose cell is not in this notebook, are left out."""
    index_of = {
        cell.get("execution_count"): i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and cell.get("execution_count")
    }
    return {c.id: index_of[int(c.cell)] for c in claims if c.cell and int(c.cell) in index_of}


class _Headings(HTMLParser):
    """Collect (level, id, text) of h1-h3 elements that have an id, skipping anchor-link text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[tuple[int, str, str]] = []
        self._open: tuple[int, str] | None = None
        self._text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag in ("h1", "h2", "h3") and attr.get("id"):
            self._open, self._text = (int(tag[1]), attr["id"] or ""), []
        elif self._open and tag == "a" and "anchor-link" in (attr.get("class") or ""):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag == "a" and self._skip:
            self._skip -= 1
        elif self._open and tag == f"h{self._open[0]}":
            level, hid = self._open
            self.headings.append((level, hid, " ".join("".join(self._text).split())))
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open and not self._skip:
            self._text.append(data)


def table_of_contents(page: str) -> list[tuple[int, str, str]]:
    """The (level, id, text) of the h1-h3 headings with an id in a rendered page, in order."""
    parser = _Headings()
    parser.feed(page)
    return parser.headings


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _href(name: str, fragment: str = "") -> str:
    """An escaped relative link to file `name` (any characters) with an optional #fragment."""
    return _esc(quote(name) + (f"#{quote(fragment)}" if fragment else ""))


def _badge(verdict: str) -> str:
    return f'<span class="badge {_esc(verdict)}">{_esc(verdict)}</span>'


def _page_nav(claims: list[Claim], anchored: set[str], toc: list[tuple[int, str, str]]) -> str:
    items = "".join(
        f'<li>{_badge(c.verdict)} <a href="#{_esc(quote(claim_anchor(c.id)))}">{_esc(c.id)}</a>'
        f": {_esc(c.claim)}</li>"
        for c in claims
        if c.id in anchored
    )
    heads = "".join(
        f'<li class="toc-h{level}"><a href="#{_esc(quote(hid))}">{_esc(text)}</a></li>'
        for level, hid, text in toc
    )
    return (
        '<nav id="toc"><a href="index.html">&larr; all claims</a><h2>Contents</h2>'
        + (f'<p>Claims recorded here</p><ul class="claims">{items}</ul>' if items else "")
        + f'<ul class="headings">{heads}</ul></nav>'
    )


def _regular(path: Path) -> bool:
    """Whether `path` itself (not a link's target) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


_SIZE = re.compile(r"^[0-9]{1,5}$")  # an image's width or height: a plain number of pixels


def _size(value: object) -> int | None:
    """A width or height as the page may carry it: a whole number of pixels, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 < value < 100_000:
        return value
    if isinstance(value, str) and _SIZE.match(value):
        return int(value) or None
    return None


def clean_output_metadata(nb: nbformat.NotebookNode) -> None:
    """Reduce every output's metadata, in place, to what the page may show: per MIME type a width
    and a height that are whole numbers of pixels, and ``needs_background`` of "light" or "dark".
    Everything else is dropped: nbconvert's template writes these values into attributes
    unquoted (a width of ``1 onerror=...`` would add an attribute) and takes an image's source
    from ``metadata.filenames`` (a remote or local-file URL), so none of it reaches the page."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            raw = output.get("metadata")
            clean = nbformat.NotebookNode()
            if isinstance(raw, dict):
                for key, value in raw.items():
                    if key == "needs_background" and value in ("light", "dark"):
                        clean[key] = value
                    elif key != "filenames" and isinstance(value, dict):
                        sizes = {n: _size(value.get(n)) for n in ("width", "height")}
                        kept = {n: v for n, v in sizes.items() if v is not None}
                        if kept:
                            clean[key] = nbformat.NotebookNode(kept)
            if "metadata" in output or clean:
                output["metadata"] = clean


def _render_notebook(
    exporter: HTMLExporter, nb_path: Path, claims: list[Claim]
) -> tuple[str, set[str]]:
    """The notebook page and the set of claim ids anchored in it; ValueError naming the file if
    it is a symbolic link or not a valid notebook."""
    if not _regular(nb_path):
        raise ValueError(f"{nb_path} is not a regular file (a symbolic link?): not rendered")
    try:
        nb = nbformat.read(nb_path, as_version=4)
        nbformat.validate(nb)
        clean_output_metadata(nb)
        cells = claim_cells(nb, claims)
        for cid, index in cells.items():
            nb.cells[index].metadata.setdefault("companion_anchors", []).append(claim_anchor(cid))
        resources = {"metadata": {"name": nb_path.stem}, "companion_css": _PAGE_CSS}
        body, _ = exporter.from_notebook_node(nb, resources=resources)
    except Exception as err:  # noqa: BLE001 - any broken notebook gets the same clear line
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ValueError(
            f"{nb_path} is not a valid notebook ({type(err).__name__}: {reason}); execute it "
            "again (make reproduce) or remove it"
        ) from None
    nav = _page_nav(claims, set(cells), table_of_contents(body))
    return body.replace(_NAV, nav, 1), set(cells)


def _figure_cell(claim: Claim, figures: Path, out: Path) -> str:
    name = claim.figure
    if not name:
        return ""
    missing = f'<span class="missing">figure not found: {_esc(name)}</span>'
    if PurePosixPath(name).name != name or name in (".", "..") or figures.is_symlink():
        return missing
    try:  # a regular file in results/figures itself: a link's target is never copied
        with open_regular(figures / name, "figure", follow=False) as f:
            data = f.read()
    except ValueError:
        return missing
    atomic_write(own_folder(out, "figures", "the site's figures folder") / name,
                 lambda f: f.write(data))  # fmt: skip
    link = _href(f"figures/{name}")
    return f'<a href="{link}"><img class="thumb" src="{link}" alt="figure {_esc(name)}"></a>'


def _counts(claims: list[Claim]) -> str:
    tally = Counter(c.verdict for c in claims)
    return "".join(f" {_badge(v)} {tally[v]}" for v in VERDICTS if tally[v])


def _index(
    claims: list[Claim],
    pages: dict[str, set[str]],
    figures: Path,
    out: Path,
    references: list[tuple[str, str]] = (),
) -> str:
    """The index page; `pages` maps each rendered notebook stem to its anchored claim ids,
    `references` lists the rendered reference pages (file name, title)."""
    sections = []
    for notebook in sorted(set(pages) | {c.notebook for c in claims}):
        rows = [c for c in claims if c.notebook == notebook]
        page = f"{notebook}.html"
        title = (
            f'<a href="{_href(page)}">{_esc(notebook)}</a>' if notebook in pages else _esc(notebook)
        )
        body = []
        for c in rows:
            text = _esc(c.claim)
            if notebook in pages:
                anchored = c.id in pages[notebook]
                fragment = claim_anchor(c.id) if anchored else ""
                text = f'<a class="claim-link" href="{_href(page, fragment)}">{text}</a>' + (
                    "" if anchored else ' <span class="missing">(cell not found)</span>'
                )
            interval = f"<br>95% interval {_esc(c.interval)}" if c.interval else ""
            seeds = f"{c.seeds} seeds" if c.seeds else ""
            body.append(
                f'<tr id="{_esc(claim_anchor(c.id))}"><td>{_badge(c.verdict)}</td>'
                f'<td>{text}<div class="kind">{_esc(c.kind)}</div></td>'
                f"<td>{_esc(c.paper)}</td>"
                f'<td class="measured">{_esc(c.measured)}<br>{seeds}{interval}</td>'
                f"<td>{_figure_cell(c, figures, out)}</td></tr>"
            )
        table = (
            "<table><thead><tr><th>verdict</th><th>claim (kind)</th>"
            "<th>where the paper states it</th><th>measured</th><th>figure</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
            if rows
            else "<p>No claims recorded by this notebook.</p>"
        )
        sections.append(
            f'<section class="notebook" id="{_esc("nb-" + notebook)}"><h2>{title}'
            f"{_counts(rows)}</h2>{table}</section>"
        )
    line = (
        f"<strong>{len(claims)} claims</strong>{_counts(claims)}"
        f"<br>By kind: {_esc(summary(claims))}."
        if claims
        else "No claims recorded yet: run <code>make reproduce</code>."
    )
    reference = (
        '<section id="reference"><h2>Reference</h2><ul>'
        + "".join(f'<li><a href="{_href("docs/" + n)}">{_esc(t)}</a></li>' for n, t in references)
        + "</ul></section>"
        if references
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pass@k companion: claims</title>
<style>{_INDEX_CSS}</style></head>
<body>
<h1>Pass@k companion</h1>
<p>Companion to <i>Pass@k Metric for RLVR: A Diagnostic Tool of Exploration, But Not an
Objective</i> (arXiv 2511.16231). Every verdict is computed by the notebook named above its row;
follow a claim to the cell that records it.</p>
<p class="summary" id="summary">{line}</p>
{reference}
{"".join(sections)}
</body></html>
"""


def build_site(results: Path, out: Path | None = None, docs: Path | None = None) -> Path:
    """Render results/notebooks/*.ipynb and results/claims/*.csv into `out` (default
    results/site); figures named by claims are copied to out/figures; the reference pages
    `docs`/*.md (default: the checkout's docs/) become out/docs/*.html. Returns index.html."""
    # hidden files are notebooks still being executed (passk_companion.reproduce writes
    # .<name>....ipynb)
    notebooks = sorted(
        p for p in (results / "notebooks").glob("*.ipynb") if not p.name.startswith(".")
    )
    if not notebooks:
        raise ValueError(f"no executed notebooks in {results / 'notebooks'}: run make reproduce")
    out = own_folder(results, "site", "the site folder") if out is None else writable_dir(out)
    claims = read_all(results)
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"companion_page.html.j2": _PAGE_TEMPLATE})],
        template_file="companion_page.html.j2",
        sanitize_html=True,
        filters={"clean_html": clean_html},
    )
    pages: dict[str, set[str]] = {}
    for nb_path in notebooks:
        own = [c for c in claims if c.notebook == nb_path.stem]
        page, pages[nb_path.stem] = _render_notebook(exporter, nb_path, own)
        atomic_write_text(out / f"{nb_path.stem}.html", page)
    if docs is None:
        root = repo_root()
        docs = root / "docs" if root is not None else None
    references = _render_docs(docs, out) if docs is not None and docs.is_dir() else []
    index = _index(claims, pages, results / "figures", out, references)
    return atomic_write_text(out / "index.html", index)


_MD_LINK = re.compile(r'href="(?!https?:|mailto:|#)([^"#]*?)\.md(#[^"]*)?"')


def _render_docs(docs: Path, out: Path) -> list[tuple[str, str]]:
    """Each regular file docs/*.md as out/docs/<name>.html: Markdown rendered by mistune with raw
    HTML escaped, then clean_html (no script, no remote source), links to other .md pages
    pointed at their .html. Returns (file name, title) of each page, in name order."""
    import mistune

    render = mistune.create_markdown(escape=True, plugins=["table"])
    pages = []
    for path in sorted(docs.glob("*.md")):
        if path.is_symlink() or not path.is_file():
            continue
        with open_regular(path, "reference page") as f:
            text = f.read(2_000_000).decode("utf-8", errors="replace")
        title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("# ")),
                     path.stem)  # fmt: skip
        body = _MD_LINK.sub(lambda m: f'href="{m[1]}.html{m[2] or ""}"', str(render(text)))
        name = f"{path.stem}.html"
        atomic_write_text(out / "docs" / name, f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title><style>{_INDEX_CSS}</style></head>
<body><p><a href="../index.html">pass@k companion</a></p>
{clean_html(body)}
</body></html>
""")  # fmt: skip
        pages.append((name, title))
    return pages
