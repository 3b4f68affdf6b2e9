"""reproduce.store_evidence: a finished run kept as evidence, whole or not at all."""

import gzip

import pytest

from passk_companion import reproduce


def _run(tmp_path):
    results = tmp_path / "results"
    for sub in ("notebooks", "claims", "tables", "figures"):
        (results / sub).mkdir(parents=True)
    (results / "notebooks" / "04_nb.ipynb").write_text("{}")
    (results / "claims" / "04_nb.csv").write_text("id\nx\n")
    (results / "tables" / "04_runs.csv").write_text("a,b\n1,2\n")
    (results / "tables" / "05_other.csv").write_text("not ours\n")
    (results / "figures" / "04_fig.png").write_bytes(b"png")
    notebook = tmp_path / "checkout" / "notebooks" / "04_nb.ipynb"
    notebook.parent.mkdir(parents=True)
    notebook.write_text("{}")
    return results, notebook


def test_evidence_is_stored_in_a_folder_whose_parent_does_not_exist_yet(tmp_path):
    results, notebook = _run(tmp_path)
    dest = tmp_path / "new" / "evidence" / "04_full"
    reproduce.store_evidence(results, dest, notebook, "python -m passk_companion reproduce", 1921.0)
    assert sorted(p.name for p in dest.iterdir()) == [
        "04_nb.ipynb", "RUN.md", "claims.csv", "figures", "tables"
    ]  # fmt: skip
    assert [p.name for p in (dest / "tables").iterdir()] == ["04_runs.csv.gz"]
    assert gzip.decompress((dest / "tables" / "04_runs.csv.gz").read_bytes()) == b"a,b\n1,2\n"
    run = (dest / "RUN.md").read_text()
    assert "`python -m passk_companion reproduce`" in run and "wall time: 32.0 min" in run
    assert [p.name for p in dest.parent.iterdir()] == ["04_full"]  # no staging folder left


def test_a_failed_store_keeps_the_old_evidence_whole(tmp_path):
    results, notebook = _run(tmp_path)
    dest = tmp_path / "evidence" / "04_full"
    reproduce.store_evidence(results, dest, notebook, "first", 60.0)
    (results / "claims" / "04_nb.csv").unlink()
    with pytest.raises(FileNotFoundError):
        reproduce.store_evidence(results, dest, notebook, "second", 60.0)
    assert "`first`" in (dest / "RUN.md").read_text()
    assert [p.name for p in dest.parent.iterdir()] == ["04_full"]
