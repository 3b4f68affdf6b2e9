"""Equal progress: the value of a measure where a run first reaches a level of another.

Objectives are compared at matched J_1 (or pass@1, or KL), never at equal step counts: a slower
objective always looks more "diverse" after a fixed number of steps. A run is a table of records
(one row per evaluation); :func:`crossing` finds where a column first reaches a level, and
:func:`at_matched` interpolates any other column there, linearly between the two records around
the crossing. numpy and pandas only (no torch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__ = ["crossing", "at_matched", "matched_per_run"]


def crossing(x: np.ndarray, target: float) -> tuple[int, int, float] | None:
    """Where a recorded series first reaches `target`: (i0, i1, w) such that the crossing lies a
    fraction w of the way from record i0 to record i1 (linear interpolation; i0 = i1, w = 1 if
    the series starts at or above the target, or does not move); None if it never gets there."""
    x = np.asarray(x, dtype=float)
    hit = np.flatnonzero(x >= target)
    if len(hit) == 0:
        return None
    i = int(hit[0])
    if i == 0 or x[i] == x[i - 1]:
        return i, i, 1.0
    return i - 1, i, float((target - x[i - 1]) / (x[i] - x[i - 1]))


def at_matched(history: pd.DataFrame, target: float, column: str, by: str = "J1") -> float:
    """`column` where the run first reaches `by` >= target, linearly interpolated between the two
    recorded steps around the crossing (NaN if the run never reaches it; the first row if it starts
    there). Rows are taken in their order (sort by step first)."""
    y = history[column].to_numpy(dtype=float)
    cross = crossing(history[by].to_numpy(dtype=float), target)
    if cross is None:
        return math.nan
    i0, i1, w = cross
    return float(y[i1]) if i0 == i1 else float(y[i0] + w * (y[i1] - y[i0]))


def matched_per_run(
    histories: Iterable[pd.DataFrame], target: float, column: str, by: str = "test_j1"
) -> np.ndarray:
    """:func:`at_matched` of each run (sorted by "step" when there is one): one value per run,
    NaN for a run that never reaches the level."""
    out = []
    for h in histories:
        h = h.sort_values("step") if "step" in h.columns else h
        out.append(at_matched(h, target, column, by))
    return np.asarray(out, dtype=float)
