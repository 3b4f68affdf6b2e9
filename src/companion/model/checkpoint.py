"""Checkpoints that cannot run code.

* :func:`save` writes a checkpoint atomically and only accepts plain data (tensors, numbers,
  strings, None and lists / tuples / dicts of them), so that :func:`load` can read it with
  ``torch.load(weights_only=True)``: a crafted pickle cannot execute code. Loading maps every
  tensor to the CPU (``map_location="cpu"``); callers move what they need to their device (a CUDA
  generator accepts a CPU state, the reverse is what used to crash a resume on a GPU).
* A file that is not a checkpoint (truncated, random bytes, a bare tensor, missing fields) raises
  :class:`CheckpointError`, a ValueError that names the file and says what to do.
Run folders are held by :func:`companion.files.exclusive` (one run at a time).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from companion.files import atomic_write

__all__ = ["CheckpointError", "save", "load"]


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
