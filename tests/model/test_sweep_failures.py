"""The sweep's failures: names that stay inside --out, trial folders that are links, only our own
temporaries, grid files that are not regular files, alias bombs, the size of the product,
orphans, dead workers and Ray, finished trials that no longer match done.json, equal trials, and
one-line errors."""

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from passk_companion import cli, files
from passk_companion.model import grid, sweep

TINY = {"profile": "smoke", "overrides": {"steps": 2, "eval_every": 2}, "grid": {"seed": [0, 1]}}


def _grid_file(tmp_path: Path, data: dict, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _limited(memory: int = 3 * 2**30):
    """A subprocess preexec_fn: at most `memory` bytes of address space (so that a bomb fails
    fast instead of filling the shared machine)."""
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def _sweep_cli(*args, timeout=60, memory=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "passk_companion", "sweep", *map(str, args), "--quiet"],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
        preexec_fn=_limited(memory) if memory else None,
    )  # fmt: skip


# --- names and folders ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "bases", "results.csv", "Bases", "../x", "a/b"])
def test_variant_names_never_leave_or_collide_with_the_sweep_folder(tmp_path, capsys, name):
    data = {"profile": "smoke", "variants": [{"name": name, "objective": "pass1_reinforce"}]}
    with pytest.raises(ValueError, match=r"variants\[0\]\.name"):
        sweep.parse_grid(data)
    out = tmp_path / "runs" / "out"
    assert cli.main(["sweep", str(_grid_file(tmp_path, data)), "--out", str(out), "--quiet"]) == 2
    assert "variants[0].name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]  # nothing written


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-trial sweep (copied by the tests that damage it)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    result = sweep.run(sweep.parse_grid(TINY), out, workers=1, progress=False)
    assert result.ok and result.ran == 2
    return out


def _copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    for lock in out.rglob("*.lock"):
        lock.unlink()
    return out


def test_a_trial_folder_that_is_a_link_is_not_written_through(tmp_path, finished):
    out = _copy(finished, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(out / "seed=1")
    (out / "seed=1").symlink_to(elsewhere)
    # a user's files beside the trials, named like temporaries (ours or not): never deleted
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    user_files = [out / f".draft.txt.{dead}.autosave.tmp",
                  out / "notes" / f".x.csv.{dead}.abcdefgh.passk_companion.tmp"]  # fmt: skip
    for path in user_files:
        path.parent.mkdir(exist_ok=True)
        path.write_text("mine")
    result = sweep.run(sweep.parse_grid(TINY), out, workers=1, progress=False)
    assert not result.ok and list(result.failed) == ["seed=1"]
    assert "symbolic link" in result.failed["seed=1"]
    assert not list(elsewhere.iterdir()), "wrote through the link"
    assert all(p.read_text() == "mine" for p in user_files)
    (out / "seed=1").unlink()
    bases = out / "bases"
    shutil.move(bases, tmp_path / "real-bases")
    bases.symlink_to(tmp_path / "real-bases")
    with pytest.raises(ValueError, match="bases folder .* is a symbolic link"):
        sweep.run(sweep.parse_grid(TINY), out, workers=1, progress=False)


# --- grid files: regular, small, without aliases --------------------------------------------


def test_a_grid_file_must_be_a_regular_file(tmp_path):
    fifo = tmp_path / "grid.fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a character device")):
        proc = _sweep_cli(path, "--out", tmp_path / "out", memory=3 * 2**30)  # never hangs
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"grid file {path} is not a regular file ({kind})" in proc.stderr
        assert "Traceback" not in proc.stderr
    big = tmp_path / "big.yaml"
    big.write_text("profile: smoke\n" + "#" * grid.MAX_GRID_BYTES)
    with pytest.raises(ValueError, match="larger than"):
        sweep.load_grid(big)


def _laughs(levels: int = 9) -> str:
    """A flow list of YAML anchors, each holding nine aliases of the one before: a few hundred
    bytes that expand to 9**levels values."""
    items = ["&a0 [" + ", ".join(["cpu"] * 9) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize(
    "where",
    [
        "grid:\n  device: {bomb}\n",
        "overrides:\n  objective_params: {{generator: {bomb}}}\n",
        "overrides:\n  objective: grpo\n  objective_params: {{eps: {bomb}}}\n",
    ],
)
def test_yaml_alias_bombs_are_refused_before_any_work(tmp_path, where):
    path = tmp_path / "bomb.yaml"
    path.write_text("profile: smoke\n" + where.format(bomb=_laughs()))
    assert len(path.read_bytes()) < 700  # 9**9 = 387 million values
    t0 = time.perf_counter()
    proc = _sweep_cli(path, "--out", tmp_path / "out", memory=3 * 2**30, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot read grid file" in proc.stderr
    assert "aliases (*name) are not allowed (line " in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line, no traceback
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "out").exists()


def test_a_parsed_grid_that_repeats_one_list_is_bounded():
    level = ["cpu"] * 9
    for _ in range(8):
        level = [level] * 9  # Python's aliases: 9**9 values reachable, a few KB in memory
    with pytest.raises(ValueError, match="more than 100000 values"):
        sweep.parse_grid({"profile": "smoke", "grid": {"device": level}})
    with pytest.raises(ValueError, match="more than 100000 values"):
        sweep.parse_grid(
            {"profile": "smoke", "overrides": {"objective_params": {"generator": level}}}
        )


def test_the_product_is_counted_before_it_is_built(tmp_path, capsys):
    data = {"profile": "smoke", "grid": {"seed": list(range(1000)), "lr": [1e-4 * (i + 1) for i in
            range(1000)], "entropy": [0.001 * i for i in range(1000)]}}  # fmt: skip
    t0 = time.perf_counter()
    path = _grid_file(tmp_path, data)
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "expands to 1000000000 trials, more than the limit of 10000" in err
    assert "--max-trials" in err and time.perf_counter() - t0 < 20


# --- equal trials and injective names -------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"grid": {"seed": [0, 0, 0]}}, "grid.seed repeats a value"),
        ({"grid": {"lr": [1, 1.0]}}, "are the same run"),
        (
            {"variants": [{"name": "a", "objective": "grpo"}, {"name": "b", "objective": "grpo"}]},
            "the trials 'a' and 'b' are the same run",
        ),  # fmt: skip
        (
            {
                "overrides": {"graph": 0},
                "grid": {"base": [0]},
                "variants": [{"name": "a"}, {"name": "b", "seed": 0}],
            },
            "are the same run",
        ),  # fmt: skip
    ],
)
def test_equal_trials_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_grid({"profile": "smoke", **data})


def test_folder_names_are_injective():
    digest_form = grid._trial_name("", {"device": "cuda:1"}).split("=", 1)[1]
    assert digest_form.startswith("cuda-1-h")
    # a plain value spelt like another value's digest form gets a digest of its own
    assert grid._trial_name("", {"objective": digest_form}) != f"objective={digest_form}"
    names = {grid._trial_name("v", {"x": v}) for v in ("cuda:1", digest_form, "cuda-1", 1, "1.0")}
    assert len(names) == 5
    assert grid._trial_name("rloo", {"seed": 0}) == "rloo__seed=0"  # plain names unchanged


# --- finished trials whose files no longer match done.json ----------------------------------


@pytest.mark.parametrize("damage", ["truncate", "empty", "list", "garbage", "no-checksums"])
def test_a_damaged_finished_trial_is_run_again_and_named(tmp_path, finished, damage):
    out = _copy(finished, tmp_path)
    trial = out / "seed=0"
    before = pd.read_csv(finished / "results.csv")
    if damage == "truncate":
        metrics = trial / "metrics.csv"
        metrics.write_bytes(metrics.read_bytes()[: len(metrics.read_bytes()) // 2])
    elif damage == "empty":
        (trial / "metrics.csv").write_text("")
    elif damage == "list":
        (trial / "done.json").write_text("[1, 2]")
    elif damage == "garbage":
        (trial / "done.json").write_text("{not json")
    else:
        done = json.loads((trial / "done.json").read_text())
        del done["sha256"]
        (trial / "done.json").write_text(json.dumps(done))
    result = sweep.run(sweep.parse_grid(TINY), out, workers=1, progress=False)
    assert result.ok and (result.ran, result.skipped) == (1, 1)
    assert list(result.rerun) == ["seed=0"], result.summary()
    named = "metrics.csv" if damage in ("truncate", "empty") else "done.json"
    assert named in result.rerun["seed=0"] and f"RE-RUN seed=0: {trial}" in result.summary()
    after = pd.read_csv(out / "results.csv")
    cols = [c for c in before.columns if c not in sweep.TIMING_COLUMNS]
    pd.testing.assert_frame_equal(after[cols], before[cols])  # every row is back


def test_an_unreadable_metrics_file_fails_the_trial_naming_it(tmp_path, finished):
    out = _copy(finished, tmp_path)
    (out / "seed=1" / "metrics.csv").write_text("")
    trial = sweep.parse_grid(TINY).trials()[1]
    frame = sweep._rows(trial, out / "seed=1", {"status": "done", "error": ""})
    assert frame.status.tolist() == ["failed"]
    assert f"cannot read {out / 'seed=1' / 'metrics.csv'}" in frame.error.iloc[0]


# --- one-line errors ------------------------------------------------------------------------


def test_a_full_disk_while_writing_results_csv_is_one_line(tmp_path, finished, capsys,
                                                           monkeypatch):  # fmt: skip
    out = _copy(finished, tmp_path)
    real_fsync = os.fsync

    def full(fd):
        if ".results.csv." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", full)
    rc = cli.main(["sweep", str(_grid_file(tmp_path, TINY)), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert f"cannot write {out / 'results.csv'}" in err and "No space left on device" in err
    assert not [p for p in out.iterdir() if p.name.startswith(".results.csv.")]


def test_the_sweep_never_suggests_a_fresh_flag_it_does_not_have(tmp_path, finished):
    out = _copy(finished, tmp_path)
    (out / "seed=0" / "done.json").unlink()
    (out / "seed=0" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = sweep.run(sweep.parse_grid(TINY), out, workers=1, progress=False)
    error = result.failed["seed=0"]
    assert "checkpoint.pt" in error and "delete it" in error and "--fresh" not in error
    base = next((out / "bases").glob("*.pt"))
    saved = base.read_bytes()
    base.write_bytes(saved[:100])
    (out / "seed=0" / "checkpoint.pt").unlink()
    with pytest.raises(ValueError, match="pretraining the base failed") as err:
        sweep.run(sweep.parse_grid(TINY), out, workers=1, progress=False)
    assert str(base) in str(err.value) and "--fresh" not in str(err.value)


# --- lifecycles: orphans, a dead worker, Ray --------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, start time) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(fields[1]), fields[0], fields[19])
    return table


def _descendants(root: int) -> dict[int, str]:
    """The processes below `root` (by parent pid, transitively): pid -> start time."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = table[child][2]
            todo.append(child)
    return found


def _still_running(snapshot: dict[int, str]) -> list[int]:
    """The pids of `snapshot` that still run (the same process: same start time, not a
    zombie)."""
    table = _proc_table()
    return [p for p, start in snapshot.items()
            if p in table and table[p][2] == start and table[p][1] not in "ZX"]  # fmt: skip


def _holders(out: Path, trials: list[str]) -> dict[str, int]:
    """trial -> pid of the live process that holds its folder's lock (written in the .lock)."""
    holders = {}
    for name in trials:
        with contextlib.suppress(OSError, ValueError):
            pid = int((out / name / ".lock").read_text().strip())
            if _still_running({pid: _proc_table()[pid][2]}):
                holders[name] = pid
    return holders


def _wait_for(predicate, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def _start_sweep(tmp_path: Path, data: dict, *args) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "passk_companion", "sweep", str(_grid_file(tmp_path, data)),
           "--out", str(out), "--quiet", *args]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out


LONG = {"profile": "smoke", "overrides": {"steps": 40, "eval_every": 20}}


def test_a_killed_driver_leaves_no_process_behind_and_a_rerun_resumes(tmp_path):
    data = {**LONG, "grid": {"seed": [0, 1]}}
    driver, out = _start_sweep(tmp_path, data, "--workers", "2")
    try:
        holders = _wait_for(lambda: len(_holders(out, ["seed=0", "seed=1"])) == 2 and
                            _holders(out, ["seed=0", "seed=1"]), 120)  # fmt: skip
        assert holders, driver.communicate(timeout=60)
        snapshot = _descendants(driver.pid)
        assert set(holders.values()) <= set(snapshot)  # the workers are the driver's own
        driver.kill()
        driver.wait()
        left = _wait_for(lambda: not _still_running(snapshot), 10, 0.1)
        assert left, f"still running 10 s after SIGKILL: {_still_running(snapshot)}"
    finally:
        driver.kill()
    rerun = _sweep_cli(_grid_file(tmp_path, data), "--workers", "2", "--out", out, timeout=180)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    assert "2 ran, 0 already done, 0 failed" in rerun.stdout  # no lock of the dead blocked it
    assert set(pd.read_csv(out / "results.csv").status) == {"done"}


def test_sigterm_ends_the_workers_too(tmp_path):
    data = {**LONG, "grid": {"seed": [0]}}
    driver, out = _start_sweep(tmp_path, data, "--workers", "1")
    try:
        assert _wait_for(lambda: _holders(out, ["seed=0"]), 120), driver.communicate(timeout=60)
        snapshot = _descendants(driver.pid)
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=30)
        assert driver.returncode == 128 + signal.SIGTERM
        assert "interrupted (SIGTERM)" in err and "Traceback" not in err, err
        assert _wait_for(lambda: not _still_running(snapshot), 10, 0.1)
    finally:
        driver.kill()


def test_one_killed_worker_fails_only_its_trial(tmp_path):
    data = {**LONG, "grid": {"seed": [0, 1, 2]}}
    driver, out = _start_sweep(tmp_path, data, "--workers", "2", "--ensemble", "1")
    try:
        holders = _wait_for(lambda: _holders(out, ["seed=0"]), 120)
        assert holders, driver.communicate(timeout=60)
        os.kill(holders["seed=0"], signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=180)
    finally:
        driver.kill()
    assert driver.returncode == 1, stdout + stderr[-3000:]
    assert "3 trials: 3 ran, 0 already done, 1 failed" in stdout, stdout
    assert "FAILED seed=0: its worker process died (signal 9" in stdout
    status = pd.read_csv(out / "results.csv").groupby("trial").status.first().to_dict()
    assert status == {"seed=0": "failed", "seed=1": "done", "seed=2": "done"}  # the pool went on


def test_a_killed_worker_fails_the_unfinished_trials_of_its_ensemble_only(tmp_path):
    """Two trials in one ensemble: the short one finishes, then the ensemble's worker is killed.
    The finished one stays done (its done.json), the other fails; the third trial (another job)
    goes on."""
    data = {**LONG, "variants": [{"name": "short", "steps": 2, "eval_every": 2},
                                 {"name": "long", "steps": 2000},
                                 {"name": "other", "seed": 5}]}  # fmt: skip
    driver, out = _start_sweep(tmp_path, data, "--workers", "2", "--ensemble", "2")
    try:
        assert _wait_for(lambda: (out / "short" / "done.json").exists(), 120), driver.communicate(
            timeout=60
        )
        holders = _wait_for(lambda: _holders(out, ["long"]), 60)
        assert holders, driver.communicate(timeout=60)
        os.kill(holders["long"], signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=180)
    finally:
        driver.kill()
    assert driver.returncode == 1, stdout + stderr[-3000:]
    status = pd.read_csv(out / "results.csv").groupby("trial").status.first().to_dict()
    assert status == {"short": "done", "long": "failed", "other": "done"}
    assert "FAILED long: its worker process died (signal 9" in stdout, stdout


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_local_ray_is_stopped_with_its_driver(tmp_path, how):
    data = {**LONG, "grid": {"seed": [0]}}
    driver, out = _start_sweep(tmp_path, data, "--backend", "ray", "--workers", "1")
    try:
        assert _wait_for(lambda: _holders(out, ["seed=0"]), 120), driver.communicate(timeout=60)
        snapshot = _descendants(driver.pid)
        assert len(snapshot) >= 5  # Ray's own processes (GCS, raylet, agents), its worker ...
        driver.send_signal(how)
        _, err = driver.communicate(timeout=60)
        assert driver.returncode == (128 + how if how == signal.SIGTERM else -how), err[-3000:]
        left = _wait_for(lambda: not _still_running(snapshot), 10, 0.2)
        assert left, f"Ray processes still running 10 s later: {_still_running(snapshot)}"
    finally:
        driver.kill()


class _FlakyRay:
    """Stands in for the ray module's init and shutdown: the first `failures` starts fail the
    way a raylet that misses the GCS's deadline does."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, []

    def init(self, **kwargs):
        self.calls.append("init")
        if len(self.calls) // 2 < self.failures:
            raise RuntimeError("Failed to register worker: raylet failed to startup")

    def shutdown(self):
        self.calls.append("shutdown")


def test_a_local_ray_that_misses_its_start_is_tried_once_more(capsys):
    from passk_companion.model import backends

    once = _FlakyRay(failures=1)
    backends._start_local_ray(once, 2, {})
    assert once.calls == ["init", "shutdown", "init"]
    assert "did not start (Failed to register worker" in capsys.readouterr().err
    always = _FlakyRay(failures=5)
    with pytest.raises(ValueError, match="did not start in 2 tries") as err:
        backends._start_local_ray(always, 2, {})
    assert "\n" not in str(err.value) and always.calls.count("init") == 2
