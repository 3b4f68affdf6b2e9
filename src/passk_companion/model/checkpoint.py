"""Checkpoints that cannot run code.

* :func:`save` writes a checkpoint atomically and only accepts plain data (tensors, numbers,
  strings, None and lists / tuples / dicts of them), so that :func:`load` can read it with
  ``torch.load(weights_only=True)``: a crafted pickle cannot execute code. Loading maps every
  tensor to the CPU (``map_location="cpu"``); callers move what they need to their device (a CUDA
  generator accepts a CPU state, the reverse is what used to crash a resume on a GPU).
* A file that is not a checkpoint (truncated, random bytes, a bare tensor, missing fields) raises
  :class:`CheckpointError`, a ValueError that names the file and says what to do.
* Nothing is allocated before it is checked: the file must be a regular file (not a FIFO or a
  device), and a zip archive as :func:`save` writes it (:func:`is_ours`: every entry under
  ``archive/``, stored, not compressed); the sizes its central directory declares are checked
  against what the caller's configuration can hold (`max_bytes` in all, `max_tensor_bytes` per
  tensor) before torch reads any of it, so a small file cannot inflate into a huge tensor.
* :func:`restore` and :func:`restore_generator` load tensors into a model or a random
  generator only when their names and shapes fit: a wrong shape or a bad RNG state is a
  CheckpointError naming the file and the tensor, not a traceback.
Run folders are held by :func:`passk_companion.files.exclusive` (one run at a time).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import torch

from passk_companion.files import atomic_write, open_regular

__all__ = [
    "CheckpointError",
    "save",
    "load",
    "is_ours",
    "restore",
    "restore_generator",
    "state_bytes",
]

_ARCHIVE = "archive/"  # torch.save into a buffer (what save() does) names every entry so


class CheckpointError(ValueError):
    """A checkpoint or base file that cannot be used."""


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


def _entries(f: IO[bytes]) -> list[zipfile.ZipInfo] | None:
    """The central directory of the zip archive `f`, or None if it is not a zip archive."""
    try:
        with zipfile.ZipFile(f) as archive:
            return archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None
    finally:
        f.seek(0)


def _why_not_ours(entries: list[zipfile.ZipInfo] | None) -> str | None:
    """Why a file with these zip entries was not written by save(), or None if it was."""
    if entries is None:
        return "not a zip archive"
    names = {e.filename for e in entries}
    if not all(n.startswith(_ARCHIVE) for n in names) or _ARCHIVE + "data.pkl" not in names:
        return "not an archive written by torch.save into this program's format"
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        return "it holds compressed entries, which save() never writes"
    return None


def is_ours(path: str | os.PathLike) -> bool:
    """Whether `path` is a regular file in the format :func:`save` writes (a zip archive of
    stored entries under ``archive/``), readable or not: only such a file may be replaced by a
    fresh one. Reads the archive's central directory only."""
    try:
        with open_regular(path, "checkpoint") as f:
            return _why_not_ours(_entries(f)) is None
    except ValueError:
        return False


def state_bytes(module: torch.nn.Module) -> tuple[int, int]:
    """(total, largest) bytes of the tensors in `module`'s state_dict: what a checkpoint of it
    holds, used to bound the sizes a checkpoint may declare (:func:`load`)."""
    sizes = [t.numel() * t.element_size() for t in module.state_dict().values()]
    return sum(sizes), max(sizes, default=0)


def load(
    path: str | os.PathLike,
    fields: Mapping[str, type | tuple[type, ...]],
    what: str = "checkpoint",
    remedy: str = "delete it, or pass --fresh to start over",
    *,
    max_bytes: int | None = None,
    max_tensor_bytes: int | None = None,
) -> dict:
    """Read a checkpoint written by :func:`save`, weights only, every tensor on the CPU.

    `fields` maps each required key to its type(s). `max_bytes` bounds the sum of the sizes the
    archive declares and `max_tensor_bytes` each tensor's (checked before anything is read: see
    the module docstring). Raises CheckpointError, naming the file and `remedy`, if the file
    cannot be read, is not such a checkpoint or declares more than the limits."""
    path = Path(path)
    try:
        f = open_regular(path, what)
    except ValueError as err:
        raise CheckpointError(f"{err}; {remedy}") from None
    with f:
        entries = _entries(f)
        why = _why_not_ours(entries)
        if why is not None:
            raise CheckpointError(f"{path} is not a {what} ({why}); {remedy}")
        assert entries is not None
        declared = sum(e.file_size for e in entries)
        if max_bytes is not None and declared > max_bytes:
            raise CheckpointError(
                f"{path} declares {declared} bytes, more than a {what} of this configuration "
                f"holds ({max_bytes}); {remedy}"
            )
        tensors = [e for e in entries if e.filename.startswith(_ARCHIVE + "data/")]
        largest = max(tensors, key=lambda e: e.file_size, default=None)
        if max_tensor_bytes is not None and largest and largest.file_size > max_tensor_bytes:
            raise CheckpointError(
                f"{path} declares a tensor of {largest.file_size} bytes, more than the largest "
                f"of a {what} of this configuration ({max_tensor_bytes}); {remedy}"
            )
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)
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


def _shape(value: object) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def restore(
    module: torch.nn.Module, state: Mapping[str, object], path: str | os.PathLike, what: str,
    remedy: str,
) -> torch.nn.Module:  # fmt: skip
    """`module` with the tensors of `state` (a loaded checkpoint's state_dict), after checking
    that the names and shapes are the module's: CheckpointError naming the file and the first
    tensor that differs otherwise."""
    expected = module.state_dict()
    for name in sorted(set(expected) ^ set(state)):
        where = "missing from" if name in expected else "unknown to"
        raise CheckpointError(
            f"{path} is not a {what} of this configuration (tensor {name!r} is {where} the "
            f"model); {remedy}"
        )
    for name, tensor in expected.items():
        got = state[name]
        if not isinstance(got, torch.Tensor) or got.shape != tensor.shape:
            raise CheckpointError(
                f"{path} is not a {what} of this configuration (tensor {name!r} has shape "
                f"{_shape(got)}, the model's is {tuple(tensor.shape)}); {remedy}"
            )
        if not (got.is_floating_point() and torch.isfinite(got).all()):
            raise CheckpointError(
                f"{path} is not a usable {what} (tensor {name!r} is not finite floats); {remedy}"
            )
    module.load_state_dict(state)
    return module


def restore_generator(
    gen: torch.Generator, state: object, path: str | os.PathLike, what: str, remedy: str,
    name: str = "gen",
) -> torch.Generator:  # fmt: skip
    """`gen` set to a loaded random-generator state, or CheckpointError naming the file and the
    field if the state is not one (another size, dtype or content)."""
    try:
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
            raise TypeError(f"a {_shape(state)}")
        gen.set_state(state)
    except (RuntimeError, TypeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path} is not a usable {what} ({name!r} is not a random generator state: "
            f"{reason}); {remedy}"
        ) from None
    return gen
