"""The documentation's tables of verdicts and counts are generated from the stored claims
(notebooks/claims/*.csv and evidence/<run>/claims.csv): every committed copy equals what
`python -m passk_companion report --tables` prints."""

from pathlib import Path

import pytest

from passk_companion.evidence import claims, report

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", report.TABLE_FILES)
def test_the_committed_tables_are_what_the_generator_prints(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    generated = report.GENERATORS[name](report.stored_claims(ROOT), report.deciding_runs(ROOT))
    assert report.replace_tables(text, generated, name) == text, (
        f"{name} is stale: run python -m passk_companion report --tables"
    )


def test_the_stored_claims_are_one_file_per_notebook():
    stems = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9]*.ipynb"))
    assert sorted(p.stem for p in (ROOT / "notebooks" / "claims").glob("*.csv")) == stems
    rows = report.stored_claims(ROOT)
    assert {c.notebook for c in rows} == set(stems)


def test_the_tables_count_what_they_list():
    rows = report.stored_claims(ROOT)
    deciding = report.deciding_runs(ROOT)
    text = report.tables(rows, deciding)
    empirical = [c for c in rows if c.kind == "empirical"]
    assert text.count("\n| 0") == len(empirical)  # one row per empirical claim (notebook 0N)
    assert f"| empirical (ci) | {len(empirical)} |" in text
    assert report.summary(rows) in text


def test_a_file_without_its_markers_is_refused():
    with pytest.raises(ValueError, match="needs the markers"):
        report.replace_tables("no markers here", "x", "doc.md")
    twice = f"{report.BEGIN}\n{report.END}\n{report.BEGIN}\n{report.END}\n"
    with pytest.raises(ValueError, match="once each"):
        report.replace_tables(twice, "x", "doc.md")
    done = report.replace_tables(f"a\n{report.BEGIN}\nold\n{report.END}\nb\n", "new\n")
    assert done == f"a\n{report.BEGIN}\nnew\n{report.END}\nb\n"


def test_the_command_writes_the_tables(tmp_path, capsys, monkeypatch):
    """`report --tables` prints the tables and writes them between the markers."""
    from passk_companion import cli

    (tmp_path / "docs").mkdir()
    (tmp_path / "notebooks" / "claims").mkdir(parents=True)
    (tmp_path / "docs" / "claims.md").write_text(f"# x\n{report.BEGIN}\n{report.END}\n")
    (tmp_path / "README.md").write_text(f"# y\n{report.BEGIN}\nstale\n{report.END}\n")
    row = claims.Claim(
        id="c", claim="a claim", paper="Thm 3.1", notebook="01_x", kind="empirical",
        measured="m", verdict="holds", seeds=3, interval="[0.1, 0.2]",
    )  # fmt: skip
    claims.record([row], tmp_path / "notebooks")
    monkeypatch.setattr(report, "repo_root", lambda: tmp_path)
    assert cli.main(["report", "--tables"]) == 0
    printed = capsys.readouterr().out
    assert "| 01 | `c` | holds |" in printed
    assert printed in (tmp_path / "docs" / "claims.md").read_text()
    readme = (tmp_path / "README.md").read_text()
    assert "stale" not in readme and "1 experiment: 1 hold" in readme
