"""The verdict rules: every branch, with data built to hold, fail and be inconclusive."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from passk_companion.evidence import verdicts as v


def test_decide_interval_branches():
    assert v.decide_interval(0.1, 0.3, 0.0, "greater") == "holds"
    assert v.decide_interval(-0.3, -0.1, 0.0, "greater") == "fails"
    assert v.decide_interval(-0.1, 0.3, 0.0, "greater") == "inconclusive"
    assert v.decide_interval(-0.3, -0.1, 0.0, "less") == "holds"
    assert v.decide_interval(0.1, 0.3, 0.0, "less") == "fails"
    assert v.decide_interval(-0.1, 0.3, 0.0, "less") == "inconclusive"
    assert v.decide_interval(math.nan, 1.0, 0.0, "greater") == "inconclusive"
    with pytest.raises(ValueError, match="direction"):
        v.decide_interval(0, 1, 0, "up")


def test_mean_over_seeds_matches_scipy_t_interval():
    x = np.array([0.21, 0.35, 0.18, 0.29, 0.4])
    d = v.mean_over_seeds(x, null=0.1)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (d.low, d.high) == pytest.approx((lo, hi), rel=1e-12)
    assert d.verdict == "holds" and d.seeds == 5 and d.kind == "empirical"


@pytest.mark.parametrize(
    ("values", "direction", "verdict"),
    [
        ([1.0, 1.2, 0.9], "greater", "holds"),
        ([-1.0, -1.2, -0.9], "greater", "fails"),
        ([1.0, -1.2, 0.3], "greater", "inconclusive"),  # built to straddle the null
        ([-1.0, -1.2, -0.9], "less", "holds"),
        ([0.5, 0.5, 0.5], "greater", "holds"),  # no spread: the point decides
        ([0.0, 0.0, 0.0], "greater", "inconclusive"),
    ],
)
def test_mean_over_seeds_branches(values, direction, verdict):
    assert v.mean_over_seeds(values, direction=direction).verdict == verdict


def test_mean_over_seeds_refuses_too_few_seeds_and_bad_values():
    with pytest.raises(ValueError, match="at least 3 seeds"):
        v.mean_over_seeds([1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        v.mean_over_seeds([1.0, math.nan, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        v.mean_over_seeds([1.0, 2.0, 3.0], confidence=1.5)


def test_paired_bootstrap_branches_and_seed_axis():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, size=(3, 60))
    up = v.paired_bootstrap(base + 0.2 + rng.normal(0, 0.05, base.shape), base)
    down = v.paired_bootstrap(base - 0.2, base)
    noise = v.paired_bootstrap(base + rng.normal(0, 0.5, base.shape), base, seed=1)
    assert (up.verdict, down.verdict) == ("holds", "fails")
    assert noise.verdict == "inconclusive" and noise.low < 0 < noise.high
    assert up.seeds == 3 and "60 prompts" in up.method
    with pytest.raises(ValueError, match="at least 3 seeds"):
        v.paired_bootstrap(base[:2], base[:2])
    with pytest.raises(ValueError, match="share a shape"):
        v.paired_bootstrap(base, base[:, :5])


def test_paired_bootstrap_is_reproducible_and_covers_the_mean():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.1, 1, 200), rng.normal(0, 1, 200)
    d1, d2 = v.paired_bootstrap(a, b, seed=5), v.paired_bootstrap(a, b, seed=5)
    assert (d1.low, d1.high) == (d2.low, d2.high)
    assert d1.low < (a - b).mean() < d1.high


def test_proportion_wilson_interval():
    d = v.proportion(40, 50, null=0.5)
    assert d.verdict == "holds" and 0.66 < d.low < 0.68 and 0.88 < d.high < 0.89
    assert v.proportion(5, 50, null=0.5).verdict == "fails"
    assert v.proportion(26, 50, null=0.5).verdict == "inconclusive"
    assert v.proportion(0, 10, null=0.5).low == 0.0
    with pytest.raises(ValueError, match="successes"):
        v.proportion(11, 10)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400), st.floats(0.0, 1.0))
def test_wilson_interval_contains_the_estimate(total, frac):
    k = int(round(frac * total))
    d = v.proportion(k, total)
    assert 0.0 <= d.low <= k / total <= d.high <= 1.0


def test_exact_checks():
    assert v.exact(True).verdict == "holds" and v.exact(False, kind="numerical").verdict == "fails"
    assert v.exact(True).interval == ""
    with pytest.raises(ValueError, match="interval rule"):
        v.exact(True, kind="empirical")
    with pytest.raises(ValueError, match="bool"):
        v.exact(0.5)


def test_conjunction_branches():
    h, f = v.exact(True), v.exact(False)
    inc = v.mean_over_seeds([1.0, -1.0, 0.1])
    emp = v.mean_over_seeds([1.0, 1.1, 0.9])
    assert v.conjunction([h, emp]).verdict == "holds"
    assert v.conjunction([h, emp]).kind == "empirical" and v.conjunction([h, emp]).seeds == 3
    assert v.conjunction([f, f]).verdict == "fails"
    assert v.conjunction([h, f]).verdict == "partly"
    assert v.conjunction([f, inc]).verdict == "fails"
    assert v.conjunction([h, inc]).verdict == "inconclusive"
    assert v.conjunction([h, h]).kind == "identity"
    with pytest.raises(ValueError):
        v.conjunction([])


def test_a_conjunction_of_checks_without_values_describes_its_parts():
    parts = [v.exact(True, statistic="symbolic residuals"), v.exact(False, statistic="autograd")]
    text = v.conjunction(parts).describe()
    assert "nan" not in text
    assert "symbolic residuals (exact) -> holds" in text and "autograd (exact) -> fails" in text
    assert text.endswith("-> partly")


def test_equivalence_branches():
    inside = v.equivalence([0.95, 0.97, 0.99], target=1.0, margin=0.25)
    outside = v.equivalence([0.2, 0.25, 0.3], target=1.0, margin=0.25)
    wide = v.equivalence([0.2, 0.9, 1.5], target=1.0, margin=0.25)
    assert (inside.verdict, outside.verdict, wide.verdict) == ("holds", "fails", "inconclusive")
    assert "equivalence" in inside.method and inside.kind == "empirical"
    with pytest.raises(ValueError, match="margin"):
        v.equivalence([1.0, 1.0, 1.0], target=1.0, margin=0.0)


def test_alternatives_branches():
    up, down, unsure = (
        v.mean_over_seeds([0.9, 0.8, 0.85], null=0.5),
        v.mean_over_seeds([0.1, 0.2, 0.15], null=0.5),
        v.mean_over_seeds([0.1, 0.9, 0.5], null=0.5),
    )
    assert v.alternatives(up, down).verdict == "holds"
    assert v.alternatives(down, up).verdict == "fails"
    assert v.alternatives(unsure, unsure).verdict == "inconclusive"
    assert v.alternatives(down, unsure).verdict == "inconclusive"  # not established either way
    with pytest.raises(ValueError, match="both"):
        v.alternatives(up, up)


def test_outcome_of_two_exclusive_alternatives():
    up, down, unsure = (
        v.mean_over_seeds([0.9, 0.8, 0.85], null=0.5),
        v.mean_over_seeds([0.1, 0.2, 0.15], null=0.5),
        v.mean_over_seeds([0.1, 0.9, 0.5], null=0.5),
    )
    assert v.outcome(up, down) == "claim" and v.outcome(down, up) == "rival"
    assert v.outcome(down, down) == "neither"  # both fail: a stall
    assert v.outcome(unsure, down) == "undecided" and v.outcome(unsure, unsure) == "undecided"
    assert set(v.OUTCOMES) == {"claim", "rival", "neither", "undecided"}
    with pytest.raises(ValueError, match="both"):
        v.outcome(up, up)


def test_mass_over_seeds_is_a_log_odds_t_interval_inside_the_unit_interval():
    masses = np.array([0.995, 0.994, 0.0835])  # two seeds escape, one does not
    d = v.mass_over_seeds(masses, null=0.25, baseline=0.09, statistic="gain")
    logit = np.log(masses / (1 - masses))
    half = stats.t.ppf(0.975, 2) * logit.std(ddof=1) / math.sqrt(3)
    expit = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert d.estimate == pytest.approx(expit(logit.mean()) - 0.09, abs=1e-14)
    assert d.low == pytest.approx(expit(logit.mean() - half) - 0.09, abs=1e-14)
    assert d.high == pytest.approx(expit(logit.mean() + half) - 0.09, abs=1e-14)
    assert -0.09 <= d.low <= d.estimate <= d.high <= 1 - 0.09
    assert d.verdict == "inconclusive" and d.kind == "empirical" and d.seeds == 3
    assert "log-odds" in d.method
    # the Student t interval on the raw masses leaves [0, 1]; this one does not
    t = v.mean_over_seeds(masses)
    assert t.low < 0 or t.high > 1
    # decisions on the gain scale, and a point interval when every seed agrees
    assert v.mass_over_seeds([0.9, 0.91, 0.92], null=0.25, baseline=0.09).verdict == "holds"
    assert v.mass_over_seeds([0.01, 0.02, 0.015], null=0.25, baseline=0.09).verdict == "fails"
    less = v.mass_over_seeds([0.01, 0.02, 0.015], null=0.25, direction="less", baseline=0.09)
    assert less.verdict == "holds"
    same = v.mass_over_seeds([0.3, 0.3, 0.3])
    assert same.low == same.estimate == same.high == pytest.approx(0.3)


@given(
    st.lists(st.floats(1e-9, 1 - 1e-9), min_size=3, max_size=12),
    st.floats(0, 1),
)
@settings(max_examples=200, deadline=None)
def test_mass_interval_stays_within_the_range_of_a_gain(masses, baseline):
    d = v.mass_over_seeds(masses, baseline=baseline)
    assert -baseline - 1e-15 <= d.low <= d.estimate <= d.high <= 1 - baseline + 1e-15


@pytest.mark.parametrize(
    ("masses", "kwargs", "msg"),
    [
        ([0.0, 0.5, 0.6], {}, "strictly between 0 and 1"),
        ([1.0, 0.5, 0.6], {}, "strictly between 0 and 1"),
        ([0.4, 0.5], {}, "at least 3 seeds"),
        ([0.4, 0.5, 0.6], {"baseline": 1.5}, "baseline"),
        ([0.4, 0.5, 0.6], {"direction": "up"}, "direction"),
    ],
)
def test_mass_over_seeds_refuses_bad_values(masses, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        v.mass_over_seeds(masses, **kwargs)


def test_margin_in_standard_errors_and_fragility():
    # interval [0.1, 2.1] around 1.1 with z = 1.96: SE = 2 / 3.92; the lower edge is 0.1 from 0
    d = v.Decision("holds", "empirical", "x", 1.1, 0.1, 2.1, 0.0, "greater", 5, "t")
    assert d.margin_se == pytest.approx(0.1 / (2.0 / (2 * 1.959963984540054)))
    assert d.fragile
    far = v.mean_over_seeds([5.0, 5.1, 4.9, 5.05, 4.95])
    assert far.margin_se > 10 and not far.fragile
    # an equivalence decision is measured against the nearer end of its band
    eq = v.equivalence([1.0, 1.01, 0.99, 1.0], target=1.0, margin=0.02)
    se = (eq.high - eq.low) / (2 * 1.959963984540054)
    assert eq.band == 0.02
    assert eq.margin_se == pytest.approx(min(eq.low - 0.98, 1.02 - eq.high) / se)
    assert math.isnan(v.exact(True).margin_se) and not v.exact(True).fragile


def test_nested_bootstrap_variance_matches_the_level_that_varies():
    rng = np.random.default_rng(0)
    bases = rng.normal(size=8)
    # only the bases differ: the bootstrap variance of the mean is var_pop(bases) / 8
    groups = [np.broadcast_to(bases[:, None, None], (8, 3, 5)).copy()]
    estimate, draws = v.nested_bootstrap(groups, resamples=20_000, seed=1)
    assert estimate == pytest.approx(bases.mean())
    assert draws.var() == pytest.approx(bases.var() / 8, rel=0.05)
    # only the seeds differ (one base): var_pop(seeds) / 6
    seeds = rng.normal(size=6)
    _, draws = v.nested_bootstrap([seeds[None, :, None] * np.ones((1, 1, 4))], resamples=20_000)
    assert draws.var() == pytest.approx(seeds.var() / 6, rel=0.05)
    # two graphs with different prompt counts: the grand mean averages the graphs' means
    g0, g1 = np.zeros((2, 2, 3)), np.ones((2, 2, 7))
    assert v.nested_bootstrap([g0, g1], resamples=200)[0] == 0.5
    with pytest.raises(ValueError, match="finite"):
        v.nested_bootstrap([np.full((1, 1, 2), np.nan)])


def test_paired_bootstrap_with_seeds_puts_the_seed_variance_in_the_interval():
    a = np.zeros((5, 40))
    a[0] += 1.0  # one seed generalises better on every prompt
    b = np.zeros((5, 40))
    d = v.paired_bootstrap(a, b, statistic="x")
    assert d.estimate == pytest.approx(0.2)
    assert d.low < 0.05 and d.high > 0.35  # the run-level effect shows (averaging first: width 0)
    assert d.verdict == "inconclusive"


def _hyp(p_target, claim="greater", margin=None, n=999):
    """A hypothesis whose bootstrap p-value is exactly p_target (draws below the null)."""
    below = round(p_target * (n + 1)) - 1
    draws = np.r_[np.full(below, -1.0), np.full(n - below, 1.0)]
    return v.Hypothesis("s", 1.0, draws, claim, margin=margin)


def test_holm_step_down_against_a_brute_force_reference():
    ps = [0.001, 0.04, 0.012, 0.3, 0.02]
    hyps = [_hyp(p) for p in ps]
    decisions = v.decide_family(hyps, alpha=0.05)
    # Holm by hand: sorted 0.001 <= .05/5, 0.012 <= .05/4, 0.02 <= .05/3? no (0.0167): stop
    assert [d.verdict for d in decisions] == [
        "holds", "inconclusive", "holds", "inconclusive", "inconclusive"
    ]  # fmt: skip
    assert all(h.p_value() == pytest.approx(p, abs=1e-12) for h, p in zip(hyps, ps, strict=True))
    assert decisions[0].confidence == pytest.approx(1 - 2 * 0.05 / 5)


def test_family_equivalence_holds_fails_or_stays_inconclusive():
    rng = np.random.default_rng(2)
    inside = v.Hypothesis("in", 0.0, rng.normal(0, 0.01, 2000), "equivalent", margin=0.1)
    outside = v.Hypothesis("out", 0.5, rng.normal(0.5, 0.01, 2000), "equivalent", margin=0.1)
    wide = v.Hypothesis("wide", 0.0, rng.normal(0, 0.2, 2000), "equivalent", margin=0.1)
    got = [d.verdict for d in v.decide_family([inside, outside, wide])]
    assert got == ["holds", "fails", "inconclusive"]
    with pytest.raises(ValueError, match="margin"):
        v.Hypothesis("x", 0.0, np.zeros(200), "equivalent")


def test_an_untested_decision_says_so():
    nan = math.nan
    d = v.Decision("inconclusive", "empirical", "x: 1 of 9 runs reach it", nan, nan, nan, 0.0,
                   "greater", 9, "the pre-registered rule")  # fmt: skip
    assert d.interval == "not tested"
    assert (
        d.describe()
        == "x: 1 of 9 runs reach it: not tested (the pre-registered rule) -> inconclusive"
    )
    assert not d.fragile


def test_within_prints_its_bound_and_deterministic_mean_is_numerical():
    d = v.within(3e-16, "float64", statistic="max |x - y|")
    assert d.verdict == "holds" and d.describe() == "max |x - y| < 1e-12 (exact) -> holds"
    bad = v.within(2e-12, "float64", statistic="max |x - y|")
    assert bad.verdict == "fails" and "2e-12" in bad.describe()
    assert v.within(math.nan, 1e-3).verdict == "fails"
    m = v.deterministic_mean([-0.5, -0.1, 0.2], direction="less", statistic="change")
    assert m.kind == "numerical" and m.verdict == "holds" and "67% of 3 prompts" in m.method
    assert v.deterministic_mean([0.1, -0.05], direction="less").verdict == "fails"
    assert v.bonferroni_z(1, 0.05) == pytest.approx(stats.norm.ppf(0.975))


def test_within_margin_decides_any_interval_by_inclusion():
    """Two one-sided tests by interval inclusion, on the interval of a bootstrap decision."""
    rng = np.random.default_rng(0)
    near = rng.normal(0.0, 0.05, size=200)
    d = v.paired_bootstrap(near, np.zeros_like(near), statistic="x", seed=0)
    same = v.within_margin(d, 0.1)
    assert same.verdict == "holds" and same.band == 0.1 and same.low == d.low
    assert "claim = 0" in same.describe() and "equivalence within +-0.1" in same.method
    far = rng.normal(1.0, 0.05, size=200)
    assert v.within_margin(v.paired_bootstrap(far, np.zeros_like(far)), 0.1).verdict == "fails"
    assert v.within_margin(d, 0.001).verdict == "inconclusive"
    with pytest.raises(ValueError, match="margin must be finite and > 0"):
        v.within_margin(d, 0.0)
    with pytest.raises(ValueError, match="empirical directional decision"):
        v.within_margin(same, 0.1)
