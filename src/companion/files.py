"""Files that are safe to share: atomic replacement, locks, and output-folder checks.

* :func:`atomic_write` writes to a temporary file in the same folder, then os.replace(): a reader
  (or a resumed run) sees either the old file or the new one, never half of one. The temporary
  file is named ``.<name>.<pid>.<random>.tmp``; a process killed mid-write leaves it behind, and
  :func:`remove_stale_temporaries` deletes those whose writer is no longer alive.
* :func:`file_lock` is the one lock: an exclusive ``fcntl.flock`` on a lock file, re-entrant within
  a process and released when the process dies, however it dies. ``wait=True`` (writers of a
  shared file take turns) or ``wait=False`` (:func:`exclusive`: a second run into a folder fails
  at once with :class:`RunLockedError`, naming the holder's pid). A lock file is opened without
  following symbolic links and must be a regular file, so a planted link cannot redirect it.
* :func:`writable_dir` checks an output folder before any work starts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "remove_stale_temporaries",
    "file_lock",
    "exclusive",
    "RunLockedError",
    "writable_dir",
]

_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp(\.ipynb)?$")  # .ipynb: notebooks being executed


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call write(f) on a temporary binary file next to `path`, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
    )
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically replace `path` with `text` (UTF-8)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _alive(pid: int) -> bool:
    """Whether process `pid` is running (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill(0)
    return state not in ("Z", "X")


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the temporary files of atomic writes whose writing process has died (a kill during
    a write leaves them); files of live writers are kept. Returns the files removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"):
        match = _TEMP.match(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class RunLockedError(RuntimeError):
    """Another process holds the lock (of a run folder)."""


_HELD: dict[Path, list] = {}  # lock file -> [file descriptor, depth]


def _open_lock(path: Path) -> int:
    """A descriptor of the lock file `path` (created 0644 if missing), refusing symbolic links
    and anything that is not a regular file (a FIFO, a device, a folder)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link: refusing to use it as a lock") from None
        raise ValueError(f"cannot open the lock file {path} ({err.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file: refusing to use it as a lock")
    return fd


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on the file `path` (created if needed) for the block.

    wait=True waits for another holder; wait=False raises RunLockedError at once, naming the
    holder's pid (which the holder writes into the file). Re-entrant within one process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = path.parent.resolve() / path.name
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise RunLockedError(
                f"another run is using {path.parent} (pid {holder}); wait for it to finish or "
                "choose another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD[key] = [fd, 1]
        try:
            yield path
        finally:
            del _HELD[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold `folder` (created if needed) for one run: file_lock(<folder>/.lock, wait=False)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".lock", wait=False):
        yield folder


def writable_dir(path: str | os.PathLike | None, flag: str = "--out") -> Path:
    """`path` as a folder we can write into (created if missing); ValueError naming `flag` if it
    is empty, is a file, or cannot be written."""
    if path is None or str(path).strip() == "":
        raise ValueError(f"{flag} must name a folder, got an empty string")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {folder} is not writable ({err.strerror or err})") from None
    return folder
