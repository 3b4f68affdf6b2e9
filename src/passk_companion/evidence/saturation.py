"""The analysis of the saturation experiment (notebook 08, params/preregistered/04_saturation.yaml):
runs trained until train J_1 saturates, compared at equal progress over the whole curve, with
graphs as the independent units (pandas, numpy and scipy only: no torch, no model).

Every run of an arm is paired with the reference run of the same graph, base and RL seed (the
same base model). A run's curve is its measure (effective correct modes, test prompts) as a
function of its test J_1, read at the first crossing of each level (linear between evaluations,
passk_companion.evidence.matching.crossing), from its step-0 value up to the highest level it
reaches.

* :func:`curve_pairs` -- the primary estimand of a pair: the mean over a grid of `points` levels
  of the common test-J_1 range [start, end] (start: the larger step-0 J_1, end: the smaller
  highest J_1 of the two runs) of arm minus reference, defined for every pair (a pair whose
  runs share no range beyond the start has the difference at the start); beside it the
  reference's own loss over the same range, mean of (its value at start - its curve).
* :func:`level_pairs` -- the difference where both runs first reach start + gain (NaN for a pair
  that does not get there), and the reference's loss from its start to that level.
* :func:`graph_means` -- the mean over each graph's pairs (its bases and seeds): the top-level
  units, over which a Student t interval is taken (verdicts.TTest); lower levels are averaged,
  never resampled.
* :func:`zero_update_prediction` -- the share of groups whose objective weights are all zero,
  predicted from J_1 by the binomial law of the number c of correct rollouts in a group of n
  (c ~ Binomial(n, J_1), i.i.d. sampling), for the c at which the objective's weights vanish.
* :func:`power` -- the chance that an equivalence row decides (its interval inside the margin)
  when the true difference is 0, by simulation from a pilot's variance components: between-graph
  and within-graph (between-pair) variances of the pair values, G graphs of B pairs each.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from passk_companion.evidence import verdicts as vd
from passk_companion.evidence.matching import crossing
from passk_companion.files import load_yaml_strict

__all__ = [
    "PAIR_KEYS",
    "curve",
    "curve_pairs",
    "level_pairs",
    "graph_means",
    "zero_update_prediction",
    "variance_components",
    "power",
    "relative_power",
    "directional_power",
    "design_power",
    "zero_update_predicted",
    "zero_update_pairs",
    "Row",
    "Plan",
    "decide_rows",
    "pair_values",
    "load_plan",
]

PAIR_KEYS = ["graph", "base", "seed"]


def curve(levels: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """y at the first crossing of each level by x (linear between records; NaN past the highest
    x reached; y[0] at levels at or below x[0])."""
    out = np.full(len(levels), math.nan)
    for i, level in enumerate(levels):
        cross = crossing(x, level)
        if cross is not None:
            i0, i1, w = cross
            out[i] = y[i1] if i0 == i1 else y[i0] + w * (y[i1] - y[i0])
    return out


def _runs(runs: pd.DataFrame, variant: str, by: str, measure: str) -> dict[tuple, tuple]:
    """(x, y) of each run of `variant`, keyed by PAIR_KEYS, sorted by step."""
    out = {}
    rows = runs[(runs.variant == variant) & runs.step.notna()]
    for keys, r in rows.groupby(PAIR_KEYS, sort=True):
        r = r.sort_values("step")
        out[keys] = (r[by].to_numpy(dtype=float), r[measure].to_numpy(dtype=float))
    return out


def curve_pairs(
    runs: pd.DataFrame,
    arm: str,
    reference: str,
    measure: str = "test_modes_eff",
    by: str = "test_j1",
    points: int = 64,
) -> pd.DataFrame:
    """One row per pair (PAIR_KEYS): start and end of the common range, `difference` (arm minus
    reference, mean over the range) and `reference_loss` (module docstring). runs: a sweep's
    results.csv (variant, graph, base, seed, step and the columns `by`, `measure`)."""
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    a, r = _runs(runs, arm, by, measure), _runs(runs, reference, by, measure)
    rows = []
    for keys in sorted(set(a) & set(r)):
        (xa, ya), (xr, yr) = a[keys], r[keys]
        start, end = max(xa[0], xr[0]), min(xa.max(), xr.max())
        if end > start:
            grid = np.linspace(start, end, points)
            da, dr = curve(grid, xa, ya), curve(grid, xr, yr)
            difference = float(np.mean(da - dr))
            loss = float(np.mean(curve(grid[:1], xr, yr)[0] - dr))
        else:
            difference, loss = float(ya[0] - yr[0]), 0.0
        rows.append({**dict(zip(PAIR_KEYS, keys, strict=True)), "start": start, "end": end,
                     "difference": difference, "reference_loss": loss})  # fmt: skip
    return pd.DataFrame(rows, columns=[*PAIR_KEYS, "start", "end", "difference", "reference_loss"])


def level_pairs(
    runs: pd.DataFrame,
    arm: str,
    reference: str,
    gain: float,
    measure: str = "test_modes_eff",
    by: str = "test_j1",
) -> pd.DataFrame:
    """One row per pair: `difference` (arm minus reference) where both first reach their step-0
    `by` plus `gain`, and `reference_loss` (the reference's value at step 0 minus at the level);
    NaN where either does not get there. reference "base": the arm's own step 0."""
    a = _runs(runs, arm, by, measure)
    r = a if reference == "base" else _runs(runs, reference, by, measure)
    rows = []
    for keys in sorted(set(a) & set(r)):
        (xa, ya), (xr, yr) = a[keys], r[keys]
        va = curve(np.array([xa[0] + gain]), xa, ya)[0]
        vr = yr[0] if reference == "base" else curve(np.array([xr[0] + gain]), xr, yr)[0]
        ref_loss = yr[0] - (curve(np.array([xr[0] + gain]), xr, yr)[0])
        rows.append({**dict(zip(PAIR_KEYS, keys, strict=True)), "difference": va - vr,
                     "reference_loss": ref_loss})  # fmt: skip
    return pd.DataFrame(rows, columns=[*PAIR_KEYS, "difference", "reference_loss"])


def graph_means(pairs: pd.DataFrame, column: str = "difference") -> pd.Series:
    """The mean of `column` over each graph's pairs with a finite value (graph -> mean); graphs
    without one are left out."""
    finite = pairs[np.isfinite(pairs[column].to_numpy(dtype=float))]
    return finite.groupby("graph")[column].mean()


def zero_update_prediction(j1: Sequence[float] | np.ndarray, n: int,
                           zero_counts: Collection[int]) -> np.ndarray:  # fmt: skip
    """For each J_1: the probability that a group of n i.i.d. rollouts gives an all-zero update,
    sum over the counts c of correct rollouts in `zero_counts` (those at which the objective's
    weights all vanish: passk_companion.model.evaluation.zero_weight_counts) of
    Binomial(c; n, J_1)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    zero = sorted(set(zero_counts))
    if any(not 0 <= c <= n for c in zero):
        raise ValueError(f"zero_counts must lie in [0, {n}], got {zero}")
    j1 = np.clip(np.asarray(j1, dtype=float), 0.0, 1.0)
    return stats.binom.pmf(np.array(zero)[:, None], n, j1[None, :]).sum(0)


def variance_components(pairs: pd.DataFrame, column: str = "difference") -> tuple[float, float]:
    """(between-graph variance, within-graph variance) of the pair values, by one-way ANOVA over
    graphs (method of moments, the between part floored at 0): a graph mean of B pairs has
    variance between + within / B."""
    finite = pairs[np.isfinite(pairs[column].to_numpy(dtype=float))]
    groups = [g[column].to_numpy(dtype=float) for _, g in finite.groupby("graph")]
    groups = [g for g in groups if len(g)]
    k = len(groups)
    sizes = np.array([len(g) for g in groups], dtype=float)
    if k < 2 or sizes.sum() <= k:
        raise ValueError("variance components need at least 2 graphs and a graph with 2 pairs")
    grand = np.concatenate(groups).mean()
    within = sum(((g - g.mean()) ** 2).sum() for g in groups) / (sizes.sum() - k)
    between_ms = sum(len(g) * (g.mean() - grand) ** 2 for g in groups) / (k - 1)
    n0 = (sizes.sum() - (sizes**2).sum() / sizes.sum()) / (k - 1)
    return max(0.0, float((between_ms - within) / n0)), float(within)


def power(
    between: float,
    within: float,
    graphs: int,
    pairs: int,
    margin: float,
    level: float,
    truth: float = 0.0,
    simulations: int = 20_000,
    seed: int = 0,
) -> float:
    """The share of simulated designs of `graphs` graphs with `pairs` pairs each, true mean
    difference `truth`, whose t interval over graph means at one-sided level `level`
    (confidence 1 - 2 level) lies inside [-margin, margin]: an equivalence row decided."""
    if graphs < 2 or pairs < 1 or simulations < 100:
        raise ValueError("power needs graphs >= 2, pairs >= 1 and simulations >= 100")
    rng = np.random.default_rng(seed)
    sd = math.sqrt(between + within / pairs)
    means = truth + sd * rng.standard_normal((simulations, graphs))
    centre = means.mean(1)
    half = stats.t.ppf(1 - level, graphs - 1) * means.std(1, ddof=1) / math.sqrt(graphs)
    return float(np.mean((centre - half > -margin) & (centre + half < margin)))


def directional_power(
    between: float,
    within: float,
    graphs: int,
    pairs: int,
    effect: float,
    level: float,
    simulations: int = 20_000,
    seed: int = 0,
) -> float:
    """The share of simulated designs (as in :func:`power`) with true mean difference `effect`
    whose one-sided t test at `level` establishes a difference in the direction of its sign."""
    if graphs < 2 or pairs < 1 or simulations < 100:
        raise ValueError("power needs graphs >= 2, pairs >= 1 and simulations >= 100")
    rng = np.random.default_rng(seed)
    sd = math.sqrt(between + within / pairs)
    means = effect + sd * rng.standard_normal((simulations, graphs))
    t = means.mean(1) / (means.std(1, ddof=1) / math.sqrt(graphs))
    sign = 1.0 if effect >= 0 else -1.0
    return float(np.mean(sign * t > stats.t.ppf(1 - level, graphs - 1)))


def relative_power(
    pairs: pd.DataFrame,
    ratio: float,
    graphs: int,
    per_graph: int,
    level: float,
    simulations: int = 20_000,
    seed: int = 0,
) -> float:
    """The chance that a relative equivalence (verdicts.RelativeTTest: |E d| <= ratio E L) decides
    when the true difference is 0, by simulation: graph means of (d, L) bivariate normal with the
    pilot's mean loss and the covariance between + within / per_graph, each estimated from the
    pilot's pair table (columns graph, difference, reference_loss) by variance_components of d,
    L and d + L."""
    if graphs < 2 or per_graph < 1 or simulations < 100:
        raise ValueError("power needs graphs >= 2, per_graph >= 1 and simulations >= 100")
    both = pairs[np.isfinite(pairs.difference.to_numpy(dtype=float))
                 & np.isfinite(pairs.reference_loss.to_numpy(dtype=float))]  # fmt: skip
    comp = {c: variance_components(both.assign(total=both.difference + both.reference_loss), c)
            for c in ("difference", "reference_loss", "total")}  # fmt: skip
    cov = np.zeros((2, 2))
    for part in (0, 1):  # between, then within (divided by the pairs per graph)
        scale = 1.0 if part == 0 else 1.0 / per_graph
        vd_, vl, vt = (comp[c][part] for c in ("difference", "reference_loss", "total"))
        cross = (vt - vd_ - vl) / 2
        cov += scale * np.array([[vd_, cross], [cross, vl]])
    rng = np.random.default_rng(seed)
    mean = np.array([0.0, float(both.reference_loss.mean())])
    draws = rng.multivariate_normal(mean, cov, size=(simulations, graphs), method="eigh")
    t = stats.t.ppf(1 - level, graphs - 1)
    decided = np.ones(simulations, dtype=bool)
    for sign in (1.0, -1.0):  # d + ratio L > 0, and d - ratio L < 0
        u = draws[..., 0] + sign * ratio * draws[..., 1]
        z = u.mean(1) / (u.std(1, ddof=1) / math.sqrt(graphs))
        decided &= (sign * z) > t
    return float(decided.mean())


def design_power(
    pilot: pd.DataFrame,
    rows: Sequence[Row],
    plan: Plan,
    graphs: int,
    per_graph: int,
    family_size: int | None = None,
) -> pd.DataFrame:
    """For each row of a family: its pilot's pair values (:func:`pair_values` on the pilot's
    results.csv), their variance components, the reference's mean loss, whether an absolute
    margin passes the assay rule, and the power of a design of `graphs` graphs with `per_graph`
    pairs each to decide the row: an equivalence when the true difference is 0 (:func:`power`
    with the absolute margin, :func:`relative_power` with the relative one), a directional row
    when the true difference is the pilot's mean (:func:`directional_power`); at the
    conservative one-sided level plan.alpha / family_size (default len(rows)): the first step
    of Holm's procedure."""
    level = plan.alpha / (family_size or len(rows))
    out = []
    for row in rows:
        pairs = pair_values(pilot, row, plan)
        between, within = variance_components(pairs)
        loss = float(np.nanmean(pairs.reference_loss.to_numpy(dtype=float)))
        effect = float(np.nanmean(pairs.difference))
        if row.claim != "equivalent":
            margin, assay = math.nan, True
            chance = directional_power(between, within, graphs, per_graph, effect, level)
        elif row.margin == "relative":
            margin = plan.relative_margin * loss
            chance = relative_power(pairs, plan.relative_margin, graphs, per_graph, level)
            assay = loss > 0
        else:
            margin = plan.margin
            chance = power(between, within, graphs, per_graph, margin, level)
            assay = loss >= plan.assay_factor * plan.margin
        out.append({"row": row.id, "pairs": int(np.isfinite(pairs.difference).sum()),
                    "mean difference": effect,
                    "between": between, "within": within, "reference loss": loss,
                    "margin": margin, "assay passes": bool(assay), "power": chance})  # fmt: skip
    return pd.DataFrame(out)


def zero_update_predicted(
    prompts: pd.DataFrame, arm: str, n: int, zero_counts: Collection[int]
) -> pd.DataFrame:
    """One row per evaluation of each run of `arm`: `predicted`, the share of all-zero updates
    that :func:`zero_update_prediction` gives for a batch drawn uniformly from its train prompts
    at their exact J_1 (mean over the prompts). prompts: the runs' prompt tables (columns
    PAIR_KEYS, variant, step, split, j1)."""
    train = prompts[(prompts.variant == arm) & (prompts.split == "train")]
    predicted = zero_update_prediction(train.j1.to_numpy(dtype=float), n, zero_counts)
    table = train[[*PAIR_KEYS, "step"]].assign(predicted=predicted)
    return table.groupby([*PAIR_KEYS, "step"], as_index=False).predicted.mean()


def zero_update_pairs(runs: pd.DataFrame, predicted: pd.DataFrame, arm: str) -> pd.DataFrame:
    """One row per run of `arm`: `difference`, the mean over its evaluation intervals of the
    measured share of all-zero updates (zero_grad_frac of the evaluation that ends the interval,
    the mean over its steps) minus the share predicted at the evaluation that starts it
    (:func:`zero_update_predicted`)."""
    rows = []
    by_run = {keys: p.set_index("step").predicted for keys, p in
              predicted.groupby(PAIR_KEYS, sort=True)}  # fmt: skip
    for keys, r in runs[(runs.variant == arm) & runs.step.notna()].groupby(PAIR_KEYS):
        r = r.sort_values("step")
        steps, measured = r.step.to_numpy(), r.zero_grad_frac.to_numpy(dtype=float)
        diffs = measured[1:] - by_run[keys].reindex(steps[:-1]).to_numpy(dtype=float)
        value = float(np.mean(diffs)) if len(diffs) else math.nan
        rows.append({**dict(zip(PAIR_KEYS, keys, strict=True)), "difference": value,
                     "reference_loss": math.nan})  # fmt: skip
    return pd.DataFrame(rows, columns=[*PAIR_KEYS, "difference", "reference_loss"])


# ---- the pre-registration and the decisions -------------------------------------------------

ESTIMANDS = ("curve", "level", "final", "zero_updates")
CLAIMS = ("equivalent", "greater", "less")
MARGINS = ("absolute", "relative")


@dataclass(frozen=True)
class Row:
    """One pre-registered comparison of the saturation experiment: `arm` against `reference`
    (another arm, or "base": the same run at step 0) by `estimand` (module docstring; "final":
    `measure` at the run's last evaluation; "zero_updates": the measured share of all-zero
    updates minus its binomial prediction), with the claimed direction, and for an equivalence
    its margin kind ("absolute": plan.margin; "relative": plan.relative_margin times the
    reference's own loss)."""

    id: str
    arm: str
    reference: str
    estimand: str
    claim: str
    measure: str = "test_modes_eff"
    gain: float | None = None
    margin: str | None = None


@dataclass(frozen=True)
class Plan:
    """The pre-registered rules of the saturation experiment (params/preregistered/
    04_saturation.yaml): the analysis commit that holds this code, the margins, levels of the
    families, the assay rule, and the designs per profile."""

    analysis_commit: str
    measure: str
    by: str
    curve_points: int
    margin: float
    relative_margin: float
    assay_factor: float
    zero_update_margin: float
    reach_fraction: float
    alpha: float
    primary: tuple[Row, ...]
    secondary: tuple[Row, ...]
    designs: dict


def pair_values(runs: pd.DataFrame, row: Row, plan: Plan) -> pd.DataFrame:
    """The pair values of `row` (columns PAIR_KEYS, difference, reference_loss)."""
    if row.estimand == "curve":
        return curve_pairs(runs, row.arm, row.reference, row.measure, plan.by, plan.curve_points)
    if row.estimand == "level":
        return level_pairs(runs, row.arm, row.reference, row.gain, row.measure, plan.by)
    if row.estimand == "final":
        out = []
        for keys, r in runs[(runs.variant == row.arm) & runs.step.notna()].groupby(PAIR_KEYS):
            r = r.sort_values("step")
            out.append({**dict(zip(PAIR_KEYS, keys, strict=True)),
                        "difference": float(r[row.measure].iloc[-1] - r[row.measure].iloc[0]),
                        "reference_loss": math.nan})  # fmt: skip
        return pd.DataFrame(out, columns=[*PAIR_KEYS, "difference", "reference_loss"])
    raise ValueError(f"estimand {row.estimand!r} needs its own table (zero_update_pairs)")


def decide_rows(
    rows: Sequence[Row], values: dict[str, pd.DataFrame], plan: Plan
) -> dict[str, vd.Decision]:
    """A family of rows decided from their pair tables (`values`: row id -> PAIR_KEYS,
    difference, reference_loss): graph means, a Student t over graphs, Holm's step-down over the
    family at plan.alpha. A row is not tested (inconclusive, saying why, counted in the family)
    when fewer than plan.reach_fraction of its pairs have a value, when fewer than 3 graphs do,
    or (equivalence within the absolute margin) when the reference loses less than
    plan.assay_factor times the margin (mean over pairs): there the margin would not bound an
    effect of the reference's size. A relative margin (plan.relative_margin times the
    reference's loss) is tested by verdicts.RelativeTTest, with the loss's own error."""
    tests, tested, out = [], [], {}
    for row in rows:
        pairs = values[row.id]
        finite = np.isfinite(pairs.difference.to_numpy(dtype=float))
        means = graph_means(pairs)
        what = _describe(row, plan)
        if len(pairs) == 0 or finite.mean() < plan.reach_fraction or len(means) < vd.MIN_SEEDS:
            why = f"{int(finite.sum())} of {len(pairs)} pairs, {len(means)} graphs with a value"
            out[row.id] = _not_tested(what, why, len(means))
            continue
        test = _test(row, pairs, means, what, plan)
        if isinstance(test, vd.Decision):
            out[row.id] = test
            continue
        tests.append(test)
        tested.append(row.id)
    if tests:
        out.update(zip(tested, vd.decide_family(tests, alpha=plan.alpha, family_size=len(rows)),
                       strict=True))  # fmt: skip
    return {row.id: out[row.id] for row in rows}


def _test(
    row: Row, pairs: pd.DataFrame, means: pd.Series, what: str, plan: Plan
) -> vd.TTest | vd.RelativeTTest | vd.Decision:
    """The hypothesis of one tested row over graph means, or the not-tested decision of an
    equivalence whose reference does not move enough (absolute margin: by plan.assay_factor times
    the margin; relative margin: at all)."""
    method = f"Student t over {len(means)} graphs"
    if row.claim != "equivalent":
        return vd.TTest(what, means.to_numpy(), row.claim, method=method)
    if row.estimand == "zero_updates":
        return vd.TTest(what, means.to_numpy(), "equivalent", margin=plan.zero_update_margin,
                        method=method)  # fmt: skip
    both = pairs[np.isfinite(pairs.difference.to_numpy(dtype=float))]
    loss = float(np.nanmean(both.reference_loss.to_numpy(dtype=float)))
    if row.margin == "relative":
        if not loss > 0:
            return _not_tested(what, f"the reference loses {loss:.3g}", len(means))
        losses = graph_means(both, "reference_loss").reindex(means.index).to_numpy()
        return vd.RelativeTTest(what, means.to_numpy(), losses, plan.relative_margin,
                                method=f"relative margin {plan.relative_margin:g} x the "
                                f"reference's loss, {method}")  # fmt: skip
    if not loss >= plan.assay_factor * plan.margin:
        why = f"the reference loses {loss:.3g}, less than {plan.assay_factor:g} x {plan.margin:g}"
        return _not_tested(what, why, len(means))
    return vd.TTest(what, means.to_numpy(), "equivalent", margin=plan.margin, method=method)


def _describe(row: Row, plan: Plan) -> str:
    ref = "its base" if row.reference == "base" else row.reference
    if row.estimand == "curve":
        return f"{row.measure} over the common {plan.by} range, mean of {row.arm} minus {ref}"
    if row.estimand == "level":
        return f"{row.measure} at {plan.by} + {row.gain:g} over the base, {row.arm} minus {ref}"
    if row.estimand == "final":
        return f"{row.measure} at the last evaluation minus at step 0, {row.arm}"
    return f"share of all-zero updates minus its binomial prediction, {row.arm}"


def _not_tested(what: str, why: str, units: int) -> vd.Decision:
    nan = math.nan
    return vd.Decision("inconclusive", "empirical", what, nan, nan, nan, 0.0, "greater",
                       max(units, vd.MIN_SEEDS), why)  # fmt: skip


_PLAN_KEYS = {
    "version", "analysis_commit", "question", "measure", "by", "curve_points", "margin",
    "relative_margin", "assay_factor", "zero_update_margin", "reach_fraction", "alpha",
    "multiplicity", "interval", "primary", "secondary", "design", "pilot", "power", "rationale",
}  # fmt: skip
_ROW_KEYS = {"id", "arm", "reference", "estimand", "claim", "measure", "gain", "margin"}
_DESIGN_KEYS = {"grid", "graphs", "bases", "seeds"}
MAX_PLAN_BYTES = 2**20


def _mapping(data: object, where: str, required: set[str], optional: set[str] = frozenset()):
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping")
    unknown = sorted(set(data) - required - optional, key=str)
    missing = sorted(required - set(data))
    if unknown or missing:
        raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing}")
    return data


def _number(value: object, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{where} must lie in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _seeds(value: object, where: str) -> tuple[int, ...]:
    """A list of seeds, or {from: a, to: b} (a .. b inclusive)."""
    if isinstance(value, dict):
        _mapping(value, where, {"from", "to"})
        a, b = (int(_number(value[k], f"{where}.{k}", 0, 2**31)) for k in ("from", "to"))
        if b < a or b - a >= 10_000:
            raise ValueError(f"{where}: from {a} to {b} is not a range of at most 10000 seeds")
        return tuple(range(a, b + 1))
    if not isinstance(value, list) or not value or len(value) > 10_000:
        raise ValueError(f"{where} must be a non-empty list of at most 10000 seeds")
    out = tuple(int(_number(v, where, 0, 2**31)) for v in value)
    if any(isinstance(v, float) and not float(v).is_integer() for v in value) or len(
        set(out)
    ) < len(out):
        raise ValueError(f"{where} must hold distinct integer seeds")
    return out


def _row(data: object, where: str) -> Row:
    d = _mapping(data, where, {"id", "arm", "reference", "estimand", "claim"},
                 {"measure", "gain", "margin"})  # fmt: skip
    for key in ("id", "arm", "reference", "estimand", "claim", "measure", "margin"):
        if key in d and not (isinstance(d[key], str) and 0 < len(d[key]) <= 100):
            raise ValueError(f"{where}.{key} must be a short string")
    if d["estimand"] not in ESTIMANDS or d["claim"] not in CLAIMS:
        raise ValueError(f"{where}: estimand in {ESTIMANDS}, claim in {CLAIMS}")
    gain = d.get("gain")
    if (d["estimand"] == "level") != (gain is not None):
        raise ValueError(f"{where}: a level row has a gain, the others none")
    margin = d.get("margin")
    if (d["claim"] == "equivalent" and d["estimand"] != "zero_updates") != (margin is not None):
        raise ValueError(f"{where}: an equivalence of modes names its margin, the others none")
    if margin is not None and margin not in MARGINS:
        raise ValueError(f"{where}.margin must be one of {MARGINS}")
    gain = None if gain is None else _number(gain, f"{where}.gain", 0.0, 1.0)
    measure = d.get("measure", "test_modes_eff")
    return Row(d["id"], d["arm"], d["reference"], d["estimand"], d["claim"], measure, gain, margin)


def load_plan(path: str | Path) -> Plan:
    """The saturation pre-registration at `path`, read strictly: a regular file of at most
    MAX_PLAN_BYTES, no duplicate keys or aliases, every key known and typed, numbers within
    their bounds, row ids unique; ValueError naming the file and the key otherwise."""
    path = Path(path)
    data = load_yaml_strict(path, "pre-registration", MAX_PLAN_BYTES)
    try:
        return _plan(data)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {' '.join(str(err).split())}") from None


def _plan(data: object) -> Plan:
    d = _mapping(data, "the pre-registration", _PLAN_KEYS - {"pilot", "power", "rationale"},
                 {"pilot", "power", "rationale"})  # fmt: skip
    if d["version"] != 2 or d["multiplicity"] != "holm":
        raise ValueError("version must be 2 and multiplicity holm")
    commit = d["analysis_commit"]
    if not (isinstance(commit, str) and len(commit) == 40 and all(c in "0123456789abcdef"
                                                                   for c in commit)):  # fmt: skip
        raise ValueError("analysis_commit must be a full 40-digit commit hash")
    families = []
    for name in ("primary", "secondary"):
        rows = d[name]
        if not isinstance(rows, list) or not 1 <= len(rows) <= 20:
            raise ValueError(f"{name} must be a list of 1 to 20 rows")
        families.append(tuple(_row(r, f"{name}[{i}]") for i, r in enumerate(rows)))
    ids = [r.id for fam in families for r in fam]
    if len(set(ids)) != len(ids):
        raise ValueError(f"row ids must be unique, got {ids}")
    if not isinstance(d["design"], dict) or not d["design"]:
        raise ValueError("design must map profiles to designs")
    designs = {}
    for profile, design in d["design"].items():
        e = _mapping(design, f"design.{profile}", _DESIGN_KEYS)
        if not isinstance(e["grid"], str) or not e["grid"].startswith("sweeps/"):
            raise ValueError(f"design.{profile}.grid must be a grid file under sweeps/")
        units = {k: _seeds(e[k], f"design.{profile}.{k}") for k in ("graphs", "bases", "seeds")}
        designs[profile] = {"grid": e["grid"], **units}
    points = _number(d["curve_points"], "curve_points", 2, 10_000)
    for key in ("measure", "by"):
        if not isinstance(d[key], str):
            raise ValueError(f"{key} must be a column name")
    return Plan(
        commit, d["measure"], d["by"], int(points),
        _number(d["margin"], "margin", 1e-6, 10), _number(d["relative_margin"],
        "relative_margin", 1e-6, 1), _number(d["assay_factor"], "assay_factor", 0, 10),
        _number(d["zero_update_margin"], "zero_update_margin", 1e-6, 1),
        _number(d["reach_fraction"], "reach_fraction", 0, 1), _number(d["alpha"], "alpha",
        1e-6, 0.5), families[0], families[1], designs,
    )  # fmt: skip
