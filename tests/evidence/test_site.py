"""The rendered site: escaping and sanitizing (plain tests), then the pages in headless Chromium.

The browser tests drive Chromium over the DevTools protocol on a pipe (--remote-debugging-pipe):
each page is opened in a fresh tab with the Network domain enabled, so every request the page makes
is seen, and the DOM is inspected after the load event (images decoded, badges' computed colours,
anchors). Host names resolve to nothing (--host-resolver-rules), so no test can reach the network.

Browser: $CHROME, else chromium, chromium-browser or google-chrome on PATH. Without one the browser
tests are skipped with that reason; with PASSK_COMPANION_REQUIRE_BROWSER=1 they fail instead.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from passk_companion.evidence import claims, report
from passk_companion.evidence.site import build_site, claim_anchor, claim_cells, clean_html
from passk_companion.evidence.verdicts import KINDS, VERDICTS

ROOT = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-pipe",
]
HOSTILE = '"><img src=x onerror="document.title=\'pwned\'">'


class _Active(HTMLParser):
    """Collect what a parser sees as active: script elements, images, on* event attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [tag] if tag in ("script", "img", "iframe") else []
        self.found += [f"{tag}[{name}]" for name, _ in attrs if name.startswith("on")]


def active_content(page: str) -> list[str]:
    parser = _Active()
    parser.feed(page)
    return parser.found


def find_browser() -> tuple[str | None, str]:
    """(path, "") of the browser to use, or (None, why there is none)."""
    chrome = os.environ.get("CHROME")
    if chrome:
        found = shutil.which(chrome)
        return (found, "") if found else (None, f"$CHROME={chrome!r} is not an executable")
    for name in BROWSERS:
        if found := shutil.which(name):
            return found, ""
    return None, f"no browser: none of {', '.join(BROWSERS)} on PATH and $CHROME unset"


class Chrome:
    """Headless Chromium over the DevTools protocol: JSON messages ending in NUL on fds 3, 4."""

    def __init__(self, exe: str, profile: Path, timeout: float = 60.0) -> None:
        to_chrome, self._out = os.pipe()
        self._in, from_chrome = os.pipe()

        def as_fds_3_and_4() -> None:  # in the child: free the pipes' numbers first, then dup2
            a = fcntl.fcntl(to_chrome, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.timeout = timeout
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=as_fds_3_and_4,  # noqa: PLW1509 -- only dup2 calls, before exec
            pass_fds=(3, 4),
            start_new_session=True,
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._in)
        os.close(self._out)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("no answer from the browser in time")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError(f"the browser exited (rc {self.proc.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, session: str | None = None, timeout: float | None = None, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data) :]
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def visit(self, url: str, script: str) -> tuple[object, list[str]]:
        """Open `url` in a new tab, wait for its load event, evaluate `script` (an expression);
        return its value and the URLs of every request the page made."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        try:
            self.send("Network.enable", session)
            self.send("Page.enable", session)
            self.events.clear()
            self.send("Page.navigate", session, url=url)
            deadline = time.monotonic() + self.timeout
            mine = [e for e in self.events if e.get("sessionId") == session]
            while not any(e.get("method") == "Page.loadEventFired" for e in mine):
                event = self._message(deadline)
                if event.get("sessionId") == session:
                    mine.append(event)
            value = self.send("Runtime.evaluate", session, expression=script, returnByValue=True)[
                "result"
            ].get("value")
            mine += [e for e in self.events if e.get("sessionId") == session]
            requests = [
                e["params"]["request"]["url"]
                for e in mine
                if e.get("method") == "Network.requestWillBeSent"
            ]
            return value, requests
        finally:
            self.send("Target.closeTarget", targetId=target)


PAGE_FACTS = """(() => {
  const cellOf = a => { const c = a.closest('.claim-cell'); return c ? c.textContent : ''; };
  const imgs = Array.from(document.images);
  return {
    title: document.title,
    scripts: document.scripts.length,
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80)),
    onerror: document.querySelectorAll('[onerror]').length,
    ids: Array.from(document.querySelectorAll('[id]'), e => e.id),
    anchors: Object.fromEntries(Array.from(document.querySelectorAll('a.claim-anchor'),
                                           a => [a.id, cellOf(a)])),
    toc: Array.from(document.querySelectorAll('#toc a[href^="#"]'), a => a.getAttribute('href')),
    headings: document.querySelectorAll('#toc .headings li').length,
    summary: (document.getElementById('summary') || {}).textContent || '',
    notebookLinks: Array.from(document.querySelectorAll('section.notebook h2 a'), a => a.href),
    rows: Array.from(document.querySelectorAll('section.notebook tbody tr'), tr => {
      const badge = tr.querySelector('.badge'), thumb = tr.querySelector('img.thumb');
      const link = tr.querySelector('a.claim-link');
      return {
        id: tr.id, verdict: badge && badge.textContent,
        colour: badge && getComputedStyle(badge).backgroundColor,
        kind: (tr.querySelector('.kind') || {}).textContent,
        link: link && link.href,
        thumb: thumb && {ok: thumb.complete && thumb.naturalWidth > 0, src: thumb.src,
                         target: thumb.closest('a') && thumb.closest('a').href},
      };
    }),
  };
})()"""


def remote(urls: list[str]) -> list[str]:
    """The URLs that name a host (anything but file:, data:, about: and loopback)."""
    loopback = {None, "", "localhost", "127.0.0.1", "::1"}
    return [u for u in urls if urlsplit(u).hostname not in loopback]


def page_problems(facts: dict, requests: list[str]) -> list[str]:
    """What is wrong with one page: remote requests, scripts, broken images, dangling TOC links."""
    problems = [f"remote request {u}" for u in remote(requests)]
    problems += [f"{facts['scripts']} script elements"] if facts["scripts"] else []
    problems += [f"broken image {src}" for src in facts["broken"]]
    ids = set(facts["ids"])
    problems += [f"TOC link {h} has no target" for h in facts["toc"] if unquote(h[1:]) not in ids]
    return problems


# --- fixtures ---------------------------------------------------------------------------------


def _results_from_stored_notebooks(results: Path) -> list[claims.Claim]:
    """A results folder made of the stored notebooks, their figures, and one claim per claim line
    they print, with verdicts and kinds cycled so that every verdict and kind appears."""
    (results / "notebooks").mkdir(parents=True)
    (results / "figures").mkdir()
    rows: list[claims.Claim] = []
    for nb_path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        shutil.copy(nb_path, results / "notebooks")
        nb = nbformat.read(nb_path, as_version=4)
        figures = []
        for index, cell in enumerate(nb.cells):
            for output in cell.get("outputs", []):
                if png := output.get("data", {}).get("image/png"):
                    figures.append(f"{nb_path.stem}_{index}.png")
                    (results / "figures" / figures[-1]).write_bytes(base64.b64decode(png))
                lines = re.finditer(r"^\[[^\]\n]*\] (\S+): (.*)$", output.get("text", ""), re.M)
                for m in lines:  # the claims a stored notebook prints, and the cell that did
                    i = len(rows)
                    verdict = VERDICTS[i % len(VERDICTS)]
                    kind = "empirical" if verdict == "inconclusive" else KINDS[i % len(KINDS)]
                    rows.append(
                        claims.Claim(
                            id=m.group(1),
                            claim=m.group(2),
                            paper="Thm 3.1",
                            notebook=nb_path.stem,
                            kind=kind,
                            measured=f"m{i}",
                            verdict=verdict,
                            seeds=3 if kind == "empirical" else 0,
                            interval="[0.1, 0.2]" if kind == "empirical" else "",
                            figure=figures[-1] if figures and i % 3 else "",
                            cell=str(cell.execution_count),
                        )
                    )
    claims.record(rows, results)
    return rows


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    rows = _results_from_stored_notebooks(results)
    assert {c.verdict for c in rows} == set(VERDICTS), "the stored notebooks print too few claims"
    return build_site(results).parent, sorted(rows, key=lambda c: (c.notebook, c.id))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A notebook whose file name and markdown carry HTML, and claims whose text does."""
    results = tmp_path_factory.mktemp("hostile")
    (results / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            f"# Title\n\n{HOSTILE}<script>document.title='pwned'</script>"
        ),
        nbformat.v4.new_code_cell(
            "print('[holds] c1: x')",
            outputs=[nbformat.v4.new_output("stream", name="stdout", text="[holds] c1: x\n")],
            execution_count=1,
        ),
    ]
    name = f"01_{HOSTILE}"
    nbformat.write(nb, results / "notebooks" / f"{name}.ipynb")
    text = f"<script>document.title='pwned'</script>{HOSTILE}"
    claims.record(
        [
            claims.Claim(
                "c1",
                text,
                text,
                "01_x",
                "numerical",
                text,
                "holds",
                figure=f"{HOSTILE}.png",
                cell="1",
            ),
        ],
        results,
    )
    return build_site(results).parent, name


PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5f7a3"
        "bf0000000049454e44ae426082"
    )
).decode()
CRAFTED_METADATA = (
    {"image/png": {"width": "1 src=x onerror=document.title=/pwned/.source"}},
    {"image/png": {"height": "1 onerror=document.title=/pwned/.source", "width": 7}},
    {"filenames": {"image/png": "http://evil.example/beacon.png"}},
    {"filenames": {"image/png": "../../../../etc/hostname"}},
    {"needs_background": 'light" onerror="document.title=/pwned/.source'},
)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """A notebook whose image outputs carry crafted metadata (sizes and file names)."""
    results = tmp_path_factory.mktemp("crafted")
    (results / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("show()", execution_count=1)
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data", data={"image/png": PNG, "text/plain": "x"}, metadata=metadata
        )
        for metadata in CRAFTED_METADATA
    ]
    nb.cells = [cell]
    nbformat.write(nb, results / "notebooks" / "01_x.ipynb")
    return build_site(results).parent / "01_x.html"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe, why = find_browser()
    if exe is None:
        if os.environ.get("PASSK_COMPANION_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{why} (PASSK_COMPANION_REQUIRE_BROWSER=1 requires one)", pytrace=False)
        pytest.skip(f"site browser tests skipped: {why}")
    chrome = Chrome(exe, tmp_path_factory.mktemp("chrome-profile"))
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def pages(site, browser):
    """facts and requests of every page of the site, visited once."""
    folder, _ = site
    return {p.name: browser.visit(p.as_uri(), PAGE_FACTS) for p in sorted(folder.glob("*.html"))}


# --- without a browser ------------------------------------------------------------------------


def test_claim_cells_finds_the_recording_cell_by_its_execution_count():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x", execution_count=1),
        nbformat.v4.new_markdown_cell("[holds] a: in markdown"),
        nbformat.v4.new_code_cell("y", execution_count=2),
        nbformat.v4.new_code_cell("z", execution_count=3),
    ]
    rows = [
        claims.Claim(cid, "c", "p", "nb", "identity", "m", "holds", cell=cell)
        for cid, cell in (("a", "2"), ("b.2", "3"), ("b", ""), ("missing", "9"))
    ]
    assert claim_cells(nb, rows) == {"a": 2, "b.2": 3}


def test_clean_html_keeps_the_document_and_drops_active_content():
    page = clean_html(
        '<h2 id="s">S<a class="anchor-link" href="#s">¶</a></h2><p>t</p>'
        '<table border="1" class="dataframe"><tr><td>1</td></tr></table>'
        '<img src="data:image/png;base64,AAAA" alt="a"><style>p{color:red}</style>'
        '<script>alert(1)</script><img src="https://cdn.example.org/x.png" onerror="alert(2)">'
        '<a href="javascript:alert(3)">j</a><a href="https://arxiv.org/abs/2511.16231">paper</a>'
        '<iframe src="https://example.org"></iframe>'
    )
    for kept in (
        '<h2 id="s">',
        '<a class="anchor-link" href="#s">',
        "<p>t</p>",
        '<table border="1" class="dataframe">',
        'src="data:image/png;base64,AAAA"',
        'href="https://arxiv.org/abs/2511.16231"',
    ):
        assert kept in page, kept
    for dropped in (
        "<script",
        "alert(1)",
        "<style",
        "color:red",
        "cdn.example.org",
        "onerror",
        "javascript:",
        "<iframe",
    ):
        assert dropped not in page, dropped


def test_hostile_names_and_claim_text_are_escaped(hostile):
    folder, name = hostile
    index = (folder / "index.html").read_text()
    assert active_content(index) == []
    assert index.count("&lt;script&gt;") == 3  # claim, paper, measured: shown as text
    assert "figure not found: &quot;&gt;&lt;img" in index
    href = re.search(r'<h2><a href="([^"]+)"', index).group(1)
    assert (folder / unquote(href)).is_file() and unquote(href) == f"{name}.html"
    page = (folder / f"{name}.html").read_text()
    assert active_content(page) == [] and "&lt;img src=x" in page  # the name, as text


def test_crafted_output_metadata_adds_no_attribute_and_no_source(crafted):
    page = crafted.read_text()
    images = re.findall(r"<img[^>]*>", page)
    assert len(images) == len(CRAFTED_METADATA)
    for img in images:
        assert "onerror" not in img and "evil.example" not in img and "hostname" not in img, img
        assert re.search(r'src="data:image/png;base64,', img), img
    assert 'width="7"' in page or "width=7" in page  # a numeric size is kept


def test_site_needs_executed_notebooks(tmp_path):
    with pytest.raises(ValueError, match="no executed notebooks"):
        build_site(tmp_path)


# --- in the browser ---------------------------------------------------------------------------


def test_index_summary_badges_kinds_and_thumbnails(site, pages):
    _, rows = site
    facts, _ = pages["index.html"]
    assert f"{len(rows)} claims" in facts["summary"] and report.summary(rows) in facts["summary"]
    shown = facts["rows"]
    assert [r["id"] for r in shown] == [claim_anchor(c.id) for c in rows]
    assert [(r["verdict"], r["kind"]) for r in shown] == [(c.verdict, c.kind) for c in rows]
    colour = {}
    for r in shown:  # one colour per verdict, different verdicts in different colours
        assert colour.setdefault(r["verdict"], r["colour"]) == r["colour"]
    assert len(set(colour.values())) == len(VERDICTS)
    with_figure = [r for r, c in zip(shown, rows, strict=True) if c.figure]
    assert with_figure and all(r["thumb"] and r["thumb"]["ok"] for r in with_figure)
    assert all(r["thumb"]["target"] == r["thumb"]["src"] for r in with_figure)
    assert facts["images"] == len(with_figure) and not facts["broken"]


def test_every_claim_link_lands_on_the_cell_that_records_it(site, pages):
    folder, rows = site
    facts, _ = pages["index.html"]
    assert len(facts["notebookLinks"]) == len(list(folder.glob("0*.html")))
    for row, claim in zip(facts["rows"], rows, strict=True):
        url = urlsplit(row["link"])
        page = Path(unquote(url.path))
        assert page.parent == folder and url.fragment == claim_anchor(claim.id), row["link"]
        target, _ = pages[page.name]
        assert f"] {claim.id}: " in target["anchors"][url.fragment], claim.id


def test_every_page_is_offline_with_no_broken_image_and_a_toc(site, pages):
    """No page requests a remote host or has a broken image; each notebook page shows every
    figure of its notebook, has a table of contents, and anchors every claim of its notebook."""
    folder, rows = site
    for name, (facts, requests) in pages.items():
        assert not page_problems(facts, requests), (name, page_problems(facts, requests))
        if name == "index.html":
            continue
        stem = name.removesuffix(".html")
        nb = nbformat.read(folder.parent / "notebooks" / f"{stem}.ipynb", as_version=4)
        figures = sum(
            "image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])
        )
        assert facts["images"] == figures and facts["headings"] >= 1, name
        assert set(facts["anchors"]) == {claim_anchor(c.id) for c in rows if c.notebook == stem}


def test_the_page_checks_can_fail(browser, tmp_path):
    """A control page with a remote image and stylesheet, a broken image and a dangling TOC link:
    each is reported."""
    page = tmp_path / "control.html"
    page.write_text(
        '<html><head><link rel="stylesheet" href="https://cdn.example.org/x.css"></head><body>'
        '<nav id="toc"><a href="#nowhere">x</a></nav><img src="http://example.com/a.png">'
        '<img src="data:image/png;base64,AAAA"></body></html>'
    )
    problems = page_problems(*browser.visit(page.as_uri(), PAGE_FACTS))
    assert any("https://cdn.example.org/x.css" in p for p in problems), problems
    assert any("http://example.com/a.png" in p for p in problems), problems
    assert any(p.startswith("broken image data:image/png") for p in problems), problems
    assert "TOC link #nowhere has no target" in problems


def test_crafted_output_metadata_runs_no_script_and_requests_nothing(crafted, browser):
    facts, requests = browser.visit(crafted.as_uri(), PAGE_FACTS)
    assert facts["title"] != "pwned" and facts["onerror"] == 0 and facts["scripts"] == 0
    assert facts["images"] == len(CRAFTED_METADATA) and not facts["broken"]
    assert not remote(requests) and not [u for u in requests if "hostname" in u], requests


def test_hostile_pages_render_inert(hostile, browser):
    folder, name = hostile
    for page in (folder / "index.html", folder / f"{name}.html"):
        facts, requests = browser.visit(page.as_uri(), PAGE_FACTS)
        assert facts["title"] != "pwned" and facts["onerror"] == 0 and facts["scripts"] == 0
        assert facts["images"] == 0 and not remote(requests), page.name
    facts, _ = browser.visit((folder / "index.html").as_uri(), PAGE_FACTS)
    assert [Path(unquote(urlsplit(u).path)).name for u in facts["notebookLinks"]] == [
        f"{name}.html"
    ]


def test_the_reference_pages_are_rendered_beside_the_notebooks(site):
    out, _ = site
    index = (out / "index.html").read_text()
    docs = sorted(p.stem for p in (ROOT / "docs").glob("*.md"))
    assert docs and all((out / "docs" / f"{d}.html").is_file() for d in docs)
    assert all(f'href="docs/{d}.html"' in index for d in docs)
    page = (out / "docs" / "deciding-runs.html").read_text()
    assert "<table>" in page and 'href="../index.html"' in page
    assert not re.search(r'href="[^"]*\.md[#"]', page)  # links point at the rendered pages


def test_a_crafted_reference_page_runs_no_script_and_requests_nothing(tmp_path):
    results = tmp_path / "results"
    (results / "notebooks").mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# x")]
    nbformat.write(nb, results / "notebooks" / "01_x.ipynb")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "evil.md").write_text(
        "# Evil\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n"
        "![remote](http://example.com/a.png)\n\n[other](other.md#part) [out](https://x.org/y.md)\n"
    )
    build_site(results, docs=docs)
    page = (results / "site" / "docs" / "evil.html").read_text()
    assert "<script" not in page and not re.search(r"<[^>]*onerror", page)
    assert "&lt;script&gt;" in page  # raw HTML is shown as text, not run
    assert 'src="http' not in page and "<img" not in page
    assert 'href="other.html#part"' in page and 'href="https://x.org/y.md"' in page
