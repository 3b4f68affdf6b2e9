"""reproduce.store_evidence: a finished run kept as evidence, whole or not at all."""

import gzip
import os

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
        ".passk_companion-evidence", "04_nb.ipynb", "RUN.md", "claims.csv", "figures", "tables"
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
    with pytest.raises(ValueError, match="cannot read evidence file"):
        reproduce.store_evidence(results, dest, notebook, "second", 60.0)
    assert "`first`" in (dest / "RUN.md").read_text()
    assert [p.name for p in dest.parent.iterdir()] == ["04_full"]


@pytest.mark.parametrize("make", ["thesis", "dot", "file", "through_file", "link"])
def test_store_refuses_what_is_not_a_new_or_evidence_folder(tmp_path, monkeypatch, make):
    results, notebook = _run(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("years of work")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "evlink").symlink_to(tmp_path / "thesis")
    dest = {"thesis": "thesis", "dot": ".", "file": "afile", "through_file": "afile/sub",
            "link": "evlink"}[make]  # fmt: skip
    with pytest.raises(ValueError, match="--store"):
        reproduce.store_evidence(results, tmp_path / dest, notebook, "cmd", 1.0)
    assert (tmp_path / "thesis" / "chapter1.tex").read_text() == "years of work"
    assert (tmp_path / "results" / "claims" / "04_nb.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "afile", "checkout", "evlink", "results", "thesis"
    ]  # fmt: skip


def test_store_is_checked_before_any_notebook_runs(tmp_path, monkeypatch):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("years of work")

    def run(*args, **kwargs):
        raise AssertionError("the notebook ran before --store was checked")

    monkeypatch.setattr(reproduce, "_run_atomic", run)
    with pytest.raises(ValueError, match="not an evidence folder"):
        reproduce.reproduce("ci", "01", tmp_path / "results", store=tmp_path / "thesis")
    assert (tmp_path / "thesis" / "chapter1.tex").read_text() == "years of work"


def test_an_evidence_folder_is_recognised_by_its_marker_not_its_name(tmp_path):
    results, notebook = _run(tmp_path)
    dest = tmp_path / "any name"
    reproduce.store_evidence(results, dest, notebook, "first", 60.0)
    assert reproduce.is_evidence_folder(dest)
    reproduce.store_evidence(results, dest, notebook, "second", 60.0)
    assert "`second`" in (dest / "RUN.md").read_text()
    (dest / reproduce.EVIDENCE_MARKER).unlink()
    with pytest.raises(ValueError, match="not an evidence folder"):
        reproduce.store_evidence(results, dest, notebook, "third", 60.0)
    assert "`second`" in (dest / "RUN.md").read_text()


def test_the_committed_evidence_carries_the_marker():
    root = reproduce.notebooks_dir().parent
    assert reproduce.is_evidence_folder(root / "evidence" / "04_full")


def test_an_interrupted_replacement_keeps_the_old_evidence(tmp_path, monkeypatch):
    results, notebook = _run(tmp_path)
    dest = tmp_path / "evidence" / "04_full"
    reproduce.store_evidence(results, dest, notebook, "first", 60.0)
    real = os.replace

    def replace(src, dst):
        if str(src).endswith(".passk_companion.new"):
            raise KeyboardInterrupt  # between moving the old one aside and the new one in
        real(src, dst)

    monkeypatch.setattr(reproduce.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        reproduce.store_evidence(results, dest, notebook, "second", 60.0)
    assert "`first`" in (dest / "RUN.md").read_text()
    assert [p.name for p in dest.parent.iterdir()] == ["04_full"]


def test_a_kill_between_the_renames_leaves_the_old_evidence_named_and_blocks_the_next_store(
    tmp_path,
):
    results, notebook = _run(tmp_path)
    dest = tmp_path / "evidence" / "04_full"
    reproduce.store_evidence(results, dest, notebook, "first", 60.0)
    backup = dest.parent / ".04_full.999.abcdefgh.passk_companion.old"
    os.replace(dest, backup)  # what a SIGKILL after the first rename leaves
    with pytest.raises(ValueError, match="move it back"):
        reproduce.store_evidence(results, dest, notebook, "second", 60.0)
    assert "`first`" in (backup / "RUN.md").read_text()


def test_links_and_special_files_are_not_stored(tmp_path, capsys):
    results, notebook = _run(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("hostname")
    (results / "tables" / "04_secret.csv").symlink_to(secret)
    (results / "figures" / "04_zero.png").symlink_to("/dev/zero")
    dest = reproduce.store_evidence(results, tmp_path / "ev", notebook, "cmd", 1.0)
    assert [p.name for p in (dest / "tables").iterdir()] == ["04_runs.csv.gz"]
    assert [p.name for p in (dest / "figures").iterdir()] == ["04_fig.png"]
    assert "tables/04_secret.csv" in (dest / "RUN.md").read_text()
    assert "not a regular file" in capsys.readouterr().err


def test_a_stored_file_is_bounded(tmp_path, monkeypatch):
    results, notebook = _run(tmp_path)
    monkeypatch.setattr(reproduce, "MAX_EVIDENCE_FILE_BYTES", 4)
    (results / "figures" / "04_big.png").write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="larger than 4 bytes"):
        reproduce.store_evidence(results, tmp_path / "ev", notebook, "cmd", 1.0)
    assert not (tmp_path / "ev").exists()


def test_a_parameter_file_with_a_key_given_twice_is_refused(tmp_path):
    (tmp_path / "params" / "ci").mkdir(parents=True)
    (tmp_path / "params" / "ci" / "04_nb.yaml").write_text("n: 4\nseeds: [0]\nn: 8\n")
    with pytest.raises(ValueError, match="duplicate key 'n' at line 3"):
        reproduce._params("ci", tmp_path / "notebooks" / "04_nb.ipynb", tmp_path)


def test_the_kernel_draws_inline_whatever_the_callers_mplbackend(tmp_path, monkeypatch):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import matplotlib, os\nprint(os.environ.get('MPLBACKEND'), matplotlib.get_backend())"
        )
    ]
    source = tmp_path / "01_nb.ipynb"
    nbformat.write(nb, source)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    final = tmp_path / "out" / "01_nb.ipynb"
    reproduce._run_atomic(source, final, {}, tmp_path / "results", None)
    printed = nbformat.read(final, as_version=4).cells[0].outputs[0]["text"]
    assert "backend_inline" in printed and "agg" not in printed.lower()
    assert os.environ["MPLBACKEND"] == "Agg"  # the caller's environment is given back
