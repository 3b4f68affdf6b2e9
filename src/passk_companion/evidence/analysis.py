"""Analysis of finished tiny-GPT runs: the tables a sweep leaves, read back, compared at equal
progress, and decided by a pre-registration (pandas and numpy only: no torch, no model).

* :func:`read_prompts` / :func:`prompt_table`: per-prompt exact tables (prompts.csv) of one run or
  of many, labelled by RUN_KEYS (variant, graph, base, seed).
* :func:`prompts_at_matched`: each prompt's value where a run first reaches a level of an aggregate
  (the interpolation of passk_companion.evidence.matching.at_matched).
* :func:`matched_table`: one row per run, matched level and test prompt: every measure at the
  run's crossing of "test J_1 = its base's + gain" (level "base" is step 0), with whether the run
  got there and its final KL to the base.
* :func:`decide`: the pre-registered family (passk_companion.evidence.preregistration) decided from
  a matched table: paired differences per (graph, base, seed, prompt), a nested bootstrap
  (passk_companion.evidence.verdicts.nested_bootstrap) and Holm's step-down over the family.
* :func:`log_ratio_fit` / :func:`decide_grad_check`: Theorem 3.1 at fixed parameters.

Notebook 04 calls these on its runs; tests/model/test_stored_evidence.py calls :func:`decide` on
the stored tables of the deciding run and checks it gives the stored verdicts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from passk_companion.evidence import verdicts as vd
from passk_companion.evidence.matching import crossing
from passk_companion.evidence.preregistration import Preregistration, Row

__all__ = [
    "RUN_KEYS",
    "read_prompts",
    "prompt_table",
    "prompts_at_matched",
    "matched_table",
    "hard_prompts",
    "decide",
    "log_ratio_fit",
    "decide_grad_check",
]

RUN_KEYS = ["variant", "graph", "base", "seed"]
PROMPT_COLUMNS = ("j1", "modes_eff", "distinct@64")
_MEASURE_COLUMN = {"test_modes_eff": "modes_eff", "hard_j1_gain": "j1"}


def read_prompts(out_dir: str | Path) -> pd.DataFrame:
    """The per-prompt exact table a run wrote (prompts.csv)."""
    return pd.read_csv(Path(out_dir) / "prompts.csv")


def prompt_table(runs: Iterable[tuple[Mapping[str, object], str | Path]]) -> pd.DataFrame:
    """The per-prompt tables of several runs in one frame, each run's labels (a mapping such as
    {"variant": ..., "graph": ..., "base": ..., "seed": ...}) as the first columns."""
    frames = []
    for labels, folder in runs:
        p = read_prompts(folder)
        for i, (name, value) in enumerate(labels.items()):
            p.insert(i, name, value)
        frames.append(p)
    return pd.concat(frames, ignore_index=True)


def prompts_at_matched(
    metrics: pd.DataFrame,
    prompts: pd.DataFrame,
    target: float,
    by: str = "test_j1",
    split: str = "test",
    column: str = "j1",
) -> pd.Series | None:
    """Each `split` prompt's `column` where the run first reaches `by` >= target, interpolated
    between the two evaluations around the crossing with the weight of the aggregate (the
    crossing of passk_companion.evidence.matching); None if the run never reaches it. metrics /
    prompts: one run's metrics.csv and prompts.csv tables."""
    m = metrics.sort_values("step")
    cross = crossing(m[by].to_numpy(dtype=float), target)
    if cross is None:
        return None
    i0, i1, w = cross
    steps = m.step.to_numpy()
    p = prompts[prompts.split == split]
    before = p[p.step == steps[i0]].set_index("prompt")[column]
    after = p[p.step == steps[i1]].set_index("prompt")[column]
    return before + w * (after - before)


def matched_table(
    runs: pd.DataFrame, prompts: pd.DataFrame, levels: Mapping[str, float]
) -> pd.DataFrame:
    """One row per run (RUN_KEYS), level and test prompt, with each of PROMPT_COLUMNS where the
    run's mean test J_1 first reaches its step-0 value plus the level's gain (interpolated
    between evaluations; level "base" is step 0), the interpolated `step`, `reached` (whether
    the run got there), `final_kl` (the run's last test KL to its base) and `base_j1` (the
    prompt's J_1 at step 0). runs: the sweep's results.csv; prompts: prompt_table of its runs."""
    test = prompts[prompts.split == "test"]
    by_run = dict(tuple(test.groupby(RUN_KEYS, sort=False)))
    out = []
    for keys, m in runs.dropna(subset=["step"]).groupby(RUN_KEYS, sort=False):
        m = m.sort_values("step")
        p = by_run[keys]
        steps = m.step.to_numpy(dtype=float)
        j1 = m.test_j1.to_numpy(dtype=float)
        wide = {c: p.pivot(index="step", columns="prompt", values=c) for c in PROMPT_COLUMNS}
        base_j1 = wide["j1"].loc[steps[0]]
        final_kl = float(m.test_kl.iloc[-1])
        for level, gain in {"base": 0.0, **levels}.items():
            cross = (0, 0, 1.0) if level == "base" else crossing(j1, j1[0] + gain)
            row = pd.DataFrame({"prompt": base_j1.index, "base_j1": base_j1.to_numpy()})
            if cross is None:
                row["step"], row["reached"] = math.nan, False
                for c in PROMPT_COLUMNS:
                    row[c] = math.nan
            else:
                i0, i1, w = cross
                row["step"], row["reached"] = steps[i0] + w * (steps[i1] - steps[i0]), True
                for c in PROMPT_COLUMNS:
                    before, after = wide[c].loc[steps[i0]], wide[c].loc[steps[i1]]
                    row[c] = (before + w * (after - before)).to_numpy()
            for name, value in zip(RUN_KEYS, keys, strict=True):
                row[name] = value
            row["level"], row["final_kl"] = level, final_kl
            out.append(row)
    cols = [*RUN_KEYS, "level", "prompt", "step", "reached", "final_kl", "base_j1", *PROMPT_COLUMNS]
    return pd.concat(out, ignore_index=True)[cols]


def hard_prompts(matched: pd.DataFrame, hard_j1: float) -> pd.DataFrame:
    """(graph, prompt) pairs whose base J_1, averaged over the graph's bases, is below hard_j1."""
    base = matched[matched.level == "base"].drop_duplicates(["graph", "base", "prompt"])
    mean = base.groupby(["graph", "prompt"]).base_j1.mean()
    return mean[mean < hard_j1].reset_index()[["graph", "prompt"]]


def _pairs(matched: pd.DataFrame, row: Row, prereg: Preregistration) -> tuple[pd.DataFrame, int]:
    """The paired per-prompt differences arm - reference of `row` (columns graph, base, seed,
    prompt, value) on the units where both runs reached the level and moved; and how many units
    the arm has."""
    column = _MEASURE_COLUMN[row.measure]
    keys = ["graph", "base", "seed", "prompt"]
    arm = matched[(matched.variant == row.arm) & (matched.level == row.level)]
    if row.reference == "base":
        ref = matched[(matched.variant == row.arm) & (matched.level == "base")]
    else:
        ref = matched[(matched.variant == row.reference) & (matched.level == row.level)]
    both = arm.merge(ref, on=keys, suffixes=("", "_ref"))
    units = arm.drop_duplicates(["graph", "base", "seed"]).shape[0]
    ok = both.reached & both.reached_ref
    ok &= (both.final_kl > prereg.kl_trained) & (both.final_kl_ref > prereg.kl_trained)
    both = both[ok]
    if row.measure == "hard_j1_gain":
        hard = hard_prompts(matched, prereg.hard_j1)
        both = both.merge(hard, on=["graph", "prompt"])
        value = (both[column] - both.base_j1) - (both[f"{column}_ref"] - both.base_j1_ref)
    else:
        value = both[column] - both[f"{column}_ref"]
    return both[keys].assign(value=value.to_numpy()), units


def _groups(pairs: pd.DataFrame) -> list[list[np.ndarray]]:
    """graph -> base -> (seeds, prompts) arrays of the paired differences."""
    groups = []
    for _, g in pairs.groupby("graph", sort=True):
        bases = []
        for _, b in g.groupby("base", sort=True):
            bases.append(b.pivot(index="seed", columns="prompt", values="value").to_numpy())
        groups.append(bases)
    return groups


def _undecided(statistic: str, units: int) -> vd.Decision:
    nan = math.nan
    return vd.Decision("inconclusive", "empirical", statistic, nan, nan, nan, 0.0, "greater",
                       max(units, vd.MIN_SEEDS), "the pre-registered rule")  # fmt: skip


def decide(matched: pd.DataFrame, prereg: Preregistration) -> dict[str, vd.Decision]:
    """Every row of the pre-registered family, decided from a matched table (see the module
    docstring): row id -> Decision. A row whose paired runs reach its level in fewer than
    reach_fraction of the units, or (hard prompts) that has fewer than min_hard_prompts pooled
    hard prompts, is not tested: `inconclusive`, saying why, and counted in the family size."""
    hypotheses, tested, out = [], [], {}
    for row in prereg.family:
        pairs, units = _pairs(matched, row, prereg)
        runs = pairs.drop_duplicates(["graph", "base", "seed"]).shape[0]
        ref = "its base" if row.reference == "base" else row.reference
        what = (
            f"{row.measure} at the {row.level} level (+{prereg.levels[row.level]:g} test J_1), "
            f"{row.arm} minus {ref}"
        )
        n_prompts = pairs.drop_duplicates(["graph", "prompt"]).shape[0]
        if units == 0 or runs < prereg.reach_fraction * units:
            out[row.id] = _undecided(f"{what}: {runs} of {units} paired runs reach it", units)
            continue
        if row.measure == "hard_j1_gain" and n_prompts < prereg.min_hard_prompts:
            out[row.id] = _undecided(
                f"{what}: {n_prompts} hard prompts, fewer than {prereg.min_hard_prompts}", units
            )
            continue
        groups = _groups(pairs)
        estimate, draws = vd.nested_bootstrap(
            groups, resamples=prereg.bootstrap_resamples, seed=prereg.bootstrap_seed
        )
        n_bases = sum(len(g) for g in groups)
        hypotheses.append(
            vd.Hypothesis(
                statistic=what,
                estimate=estimate,
                draws=draws,
                claim=row.claim,
                margin=prereg.equivalence_margin if row.claim == "equivalent" else None,
                seeds=runs,
                method=(
                    f"nested bootstrap over {len(groups)} graphs, {n_bases} bases, {runs} runs, "
                    f"{n_prompts} prompts"
                ),
            )
        )
        tested.append(row.id)
    if hypotheses:
        decided = vd.decide_family(hypotheses, alpha=prereg.alpha, family_size=len(prereg.family))
        out.update(zip(tested, decided, strict=True))
    return {row.id: out[row.id] for row in prereg.family}


def log_ratio_fit(ratio: np.ndarray, alpha: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line log(ratio) = slope log(alpha) + intercept
    across prompts, over the prompts with a positive ratio and alpha (Theorem 3.1 predicts
    ratio = alpha_k(J_1): slope 1, intercept 0)."""
    ratio, alpha = np.asarray(ratio, dtype=float), np.asarray(alpha, dtype=float)
    keep = np.isfinite(ratio) & np.isfinite(alpha) & (ratio > 0) & (alpha > 0)
    if keep.sum() < 3:
        raise ValueError(f"need at least 3 prompts with a positive ratio, got {int(keep.sum())}")
    slope, intercept = np.polyfit(np.log(alpha[keep]), np.log(ratio[keep]), 1)
    return float(slope), float(intercept)


def decide_grad_check(fits: pd.DataFrame, prereg: Preregistration) -> dict[str, vd.Decision]:
    """Slope 1 and intercept 0 of the per-base fits (columns slope, intercept), each an
    equivalence within its pre-registered margin: two one-sided tests at grad_check.alpha, a
    (1 - 2 alpha) Student-t interval over the bases. A Monte Carlo check of an identity
    (Theorem 3.1 at fixed parameters), so its kind is numerical."""
    g = prereg.grad_check
    conf = 1 - 2 * g.alpha
    k = g.k
    bases = len(fits[["graph", "base"]].drop_duplicates()) if "graph" in fits else len(fits)
    unit = "bases" if bases == len(fits) else f"{len(fits)} draws of {bases} bases"
    decided = {
        "slope": vd.equivalence(
            fits.slope.to_numpy(), target=1.0, margin=g.margin_slope, confidence=conf,
            statistic=f"slope of log(|mean grad pkpo_loo| / |mean grad RLOO|) on log alpha_{k}",
            unit=unit,
        ),
        "intercept": vd.equivalence(
            fits.intercept.to_numpy(), target=0.0, margin=g.margin_intercept, confidence=conf,
            statistic=f"intercept of that line (log ratio where alpha_{k} = 1)", unit=unit,
        ),
    }  # fmt: skip
    target = {"slope": 1.0, "intercept": 0.0}
    return {
        name: dataclasses.replace(
            d, kind="numerical", statistic=f"|{d.statistic} - {target[name]:g}|",
            method=f"{d.method}; {d.estimate:.4g}, {round(100 * conf)}% CI "
            f"[{d.low:.4g}, {d.high:.4g}]",
        )
        for name, d in decided.items()
    }  # fmt: skip
