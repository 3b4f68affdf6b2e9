"""`make lab`: JupyterLab on notebooks/ with the project's kernel.

    python -m passk_companion.lab [extra jupyter lab arguments]

1. Registers the ipykernel ``passk_companion`` ("Python (pass@k companion)") inside this environment
   (``<sys.prefix>/share/jupyter/kernels/passk_companion``, never in the user's home), unless it is
   already registered for this interpreter. The stored notebooks name that kernel, so "Run all"
   runs them in the pinned environment.
2. Replaces this process with ``python -m jupyterlab`` rooted at notebooks/, adding
   ``--allow-root`` when run as root (e.g. in a container). Progress bars are left on:
   ``TQDM_DISABLE`` (which ``make`` exports to keep bars out of stored outputs) and ``MPLBACKEND``
   (which would hide inline figures) are removed from the server's environment.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from passk_companion.runtime import notebooks_dir

__all__ = [
    "KERNEL_NAME",
    "DISPLAY_NAME",
    "kernel_dir",
    "kernel_is_current",
    "ensure_kernel",
    "lab_argv",
    "lab_env",
    "main",
]

KERNEL_NAME = "passk_companion"
DISPLAY_NAME = "Python (pass@k companion)"
# Set by the Makefile for papermill/nbval runs; an interactive session wants bars and figures.
_DROPPED_ENV = ("TQDM_DISABLE", "MPLBACKEND")


def kernel_dir(prefix: str | os.PathLike = sys.prefix) -> Path:
    """Where the kernelspec lives in the environment `prefix`."""
    return Path(prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME


def kernel_is_current(spec_dir: Path, python: str = sys.executable) -> bool:
    """True when `spec_dir`/kernel.json runs `python` under the project's display name."""
    try:
        spec = json.loads((spec_dir / "kernel.json").read_text())
    except (OSError, ValueError):
        return False
    argv = spec.get("argv") if isinstance(spec, dict) else None
    return bool(argv) and argv[0] == python and spec.get("display_name") == DISPLAY_NAME


def ensure_kernel(prefix: str | os.PathLike = sys.prefix) -> Path:
    """Register the ``passk_companion`` kernel for this interpreter inside `prefix` (idempotent: an
    up-to-date spec is left untouched, a stale one is replaced). Returns the spec folder."""
    spec_dir = kernel_dir(prefix)
    if kernel_is_current(spec_dir):
        return spec_dir
    from ipykernel.kernelspec import write_kernel_spec

    # What `python -m ipykernel install --sys-prefix --name passk_companion` writes, without going
    # through jupyter_client's KernelSpecManager (which creates ~/.ipython): staged, then moved into
    # place.
    spec_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=spec_dir.parent, prefix=f".{KERNEL_NAME}-") as tmp:
        staged = Path(tmp) / KERNEL_NAME
        write_kernel_spec(
            staged,
            overrides={"display_name": DISPLAY_NAME},
            python_arguments=["-Xfrozen_modules=off"],  # as ipykernel install does on CPython
        )
        shutil.rmtree(spec_dir, ignore_errors=True)
        staged.rename(spec_dir)
    return spec_dir


def lab_argv(
    extra: Sequence[str] = (),
    notebooks: Path | None = None,
    uid: int | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The JupyterLab command: this interpreter, rooted at `notebooks`, the project's kernel as the
    default, ``--allow-root`` when `uid` is 0; `extra` arguments come last, so they override the
    defaults."""
    notebooks = notebooks or notebooks_dir()
    argv = [
        python,
        "-m",
        "jupyterlab",
        f"--ServerApp.root_dir={notebooks}",
        f"--MultiKernelManager.default_kernel_name={KERNEL_NAME}",  # for new notebooks too
    ]
    if uid == 0 and "--allow-root" not in extra:
        argv.append("--allow-root")
    return argv + list(extra)


def lab_env(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without the variables that disable progress bars or inline figures."""
    return {k: v for k, v in environ.items() if k not in _DROPPED_ENV}


def main(argv: Sequence[str] | None = None) -> int:
    """Register the kernel, then exec JupyterLab (returns only on error)."""
    extra = list(sys.argv[1:] if argv is None else argv)
    notebooks = notebooks_dir()
    if not notebooks.is_dir():
        print(f"error: no notebooks folder at {notebooks}", file=sys.stderr)
        return 2
    spec = ensure_kernel()
    print(f"kernel {KERNEL_NAME!r} ({DISPLAY_NAME}): {spec}", file=sys.stderr)
    cmd = lab_argv(extra, notebooks, os.getuid())
    os.execve(cmd[0], cmd, lab_env(os.environ))
    return 1  # pragma: no cover -- execve does not return


if __name__ == "__main__":
    raise SystemExit(main())
