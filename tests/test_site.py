"""The rendered site in headless Chromium: the index loads with the claims table, and every
notebook page shows its figures, none broken."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from companion import claims
from companion.site import build_site

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
]

if CHROMIUM is None and not os.environ.get("COMPANION_REQUIRE_BROWSER"):
    pytest.skip("chromium not installed (make test installs it)", allow_module_level=True)


def dump_dom(page: Path, profile: Path) -> str:
    assert CHROMIUM, "chromium is required (COMPANION_REQUIRE_BROWSER is set)"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    (results / "notebooks").mkdir()
    for nb in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        shutil.copy(nb, results / "notebooks")
    claims.record(
        [claims.Claim("a", "a claim", "Thm 3.1", "01_x", "0.5", "partly")], results / "claims.csv"
    )
    build_site(results)
    return results / "site"


def test_index_loads_with_claims_table_and_links(site, tmp_path):
    dom = dump_dom(site / "index.html", tmp_path / "chr")
    assert 'id="claims"' in dom and "holds only in part" in dom
    pages = re.findall(r'href="([^"]+\.html)"', dom)
    assert sorted(pages) == sorted(p.name for p in site.glob("0*.html")) and pages


def test_every_notebook_page_shows_its_figures(site, tmp_path):
    for page in sorted(site.glob("0*.html")):
        dom = dump_dom(page, tmp_path / "chr")
        body = re.search(r"<body[^>]*>", dom).group(0)
        images = int(re.search(r'data-images="(\d+)"', body).group(1))
        broken = int(re.search(r'data-broken="(\d+)"', body).group(1))
        assert images >= 1 and broken == 0, (page.name, images, broken)


def test_a_broken_image_is_detected(site, tmp_path):
    """The check can fail: a page with an undecodable image reports it."""
    page = site / "broken.html"
    good = (site / "index.html").read_text()
    page.write_text(good.replace("<h1>", '<img src="data:image/png;base64,AAAA"><h1>', 1))
    body = re.search(r"<body[^>]*>", dump_dom(page, tmp_path / "chr")).group(0)
    assert 'data-broken="1"' in body
    page.unlink()
