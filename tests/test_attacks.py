"""Attacks and accidents: crafted checkpoints, shell injection through make variables, two runs
into one folder, kills mid-write, bad flags and bad output folders. Each test failed on the code
before the hardening issue."""

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from passk_companion import cli, files
from passk_companion.model import checkpoint, config, pretrain

ROOT = Path(__file__).resolve().parents[1]
SMOKE = config.for_profile("smoke")
SMOKE_ARGS = ["train", "--profile", "smoke", "--steps", "2", "--quiet"]


class _RunsCode:
    """A pickle whose loading runs a shell command (what a crafted checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    marker = tmp_path / "pwned"
    files["crafted pickle"] = tmp_path / "crafted.pt"
    torch.save({"key": "x", "model": _RunsCode(marker)}, files["crafted pickle"])
    files["raw pickle"] = tmp_path / "raw.pt"
    files["raw pickle"].write_bytes(pickle.dumps(_RunsCode(marker)))
    good = tmp_path / "good.pt"
    torch.save({"key": "x", "model": {"w": torch.ones(3)}}, good)
    files["truncated"] = tmp_path / "truncated.pt"
    files["truncated"].write_bytes(good.read_bytes()[:40])
    files["random bytes"] = tmp_path / "random.pt"
    files["random bytes"].write_bytes(os.urandom(256))
    files["a saved tensor"] = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), files["a saved tensor"])
    files["empty"] = tmp_path / "empty.pt"
    files["empty"].write_bytes(b"")
    return files


def test_no_checkpoint_file_runs_code_or_crashes_unclearly(tmp_path, capsys):
    for what, path in _bad_files(tmp_path).items():
        out = tmp_path / f"out-{path.stem}"
        # as a named --base file
        rc = cli.main([*SMOKE_ARGS, "--out", str(out), "--base", str(path)])
        err = capsys.readouterr().err
        # none of them is a checkpoint of ours, which --fresh would refuse to overwrite
        assert rc == 2 and str(path) in err and "name another --base" in err, (what, err)
        assert "--fresh" not in err, (what, err)
        # as the run's own checkpoint
        out.mkdir(exist_ok=True)
        shutil.copy(path, out / "checkpoint.pt")
        base = tmp_path / "base-ok.pt"
        rc = cli.main([*SMOKE_ARGS, "--out", str(out), "--base", str(base)])
        err = capsys.readouterr().err
        assert rc == 2 and "checkpoint.pt" in err and "--fresh" in err, (what, err)
    assert not (tmp_path / "pwned").exists(), "loading a checkpoint ran code"


def test_fresh_recovers_from_a_bad_base_file(tmp_path, capsys):
    bad = tmp_path / "base.pt"
    checkpoint.save(bad, {"key": 1, "model": {"w": torch.ones(2)}})  # ours, but not a base
    assert cli.main([*SMOKE_ARGS, "--out", str(tmp_path / "o"), "--base", str(bad)]) == 2
    capsys.readouterr()
    assert cli.main([*SMOKE_ARGS, "--out", str(tmp_path / "o"), "--base", str(bad), "--fresh"]) == 0
    assert pretrain.base_selection(bad)["step"] >= 1  # a real base now


def test_checkpoints_keep_plain_data_and_load_on_the_cpu(tmp_path):
    with pytest.raises(TypeError, match="plain data"):
        checkpoint.save(tmp_path / "x.pt", {"bad": object()})
    gen = torch.Generator().manual_seed(3)
    checkpoint.save(tmp_path / "ok.pt", {"gen": gen.get_state(), "rows": [{"a": 1.0}]})
    loaded = checkpoint.load(tmp_path / "ok.pt", {"gen": torch.Tensor, "rows": list})
    assert loaded["gen"].device.type == "cpu"
    restored = torch.Generator().manual_seed(0)
    restored.set_state(loaded["gen"])
    assert torch.equal(torch.rand(3, generator=restored), torch.rand(3, generator=gen))


def test_a_named_base_of_another_configuration_is_never_overwritten(tmp_path, capsys):
    base = tmp_path / "shared.pt"
    pretrain.load_or_pretrain(SMOKE, base, "cpu", progress=False)
    before = base.read_bytes()
    argv = ["train", "--profile", "ci", "--steps", "1", "--quiet", "--base", str(base)]
    t0 = time.perf_counter()
    assert cli.main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 30  # refused before any pretraining
    assert base.read_bytes() == before


def test_a_second_run_into_the_same_folder_fails_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from passk_companion import files\n"
            "with files.exclusive(sys.argv[1]):\n"
            "    print('held', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        assert cli.main([*SMOKE_ARGS, "--out", str(out)]) == 2
        assert time.perf_counter() - t0 < 10
        err = capsys.readouterr().err
        assert "another run is using" in err and str(holder.pid) in err
        assert not (out / "base.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    with files.exclusive(out), files.exclusive(out):  # free again, and re-entrant
        pass


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--entropy", "nan"), ("--entropy", "inf"), ("--lr", "inf"), ("--lr", "nan")],
)
def test_non_finite_flags_are_refused_before_any_work(tmp_path, capsys, flag, value):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exc:
        cli.main([*SMOKE_ARGS, "--out", str(out), flag, value])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("kind", ["file", "empty", "unwritable"])
def test_bad_output_folders_are_refused_before_any_work(tmp_path, capsys, kind):
    if kind == "file":
        out = tmp_path / "afile"
        out.write_text("x")
    elif kind == "empty":
        out = ""
    else:
        out = "/proc/companion-cannot-write-here"
    assert cli.main([*SMOKE_ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err
    assert not list(Path.cwd().glob("base.pt"))


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".metrics.csv.{dead.pid}.abc12345.passk_companion.tmp"
    live = tmp_path / f".metrics.csv.{os.getpid()}.def45678.passk_companion.tmp"
    stale.write_text("half")
    live.write_text("in progress")
    assert files.remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and not stale.exists()


def _make(*args, cwd=ROOT, timeout=300, env=None):
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize(
    "assignment",
    [
        "PROFILE=$$(touch {m})",
        "PROFILE=`touch {m}`",
        "PROFILE=ci;touch {m}",
        "NB=$$(touch {m})",
        "NB=01`touch {m}`",
        "RESULTS=a;touch {m};echo",
        "RESULTS=$$(touch {m})",
    ],
)
def test_make_variables_are_never_executed_by_the_shell(tmp_path, assignment):
    marker = tmp_path / "injected"
    proc = _make("reproduce", assignment.format(m=marker), "NB=zz-no-such-notebook")
    if assignment.startswith("NB="):
        proc = _make("reproduce", assignment.format(m=marker))
    assert proc.returncode != 0
    assert not marker.exists(), proc.stdout + proc.stderr
    assert "error:" in proc.stderr


def test_make_reproduce_with_an_unknown_notebook_fails_and_lists_them():
    proc = _make("reproduce", "NB=99")
    assert proc.returncode != 0
    assert "NB='99' matches no notebook" in proc.stderr and "01_theorem_3_1_symbolic" in proc.stderr


def test_a_results_path_that_is_a_file_is_refused(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = _make("reproduce", "NB=01", f"RESULTS={afile}")
    assert proc.returncode != 0 and "is not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_makefile_installs_no_system_packages():
    text = (ROOT / "Makefile").read_text()
    for word in ("apt-get", "apt ", "sudo", "brew ", "dnf ", "yum "):
        assert word not in text


def test_reproduce_into_an_absolute_folder_from_a_checkout_with_a_space(tmp_path):
    """make reproduce NB=01 RESULTS=/abs/path, run in a copy of the checkout whose path has a
    space; a SIGKILL in the middle leaves no half-executed notebook where html would find it."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    copy = tmp_path / "a checkout"
    for name in tracked:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)  # keep mtimes: the stamp stays newer
    venv = ROOT / ".venv"
    keep = f"--old-file={venv / '.deps-installed'}"  # never reinstall the shared venv from the copy
    results = tmp_path / "abs results"
    env = {**os.environ, "PASSK_COMPANION_RESULTS": ""}
    env.pop("PASSK_COMPANION_RESULTS")
    # first a run that is killed mid-notebook
    proc = subprocess.Popen(
        ["make", keep, "reproduce", "NB=01", f"RESULTS={results}", f"VENV={venv}"],
        cwd=copy,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 120
    # wait for papermill's temporary output (the kernel has started), then kill mid-notebook
    while time.time() < deadline and not list((results / "notebooks").glob(".*.tmp*")):
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (results / "notebooks" / "01_theorem_3_1_symbolic.ipynb").exists()
    # then a complete run, which also clears the dead run's temporary file
    done = _make(
        keep, "reproduce", "NB=01", f"RESULTS={results}", f"VENV={venv}", cwd=copy, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (results / "notebooks" / "01_theorem_3_1_symbolic.ipynb").is_file()
    assert (results / "REPORT.md").is_file() and (results / "claims").is_dir()
    assert not list((results / "notebooks").glob(".*.tmp*"))
    assert not (copy / "abs results").exists() and not (copy / str(results).lstrip("/")).exists()
