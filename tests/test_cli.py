"""The command line: results folders are never system folders, sizes the profile cannot use are
refused with the parameter's name before any work, a planted lock link is refused by `sweep`
too, and user errors are one line, never a traceback (--device meta, PASSK_COMPANION_RESULTS set
to a file)."""

import os
import resource
import subprocess
import sys
import time

import pytest
import yaml

from passk_companion import cli, runtime


def _companion(*args, env=None, timeout=60, memory=3 * 2**30):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run(
        [sys.executable, "-m", "passk_companion", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, preexec_fn=limit,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize("command", ["report", "html"])
def test_system_folders_are_refused_as_results_folders(tmp_path, command):
    for env, args, named in (
        (
            {"PASSK_COMPANION_RESULTS": "/"},
            [],
            "PASSK_COMPANION_RESULTS / is the system or home folder /",
        ),
        ({}, ["--results", "../../../../../../../../etc"], "system or home folder /etc"),
        ({}, ["--results", "/usr/share"], "is in the system or home folder /usr"),
    ):
        proc = _companion(command, *args, env=env)
        assert proc.returncode == 2 and named in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.count("\n") == 1
    proc = _companion("reproduce", "--nb", "01", "--results", "/")
    assert proc.returncode == 2 and "RESULTS / is the system or home folder /" in proc.stderr


def test_companion_results_set_to_a_file_is_one_line(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for command in ("report", "html"):
        proc = _companion(command, env={"PASSK_COMPANION_RESULTS": str(afile)})
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"PASSK_COMPANION_RESULTS {afile} exists and is not a folder" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    monkeypatch.setenv("PASSK_COMPANION_RESULTS", str(afile))
    with pytest.raises(ValueError, match="PASSK_COMPANION_RESULTS"):
        runtime.results_dir()  # what a notebook calls
    assert afile.read_text() == "x"


def test_train_n_beyond_what_the_profile_can_use_is_refused_at_once(tmp_path):
    t0 = time.perf_counter()
    proc = _companion("train", "--profile", "ci", "--n", "4096", "--out", tmp_path / "o",
                      "--quiet", timeout=90)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "batch_prompts x n = 16 x 4096 rollouts would need about" in proc.stderr
    assert "lower n" in proc.stderr and "Traceback" not in proc.stderr
    assert time.perf_counter() - t0 < 60 and not (tmp_path / "o" / "base.pt").exists()
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"profile": "ci", "grid": {"n": [16, 4096]}}))
    proc = _companion("sweep", grid, "--out", tmp_path / "s", "--quiet")
    assert proc.returncode == 2 and "16 x 4096 rollouts" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("device", ["meta", "mps", "cuda:x", "cpu:0", ""])
def test_unusable_devices_are_one_line(tmp_path, capsys, device):
    out = tmp_path / "o"
    rc = cli.main(["train", "--profile", "smoke", "--steps", "2", "--quiet", "--out", str(out),
                   "--device", device])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "device" in err and not (out / "base.pt").exists()


def test_a_planted_lock_link_is_refused_by_the_sweep(tmp_path, capsys, planted_lock):
    out, victim = planted_lock
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"profile": "smoke", "overrides": {"steps": 2}}))
    assert cli.main(["sweep", str(grid), "--out", str(out), "--quiet"]) == 2
    assert "is a symbolic link: refusing to use it as a lock" in capsys.readouterr().err
    assert victim.read_text() == "precious" and not (out / "bases").exists()


def test_resume_keeps_the_trials_of_notebooks_that_run_sweeps_only():
    from passk_companion import reproduce

    root = runtime.repo_root()
    nb04 = next((root / "notebooks").glob("04_*.ipynb"))
    nb01 = next((root / "notebooks").glob("01_*.ipynb"))
    assert reproduce.RESUME_PARAMETER not in reproduce._params("full", nb04, root)
    resumed = reproduce._params("full", nb04, root, resume=True)
    assert resumed[reproduce.RESUME_PARAMETER] is True
    assert resumed["profile"] == "full"  # the profile file's values stay
    assert reproduce.RESUME_PARAMETER not in reproduce._params("ci", nb01, root, resume=True)


def test_a_resume_value_other_than_0_or_1_is_refused():
    proc = _companion("reproduce", "--nb", "01", "--resume", "yes")
    assert proc.returncode == 2 and "--resume: invalid choice: 'yes'" in proc.stderr
