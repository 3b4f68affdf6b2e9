"""Execute the notebooks with papermill, atomically: what `make reproduce` and `make execute` run.

* ``reproduce``: each selected notebook runs with the profile's parameter file
  (params/<profile>/<stem>.yaml) into a temporary file next to results/notebooks/<stem>.ipynb, which
  replaces the old copy only when the whole notebook ran. A notebook that fails is kept as
  results/failed/<stem>.ipynb (never where `passk-companion html` would render it) and stops the
  run. Figures, claims and tables go to the results folder ($PASSK_COMPANION_RESULTS for the
  kernel).
* ``execute``: regenerates the *stored* outputs of notebooks/ (the ci defaults, no parameters),
  then strips papermill's volatile metadata (nbstripout --keep-output --keep-count), again through
  a temporary file.

Values that come from the command line (profile, notebook prefixes, results folder) are data:
they are validated here and never reach a shell.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from passk_companion import profiles
from passk_companion.files import (
    atomic_write_text,
    load_yaml_strict,
    open_regular,
    remove_stale_temporaries,
    temporary,
    writable_dir,
)
from passk_companion.runtime import notebooks_dir

__all__ = [
    "select",
    "reproduce",
    "execute",
    "store_evidence",
    "check_store_destination",
    "is_evidence_folder",
    "EVIDENCE_MARKER",
]

KERNEL = "passk_companion"
STRIP_KEYS = "metadata.papermill cell.metadata.papermill cell.metadata.execution"
# the folders of a results folder that the notebooks and the commands write files into
RESULT_FOLDERS = ("notebooks", "failed", "claims", "figures", "tables", "site", "site/figures")


def select(prefixes: str | None, folder: Path | None = None) -> list[Path]:
    """The notebooks whose names start with one of the whitespace- or comma-separated
    `prefixes` (all notebooks when empty). Every prefix must match: ValueError listing them."""
    folder = folder or notebooks_dir()
    every = sorted(folder.glob("[0-9]*.ipynb"))
    if not every:
        raise ValueError(f"no notebooks in {folder}")
    tokens = [t for t in re.split(r"[\s,]+", prefixes or "") if t]
    if not tokens:
        return every
    chosen: list[Path] = []
    for token in tokens:
        hits = [nb for nb in every if nb.name.startswith(token)]
        if not hits:
            names = ", ".join(nb.stem for nb in every)
            raise ValueError(f"NB={token!r} matches no notebook; the notebooks are: {names}")
        chosen.extend(h for h in hits if h not in chosen)
    return sorted(chosen)


def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
        return KERNEL
    except NoSuchKernel:
        return "python3"  # the interpreter running this (jupyter_client maps "python")


def _run_atomic(
    nb: Path,
    final: Path,
    parameters: dict,
    results: Path,
    failed_dir: Path | None,
    post: Callable[[Path], None] | None = None,
) -> None:
    import papermill as pm

    final.parent.mkdir(parents=True, exist_ok=True)
    # a hidden name ending in .passk_companion.tmp.ipynb: papermill and nbstripout accept it, globs
    # of the notebooks ("[0-9]*.ipynb") skip it, and remove_stale_temporaries knows it
    fd, tmp = temporary(final, suffix=".ipynb")
    os.close(fd)
    os.environ["PASSK_COMPANION_RESULTS"] = str(results)
    # the kernel draws inline whatever the caller's MPLBACKEND is (Agg, exported on many headless
    # servers, would make plt.show() display nothing and change the stored outputs)
    backend = os.environ.pop("MPLBACKEND", None)
    try:
        pm.execute_notebook(
            str(nb),
            str(tmp),
            parameters=parameters,
            cwd=str(nb.parent),
            kernel_name=_kernel(),
            progress_bar=False,
        )
        if post is not None:
            post(tmp)
        os.replace(tmp, final)
    except BaseException:
        if failed_dir is not None and tmp.exists() and tmp.stat().st_size:
            failed_dir.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, failed_dir / final.name)
            print(f"   failed notebook kept as {failed_dir / final.name}", file=sys.stderr)
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if backend is not None:
            os.environ["MPLBACKEND"] = backend


RESUME_PARAMETER = "reuse_runs"  # a notebook with this parameter keeps finished trials if True


def _params(profile: str, nb: Path, root: Path, resume: bool = False) -> dict:
    """The parameters papermill injects: params/<profile>/<stem>.yaml, and with `resume`
    RESUME_PARAMETER = True where the notebook has it (its finished sweep trials are kept)."""
    path = root / "params" / profile / f"{nb.stem}.yaml"
    data = load_yaml_strict(path, "parameter file") if path.is_file() else {}
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of parameter names to values")
    if resume:
        import papermill as pm

        if RESUME_PARAMETER in pm.inspect_notebook(str(nb)):
            data = {**data, RESUME_PARAMETER: True}
    return data


def reproduce(
    profile: str,
    prefixes: str | None,
    results: str | os.PathLike,
    store: str | os.PathLike | None = None,
    resume: bool = False,
) -> Path:
    """Run the selected notebooks at `profile` into `results` (see the module docstring), then
    write results/REPORT.md and return its path. With `store`, one notebook's run is also kept as
    evidence there (:func:`store_evidence`). With `resume`, notebooks that run sweeps keep the
    trials an interrupted run of the same command finished (a fresh run deletes them)."""
    if profile not in profiles.PROFILES:
        raise ValueError(f"unknown PROFILE {profile!r}; use one of {', '.join(profiles.PROFILES)}")
    notebooks = select(prefixes)
    if store is not None and len(notebooks) != 1:
        raise ValueError("--store keeps the evidence of one notebook: name one with --nb")
    if store is not None:
        destination = check_store_destination(store)  # before the notebook runs, not after
    root = notebooks[0].parent.parent
    results = writable_dir(results, "RESULTS").absolute()
    # only the folders this command and the notebooks write (atomically) into, not below them
    remove_stale_temporaries(results, *(results / sub for sub in RESULT_FOLDERS))
    started = time.perf_counter()
    for nb in notebooks:
        print(f"== {nb.stem} (profile {profile})", flush=True)
        t0 = time.perf_counter()
        _run_atomic(
            nb,
            results / "notebooks" / nb.name,
            _params(profile, nb, root, resume),
            results,
            results / "failed",
        )
        (results / "failed" / nb.name).unlink(missing_ok=True)
        print(f"   done in {time.perf_counter() - t0:.0f} s", flush=True)
    from passk_companion.evidence.report import build

    if store is not None:
        command = (
            f"python -m passk_companion reproduce --profile {profile} --nb {prefixes} "
            f"--store {store}"
        )
        store_evidence(results, destination, notebooks[0], command, time.perf_counter() - started)
    return build(results)


def _commit(root: Path) -> str:
    """The checkout's commit, "+ local changes" when the tree differs from it ("unknown" when
    git cannot tell)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + local changes" if dirty else "")


EVIDENCE_MARKER = ".passk_companion-evidence"  # the file that makes a folder one of ours
MARKER_TEXT = "passk_companion evidence folder: `reproduce --store` may replace it as a whole\n"
MAX_EVIDENCE_FILE_BYTES = 256 * 1024**2  # one stored file (a notebook, a table, a figure)
_BACKUP = ".passk_companion.old"  # .<dest>.<pid>.<8 random>.passk_companion.old: the old evidence
_STAGING = ".passk_companion.new"  # ... .passk_companion.new: the new evidence being copied


def is_evidence_folder(folder: Path) -> bool:
    """True when `folder` is a real folder (not a symbolic link) that holds our evidence marker
    file as a regular file with the marker's text."""
    marker = Path(folder) / EVIDENCE_MARKER
    if Path(folder).is_symlink() or not Path(folder).is_dir() or marker.is_symlink():
        return False
    try:
        return marker.is_file() and marker.read_text(encoding="utf-8") == MARKER_TEXT
    except (OSError, UnicodeDecodeError):
        return False


def _leftovers(dest: Path, suffix: str) -> list[Path]:
    if not dest.parent.is_dir():
        return []
    return sorted(dest.parent.glob(f".{glob.escape(dest.name)}.*{suffix}"))


def check_store_destination(dest: str | os.PathLike) -> Path:
    """`dest` (absolute) if `reproduce --store` may write there; ValueError in one line otherwise.

    Allowed: a folder that does not exist yet (its parents are created), an empty folder, or one
    of our own evidence folders (it holds :data:`EVIDENCE_MARKER`, whatever its name). Refused:
    anything else that exists (a folder of other files, `.`, a results folder, a file), a symbolic
    link, a path through a file, the system and home folders, a folder that cannot be written, and
    a destination whose previous replacement was interrupted (its old evidence is still kept
    beside it and must be moved back or deleted first)."""
    if dest is None or str(dest).strip() == "":
        raise ValueError("--store must name a folder, got an empty string")
    dest = Path(dest).absolute()
    for backup in _leftovers(dest, _BACKUP):
        raise ValueError(
            f"--store {dest}: {backup} holds the evidence an interrupted store was replacing; "
            f"move it back to {dest.name} (or delete it) first"
        )
    if dest.is_symlink():
        raise ValueError(f"--store {dest} is a symbolic link: name the folder itself")
    for parent in dest.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ValueError(f"--store {dest}: {parent} exists and is not a folder")
            break
    if dest.exists():
        if not dest.is_dir():
            raise ValueError(f"--store {dest} exists and is not a folder")
        if any(dest.iterdir()) and not is_evidence_folder(dest):
            raise ValueError(
                f"--store {dest} exists and is not an evidence folder written by --store (no "
                f"{EVIDENCE_MARKER} in it): name a new folder"
            )
    parent = dest.parent
    while not parent.exists():
        parent = parent.parent
    writable_dir(parent, "--store", create=False)  # system and home folders, read-only parents
    return dest


def _copy_regular(src: Path, out) -> None:
    """Copy the regular file `src` (not through a symbolic link) into the open binary file `out`,
    at most :data:`MAX_EVIDENCE_FILE_BYTES`: ValueError naming it otherwise."""
    limit = MAX_EVIDENCE_FILE_BYTES
    with open_regular(src, "evidence file", follow=False) as f:
        copied = 0
        while chunk := f.read(1 << 20):
            copied += len(chunk)
            if copied > limit:
                raise ValueError(f"evidence file {src} is larger than {limit} bytes: not stored")
            out.write(chunk)


def _stored_files(folder: Path, pattern: str, skipped: list[str]) -> list[Path]:
    """The regular files of `folder` matching `pattern`; symbolic links and other special files
    are left out and named in `skipped`."""
    keep = []
    for path in sorted(folder.glob(pattern)):
        if path.is_symlink() or not path.is_file():
            skipped.append(f"{path.parent.name}/{path.name}")
        else:
            keep.append(path)
    return keep


def store_evidence(results: Path, dest: Path, notebook: Path, command: str, wall_s: float) -> Path:
    """Keep a finished run of `notebook` in `dest` (evidence of a deciding run, committed with
    the repository): the executed notebook, its claims file, its tables (gzip-compressed CSV),
    its figures, RUN.md with the command, the commit, the wall time and the machine, and the
    marker file :data:`EVIDENCE_MARKER`. `dest` must pass :func:`check_store_destination`.

    Only regular files are copied (symbolic links and special files in results/tables and
    results/figures are left out, and RUN.md names them), each at most
    :data:`MAX_EVIDENCE_FILE_BYTES`. Everything is copied into a staging folder beside `dest`;
    an existing `dest` is then renamed aside, the staging folder renamed into place, and only
    then is the old folder deleted. An interruption at any point leaves either the old evidence
    or the new one at `dest`; a kill between the two renames leaves the old one beside it, named
    ``.<dest>.<pid>.<random>.passk_companion.old``, and the next store refuses to run until it is
    moved back."""
    import gzip
    import platform
    import shutil

    stem = notebook.stem
    prefix = stem.split("_")[0]
    dest = check_store_destination(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)  # staging beside dest: renames at the end
    name = f".{dest.name}.{os.getpid()}."
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=name, suffix=_STAGING))
    backup = None
    try:
        with (staging / notebook.name).open("wb") as out:
            _copy_regular(results / "notebooks" / notebook.name, out)
        with (staging / "claims.csv").open("wb") as out:
            _copy_regular(results / "claims" / f"{stem}.csv", out)
        skipped: list[str] = []
        (staging / "tables").mkdir()
        for table in _stored_files(results / "tables", f"{prefix}_*.csv", skipped):
            with (staging / "tables" / f"{table.name}.gz").open("wb") as f:
                with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as out:  # reproducible bytes
                    _copy_regular(table, out)
        (staging / "figures").mkdir()
        for figure in _stored_files(results / "figures", f"{prefix}_*.png", skipped):
            with (staging / "figures" / figure.name).open("wb") as out:
                _copy_regular(figure, out)
        for item in skipped:
            print(f"warning: {item} is not a regular file: not stored", file=sys.stderr)
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.machine(),
        ) if Path("/proc/cpuinfo").is_file() else platform.machine()  # fmt: skip
        (staging / "RUN.md").write_text(
            f"# Evidence: {stem}\n\n"
            f"- command: `{command}`\n"
            f"- commit: {_commit(notebook.parent.parent)}\n"
            f"- wall time: {wall_s / 60:.1f} min\n"
            f"- machine: {os.cpu_count()} CPU cores ({cpu}), {platform.platform()}\n"
            f"- files: the executed notebook, claims.csv (its verdicts), tables/ (what they were "
            f"decided from), figures/\n"
            + (f"- not stored (not regular files): {', '.join(skipped)}\n" if skipped else ""),
            encoding="utf-8",
        )
        (staging / EVIDENCE_MARKER).write_text(MARKER_TEXT, encoding="utf-8")
        check_store_destination(dest)  # unchanged while the files were copied
        if dest.exists():
            backup = Path(tempfile.mkdtemp(dir=dest.parent, prefix=name, suffix=_BACKUP))
            os.replace(dest, backup)  # replaces the empty placeholder folder
        os.replace(staging, dest)
    except BaseException:
        if backup is not None and backup.exists() and not dest.exists():
            os.replace(backup, dest)  # the old evidence goes back where it was
            backup = None
        shutil.rmtree(staging, ignore_errors=True)
        if backup is not None and not any(backup.iterdir()):
            backup.rmdir()
        raise
    if backup is not None:
        shutil.rmtree(backup)
    return dest


def _strip(path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "nbstripout",
        "--keep-output",
        "--keep-count",
        "--extra-keys",
        STRIP_KEYS,
        str(path),
    ]
    subprocess.run(cmd, check=True)


def execute(prefixes: str | None, results: str | os.PathLike = "build/execute-results") -> None:
    """Regenerate the stored outputs of the selected notebooks in place (ci defaults), and their
    stored claims, notebooks/claims/<notebook>.csv (what `make nbval` compares a fresh run's
    claims with, and `report --tables` reads)."""
    notebooks = select(prefixes)
    results = Path(results)
    if not results.is_absolute():
        results = notebooks[0].parent.parent / results
    remove_stale_temporaries(notebooks[0].parent)
    for nb in notebooks:
        print(f"== executing {nb.name}", flush=True)
        t0 = time.perf_counter()
        recorded = results / "claims" / f"{nb.stem}.csv"
        recorded.unlink(missing_ok=True)  # only what this run records is stored
        _run_atomic(nb, nb, {}, results, None, post=_strip)
        if recorded.is_file():
            atomic_write_text(nb.parent / "claims" / recorded.name, recorded.read_text("utf-8"))
        print(f"   done in {time.perf_counter() - t0:.0f} s", flush=True)
