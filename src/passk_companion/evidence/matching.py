"""Equal progress: the value of a measure where a run first reaches a level of another.

Objectives are compared at matched J_1 (or pass@1, or KL), never at equal step counts: a slower
objective always looks more "diverse" after a fixed number of steps. A run is a table of records
(one row per evaluation); :func:`crossings` finds where a series first reaches a level (column by
column, for per-prompt traces), and :func:`interpolate` reads any other series there, linearly
between the two records around the crossing. Every comparison at equal progress uses these two:
:func:`at_matched` (one run), passk_companion.theory.tabular_matching.per_prompt_at (tabular
prompts) and passk_companion.evidence.analysis (the tiny GPT's prompts). numpy and pandas only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__ = ["crossings", "crossing", "interpolate", "at_matched", "matched_per_run"]


def crossings(
    x: np.ndarray, target: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where each column of a recorded series x ((T,) or (T, P), records along axis 0) first
    reaches `target`: arrays (i0, i1, w, reached) of shape x.shape[1:], the crossing lying a
    fraction w of the way from record i0 to record i1 (linear interpolation; i0 = i1, w = 1 where
    the series starts at or above the target or does not move there). Where `reached` is False
    the other three are placeholders (0, 0, 1)."""
    x = np.asarray(x, dtype=float)
    crossed = x >= target
    reached = crossed.any(axis=0)
    i1 = crossed.argmax(axis=0)  # the first record at or above the target (0 if none)
    i0 = np.maximum(i1 - 1, 0)
    x1, x0 = _take(x, i1), _take(x, i0)
    moves = reached & (i1 > 0) & (x1 != x0)
    span = np.where(moves, x1 - x0, 1.0)
    w = np.where(moves, (target - x0) / span, 1.0)
    return np.where(moves, i0, i1), i1, w, reached


def _take(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """values[index[j], j] for every column j (values[index] for a 1-D series)."""
    if values.ndim == 1:
        return values[index]
    return np.take_along_axis(values, index[None, ...], axis=0)[0]


def crossing(x: np.ndarray, target: float) -> tuple[int, int, float] | None:
    """:func:`crossings` of one series: (i0, i1, w), or None if it never reaches `target`."""
    i0, i1, w, reached = crossings(np.asarray(x, dtype=float).reshape(-1), target)
    if not reached:
        return None
    return int(i0), int(i1), float(w)


def interpolate(y: np.ndarray, i0: np.ndarray, i1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A series y (records along axis 0, shaped as the x of :func:`crossings`) at the crossing
    (i0, i1, w): y[i1] where i0 = i1, else y[i0] + w (y[i1] - y[i0])."""
    y = np.asarray(y, dtype=float)
    y0, y1 = _take(y, i0), _take(y, i1)
    return np.where(i0 == i1, y1, y0 + w * (y1 - y0))


def at_matched(history: pd.DataFrame, target: float, column: str, by: str = "J1") -> float:
    """`column` where the run first reaches `by` >= target, linearly interpolated between the two
    recorded steps around the crossing (NaN if the run never reaches it; the first row if it starts
    there). Rows are taken in their order (sort by step first)."""
    i0, i1, w, reached = crossings(history[by].to_numpy(dtype=float), target)
    if not reached:
        return math.nan
    return float(interpolate(history[column].to_numpy(dtype=float), i0, i1, w))


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
