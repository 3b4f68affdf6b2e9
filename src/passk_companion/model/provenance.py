"""Which code a run was trained with: a digest of the package's Python sources and of the torch
version, recorded in every run checkpoint and every finished trial's done.json. A finished trial
is reused, and a checkpoint resumed, only under the same code: after an edit of any module (a
flipped sign in an objective, say) the trial runs again.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch

__all__ = ["code_digest"]

_PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def code_digest() -> str:
    """sha256 (16 hex digits) of every .py file of the installed package (its path inside the
    package and its bytes, in sorted order) and of torch's version."""
    h = hashlib.sha256(torch.__version__.encode())
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
