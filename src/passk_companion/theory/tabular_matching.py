"""Equal progress for tabular runs, prompt by prompt: tabular prompts share no parameters, so
each prompt's own J_1 is its progress. :func:`per_prompt_at` interpolates a trace where each
prompt first reaches a level; the matched differences compare two runs there. :func:`late_slope`
fits the power law of a run's tail."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from passk_companion.evidence import matching
from passk_companion.theory.dynamics import TabularRun

__all__ = [
    "late_slope",
    "per_prompt_at",
    "matched_difference",
    "matched_difference_per_prompt",
    "matched_change",
]


def late_slope(steps: np.ndarray, values: np.ndarray, start_fraction: float = 0.5) -> float:
    """Slope of log(values) against log(steps) over the last part of a run: values ~ steps^slope."""
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    keep = (steps >= start_fraction * steps.max()) & (steps > 0) & (values > 0)
    if keep.sum() < 2:
        raise ValueError("not enough positive points to fit a slope")
    return float(np.polyfit(np.log(steps[keep]), np.log(values[keep]), 1)[0])


def per_prompt_at(run: TabularRun, levels: list[float], column: str) -> Tensor:
    """(L, P): for each level and prompt, `column` (a trace: "modes_eff", "rare_share", "J1")
    where that prompt's J_1 first reaches the level, linearly interpolated between recorded steps
    (the value at step 0 if it starts there); NaN where the prompt never reaches it. Tabular
    prompts are independent, so this is the per-prompt notion of equal progress (the crossing
    and interpolation of passk_companion.evidence.matching, column by column)."""
    j1 = run.traces["J1"].to(torch.float64).numpy()  # (T, P)
    values = run.traces[column].to(torch.float64).numpy()
    out = torch.full((len(levels), j1.shape[1]), math.nan, dtype=torch.float64)
    for li, level in enumerate(levels):
        i0, i1, w, reached = matching.crossings(j1, level)
        interp = torch.from_numpy(matching.interpolate(values, i0, i1, w))
        out[li] = torch.where(torch.from_numpy(reached), interp, out[li])
    return out


def _matched_pairs(
    run_a: TabularRun, run_b: TabularRun, levels: list[float], column: str
) -> tuple[Tensor, Tensor, list[float]]:
    """(L, P) column(a) - column(b) at matched per-prompt J_1 (0 where not both reached), the
    (L, P) mask of (level, prompt) pairs BOTH runs reach, and the levels that contributed."""
    a, b = per_prompt_at(run_a, levels, column), per_prompt_at(run_b, levels, column)
    both = ~(a.isnan() | b.isnan())
    used = [lv for li, lv in enumerate(levels) if bool(both[li].any())]
    return torch.where(both, a - b, 0.0), both, used


def matched_difference(
    run_a: TabularRun, run_b: TabularRun, levels: list[float], column: str, group: Tensor
) -> tuple[np.ndarray, list[float]]:
    """Per group (replicate): the mean over (level, prompt) pairs that BOTH runs reach of
    column(a) - column(b) at matched per-prompt J_1; and the levels that contributed."""
    diff, both, used = _matched_pairs(run_a, run_b, levels, column)
    out = []
    for g in torch.unique(group).tolist():
        count = int(both[:, group == g].sum())
        out.append(float(diff[:, group == g].sum() / count) if count else math.nan)
    return np.asarray(out), used


def matched_difference_per_prompt(
    run_a: TabularRun, run_b: TabularRun, levels: list[float], column: str
) -> tuple[np.ndarray, list[float]]:
    """Per prompt: the mean over the levels that BOTH runs reach for that prompt of column(a) -
    column(b) at matched J_1 (NaN where no level is shared); and the levels that contributed.
    Tabular prompts are independent, so these are independent units for a bootstrap."""
    diff, both, used = _matched_pairs(run_a, run_b, levels, column)
    count = both.sum(0)
    per = torch.where(count > 0, diff.sum(0) / count.clamp_min(1), torch.tensor(math.nan))
    return per.numpy(), used


def matched_change(run: TabularRun, level: float, column: str) -> np.ndarray:
    """Per prompt: column where the prompt reaches J_1 = level minus column at step 0 (NaN for
    prompts that never reach it)."""
    at = per_prompt_at(run, [level], column)[0]
    return (at - run.traces[column][0].to(torch.float64)).numpy()
