"""Reproducibility: threads, seeds and where results go.

Stored notebook outputs are compared byte for byte by nbval, so a run must not depend on the
thread count (parallel float reductions change the last bits) or on unseeded randomness.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

from passk_companion.files import writable_dir

__all__ = ["setup", "results_dir", "repo_root", "notebooks_dir", "progress", "shown_path"]


def setup(seed: int = 0, threads: int = 1) -> np.random.Generator:
    """Pin torch to `threads` threads, seed python/numpy/torch, return a numpy Generator."""
    import torch  # imported here so that light commands (reports, paths) do not load torch

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 -- legacy global state for third-party code only
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def progress(iterable, **kwargs):
    """A progress bar over `iterable`: a live widget in JupyterLab, text in a terminal
    (tqdm.auto), and none at all when $TQDM_DISABLE is set (make execute, nbval, the tests).

    tqdm.auto's notebook bar ignores $TQDM_DISABLE (it passes disable=False explicitly), so the
    variable is read here and passed on."""
    from tqdm.auto import tqdm

    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false"):
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


def repo_root() -> Path | None:
    """The checkout root when the package is installed in editable (src/) layout, else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def shown_path(path: str | os.PathLike) -> str:
    """`path` as a stored output may print it: relative to the checkout when inside it (an
    absolute path names this machine's folders, and nbval on another checkout would differ),
    else as given."""
    root = repo_root()
    resolved = Path(path).resolve()
    if root is not None and resolved.is_relative_to(root):
        return resolved.relative_to(root).as_posix()
    return str(path)


def notebooks_dir() -> Path:
    """notebooks/ of the checkout we run in (the current folder, as `make` runs it), else of the
    checkout the package is installed from; ValueError when there is neither."""
    here = Path.cwd() / "notebooks"
    if here.is_dir() and (Path.cwd() / "params").is_dir():
        return here
    root = repo_root()
    if root is None or not (root / "notebooks").is_dir():
        raise ValueError("the notebooks live in the source checkout: run from the repository")
    return root / "notebooks"


def results_dir() -> Path:
    """Where figures and claims.csv go: $PASSK_COMPANION_RESULTS, else <repo>/results, else
    ./results.

    Relative values of $PASSK_COMPANION_RESULTS are taken from the repository root (notebooks run
    with their own folder as cwd), so `make` can pass paths like build/test-results. The folder is
    created if missing; a file, a system folder (``/``, ``/etc``) or a folder that cannot be
    written raises ValueError naming PASSK_COMPANION_RESULTS (passk_companion.files.writable_dir).
    """
    env = os.environ.get("PASSK_COMPANION_RESULTS")
    root = repo_root()
    if env:
        path = Path(env)
        if not path.is_absolute():
            path = (root or Path.cwd()) / path
        return writable_dir(path, "PASSK_COMPANION_RESULTS")
    return writable_dir((root or Path.cwd()) / "results", "the results folder")
