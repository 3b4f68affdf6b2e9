"""Analysis of finished tiny-GPT runs: the tables a sweep leaves, read back and compared at equal
progress (pandas and numpy only: no torch, no model).

* :func:`read_prompts`: one run's per-prompt exact table (prompts.csv).
* :func:`prompt_table`: the per-prompt tables of many runs, labelled by variant, objective and
  seed (results/tables/04_prompts.csv).
* :func:`prompts_at_matched`: each prompt's J_1 where a run first reaches a level of an aggregate
  (the same interpolation as companion.evidence.matching.at_matched).
* :func:`matched_change`: per run and prompt, J_1 at a matched level minus the base's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from companion.evidence.matching import crossing

__all__ = ["read_prompts", "prompt_table", "prompts_at_matched", "matched_change"]


def read_prompts(out_dir: str | Path) -> pd.DataFrame:
    """The per-prompt exact table a run wrote (prompts.csv)."""
    return pd.read_csv(Path(out_dir) / "prompts.csv")


def prompt_table(runs: Mapping[tuple[str, int], tuple[str, str | Path]]) -> pd.DataFrame:
    """The per-prompt tables of several runs in one frame, with columns variant, objective, seed
    first. runs: (variant, seed) -> (objective, run folder)."""
    frames = []
    for (variant, seed), (objective, folder) in runs.items():
        p = read_prompts(folder)
        p.insert(0, "seed", seed)
        p.insert(0, "objective", objective)
        p.insert(0, "variant", variant)
        frames.append(p)
    return pd.concat(frames, ignore_index=True)


def prompts_at_matched(
    metrics: pd.DataFrame,
    prompts: pd.DataFrame,
    target: float,
    by: str = "test_j1",
    split: str = "test",
) -> pd.Series | None:
    """Each `split` prompt's exact J_1 where the run first reaches `by` >= target, interpolated
    between the two evaluations around the crossing with the weight of the aggregate (the same
    crossing as companion.evidence.matching.at_matched); None if the run never reaches it. metrics /
    prompts: one run's metrics.csv and prompts.csv tables."""
    m = metrics.sort_values("step")
    cross = crossing(m[by].to_numpy(dtype=float), target)
    if cross is None:
        return None
    i0, i1, w = cross
    steps = m.step.to_numpy()
    p = prompts[prompts.split == split]
    before = p[p.step == steps[i0]].set_index("prompt").j1
    after = p[p.step == steps[i1]].set_index("prompt").j1
    return before + w * (after - before)


def matched_change(
    runs: Iterable[tuple[pd.DataFrame, pd.DataFrame]],
    base_j1: pd.Series,
    target: float,
    by: str = "test_j1",
) -> np.ndarray | None:
    """(runs, prompts of `base_j1`): each prompt's J_1 where the run reaches `by` = target, minus
    its base J_1 (base_j1: prompt -> J_1). runs: (metrics, prompts) tables of one run each. None
    if some run never reaches the level (no matched comparison)."""
    rows = []
    for metrics, prompts in runs:
        at = prompts_at_matched(metrics, prompts, target, by)
        if at is None:
            return None
        rows.append((at[base_j1.index] - base_j1).to_numpy())
    return np.asarray(rows)
