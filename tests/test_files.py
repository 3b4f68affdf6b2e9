"""passk_companion.files: stale temporaries are only ours and only where we write, output folders
are never system folders, what is expected to be a file must be a regular file, and YAML is read
strictly (a key given twice, an alias or deep nesting is one line)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from passk_companion import files


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_cleanup_deletes_only_our_temporaries_of_dead_writers(tmp_path):
    dead = _dead_pid()
    users = [
        tmp_path / f".draft.txt.{dead}.autosave.tmp",  # a user's file in the old form
        tmp_path / f".notes.{dead}.abcdefgh.tmp",
        tmp_path / "sub" / f".x.csv.{dead}.abcdefgh.passk_companion.tmp",  # below: not ours to scan
    ]
    for path in users:
        path.parent.mkdir(exist_ok=True)
        path.write_text("mine")
    # a temporary of ours whose writer died: made by files.temporary in another process
    code = (
        "import os, sys; from passk_companion import files\nfd, p = files.temporary(sys.argv[1])\n"
    )
    code += "os.write(fd, b'half'); print(p)"
    made = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "metrics.csv")],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    stale = Path(made)
    live_fd, live = files.temporary(tmp_path / "prompts.csv")
    os.close(live_fd)
    link = tmp_path / f".y.csv.{dead}.abcdefgh.passk_companion.tmp"
    link.symlink_to(users[0])
    assert files.remove_stale_temporaries(tmp_path) == [stale]
    assert all(p.exists() for p in users) and live.exists() and link.is_symlink()
    assert not stale.exists()


@pytest.mark.parametrize("folder", ["/", "/etc", "/usr/lib", "/proc/self", "~", "/tmp"])
def test_system_folders_are_never_output_folders(folder):
    path = Path(folder).expanduser()
    with pytest.raises(ValueError, match="system or home folder") as err:
        files.writable_dir(path, "--out")
    assert str(err.value).startswith("--out ")


def test_a_relative_path_into_a_system_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    up = "../" * (len(tmp_path.parts) + 2) + "etc"
    with pytest.raises(ValueError, match="system or home folder /etc"):
        files.writable_dir(up, "--results")
    assert files.writable_dir(tmp_path / "results", "--results").is_dir()  # a folder of one's own


def test_regular_files_only(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a character device"),
                       (tmp_path, "a folder")):  # fmt: skip
        with pytest.raises(ValueError, match=f"grid file {path} is not a regular file .{kind}"):
            files.read_regular(path, "grid file", 1000)  # returns at once: a FIFO never blocks
        with pytest.raises(ValueError, match="not a regular file"):
            files.regular_file(path, "--base", must_exist=False)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"x" * 101)
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        files.read_regular(big, "grid file", 100)
    assert files.read_regular(big, "grid file", 101) == b"x" * 101
    assert files.regular_file(tmp_path / "new.pt", "--base", must_exist=False).name == "new.pt"


def test_own_folders_refuse_links_and_odd_names(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "trial").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="symbolic link"):
        files.own_folder(tmp_path / "out", "trial", "trial folder")
    for name in ("..", ".", "a/b", ""):
        with pytest.raises(ValueError, match="not a plain folder name"):
            files.own_folder(tmp_path / "out", name, "trial folder")
    assert files.own_folder(tmp_path / "out", "ok", "trial folder").is_dir()
    assert not list((tmp_path / "elsewhere").iterdir())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\nb: 2\na: 3\n", "duplicate key 'a' at line 3 (first given at line 1)"),
        ("x: {a: 1, a: 2}\n", "duplicate key 'a' at line 1"),
        ("a:\n  c: 1\n  c: 2\n", "duplicate key 'c' at line 3"),
        ("a: &x 1\nb: *x\n", "aliases (*name) are not allowed"),
        ("[" * 5000 + "]" * 5000, "nested deeper than 64 levels"),
        ("a: [1\n", "cannot read"),
    ],
)
def test_load_yaml_strict_refuses_in_one_line(tmp_path, text, message):
    from passk_companion.files import load_yaml_strict

    path = tmp_path / "f.yaml"
    path.write_text(text)
    for source in (text, path):
        with pytest.raises(ValueError) as err:
            load_yaml_strict(source, "parameter file")
        assert message in str(err.value) and "\n" not in str(err.value)
    assert str(path) in str(err.value)


def test_load_yaml_strict_reads_what_safe_load_reads(tmp_path):
    from passk_companion.files import load_yaml_strict

    text = "a: [1, 2.5, x]\nb: {c: null, d: true}\n"
    assert load_yaml_strict(text) == {"a": [1, 2.5, "x"], "b": {"c": None, "d": True}}
    with pytest.raises(ValueError, match="not a regular file"):
        load_yaml_strict(Path("/dev/zero"))
