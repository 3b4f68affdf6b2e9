"""Which run of an ensemble each row of a batch belongs to.

An ensemble trains R runs of one model shape in one batched computation (PureJaxRL trains many
seeds as one vmapped computation; this is the same idea written by hand): every parameter has a
leading run axis, and a batch holds the rows of every run, grouped by run, run r owning rows
offsets[r] .. offsets[r] + counts[r] - 1. Rows of different runs never interact: an operation on
a row uses only that row and its run's parameters, except the reductions over rows that a run's
parameter gradient is (computed per run by :mod:`passk_companion.model.portable`).

:class:`Runs` holds that layout and moves tensors between the flat form (N, ...) and the padded
form (R, width, ...) that a batched matrix product over runs needs (zeros where a run has fewer
rows than the widest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Runs"]


@dataclass(frozen=True)
class Runs:
    """The run of each of N rows, grouped by run: `run` (N,) sorted, `counts` (R,), `slot` (N,)
    the row's index within its run, `width` the largest count."""

    run: Tensor
    counts: Tensor
    slot: Tensor
    width: int

    @property
    def size(self) -> int:
        """R, the number of runs (some may own no row of this batch)."""
        return len(self.counts)

    @property
    def rows(self) -> int:
        return len(self.run)

    @property
    def equal(self) -> bool:
        """Whether every run owns exactly `width` rows (padding is then a view)."""
        return self.rows == self.size * self.width

    @classmethod
    def one(cls, rows: int, device: torch.device | str = "cpu") -> Runs:
        """N rows of a single run."""
        z = torch.zeros(rows, dtype=torch.long, device=device)
        counts = torch.tensor([rows], dtype=torch.long, device=device)
        return cls(z, counts, torch.arange(rows, device=device), rows)

    @classmethod
    def of(cls, run: Tensor, size: int) -> Runs:
        """The layout of rows whose runs are `run` (sorted, values in 0 .. size - 1)."""
        counts = torch.bincount(run, minlength=size)
        if len(counts) != size:
            raise ValueError(f"a row names run {len(counts) - 1} of an ensemble of {size}")
        if len(run) > 1 and bool((run[1:] < run[:-1]).any()):
            raise ValueError("the rows of a batch must be grouped by run, in run order")
        offsets = torch.cumsum(counts, 0) - counts
        width = int(counts.max()) if size else 0
        return cls(run, counts, torch.arange(len(run), device=run.device) - offsets[run], width)

    @classmethod
    def repeat(cls, counts: list[int] | Tensor, device: torch.device | str = "cpu") -> Runs:
        """counts[r] rows for run r, in run order."""
        counts = torch.as_tensor(counts, dtype=torch.long, device=device)
        return cls.of(torch.repeat_interleave(torch.arange(len(counts), device=device), counts),
                      len(counts))  # fmt: skip

    def index(self, rows: Tensor) -> Runs:
        """The layout of rows `rows` of this batch (kept in their order, which must keep the
        rows grouped by run)."""
        return Runs.of(self.run.index_select(0, rows), self.size)

    def expand(self, each: int) -> Runs:
        """Every row repeated `each` times in place (row i becomes rows i * each .. i * each +
        each - 1)."""
        return Runs.of(self.run.repeat_interleave(each), self.size)

    def pad(self, x: Tensor) -> Tensor:
        """x (N, *rest) as (R, width * prod(rest[:-1]), rest[-1]): run r's rows first, zeros
        after. The last dimension is kept, the others between rows and it are folded into the
        rows (a row's tokens are rows of a matrix product)."""
        if x.shape[0] != self.rows:
            raise ValueError(f"a batch of {x.shape[0]} rows for a layout of {self.rows}")
        mid, last = x.shape[1:-1], x.shape[-1]
        if self.equal:
            return x.reshape(self.size, self.width * math.prod(mid), last)
        out = x.new_zeros(self.size, self.width, *mid, last)
        out[self.run, self.slot] = x
        return out.view(self.size, -1, last)

    def unpad(self, y: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """The inverse of :meth:`pad` for a padded (R, width * prod(mid), last') tensor: the
        rows' values, shaped (N, *mid, last') where `shape` is (N, *mid, last)."""
        mid = tuple(shape[1:-1])
        if self.equal:
            return y.reshape(self.rows, *mid, y.shape[-1])
        return y.view(self.size, self.width, *mid, y.shape[-1])[self.run, self.slot]

    def spans(self, each: int = 1) -> list[tuple[int, int]]:
        """(first, end) of each run's rows in a flat (N * each, ...) view, every row taking
        `each` consecutive entries (a row's tokens)."""
        counts = self.counts.tolist()
        out, start = [], 0
        for c in counts:
            out.append((start * each, (start + c) * each))
            start += c
        return out

    def of_rows(self, per_run: Tensor) -> Tensor:
        """per_run (R, *rest) indexed by each row's run: (N, *rest)."""
        return per_run.index_select(0, self.run)
