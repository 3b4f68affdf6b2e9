"""Run files that are safe to share: checkpoints that cannot run code, and run folders that one
run at a time may use.

* :func:`save` writes a checkpoint atomically and only accepts plain data (tensors, numbers,
  strings, None and lists / tuples / dicts of them), so that :func:`load` can read it with
  ``torch.load(weights_only=True)``: a crafted pickle cannot execute code. Loading maps every
  tensor to the CPU (``map_location="cpu"``); callers move what they need to their device (a CUDA
  generator accepts a CPU state, the reverse is what used to crash a resume on a GPU).
* A file that is not a checkpoint (truncated, random bytes, a bare tensor, missing fields) raises
  :class:`CheckpointError`, a ValueError that names the file and says what to do.
* :func:`exclusive` takes an exclusive, non-blocking lock on ``<folder>/.lock`` (``fcntl.flock``):
  a second run into the same folder fails at once instead of clobbering the first. The lock is
  re-entrant within a process and released when the process dies, however it dies.
* :func:`writable_dir` (from :mod:`companion.atomic`) checks an output folder before any work
  starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from .atomic import atomic_write, writable_dir

__all__ = [
    "CheckpointError",
    "RunLockedError",
    "save",
    "load",
    "exclusive",
    "writable_dir",
]


class CheckpointError(ValueError):
    """A checkpoint or base file that cannot be used."""


class RunLockedError(RuntimeError):
    """Another run holds the folder."""


_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(obj: object, where: str = "checkpoint") -> None:
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for key, item in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is not a str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} holds a {type(obj).__name__}: checkpoints keep plain data only")


def save(path: str | os.PathLike, obj: Mapping[str, object]) -> Path:
    """Write `obj` (plain data only, see the module docstring) to `path` atomically."""
    obj = dict(obj)
    _check_plain(obj)
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def load(
    path: str | os.PathLike,
    fields: Mapping[str, type | tuple[type, ...]],
    what: str = "checkpoint",
    remedy: str = "delete it, or pass --fresh to start over",
) -> dict:
    """Read a checkpoint written by :func:`save`, weights only, every tensor on the CPU.

    `fields` maps each required key to its type(s). Raises CheckpointError, naming the file and
    `remedy`, if the file cannot be read or is not such a checkpoint."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise CheckpointError(f"{path} is not a readable {what} ({reason}); {remedy}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a {what} (it holds a {type(obj).__name__}); {remedy}")
    for key, kind in fields.items():
        if key not in obj:
            raise CheckpointError(f"{path} is not a {what} (no {key!r} field); {remedy}")
        if not isinstance(obj[key], kind):
            raise CheckpointError(
                f"{path} is not a {what} ({key!r} is a {type(obj[key]).__name__}); {remedy}"
            )
    return obj


_HELD: dict[Path, list] = {}  # folder -> [file object, depth]


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if needed) for the duration of the block.

    Raises RunLockedError at once if another process holds it. Re-entrant in one process."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield folder
        finally:
            _HELD[key][1] -= 1
        return
    handle = open(folder / ".lock", "a+")  # noqa: SIM115 - closed in finally
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunLockedError(
                f"another run is using {folder} (pid {holder}); wait for it to finish or "
                "choose another output folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        _HELD[key] = [handle, 1]
        try:
            yield folder
        finally:
            del _HELD[key]
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
