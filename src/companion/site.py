"""A static site of the executed notebooks: results/site/index.html (the claims table and links)
and one page per notebook, rendered offline with nbconvert (figures embedded as PNG data URIs).

Every page carries a small script that, once loaded, records on <body> how many images it has
(`data-images`) and how many failed to decode (`data-broken`), so a headless browser can check that
no figure is broken (tests/test_site.py does this with Chromium).
"""

from __future__ import annotations

import html
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from .atomic import atomic_write_text
from .claims import read
from .report import VERDICT_WORDS

__all__ = ["IMAGE_CHECK", "build_site"]

IMAGE_CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-broken',
    imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length);
});
</script>"""


def _with_check(page: str) -> str:
    return page.replace("</body>", IMAGE_CHECK + "\n</body>", 1)


def _index(claims_csv: Path, pages: list[str]) -> str:
    claims = (
        sorted(read(claims_csv), key=lambda c: (c.notebook, c.id)) if claims_csv.is_file() else []
    )
    rows = "\n".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(v)}</td>"
            for v in (
                c.claim,
                c.paper,
                c.notebook + (f" ({c.figure})" if c.figure else ""),
                c.measured,
                VERDICT_WORDS[c.holds],
            )
        )
        + "</tr>"
        for c in claims
    )
    links = "\n".join(f'<li><a href="{p}.html">{html.escape(p)}</a></li>' for p in pages)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>pass@k companion: claims</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}
th{{background:#eee}}</style></head>
<body>
<h1>Pass@k companion</h1>
<p>Companion to <i>Pass@k Metric for RLVR: A Diagnostic Tool of Exploration, But Not an
Objective</i> (arXiv 2511.16231). Every verdict below is computed by the notebook named in its
row.</p>
<h2>Claims</h2>
<table id="claims"><thead><tr><th>claim</th><th>where the paper states it</th>
<th>notebook (figure)</th><th>measured</th><th>verdict</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<h2>Notebooks</h2>
<ul id="notebooks">
{links}
</ul>
</body></html>
"""


def build_site(results: Path, out: Path | None = None) -> Path:
    """Render results/notebooks/*.ipynb and results/claims.csv into `out` (results/site)."""
    out = out or results / "site"
    notebooks = sorted((results / "notebooks").glob("*.ipynb"))
    if not notebooks:
        raise ValueError(f"no executed notebooks in {results / 'notebooks'}: run make reproduce")
    exporter = HTMLExporter()
    for nb_path in notebooks:
        body, _ = exporter.from_notebook_node(nbformat.read(nb_path, as_version=4))
        atomic_write_text(out / f"{nb_path.stem}.html", _with_check(body))
    index = _with_check(_index(results / "claims.csv", [p.stem for p in notebooks]))
    return atomic_write_text(out / "index.html", index)
