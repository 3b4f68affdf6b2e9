"""The site and the report under hostile input: no symlink target is copied, a data: or javascript:
link stays refused with tabs or newlines in its scheme, REPORT.md escapes Markdown rather than
writing HTML entities, and a broken notebook is one clear line."""

import mistune
import nbformat
import pytest

from passk_companion import cli
from passk_companion.evidence import claims, report
from passk_companion.evidence.site import build_site, clean_html


def _results(tmp_path, figure="f.png", text="c"):
    """A results folder: one tiny executed notebook and one claim naming `figure`."""
    results = tmp_path / "results"
    (results / "notebooks").mkdir(parents=True)
    (results / "figures").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1", execution_count=1)]
    nbformat.write(nb, results / "notebooks" / "01_x.ipynb")
    claim = claims.Claim("c1", text, "Thm 3.1", "01_x", "numerical", "1", "holds", figure=figure)
    claims.record([claim], results)
    return results


def test_the_site_never_copies_a_symlink_target(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    results = _results(tmp_path, figure="passwd.png")
    (results / "figures" / "passwd.png").symlink_to(secret)
    index = build_site(results).read_text()
    assert not (results / "site" / "figures" / "passwd.png").exists()
    assert "figure not found: passwd.png" in index
    # a regular figure is copied; a link planted where it goes is replaced, not written through
    (results / "figures" / "passwd.png").unlink()
    (results / "figures" / "passwd.png").write_bytes(b"\x89PNG fake")
    (results / "site" / "figures").mkdir(exist_ok=True)
    (results / "site" / "figures" / "passwd.png").symlink_to(secret)
    build_site(results)
    copied = results / "site" / "figures" / "passwd.png"
    assert not copied.is_symlink() and copied.read_bytes() == b"\x89PNG fake"
    assert secret.read_text() == "root:x:0:0"
    # a figures folder that is a link is not read from
    (results / "figures" / "passwd.png").unlink()
    (results / "figures").rmdir()
    (results / "figures").symlink_to(tmp_path)
    (tmp_path / "passwd.png").write_text("outside")
    copied.unlink()
    assert "figure not found" in build_site(results).read_text() and not copied.exists()


@pytest.mark.parametrize(
    "href",
    [
        "da&#x09;ta:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "da&#x0A;ta:text/html,<b>x</b>",
        "d&#x0D;ata:text/html,x",
        "java&#x09;script:alert(1)",
        "&#x01; javascript:alert(1)",
        "&#x09;JaVaScRiPt&#x0A;:alert(1)",
    ],
)
def test_links_with_control_characters_in_the_scheme_are_refused(href):
    page = clean_html(f'<a href="{href}">x</a><a href="https://arxiv.org/abs/2511.16231">p</a>')
    assert page.count("href=") == 1 and 'href="https://arxiv.org/abs/2511.16231"' in page
    img = clean_html(f'<img src="{href}" alt="a">')
    assert "src=" not in img


def test_report_md_escapes_markdown_not_html(tmp_path):
    text = "pass@k -> pass@1 ![t](http://evil.example/t.png) [link](http://evil.example) <b>x</b>"
    claims.record(
        [claims.Claim("e", text, "Thm 3.1", "01_nb", "identity", "a_b *c* `d` & e|f", "holds")],
        tmp_path,
    )
    md = report.build(tmp_path).read_text()
    assert "&gt;" not in md and "&lt;" not in md and "&amp;" not in md  # no HTML entities
    assert "pass@k -> pass@1" in md
    html = mistune.create_markdown(plugins=["table"])(md)
    assert "<img" not in html and 'href="http://evil.example' not in html and "<b>" not in html
    cells = html.split("<tbody>")[1]
    assert "![t](http://evil.example/t.png)" in cells  # shown as written
    assert "a_b *c* `d` &amp; e|f" in cells and "<em>" not in cells and "<code>" not in cells


@pytest.mark.parametrize("content", ["{not json", '{"cells": 3}', '["a", "list"]', ""])
def test_an_invalid_notebook_is_one_clear_line(tmp_path, capsys, content):
    results = _results(tmp_path)
    bad = results / "notebooks" / "02_broken.ipynb"
    bad.write_text(content)
    with pytest.raises(ValueError, match="is not a valid notebook"):
        build_site(results)
    assert cli.main(["html", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad} is not a valid notebook" in err, err


def test_a_notebook_that_is_a_link_is_not_rendered(tmp_path):
    results = _results(tmp_path)
    outside = tmp_path / "elsewhere.ipynb"
    outside.write_text((results / "notebooks" / "01_x.ipynb").read_text())
    (results / "notebooks" / "03_link.ipynb").symlink_to(outside)
    with pytest.raises(ValueError, match="03_link.ipynb is not a regular file"):
        build_site(results)
