"""`make lab` (python -m passk_companion.lab): the kernel registration, the command it runs, and a
real JupyterLab server on a free loopback port that lists the project's kernel."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from passk_companion import lab

ROOT = Path(__file__).resolve().parents[1]
STARTUP_S = 120  # a cold JupyterLab start on a busy 2-core machine takes ~10 s


def test_ensure_kernel_registers_once_inside_the_prefix(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    spec_dir = lab.ensure_kernel(tmp_path / "env")
    assert spec_dir == tmp_path / "env/share/jupyter/kernels/passk_companion"
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and spec["display_name"] == lab.DISPLAY_NAME
    assert list(home.iterdir()) == []  # nothing in the user's home
    stamp = (spec_dir / "kernel.json").stat().st_mtime_ns
    lab.ensure_kernel(tmp_path / "env")
    assert (spec_dir / "kernel.json").stat().st_mtime_ns == stamp  # already registered: untouched


def test_a_stale_kernel_is_replaced(tmp_path):
    spec_dir = lab.kernel_dir(tmp_path)
    spec_dir.mkdir(parents=True)
    stale = {"argv": ["/moved/venv/bin/python", "-m", "ipykernel_launcher"], "display_name": "x"}
    (spec_dir / "kernel.json").write_text(json.dumps(stale))
    assert not lab.kernel_is_current(spec_dir)
    lab.ensure_kernel(tmp_path)
    assert lab.kernel_is_current(spec_dir)
    (spec_dir / "kernel.json").write_text("{not json")
    assert not lab.kernel_is_current(spec_dir)


def test_lab_argv_roots_at_notebooks_and_allows_root_only_for_uid_0(tmp_path):
    user = lab.lab_argv(["--no-browser"], tmp_path, uid=1000, python="/env/python")
    default = "--MultiKernelManager.default_kernel_name=passk_companion"
    assert user == ["/env/python", "-m", "jupyterlab", f"--ServerApp.root_dir={tmp_path}", default,
                    "--no-browser"]  # fmt: skip
    root = lab.lab_argv([], tmp_path, uid=0)
    assert root[:2] == [sys.executable, "-m"] and root.count("--allow-root") == 1
    assert lab.lab_argv(["--allow-root"], tmp_path, uid=0).count("--allow-root") == 1


def test_lab_env_keeps_progress_bars_and_inline_figures():
    env = lab.lab_env({"TQDM_DISABLE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"})
    assert env == {"OMP_NUM_THREADS": "1"}


def test_stored_notebooks_name_the_project_kernel():
    names = {
        nb.name: nbformat.read(nb, as_version=4).metadata.get("kernelspec", {}).get("name")
        for nb in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    }
    assert names and set(names.values()) == {lab.KERNEL_NAME}, names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 -- loopback only
        return response.status, response.read()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def test_make_lab_serves_jupyterlab_with_the_project_kernel(tmp_path):
    """`python -m passk_companion.lab` on a free loopback port with a token: /lab answers with the
    widget manager loaded, the kernel list holds `passk_companion` (the default) running this
    interpreter, the root is notebooks/, a wrong token is refused; then the server is stopped."""
    port, token = _free_port(), secrets.token_hex(16)
    jupyter = {n: tmp_path / n for n in ("home", "config", "data", "runtime", "ipython")}
    for folder in jupyter.values():
        folder.mkdir()
    env = {
        **os.environ,
        "HOME": str(jupyter["home"]),  # nothing from (or into) the user's own Jupyter setup
        "JUPYTER_CONFIG_DIR": str(jupyter["config"]),
        "JUPYTER_DATA_DIR": str(jupyter["data"]),
        "JUPYTER_RUNTIME_DIR": str(jupyter["runtime"]),
        "IPYTHONDIR": str(jupyter["ipython"]),
        "TQDM_DISABLE": "1",
    }
    args = ["--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]  # fmt: skip
    log = tmp_path / "lab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "passk_companion.lab", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if _get(f"{base}/api/status", token)[0] == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab not up after {STARTUP_S} s:\n{log.read_text()}")
            time.sleep(0.5)
        status, page = _get(f"{base}/lab", token)
        assert status == 200 and b"<title>JupyterLab</title>" in page
        # the widget manager that draws tqdm.auto progress bars is among the lab's extensions
        assert b"@jupyter-widgets/jupyterlab-manager" in page
        listed = json.loads(_get(f"{base}/api/kernelspecs", token)[1])
        specs = listed["kernelspecs"]
        assert lab.KERNEL_NAME in specs and listed["default"] == lab.KERNEL_NAME, listed
        spec = specs[lab.KERNEL_NAME]["spec"]
        assert spec["argv"][0] == sys.executable and spec["display_name"] == lab.DISPLAY_NAME
        listing = json.loads(_get(f"{base}/api/contents", token)[1])["content"]
        stored = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
        assert stored and stored <= {item["name"] for item in listing}
        with pytest.raises(urllib.error.HTTPError, match="403"):
            _get(f"{base}/api/kernelspecs", "wrong-token")
    finally:
        _stop(proc)
    assert proc.returncode is not None
    user_specs = [p for f in ("home", "data") for p in jupyter[f].rglob("kernel.json")]
    assert user_specs == []  # the kernel it listed was the environment's, none was added per user


def test_tqdm_auto_draws_a_live_widget_in_the_lab_kernel(tmp_path):
    """In the `passk_companion` kernel with the environment `make lab` gives it (TQDM_DISABLE,
    exported by make, removed), `tqdm.auto` draws an ipywidgets bar, not text."""
    from jupyter_client.manager import start_new_kernel

    env = lab.lab_env({**os.environ, "IPYTHONDIR": str(tmp_path), "TQDM_DISABLE": "1"})
    km, kc = start_new_kernel(kernel_name=lab.KERNEL_NAME, startup_timeout=STARTUP_S, env=env)
    outputs: list[dict] = []
    try:
        code = "from tqdm.auto import tqdm\nfor _ in tqdm(range(3)): pass"
        reply = kc.execute_interactive(code, output_hook=outputs.append, timeout=STARTUP_S)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok"
    shown = [
        (msg["msg_type"], key)
        for msg in outputs
        if msg["msg_type"] in ("display_data", "stream")
        for key in msg["content"].get("data", {msg["content"].get("name"): None})
    ]
    assert ("display_data", "application/vnd.jupyter.widget-view+json") in shown, shown
    assert ("stream", "stderr") not in shown, shown  # no text bar
