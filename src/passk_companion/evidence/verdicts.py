"""The statistical rules that turn numbers into verdicts: holds / fails / partly / inconclusive.

Every verdict a notebook records comes from one of these functions; cells never hold thresholds of
their own. Three kinds of claim:

* ``identity``  -- true by algebra (a symbolic residual, an exact equality). Checking it verifies
  our code, not the paper: the verdict is ``holds`` or ``fails`` (:func:`exact`).
* ``numerical`` -- an exact or deterministic computation (a closed form, a deterministic update
  rule on a fixed policy): ``holds`` or ``fails`` (:func:`exact`).
* ``empirical`` -- depends on sampled runs. The verdict comes from a two-sided ``confidence``
  interval (95% by default) of the deciding statistic, compared with a null value in a claimed
  direction:

      holds         the interval lies entirely on the claimed side of the null,
      fails         it lies entirely on the other side,
      inconclusive  it contains the null.

  Intervals: Student t over independent seeds (:func:`mean_over_seeds`:
  mean +- t_{0.975, s-1} sd / sqrt(s)); for a mass, share or probability per seed, the same
  interval on the log-odds scale, mapped back, so it stays inside [0, 1]
  (:func:`mass_over_seeds`); a paired percentile bootstrap over prompts, the unit of
  a paired comparison (:func:`paired_bootstrap`, Efron & Tibshirani 1993; the
  stratified-bootstrap practice of rliable, Agarwal et al. 2021, NeurIPS); a Wilson score
  interval for a proportion (:func:`proportion`).
  Thresholds on a sample of random draws use a median or a fraction, never a maximum.

A claim made of several parts is decided by :func:`conjunction` (``partly`` when some parts hold and
some fail).

Named tolerances (:data:`TOLERANCES`) decide exact checks of floating-point results
(:func:`within`), and :func:`bonferroni_z` is the one family-wise threshold for many z-scores:
cells use these, never a number of their own. A check that holds prints its bound ("< 1e-12"),
not the round-off below it, which differs from one CPU to the next.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from passk_companion import validation

__all__ = [
    "KINDS",
    "VERDICTS",
    "DIRECTIONS",
    "Decision",
    "decide_interval",
    "exact",
    "mean_over_seeds",
    "mass_over_seeds",
    "paired_bootstrap",
    "proportion",
    "equivalence",
    "within_margin",
    "alternatives",
    "OUTCOMES",
    "outcome",
    "conjunction",
    "FRAGILE_SE",
    "TOLERANCES",
    "within",
    "bonferroni_z",
    "MC_ALPHA",
    "deterministic_mean",
    "nested_bootstrap",
    "Hypothesis",
    "TTest",
    "RelativeTTest",
    "decide_family",
]

KINDS = ("identity", "numerical", "empirical")
VERDICTS = ("holds", "fails", "partly", "inconclusive")
DIRECTIONS = ("greater", "less")
MIN_SEEDS = 3  # empirical claims need at least this many independent seeds
FRAGILE_SE = 1.0  # a verdict is fragile when an interval edge lies this close (in SE) to a null
TOLERANCES = {
    # float64 round-off of closed forms and short sums (relative or absolute, as the check says)
    "float64": 1e-12,
    # autograd through softmaxes and powers up to k = 256: accumulated round-off
    "autograd": 1e-10,
    # a cosine that should be exactly 1 (collinear gradients), computed in float64
    "cosine": 1e-13,
    # quadrature and fixed points solved to 1e-13
    "quadrature": 1e-13,
    # an exact update that should vanish at a stationary point
    "stationary": 1e-12,
    # a location read off a grid of step 5e-6 (two hundred thousand points on [0, 1])
    "grid": 1e-4,
    # 1 - cos of two exact update paths that are collinear up to the round-off of many steps
    "collinear": 1e-9,
    # a difference that must be material, not round-off: above this
    "material": 1e-6,
}
MC_ALPHA = 1e-3  # family-wise level of the Monte Carlo checks of identities (with bonferroni_z)


@dataclass(frozen=True)
class Decision:
    """A verdict with what decided it.

    statistic: what was estimated ("mean change of hard-prompt pass@64 over seeds", ...).
    estimate, low, high: the point estimate and its interval (low = high = estimate when exact).
    null, direction: the claim is "statistic > null" (direction "greater") or "< null" ("less").
    seeds: the number of independent seeds behind it (0 for an identity).
    method: how the interval was computed.
    band: for an equivalence claim, the margin: the claim is "statistic within null +- band".
    """

    verdict: str
    kind: str
    statistic: str
    estimate: float
    low: float
    high: float
    null: float
    direction: str
    seeds: int
    method: str
    confidence: float = 0.95
    band: float | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")

    @property
    def interval(self) -> str:
        """The interval as text, "[low, high]" (4 significant digits), or "" for an exact check."""
        if self.kind != "empirical":
            return ""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return "not tested"
        return f"[{self.low:.4g}, {self.high:.4g}]"

    @property
    def margin_se(self) -> float:
        """How far the verdict is from changing, in standard errors: the distance from the
        nearer interval edge to the nearest decision point (the null, or the two ends of an
        equivalence band), over SE = (high - low) / (2 z). NaN for exact checks and for an
        interval of zero width."""
        if self.kind != "empirical" or not self.high > self.low:
            return math.nan
        z = float(stats.norm.ppf((1 + self.confidence) / 2))
        se = (self.high - self.low) / (2 * z)
        points = (
            [self.null] if self.band is None else [self.null - self.band, self.null + self.band]
        )
        return min(min(abs(self.low - p), abs(self.high - p)) for p in points) / se

    @property
    def fragile(self) -> bool:
        """An empirical verdict whose interval edge lies within FRAGILE_SE standard errors of a
        decision point: another draw of seeds (or another CPU, before the portable kernels) can
        change it."""
        return self.margin_se < FRAGILE_SE

    def describe(self) -> str:
        """One line: statistic, estimate, interval, null and verdict."""
        side = ">" if self.direction == "greater" else "<"
        if self.method.startswith("equivalence"):
            side = "="
        if self.kind == "empirical" and not math.isfinite(self.estimate):
            return f"{self.statistic}: not tested ({self.method}) -> {self.verdict}"
        if self.kind != "empirical":
            if self.band is not None and self.verdict == "holds":  # a within() check
                return f"{self.statistic} < {self.band:g} ({self.method}) -> {self.verdict}"
            if not math.isfinite(self.estimate):  # a check without a value (exact(ok))
                return f"{self.statistic} ({self.method}) -> {self.verdict}"
            return f"{self.statistic}: {self.estimate:.4g} ({self.method}) -> {self.verdict}"
        return (
            f"{self.statistic}: {self.estimate:.4g}, {round(100 * self.confidence)}% CI "
            f"{self.interval} vs claim {side} {self.null:g} ({self.method}, n = {self.seeds}) "
            f"-> {self.verdict}"
        )


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def decide_interval(low: float, high: float, null: float, direction: str) -> str:
    """holds if [low, high] lies on the claimed side of `null`, fails if on the other side,
    inconclusive if it contains `null` (or is not finite)."""
    _check_direction(direction)
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        return "inconclusive"
    above, below = low > null, high < null
    if direction == "greater":
        return "holds" if above else "fails" if below else "inconclusive"
    return "holds" if below else "fails" if above else "inconclusive"


def exact(
    ok: bool,
    *,
    kind: str = "identity",
    statistic: str = "",
    value: float = float("nan"),
    method: str = "exact",
    seeds: int = 0,
) -> Decision:
    """An identity or a numerical check: holds if `ok`, fails otherwise (never inconclusive)."""
    if kind == "empirical":
        raise ValueError("exact() decides identities and numerical checks; use an interval rule")
    if not isinstance(ok, (bool, np.bool_)):
        raise ValueError(f"ok must be a bool, got {type(ok).__name__}")
    v = float(value)
    return Decision(
        "holds" if ok else "fails", kind, statistic, v, v, v, 0.0, "greater", seeds, method
    )


def within(
    value: float,
    tolerance: str | float,
    *,
    kind: str = "identity",
    statistic: str = "",
    method: str = "exact",
) -> Decision:
    """An exact check "value <= tolerance" of a non-negative error (a residual, a max |difference|):
    holds if it is, fails otherwise. `tolerance` is a name in TOLERANCES or a number. When it
    holds, the description prints the bound ("< 1e-12") instead of the round-off below it."""
    tol = TOLERANCES[tolerance] if isinstance(tolerance, str) else float(tolerance)
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tolerance must be finite and > 0, got {tolerance!r}")
    v = float(value)
    ok = bool(v <= tol)  # NaN fails
    return dataclasses.replace(
        exact(ok, kind=kind, statistic=statistic, value=v, method=method), band=tol
    )


def deterministic_mean(
    values: Sequence[float] | np.ndarray,
    *,
    null: float = 0.0,
    direction: str = "greater",
    statistic: str = "mean over prompts",
) -> Decision:
    """A numerical check of a mean over a deterministic computation (exact flows from fixed
    policies, nothing sampled): holds if the mean lies on the claimed side of `null`, fails
    otherwise; the method reports the share of units on that side."""
    _check_direction(direction)
    x = _values(values, "values")
    if len(x) == 0:
        raise ValueError("deterministic_mean needs at least one value")
    mean = float(x.mean())
    side = x > null if direction == "greater" else x < null
    ok = bool(mean > null) if direction == "greater" else bool(mean < null)
    share = f"exact flows; {side.mean():.0%} of {len(x)} prompts on the claimed side"
    return exact(ok, kind="numerical", statistic=statistic, value=mean, method=share)


def bonferroni_z(tests: int, alpha: float = 1e-3) -> float:
    """The two-sided z threshold that keeps the family-wise error of `tests` z-scores at `alpha`:
    Phi^{-1}(1 - alpha / (2 tests)) (Bonferroni). A check "max |z| <= threshold" of an unbiased
    estimator then fails with probability at most alpha under the CLT."""
    if not validation.is_integer(tests) or tests < 1:
        raise ValueError(f"tests must be an integer >= 1, got {tests!r}")
    _check_confidence(1 - alpha)
    return float(stats.norm.ppf(1 - alpha / (2 * int(tests))))


def _values(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def mean_over_seeds(
    values: Sequence[float] | np.ndarray,
    *,
    null: float = 0.0,
    direction: str = "greater",
    confidence: float = 0.95,
    statistic: str = "mean over seeds",
    min_seeds: int = MIN_SEEDS,
    unit: str = "seeds",
) -> Decision:
    """Student t interval of the mean of one value per independent seed (or other independent
    `unit`: bases, draws; the method names it):

        mean +- t_{(1+confidence)/2, s-1} * sd / sqrt(s),   sd with ddof = 1,

    then :func:`decide_interval`. Needs at least `min_seeds` seeds (3 by default). If every seed
    gives the same value the interval is that point (and decides exactly)."""
    _check_direction(direction)
    _check_confidence(confidence)
    x = _values(values, "values")
    if len(x) < max(2, min_seeds):
        raise ValueError(f"need at least {max(2, min_seeds)} seeds, got {len(x)}")
    mean = float(x.mean())
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    low, high = mean - half, mean + half
    return Decision(
        decide_interval(low, high, null, direction),
        "empirical",
        statistic,
        mean,
        low,
        high,
        float(null),
        direction,
        len(x),
        f"Student t over {unit}",
        confidence,
    )


def mass_over_seeds(
    masses: Sequence[float] | np.ndarray,
    *,
    null: float = 0.5,
    direction: str = "greater",
    baseline: float = 0.0,
    confidence: float = 0.95,
    statistic: str = "mass over seeds",
    min_seeds: int = MIN_SEEDS,
    unit: str = "seeds",
) -> Decision:
    """Interval of a mass (a share, a probability) from one value per independent seed, that
    stays inside [0, 1]: the Student t interval of the mean log-odds l_s = log(m_s / (1 - m_s)),

        mean(l) +- t_{(1+confidence)/2, s-1} * sd(l) / sqrt(s),

    mapped back by the logistic function. The estimate is the mass at the mean log-odds, which
    lies inside the interval. With `baseline` (a known mass, such as the start of a run) the
    statistic is the gain m - baseline: estimate and interval are shifted by it, so they stay
    inside [-baseline, 1 - baseline], and `null` is on that scale. Then :func:`decide_interval`.
    Every mass must lie strictly between 0 and 1 (a finite log-odds); at least `min_seeds`
    seeds; if every seed gives the same mass the interval is that point."""
    _check_direction(direction)
    _check_confidence(confidence)
    x = _values(masses, "masses")
    if not np.all((x > 0) & (x < 1)):
        raise ValueError(
            f"masses must lie strictly between 0 and 1 (finite log-odds), got {x.tolist()}"
        )
    if not math.isfinite(baseline) or not 0 <= baseline <= 1:
        raise ValueError(f"baseline must be a mass in [0, 1], got {baseline}")
    if len(x) < max(2, min_seeds):
        raise ValueError(f"need at least {max(2, min_seeds)} seeds, got {len(x)}")
    logit = np.log(x) - np.log1p(-x)
    centre = float(logit.mean())
    half = float(
        stats.t.ppf((1 + confidence) / 2, len(x) - 1) * logit.std(ddof=1) / math.sqrt(len(x))
    )
    est, low, high = (
        float(special.expit(v)) - baseline for v in (centre, centre - half, centre + half)
    )
    return Decision(
        decide_interval(low, high, null, direction),
        "empirical",
        statistic,
        est,
        low,
        high,
        float(null),
        direction,
        len(x),
        f"Student t over {unit} on the log-odds scale",
        confidence,
    )


def paired_bootstrap(
    a: Sequence | np.ndarray,
    b: Sequence | np.ndarray,
    *,
    null: float = 0.0,
    direction: str = "greater",
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
    statistic: str = "mean paired difference over prompts",
    min_seeds: int = MIN_SEEDS,
    seeds: int | None = None,
) -> Decision:
    """Paired percentile bootstrap of mean(a - b) over prompts (and seeds).

    a, b: shape (prompts,) or (seeds, prompts), paired by prompt (and by seed). With a seed axis
    both are resampled, seeds and then the prompts that every seed shares
    (:func:`nested_bootstrap`), so a seed whose runs generalise better widens the interval; with
    one axis, prompts are resampled. The interval is the (1 -+ confidence)/2 quantiles of the
    resampled means. With a seed axis, at least `min_seeds` seeds are required. One-dimensional
    data whose prompts come from several independent replicates (tabular prompts share no
    parameters) may say how many with `seeds`."""
    _check_direction(direction)
    _check_confidence(confidence)
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim not in (1, 2):
        raise ValueError(
            f"a and b must share a shape (prompts,) or (seeds, prompts): {a_arr.shape}"
        )
    if not (np.all(np.isfinite(a_arr)) and np.all(np.isfinite(b_arr))):
        raise ValueError("a and b must be finite")
    n_seeds = a_arr.shape[0] if a_arr.ndim == 2 else (seeds or 1)
    if a_arr.ndim == 2 and seeds is not None:
        raise ValueError("seeds is only for one-dimensional data (the seed axis counts itself)")
    if a_arr.ndim == 2 and n_seeds < min_seeds:
        raise ValueError(f"need at least {min_seeds} seeds, got {n_seeds}")
    diff = (a_arr - b_arr).reshape(1, 1, *a_arr.shape[-2:]) if a_arr.ndim == 2 else None
    if a_arr.shape[-1] < 2:
        raise ValueError("need at least 2 prompts to bootstrap")
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100, got {resamples}")
    if diff is None:  # prompts only
        flat = a_arr - b_arr
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(flat), size=(resamples, len(flat)))
        estimate, draws = float(flat.mean()), flat[idx].mean(1)
        method = f"paired bootstrap over {len(flat)} prompts"
    else:
        estimate, draws = nested_bootstrap([diff[0]], resamples=resamples, seed=seed)
        method = f"paired bootstrap over {n_seeds} seeds and {a_arr.shape[1]} prompts"
    alpha = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(draws, [alpha, 1 - alpha]))
    return Decision(
        decide_interval(low, high, null, direction),
        "empirical",
        statistic,
        estimate,
        low,
        high,
        float(null),
        direction,
        n_seeds,
        method,
        confidence,
    )


def nested_bootstrap(
    groups: Sequence[np.ndarray | Sequence[np.ndarray]],
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, np.ndarray]:
    """(grand mean, `resamples` bootstrap means) of values nested as graph > base > seed > prompt.

    groups[g] holds graph g: an array (bases, seeds, prompts), or a list of per-base arrays
    (seeds, prompts) when bases have different numbers of seeds (graphs may have different
    numbers of prompts). The grand mean averages prompts, then seeds, then bases, then graphs.
    Each resample draws graphs with replacement; within each drawn graph its bases, within each
    base its seeds, and the graph's prompts once (the runs of one graph are evaluated on the same
    prompts, so they stay paired): a percentile bootstrap whose spread contains the variance of
    every level (the hierarchical bootstrap of Davison & Hinkley 1997, sec. 3.8)."""
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100, got {resamples}")
    graphs: list[list[np.ndarray]] = []
    for g in groups:
        bases = list(g) if not isinstance(g, np.ndarray) or g.ndim == 3 else [g]
        arrays = [np.asarray(b, dtype=float) for b in bases]
        if not arrays or any(b.ndim != 2 or 0 in b.shape for b in arrays):
            raise ValueError("each graph needs bases of (seeds, prompts) values")
        if len({b.shape[1] for b in arrays}) != 1:
            raise ValueError("the bases of one graph must share its prompts")
        if not all(np.all(np.isfinite(b)) for b in arrays):
            raise ValueError("nested_bootstrap needs finite values")
        graphs.append(arrays)
    if not graphs:
        raise ValueError("nested_bootstrap needs at least one graph")
    rng = np.random.default_rng(seed)
    estimate = float(np.mean([np.mean([b.mean() for b in g]) for g in graphs]))
    draws = np.empty(resamples)
    n_graphs = len(graphs)
    for r in range(resamples):
        total = 0.0
        for gi in rng.integers(0, n_graphs, size=n_graphs):
            bases = graphs[gi]
            prompts = rng.integers(0, bases[0].shape[1], size=bases[0].shape[1])
            chosen = rng.integers(0, len(bases), size=len(bases))
            total += np.mean(
                [
                    bases[b][rng.integers(0, len(bases[b]), size=len(bases[b]))][:, prompts].mean()
                    for b in chosen
                ]
            )
        draws[r] = total / n_graphs
    return estimate, draws


def _check_claim(claim: str, margin: float | None) -> None:
    """A claim is greater, less or equivalent; an equivalence has a finite margin > 0, a
    directional claim none."""
    if claim not in ("greater", "less", "equivalent"):
        raise ValueError(f"claim must be greater, less or equivalent, got {claim!r}")
    if (claim == "equivalent") != (margin is not None):
        raise ValueError("an equivalence claim needs a margin, a directional one none")
    if margin is not None and not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be finite and > 0, got {margin}")


@dataclass(frozen=True)
class Hypothesis:
    """One test of a pre-registered family: the bootstrap draws of its statistic and the claim.

    claim: "greater" or "less" (than `null`), or "equivalent" (within null +- margin)."""

    statistic: str
    estimate: float
    draws: np.ndarray
    claim: str
    null: float = 0.0
    margin: float | None = None
    seeds: int = 0
    method: str = "bootstrap"

    def __post_init__(self) -> None:
        _check_claim(self.claim, self.margin)
        if len(self.draws) < 100 or not np.all(np.isfinite(self.draws)):
            raise ValueError("a hypothesis needs at least 100 finite bootstrap draws")

    def p_value(self) -> float:
        """Bootstrap p-value of the claim's null: (1 + draws on the null's side) / (1 + draws);
        for equivalence the larger of the two one-sided p-values (two one-sided tests)."""
        d, n = np.asarray(self.draws), len(self.draws)
        if self.claim == "greater":
            return (1 + int((d <= self.null).sum())) / (n + 1)
        if self.claim == "less":
            return (1 + int((d >= self.null).sum())) / (n + 1)
        lo, hi = self.null - self.margin, self.null + self.margin
        return (1 + max(int((d <= lo).sum()), int((d >= hi).sum()))) / (n + 1)

    def bounds(self, level: float) -> tuple[float, float]:
        """The percentile interval at one-sided level `level` (confidence 1 - 2 level)."""
        low, high = (float(q) for q in np.quantile(self.draws, [level, 1 - level]))
        return low, high


class _UnitValues:
    """A test over the values of independent top-level units (`values`): its estimate is their
    mean, and they are its `seeds`."""

    values: np.ndarray

    @property
    def estimate(self) -> float:
        return float(np.mean(self.values))

    @property
    def seeds(self) -> int:
        """The number of independent units."""
        return len(self.values)


@dataclass(frozen=True)
class TTest(_UnitValues):
    """One test of a pre-registered family from the values of its independent top-level units
    (graph means), by the Student t distribution of their mean: se = sd / sqrt(n), df = n - 1.

    claim: "greater" or "less" (than `null`), or "equivalent" (within null +- margin: two
    one-sided tests, the larger p-value)."""

    statistic: str
    values: np.ndarray
    claim: str
    null: float = 0.0
    margin: float | None = None
    method: str = "Student t over units"

    def __post_init__(self) -> None:
        _check_claim(self.claim, self.margin)
        v = np.asarray(self.values, dtype=float)
        if len(v) < MIN_SEEDS or not np.all(np.isfinite(v)):
            raise ValueError(f"a t test needs at least {MIN_SEEDS} finite unit values")

    def _se(self) -> tuple[float, int]:
        v = np.asarray(self.values, dtype=float)
        return float(v.std(ddof=1) / math.sqrt(len(v))), len(v) - 1

    def p_value(self) -> float:
        """One-sided t p-value of the claim's null (for equivalence the larger of the two)."""
        se, df = self._se()
        mean = self.estimate
        if se == 0.0:  # every unit equal: the claim holds exactly or not at all
            if self.claim == "equivalent":
                return 0.0 if abs(mean - self.null) < self.margin else 1.0
            above = mean > self.null if self.claim == "greater" else mean < self.null
            return 0.0 if above else 1.0
        if self.claim == "greater":
            return float(stats.t.sf((mean - self.null) / se, df))
        if self.claim == "less":
            return float(stats.t.cdf((mean - self.null) / se, df))
        lo, hi = self.null - self.margin, self.null + self.margin
        return max(
            float(stats.t.sf((mean - lo) / se, df)), float(stats.t.cdf((mean - hi) / se, df))
        )

    def bounds(self, level: float) -> tuple[float, float]:
        """mean -+ t_{1 - level, n - 1} se (confidence 1 - 2 level)."""
        se, df = self._se()
        half = float(stats.t.ppf(1 - level, df)) * se
        return self.estimate - half, self.estimate + half


@dataclass(frozen=True)
class RelativeTTest(_UnitValues):
    """Equivalence within a margin relative to the reference's own effect, |E d| <= ratio E L,
    from each independent unit's pair (d_u, L_u): the difference and the reference's own loss
    (graph means). The margin is estimated, so its error enters the test: two one-sided Student t
    tests on the unit values of d + ratio L (null: mean <= 0) and of d - ratio L (null: mean >= 0),
    the larger p-value (linear in the unknowns, so no ratio estimator is needed). The interval
    reported is that of the mean of d; `margin` is ratio times the mean of L."""

    statistic: str
    values: np.ndarray
    losses: np.ndarray
    ratio: float
    method: str = "Student t over units"

    claim = "equivalent"
    null = 0.0

    def __post_init__(self) -> None:
        d, loss = (np.asarray(x, dtype=float) for x in (self.values, self.losses))
        if d.shape != loss.shape or len(d) < MIN_SEEDS or not np.all(np.isfinite(d)):
            raise ValueError(f"a relative t test needs at least {MIN_SEEDS} finite unit pairs")
        if not np.all(np.isfinite(loss)):
            raise ValueError("the reference's losses must be finite")
        if not (math.isfinite(self.ratio) and 0 < self.ratio <= 1):
            raise ValueError(f"ratio must lie in (0, 1], got {self.ratio}")
        if not self.margin > 0:
            raise ValueError(f"the reference loses nothing on average ({np.mean(loss):.3g})")

    @property
    def margin(self) -> float:
        return float(self.ratio * np.mean(self.losses))

    def p_value(self) -> float:
        """The larger one-sided p-value of mean(d + ratio L) > 0 and of mean(d - ratio L) < 0."""
        d, loss = np.asarray(self.values, dtype=float), np.asarray(self.losses, dtype=float)
        above = TTest(self.statistic, d + self.ratio * loss, "greater").p_value()
        below = TTest(self.statistic, d - self.ratio * loss, "less").p_value()
        return max(above, below)

    def bounds(self, level: float) -> tuple[float, float]:
        """The t interval of the mean of d (confidence 1 - 2 level)."""
        return TTest(self.statistic, self.values, "greater").bounds(level)


def decide_family(
    hypotheses: Sequence[Hypothesis | TTest | RelativeTTest], *, alpha: float = 0.05,
    family_size: int | None = None,
) -> list[Decision]:  # fmt: skip
    """Decide a family of hypotheses with Holm's step-down procedure (Holm 1979) at family-wise
    level `alpha`: sort the p-values, compare the i-th smallest with alpha / (m - i + 1), and stop
    at the first that exceeds it. m is `family_size` when members of the pre-registered family
    could not be tested (they count as not rejected, at the largest ranks), else the number of
    hypotheses. A rejected null `holds` the claim. Each hypothesis is reported
    with the percentile interval at its Holm level a_i (confidence 1 - 2 a_i): a claim not
    established `fails` when that interval lies entirely on the other side of the null
    (directional) or entirely outside the equivalence band, and is `inconclusive` otherwise.
    Hypotheses are bootstrap draws (:class:`Hypothesis`) or unit values (:class:`TTest`,
    :class:`RelativeTTest`)."""
    _check_confidence(1 - alpha)
    if not hypotheses:
        raise ValueError("decide_family needs at least one hypothesis")
    m = len(hypotheses) if family_size is None else family_size
    if m < len(hypotheses):
        raise ValueError(f"family_size {m} is smaller than the {len(hypotheses)} hypotheses")
    p = [h.p_value() for h in hypotheses]
    order = sorted(range(len(hypotheses)), key=lambda i: p[i])
    levels, rejected, stopped = [0.0] * len(hypotheses), [False] * len(hypotheses), False
    for rank, i in enumerate(order):
        levels[i] = alpha / (m - rank)
        if not stopped and p[i] <= levels[i]:
            rejected[i] = True
        else:
            stopped = True
    out = []
    for i, h in enumerate(hypotheses):
        a_i = levels[i]
        low, high = h.bounds(a_i)
        if h.claim == "equivalent":
            lo, hi = h.null - h.margin, h.null + h.margin
            other = high < lo or low > hi
            method = f"equivalence within +-{h.margin:g} ({h.method})"
            direction = "greater"
        else:
            other = high < h.null if h.claim == "greater" else low > h.null
            method = h.method
            direction = h.claim
        verdict = "holds" if rejected[i] else "fails" if other else "inconclusive"
        rank = order.index(i) + 1
        out.append(
            Decision(
                verdict,
                "empirical",
                h.statistic,
                float(h.estimate),
                low,
                high,
                float(h.null),
                direction,
                h.seeds,
                f"{method}; Holm {rank}/{m}, alpha {a_i:.2g}, p {p[i]:.2g}",
                1 - 2 * a_i,
                h.margin,
            )
        )
    return out


def proportion(
    successes: int,
    total: int,
    *,
    null: float = 0.5,
    direction: str = "greater",
    confidence: float = 0.95,
    seeds: int = 1,
    statistic: str = "fraction",
) -> Decision:
    """Wilson score interval of a proportion successes / total (Wilson 1927), then
    :func:`decide_interval`. `seeds` records how many independent seeds the draws came from."""
    _check_direction(direction)
    _check_confidence(confidence)
    if isinstance(total, bool) or int(total) != total or total < 1:
        raise ValueError(f"total must be an integer >= 1, got {total}")
    if int(successes) != successes or not 0 <= successes <= total:
        raise ValueError(f"successes must be an integer in [0, total], got {successes}")
    z = float(stats.norm.ppf((1 + confidence) / 2))
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    # clamp to [0, 1] and to the estimate (round-off at k = 0 or k = total)
    low, high = min(max(0.0, centre - half), p), max(min(1.0, centre + half), p)
    return Decision(
        decide_interval(low, high, null, direction),
        "empirical",
        statistic,
        p,
        low,
        high,
        float(null),
        direction,
        seeds,
        f"Wilson interval over {total} draws",
        confidence,
    )


def equivalence(
    values: Sequence[float] | np.ndarray,
    *,
    target: float,
    margin: float,
    confidence: float = 0.95,
    statistic: str = "mean over seeds",
    min_seeds: int = MIN_SEEDS,
    unit: str = "seeds",
) -> Decision:
    """An equivalence claim, "the statistic equals `target` within +- `margin`" (margin fixed in
    advance), by interval inclusion (Schuirmann's two one-sided tests; the 95% interval used here
    is more conservative than their usual 90%):

        holds         the Student-t interval over seeds lies inside [target - margin,
                      target + margin],
        fails         it lies entirely outside that band,
        inconclusive  otherwise.
    """
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be finite and > 0, got {margin}")
    d = mean_over_seeds(
        values, null=target, confidence=confidence, statistic=statistic, min_seeds=min_seeds,
        unit=unit,
    )  # fmt: skip
    return within_margin(d, margin)


def within_margin(decision: Decision, margin: float) -> Decision:
    """The equivalence claim "the statistic equals decision.null within +- `margin`" decided on
    the interval of an empirical `decision` (a Student t over seeds, a paired bootstrap over
    prompts), by interval inclusion (Schuirmann's two one-sided tests):

        holds         the interval lies inside [null - margin, null + margin],
        fails         it lies entirely outside that band,
        inconclusive  otherwise (or an interval that is not finite).

    The margin is fixed in advance (a params file), never chosen from the interval."""
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be finite and > 0, got {margin}")
    if decision.kind != "empirical" or decision.band is not None:
        raise ValueError("within_margin decides the interval of an empirical directional decision")
    lo_band, hi_band = decision.null - margin, decision.null + margin
    low, high = decision.low, decision.high
    if not (math.isfinite(low) and math.isfinite(high)):
        verdict = "inconclusive"
    elif lo_band <= low and high <= hi_band:
        verdict = "holds"
    elif high < lo_band or low > hi_band:
        verdict = "fails"
    else:
        verdict = "inconclusive"
    return dataclasses.replace(
        decision,
        verdict=verdict,
        method=f"equivalence within +-{margin:g} ({decision.method})",
        band=margin,
    )


def alternatives(claim: Decision, rival: Decision) -> Decision:
    """Two outcomes that exclude each other, each tested on its own (e.g. "escapes to the global
    optimum" against "is trapped at the local one"): holds if `claim` holds, fails if `rival`
    holds instead, inconclusive if neither is established (a run still undecided). The interval
    reported is the claim's."""
    if claim.verdict == "holds" and rival.verdict == "holds":
        raise ValueError("both alternatives hold: they were meant to exclude each other")
    verdict = (
        "holds"
        if claim.verdict == "holds"
        else "fails"
        if rival.verdict == "holds"
        else ("inconclusive")
    )
    return dataclasses.replace(
        claim, verdict=verdict, method=f"{claim.method}; rival: {rival.statistic}"
    )


OUTCOMES = ("claim", "rival", "neither", "undecided")


def outcome(claim: Decision, rival: Decision) -> str:
    """Which of two outcomes that exclude each other the intervals establish (e.g. "escapes to
    the global optimum" against "is trapped at the local one"): "claim" or "rival" when that one
    holds, "neither" when both fail (each interval lies on the far side of its null: the run
    neither escapes nor is trapped, it stalls), "undecided" otherwise. :func:`alternatives`
    turns the same pair into a verdict on the claim."""
    if claim.verdict == "holds" and rival.verdict == "holds":
        raise ValueError("both alternatives hold: they were meant to exclude each other")
    if claim.verdict == "holds":
        return "claim"
    if rival.verdict == "holds":
        return "rival"
    if claim.verdict == "fails" and rival.verdict == "fails":
        return "neither"
    return "undecided"


def conjunction(parts: Sequence[Decision], statistic: str | None = None) -> Decision:
    """A claim made of several parts: holds if every part holds; partly if some part fails and
    another holds (or a part is itself partly); fails if some part fails and none holds;
    inconclusive otherwise (some part undecided, none failing). The kind is the weakest of the
    parts (empirical > numerical > identity), seeds the smallest, and the interval that of the
    first undecided or failing empirical part (else the first part). The statistic defaults to
    every part's own description."""
    if not parts:
        raise ValueError("conjunction needs at least one part")
    if statistic is None:
        statistic = "all of [" + "; ".join(p.describe() for p in parts) + "]"
    verdicts = [p.verdict for p in parts]
    if all(v == "holds" for v in verdicts):
        verdict = "holds"
    elif "fails" in verdicts and ("holds" in verdicts or "partly" in verdicts):
        verdict = "partly"
    elif "fails" in verdicts:
        verdict = "fails"  # a failing part sinks the claim; the rest are undecided
    elif "partly" in verdicts:
        verdict = "partly"
    else:
        verdict = "inconclusive"
    kind = max((p.kind for p in parts), key=KINDS.index)
    empirical = [p for p in parts if p.kind == "empirical"]
    key = next(
        (p for p in empirical if p.verdict != "holds"), empirical[0] if empirical else parts[0]
    )
    return Decision(
        verdict,
        kind,
        statistic,
        key.estimate,
        key.low,
        key.high,
        key.null,
        key.direction,
        min((p.seeds for p in empirical), default=max(p.seeds for p in parts)),
        "; ".join(dict.fromkeys(p.method for p in parts)),
        key.confidence,
        key.band,
    )
