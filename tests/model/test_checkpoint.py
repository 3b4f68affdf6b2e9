"""Checkpoints and bases: --fresh never overwrites a file that is not ours, a base must be a
regular file, a small file cannot inflate into a huge tensor, and wrong shapes, bad RNG states
and a read-only base folder give one clear line."""

import errno
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from passk_companion import cli, files
from passk_companion.model import checkpoint, config, pretrain

SMOKE = config.for_profile("smoke")
TRAIN = ["train", "--profile", "smoke", "--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    """A real smoke base (pretrained once for the module, at one thread as `train` runs)."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("base") / "base.pt"
    pretrain.load_or_pretrain(SMOKE, path, "cpu", progress=False)
    return path


def _train(tmp_path, *extra):
    return subprocess.run(
        [sys.executable, "-m", "passk_companion", *TRAIN, *extra],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip


def test_fresh_never_overwrites_a_file_that_is_not_ours(tmp_path, capsys):
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("four years of work\n")
    other = tmp_path / "someone_elses.pt"
    torch.save({"weights": torch.ones(3)}, other)  # a torch file, not one of ours
    for victim in (thesis, other):
        before = victim.read_bytes()
        argv = [*TRAIN, "--out", str(tmp_path / "o"), "--base", str(victim), "--fresh"]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"refusing to overwrite {victim} with --fresh" in err, err
        assert victim.read_bytes() == before
        assert cli.main(argv[:-1]) == 2  # without --fresh: the refusal does not suggest it
        err = capsys.readouterr().err
        assert str(victim) in err and "--fresh" not in err and "name another --base" in err


def test_a_base_must_be_a_regular_file(tmp_path):
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    for base, kind in ((Path("/dev/zero"), "a character device"), (fifo, "a FIFO")):
        proc = _train(tmp_path, "--out", str(tmp_path / "o"), "--base", str(base))  # no hang
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"--base {base} is not a regular file ({kind})" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not Path("/dev/zero.lock").exists() and not (tmp_path / "fifo.pt.lock").exists()
    with pytest.raises(ValueError, match="base file .* is not a regular file"):
        pretrain.load_or_pretrain(SMOKE, fifo, "cpu", progress=False)


def test_a_planted_lock_link_is_never_followed(tmp_path, capsys, planted_lock):
    out, victim = planted_lock
    assert cli.main([*TRAIN, "--out", str(out)]) == 2
    assert "is a symbolic link: refusing to use it as a lock" in capsys.readouterr().err
    assert victim.read_text() == "precious"
    (out / ".lock").unlink()
    dangling = tmp_path / "created-by-the-link"
    (tmp_path / "b.pt.lock").symlink_to(dangling)
    assert cli.main([*TRAIN, "--out", str(out), "--base", str(tmp_path / "b.pt")]) == 2
    assert "symbolic link" in capsys.readouterr().err and not dangling.exists()


def _bomb(path: Path, floats: int, compress: bool) -> Path:
    """A base-like checkpoint holding one tensor of `floats` float64 zeros, its zip entries
    deflated (a decompression bomb: megabytes that inflate to hundreds) or stored."""
    buf = io.BytesIO()
    tensor = torch.zeros(floats, dtype=torch.float64)
    torch.save({"key": "x", "model": {"tok.weight": tensor}, "selection": {}}, buf)
    del tensor
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    kind = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename), compress_type=kind)
    return path


_PEAK = """
import resource, sys
from passk_companion.model import config, pretrain
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    pretrain.load_or_pretrain(config.for_profile("smoke"), sys.argv[1], "cpu", progress=False)
    print("loaded")
except ValueError as err:
    print("refused:", err)
print("grew_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_a_decompression_bomb_is_refused_before_it_inflates(tmp_path):
    bomb = _bomb(tmp_path / "bomb.pt", 2**25, compress=True)  # 256 MiB in 0.3 MB
    assert bomb.stat().st_size < 2**20
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, str(bomb)], capture_output=True, text=True, timeout=120
    )
    out = proc.stdout
    assert "refused:" in out and str(bomb) in out, out + proc.stderr[-2000:]
    assert float(out.split("grew_mb")[1]) < 64, out  # nothing near 256 MiB was allocated
    big = _bomb(tmp_path / "big.pt", 2**17, compress=False)  # 1 MiB: more than a smoke tensor
    with pytest.raises(checkpoint.CheckpointError, match="declares a tensor of 1048576 bytes"):
        pretrain.load_or_pretrain(SMOKE, big, "cpu", progress=False, owned=False)


def test_wrong_shaped_tensors_give_one_clear_line(tmp_path, base_file, capsys):
    saved = checkpoint.load(base_file, {"key": str, "model": dict, "selection": dict})
    saved["model"]["tok.weight"] = saved["model"]["tok.weight"][:, :16].clone()  # 16 of 19 rows
    bad = checkpoint.save(tmp_path / "bad.pt", saved)
    assert cli.main([*TRAIN, "--out", str(tmp_path / "o"), "--base", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'tok.weight' has shape (1, 16, 32)" in err, err
    assert "not finite" not in err


def test_a_bad_rng_state_in_a_run_checkpoint_gives_one_clear_line(tmp_path, base_file, capsys):
    out = tmp_path / "run"
    assert cli.main([*TRAIN, "--out", str(out), "--base", str(base_file)]) == 0
    capsys.readouterr()
    ckpt = out / "checkpoint.pt"
    fields = {"key": str, "model": dict, "opt": dict, "gen": torch.Tensor}
    saved = checkpoint.load(ckpt, fields)
    for bad_state, what in ((torch.zeros(7, dtype=torch.uint8), "'gen'"),
                            (torch.zeros(5056), "'gen'")):  # fmt: skip
        saved["gen"] = bad_state
        checkpoint.save(ckpt, saved)
        assert cli.main([*TRAIN, "--out", str(out), "--base", str(base_file)]) == 2
        err = capsys.readouterr().err
        assert str(ckpt) in err and f"{what} is not a random generator state" in err, err
    saved["opt"]["exp_avg"][0] = torch.zeros(3)
    saved["gen"] = torch.Generator().get_state()
    checkpoint.save(ckpt, saved)
    assert cli.main([*TRAIN, "--out", str(out), "--base", str(base_file)]) == 2
    assert "optimizer exp_avg tensor of shape (3,)" in capsys.readouterr().err


def test_a_valid_base_in_a_read_only_folder_is_used_without_a_lock(tmp_path, base_file, capsys,
                                                                   monkeypatch):  # fmt: skip
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    base = shelf / "base.pt"
    base.write_bytes(base_file.read_bytes())
    shelf.chmod(0o555)
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):  # root ignores the mode: a read-only mount
        if Path(path).parent == shelf and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(files.os, "open", read_only)
    try:
        rc = cli.main([*TRAIN, "--out", str(tmp_path / "o"), "--base", str(base)])
        assert rc == 0, capsys.readouterr().err
        assert sorted(p.name for p in shelf.iterdir()) == ["base.pt"]  # no lock file made
        other = shelf / "absent.pt"  # nothing to read there: a clear refusal
        assert cli.main([*TRAIN, "--out", str(tmp_path / "o2"), "--base", str(other)]) == 2
        assert "its folder is not writable" in capsys.readouterr().err
    finally:
        shelf.chmod(0o755)
