"""Claims files (one per notebook), their validation, concurrency, and the report's counts."""

import multiprocessing as mp

import mistune
import pytest

from passk_companion.evidence import claims, report, verdicts


def _claim(i, verdict="holds", nb="01_nb", kind="identity", seeds=0, interval=""):
    return claims.Claim(
        id=i,
        claim="c",
        paper="Thm 3.1",
        notebook=nb,
        kind=kind,
        measured="0",
        verdict=verdict,
        seeds=seeds,
        interval=interval,
    )


def test_record_upserts_by_notebook_and_id_into_one_file_per_notebook(tmp_path):
    claims.record([_claim("a"), _claim("b")], tmp_path)
    claims.record([_claim("a", verdict="fails"), _claim("a", nb="02_nb")], tmp_path)
    assert sorted(p.name for p in (tmp_path / "claims").glob("*.csv")) == ["01_nb.csv", "02_nb.csv"]
    rows = {(c.notebook, c.id): c.verdict for c in claims.read_all(tmp_path)}
    assert rows == {("01_nb", "a"): "fails", ("01_nb", "b"): "holds", ("02_nb", "a"): "holds"}
    assert not list((tmp_path / "claims").glob(".*tmp"))  # no temporary file left behind


def test_bad_rows_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="verdict must be"):
        _claim("a", verdict="yes")
    with pytest.raises(ValueError, match="kind must be"):
        _claim("a", kind="anecdote")
    with pytest.raises(ValueError, match=">= 3 seeds"):
        _claim("a", kind="empirical", seeds=1, interval="[0, 1]")
    with pytest.raises(ValueError, match="needs its interval"):
        _claim("a", kind="empirical", seeds=3)
    with pytest.raises(ValueError, match="holds or fails"):
        _claim("a", verdict="inconclusive")
    with pytest.raises(ValueError, match="letters, digits"):
        _claim("a", nb="../../etc/x")
    with pytest.raises(ValueError, match="duplicate"):
        claims.record([_claim("a"), _claim("a")], tmp_path)


def test_a_file_that_is_not_a_claims_file_is_named(tmp_path):
    folder = tmp_path / "claims"
    folder.mkdir()
    (folder / "01_nb.csv").write_text("id,claim\nx,y\n")
    with pytest.raises(ValueError, match="01_nb.csv is not a valid claims file"):
        claims.read_all(tmp_path)


def test_from_decision_carries_kind_seeds_and_interval():
    d = verdicts.mean_over_seeds([0.2, 0.3, 0.25, 0.28], statistic="gain")
    c = claims.from_decision("x", "a claim", "beyond the paper", "03_nb", d)
    assert (c.kind, c.verdict, c.seeds) == ("empirical", "holds", 4)
    assert c.interval == d.interval and c.interval.startswith("[")
    assert "gain" in c.measured


def _writer(results, notebook, start, count):
    for i in range(start, start + count):
        claims.record([_claim(f"c{i:04d}", nb=notebook)], results)


@pytest.mark.parametrize("same_notebook", [True, False])
def test_concurrent_writers_lose_no_rows(tmp_path, same_notebook):
    """Two processes recording 150 rows each keep all 300 (the old shared file kept 228)."""
    ctx = mp.get_context("fork")
    nbs = ("01_nb", "01_nb") if same_notebook else ("01_nb", "02_nb")
    procs = [
        ctx.Process(target=_writer, args=(tmp_path, nb, 150 * i, 150)) for i, nb in enumerate(nbs)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert len(claims.read_all(tmp_path)) == 300


def test_report_counts_kinds_apart_and_escapes_pipes(tmp_path):
    rows = [
        claims.Claim(
            "a", "x | y", "Thm 3.1", "01_nb", "identity", "1 | 2", "holds", 0, "", "f.png"
        ),
        claims.Claim("b", "z", "Thm 3.2", "03_nb", "numerical", "3", "fails"),
        claims.Claim(
            "c",
            "w",
            "raised by the companion",
            "03_nb",
            "empirical",
            "4",
            "inconclusive",
            3,
            "[-0.1, 0.2]",
        ),
        claims.Claim("d", "v", "Thm 3.2", "03_nb", "empirical", "5", "holds", 5, "[0.1, 0.2]"),
    ]
    claims.record(rows, tmp_path)
    text = report.build(tmp_path).read_text()
    table = [ln for ln in text.splitlines() if ln.startswith("| ") and "verdict" not in ln]
    assert len(table) == 4
    assert "x \\| y" in table[0] and "01\\_nb (f.png)" in table[0]
    assert table[0].endswith("| holds | - |")  # no stored deciding run of this claim
    assert (
        "1 identity: 1 hold; 1 numerical check: 1 fail; 2 experiments: 1 hold, 1 inconclusive"
        in text
    )
    assert "\\[-0.1, 0.2\\]" in text  # Markdown-escaped: renders as [-0.1, 0.2]


def test_report_without_claims_fails_clearly(tmp_path, capsys):
    from passk_companion import cli

    with pytest.raises(ValueError, match="no claims"):
        report.build(tmp_path)
    assert cli.main(["report", "--results", str(tmp_path)]) == 2
    assert "no claims" in capsys.readouterr().err


def test_report_renders_claim_text_as_text_not_markup(tmp_path):
    evil = '<img src=x onerror="alert(1)"> & <script>bad()</script>'
    claims.record(
        [claims.Claim("e", evil, "Thm 3.1", "01_nb", "identity", evil, "holds")], tmp_path
    )
    text = report.build(tmp_path).read_text()
    rendered = mistune.create_markdown(plugins=["table"])(text)
    assert "<img" not in rendered and "<script" not in rendered  # shown as text, not markup
    assert "&lt;img src=x" in rendered and "&lt;script&gt;" in rendered
    assert "\\<img src=x" in text and "\\&" in text and "&lt;" not in text


def test_fragile_rows_are_marked_and_named(capsys):
    from passk_companion.evidence import verdicts as vd

    near = vd.mean_over_seeds([0.2, -0.1, 0.5, 0.3])  # the interval edge sits near 0
    far = vd.mean_over_seeds([5.0, 5.1, 4.9])
    rows = [
        claims.from_decision("near", "c", "p", "nb", near),
        claims.from_decision("far", "c", "p", "nb", far),
    ]
    assert near.fragile and rows[0].fragile == "yes" and rows[1].fragile == ""
    claims.show(rows)
    out = capsys.readouterr().out
    assert "] near: c" in out and "] far: c" in out
    assert out.strip().splitlines()[-1].endswith("other seeds may decide otherwise): near")
    with pytest.raises(ValueError, match="fragile"):
        claims.Claim("x", "c", "p", "nb", "identity", "m", "holds", fragile="yes")


def test_differences_name_the_verdict_first_and_one_sided_claims():
    from dataclasses import replace

    a = claims.Claim("x", "c", "p", "nb", "identity", "m", "holds")
    b = replace(a, verdict="fails", measured="m2")
    c = replace(a, id="y")
    lines = claims.differences([a, c], [b])
    assert lines[0] == "nb/x: verdict 'holds' != 'fails'"
    assert "nb/x: measured 'm' != 'm2'" in lines and "nb/y: only in the first run" in lines
    assert claims.differences([a], [a]) == []
    # where a claim was printed (papermill counts cells, nbval does not) is not what it says
    assert claims.differences([a], [replace(a, cell="11")]) == []
    assert claims.differences([a], [replace(a, cell="11", interval="[0, 1]")]) == [
        "nb/x: interval '' != '[0, 1]'"
    ]


def test_compare_claims_command_fails_on_a_difference(tmp_path, capsys):
    from passk_companion import cli

    row = claims.Claim("x", "c", "p", "04_nb", "identity", "m", "holds")
    claims.record([row], tmp_path / "a")
    claims.record([row], tmp_path / "b")
    assert cli.main(["compare-claims", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    claims.record([claims.Claim("x", "c", "p", "04_nb", "identity", "m", "fails")], tmp_path / "b")
    assert cli.main(["compare-claims", str(tmp_path / "a"), str(tmp_path / "b"), "--nb", "04"]) == 1
    assert "verdict 'holds' != 'fails'" in capsys.readouterr().out
    assert cli.main(["compare-claims", str(tmp_path / "a"), str(tmp_path / "none")]) == 2


@pytest.mark.parametrize("second_file", [False, True])
def test_compare_claims_fails_on_a_claim_held_twice_with_contradictory_verdicts(
    tmp_path, capsys, second_file
):
    from passk_companion import cli

    header = ",".join(claims.COLUMNS)
    holds, fails = "x,c,p,01_n,identity,m,holds,0,,,,", "x,c,p,01_n,identity,m,fails,0,,,,"
    for side in ("A", "B"):
        (tmp_path / side / "claims").mkdir(parents=True)
    first = tmp_path / "A" / "claims"
    if second_file:
        (first / "01_n.csv").write_text(f"{header}\n{holds}\n")
        (first / "01_n_old.csv").write_text(f"{header}\n{fails}\n")
    else:
        (first / "01_n.csv").write_text(f"{header}\n{holds}\n{fails}\n")
    (tmp_path / "B" / "claims" / "01_n.csv").write_text(f"{header}\n{fails}\n")
    assert cli.main(["compare-claims", str(tmp_path / "A"), str(tmp_path / "B")]) == 1
    assert "01_n/x: held 2 times in the first run" in capsys.readouterr().out


def test_record_in_a_kernel_names_the_cell_that_recorded(tmp_path):
    import nbformat
    import papermill as pm

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell(
            "from passk_companion.evidence import claims\n"
            f"claims.record([claims.Claim('r', 'c', 'p', 'nb', 'identity', 'm', 'holds')], "
            f"results={str(tmp_path)!r} and __import__('pathlib').Path({str(tmp_path)!r}))"
        ),
    ]
    path = tmp_path / "t.ipynb"
    nbformat.write(nb, path)
    pm.execute_notebook(str(path), str(path), kernel_name="python3", progress_bar=False)
    ran = nbformat.read(path, as_version=4)
    (row,) = claims.read_all(tmp_path)
    assert row.cell == str(ran.cells[1].execution_count) == "2"


def test_a_claims_file_of_an_older_format_is_replaced_not_fatal(tmp_path, capsys):
    folder = tmp_path / "claims"
    folder.mkdir()
    (folder / "nb.csv").write_text("id,claim\nold,row\n")  # an earlier version's columns
    row = claims.Claim("x", "c", "p", "nb", "identity", "m", "holds")
    claims.record([row], tmp_path)
    assert [c.id for c in claims.read(folder / "nb.csv")] == ["x"]
    assert "replacing" in capsys.readouterr().err


def test_report_shows_a_stored_deciding_run_beside_the_row(tmp_path):
    ci = claims.Claim("r", "c", "p", "04_nb", "empirical", "m", "inconclusive", 4, "[-1, 1]")
    full = claims.Claim("r", "c", "p", "04_nb", "empirical", "m", "holds", 45, "[0.1, 0.2]")
    claims.record([ci], tmp_path / "results")
    claims.record([full], tmp_path / "evidence" / "04_full")
    (tmp_path / "evidence" / "04_full" / "claims" / "04_nb.csv").rename(
        tmp_path / "evidence" / "04_full" / "claims.csv"
    )
    text = report.render([ci], report.deciding_runs(tmp_path))
    row = next(ln for ln in text.splitlines() if ln.startswith("| c |"))
    assert row.endswith("| inconclusive | holds \\[0.1, 0.2\\], n = 45 (04\\_full) |")
