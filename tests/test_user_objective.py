"""A user's objective from end to end, as the README's "Add your own objective" describes it.

A throwaway package `mine-objectives` declares the module `mine_objectives` (the file
tests/mine_objectives.py, which registers the objective `mine`) in the entry-point group
`passk_companion.objectives`; it is built and installed (`pip install --no-deps
--no-build-isolation`) into a temporary venv that sees the project venv's packages. With it
installed, `mine` is in the registry, the harness checks it, `train --objective mine` runs, and
nbval of notebooks 02 and 03 passes on their stored outputs. The same class in a module that is
not installed reaches a sweep's workers (local processes and Ray) through `sweep --import
MODULE`. A plugin that fails to load is one line naming it. verl's `compute_advantage` with the
user's objective is in tests/integrations/test_verl.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

MODULE = (Path(__file__).with_name("mine_objectives.py")).read_text()  # registers `mine`


def _package(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """A source tree of a package `name` with `modules` (module name -> source) and entry points
    of the group passk_companion.objectives."""
    root.mkdir(parents=True)
    eps = "".join(f'{key} = "{value}"\n' for key, value in entry_points.items())
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "0.0.1"\n'
        f'[project.entry-points."passk_companion.objectives"]\n{eps}'
        f"[tool.setuptools]\npy-modules = {json.dumps(sorted(modules))}\n"
    )
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    return root


def _venv(root: Path, package: Path) -> Path:
    """A venv at `root` that sees the project venv's packages (a .pth file adds its site folder)
    with `package` installed into it; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    project = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "project_venv.pth").write_text(f"import site; site.addsitedir({project!r})\n")
    proc = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", str(package)],
        capture_output=True, text=True, env=_env(), cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return python


def _env(**extra: str) -> dict[str, str]:
    """The environment of a command: this one's, less PASSK_COMPANION_IMPORT and MPLBACKEND (the
    stored figures' outputs are those of the notebook backend), plus `extra`."""
    dropped = ("PASSK_COMPANION_IMPORT", "MPLBACKEND")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(TQDM_DISABLE="1", **extra)
    return env


def _run(python: Path | str, *args: object, cwd: Path | None = None, timeout: int = 300, **env):
    return subprocess.run(
        [str(python), *map(str, args)], capture_output=True, text=True, timeout=timeout,
        cwd=cwd, env=_env(**env),
    )  # fmt: skip


@pytest.fixture(scope="module")
def user_venv(tmp_path_factory) -> Path:
    """The python of a temporary venv with the package mine-objectives installed."""
    base = tmp_path_factory.mktemp("user")
    package = _package(
        base / "src", "mine-objectives", {"mine": "mine_objectives"}, {"mine_objectives": MODULE}
    )
    return _venv(base / "venv", package)


def test_an_installed_objective_is_in_the_registry_and_the_harness(user_venv):
    script = (
        "import json, torch\n"
        "from passk_companion import objectives\n"
        "from passk_companion.theory import exact, harness\n"
        "logits, correct = exact.logits_for_success(torch.tensor([0.2, 0.5]), 6, 2)\n"
        "rep = harness.check('mine', logits, correct, n=8, k=4, groups=4000, seed=0)\n"
        "print(json.dumps({'names': objectives.names(), 'errors': objectives.plugin_errors(),\n"
        "                  'unbiased_ok': bool(rep.unbiased_ok)}))\n"
    )
    proc = _run(user_venv, "-c", script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert "mine" in got["names"] and "pkpo_loo" in got["names"]
    assert got["errors"] == [] and got["unbiased_ok"] is True
    assert proc.stderr == ""


def test_train_runs_an_installed_objective(user_venv, tmp_path):
    proc = _run(user_venv, "-m", "passk_companion", "train", "--objective", "mine", "--profile",
                "smoke", "--steps", "2", "--quiet", "--out", tmp_path / "run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final" in json.loads(proc.stdout)
    assert (tmp_path / "run" / "metrics.csv").is_file()


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_sweep_import_reaches_the_workers(tmp_path, backend):
    if backend == "ray":
        pytest.importorskip("ray")
    user = tmp_path / "user"  # a module that is not installed, in the folder the command runs in
    user.mkdir()
    (user / "my_objectives.py").write_text(MODULE)
    grid = user / "grid.yaml"
    grid.write_text(
        yaml.safe_dump(
            {"profile": "smoke", "overrides": {"steps": 2},
             "grid": {"objective": ["mine", "pass1_reinforce"], "seed": [0]}}
        )
    )  # fmt: skip
    out = tmp_path / "sweep"
    command = ["-m", "passk_companion", "sweep", grid, "--backend", backend, "--workers", "2",
               "--out", out, "--quiet"]  # fmt: skip
    proc = _run(sys.executable, *command, cwd=user)
    assert proc.returncode == 2 and "unknown objective 'mine'" in proc.stderr, proc.stderr[-3000:]
    proc = _run(sys.executable, *command, "--import", "my_objectives", cwd=user, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    results = pd.read_csv(out / "results.csv")
    assert set(results.objective) == {"mine", "pass1_reinforce"}
    assert set(results.status) == {"done"}


def test_train_import_of_a_missing_module_is_one_line(tmp_path):
    proc = _run(sys.executable, "-m", "passk_companion", "train", "--import", "no_such_module_x",
                "--profile", "smoke", "--out", tmp_path / "o", "--quiet")  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "--import: cannot import 'no_such_module_x': ModuleNotFoundError" in proc.stderr


def test_a_broken_plugin_is_one_line_naming_it(tmp_path):
    broken = 'raise ImportError("needs the library frobnicate")\n'
    package = _package(
        tmp_path / "src", "broken-objectives",
        {"broken": "broken_objectives", "mine": "mine_objectives"},
        {"broken_objectives": broken, "mine_objectives": MODULE},
    )  # fmt: skip
    python = _venv(tmp_path / "venv", package)
    proc = _run(python, "-c", "from passk_companion import objectives; print(objectives.names())")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'mine'" in proc.stdout  # the other plugin still loads
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "objective plugin 'broken' (broken_objectives" in proc.stderr
    assert "ImportError: needs the library frobnicate" in proc.stderr
    proc = _run(python, "-m", "passk_companion", "train", "--objective", "broken",
                "--profile", "smoke", "--out", tmp_path / "o", "--quiet")  # fmt: skip
    assert proc.returncode == 2
    assert "unknown objective 'broken'" in proc.stderr and "frobnicate" in proc.stderr
    assert "Traceback" not in proc.stderr


NOTEBOOKS = [ROOT / "notebooks" / "02_sampled_gradients.ipynb",
             ROOT / "notebooks" / "03_exploration_collapse.ipynb"]  # fmt: skip


def test_notebooks_02_and_03_are_unchanged_with_the_objective_installed(user_venv, tmp_path):
    proc = _run(
        user_venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "--nbval",
        "--nbval-current-env", "--nbval-sanitize-with", ROOT / "tests" / "nbval_sanitize.cfg",
        "-o", "testpaths=", *NOTEBOOKS, cwd=ROOT, timeout=900,
        PASSK_COMPANION_RESULTS=str(tmp_path / "results"),
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-5000:]
