"""The saturation experiment's analysis against exact references: curves read at first crossings,
the whole-curve estimand, matched levels, graph means, the Student t family, variance
components, the power simulation, the binomial zero-update prediction and the strict loader."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from passk_companion.evidence import saturation as S
from passk_companion.evidence import verdicts as vd


def _run(variant, graph, x, y, base=0, seed=0, **extra):
    steps = np.arange(len(x)) * 5
    return pd.DataFrame({"variant": variant, "graph": graph, "base": base, "seed": seed,
                         "step": steps, "test_j1": x, "test_modes_eff": y, **extra})  # fmt: skip


def test_a_curve_is_read_at_the_first_crossing_of_each_level():
    x = np.array([0.3, 0.5, 0.4, 0.7])
    y = np.array([3.0, 2.0, 9.0, 1.0])
    got = S.curve(np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.8]), x, y)
    # 0.6 is first reached between the records at 0.4 (y 9) and 0.7 (y 1): 9 - 8 * 2/3
    np.testing.assert_allclose(got[:5], [3.0, 3.0, 2.5, 2.0, 9 - 8 * 2 / 3])
    assert math.isnan(got[5])  # never reached


def test_the_curve_estimand_is_the_mean_difference_over_the_common_range():
    """Linear curves: arm y = 3 - x, reference y = 3 - 2 (x - 0.3) up to J_1 0.5; the common
    range is [0.3, 0.5], the mean difference (x - 0.3) averaged over it is 0.1 - exact on any
    grid symmetric about the middle - and the reference loses 2 (x - 0.3): 0.2 on average."""
    xs = np.linspace(0.3, 0.8, 11)
    arm = _run("a", 1, xs, 3 - xs)
    xr = np.linspace(0.3, 0.5, 5)
    ref = _run("r", 1, xr, 3 - 2 * (xr - 0.3) - 0.3)
    pairs = S.curve_pairs(pd.concat([arm, ref]), "a", "r", points=41)
    row = pairs.iloc[0]
    assert (row.start, row.end) == (0.3, 0.5)
    assert row.difference == pytest.approx(0.1, abs=1e-12)
    assert row.reference_loss == pytest.approx(0.2, abs=1e-12)


def test_every_pair_has_a_curve_value_and_a_level_value_only_if_both_reach_it():
    flat = _run("a", 1, [0.3, 0.3, 0.3], [2.0, 2.0, 2.0])
    rising = _run("r", 1, [0.3, 0.4, 0.5], [2.5, 2.0, 1.5])
    runs = pd.concat([flat, rising])
    curve = S.curve_pairs(runs, "a", "r")
    assert curve.difference.tolist() == [-0.5] and curve.reference_loss.tolist() == [0.0]
    level = S.level_pairs(runs, "a", "r", 0.1)
    assert math.isnan(level.difference.iloc[0])
    base = S.level_pairs(runs, "r", "base", 0.1)
    assert base.difference.iloc[0] == pytest.approx(-0.5)


def test_graph_means_average_the_lower_levels():
    pairs = pd.DataFrame({"graph": [1, 1, 2, 3], "base": [0, 1, 0, 0], "seed": 0,
                          "difference": [1.0, 3.0, math.nan, 5.0]})  # fmt: skip
    assert S.graph_means(pairs).to_dict() == {1: 2.0, 3: 5.0}


@pytest.mark.parametrize("claim,margin", [("greater", None), ("less", None), ("equivalent", 0.5)])
def test_the_t_test_of_graph_means_is_scipys(claim, margin):
    values = np.array([0.1, -0.2, 0.35, 0.05, 0.2, -0.05])
    t = vd.TTest("x", values, claim, margin=margin)
    if claim == "equivalent":
        low = stats.ttest_1samp(values, -margin, alternative="greater").pvalue
        high = stats.ttest_1samp(values, margin, alternative="less").pvalue
        want = max(low, high)
    else:
        want = stats.ttest_1samp(values, 0.0, alternative=claim).pvalue
    assert t.p_value() == pytest.approx(want, rel=1e-12)
    low, high = t.bounds(0.025)
    ci = stats.t.interval(0.95, len(values) - 1, values.mean(), stats.sem(values))
    assert (low, high) == pytest.approx(ci, rel=1e-12)
    with pytest.raises(ValueError, match="at least 3"):
        vd.TTest("x", values[:2], claim, margin=margin)


def test_variance_components_recover_the_simulated_ones():
    rng = np.random.default_rng(0)
    graphs, per = 400, 3
    effect = rng.normal(0, 0.3, graphs).repeat(per)  # between 0.09
    value = effect + rng.normal(0, 0.2, graphs * per)  # within 0.04
    pairs = pd.DataFrame({"graph": np.arange(graphs).repeat(per), "difference": value})
    between, within = S.variance_components(pairs)
    assert between == pytest.approx(0.09, rel=0.15) and within == pytest.approx(0.04, rel=0.1)


def test_power_matches_the_t_interval_it_simulates():
    # no spread: every interval is a point at the truth
    assert S.power(0.0, 1e-12, 10, 1, 0.1, 0.025) == 1.0
    assert S.power(1.0, 0.0, 10, 1, 0.1, 0.025) < 0.01  # sd 1 against a margin of 0.1
    few, many = S.power(0.01, 0.01, 10, 2, 0.1, 0.0125), S.power(0.01, 0.01, 60, 2, 0.1, 0.0125)
    assert few < many
    # at the margin the row decides with at most the one-sided level
    assert S.power(0.01, 0.0, 30, 1, 0.1, 0.05, truth=0.1) <= 0.05 + 0.01


def test_the_zero_update_prediction_is_the_binomial_sum():
    n = 16
    zero = {0, *range(10, 17)}  # pkpo_loo at k = 8: c = 0 or c >= n - k + 2
    got = S.zero_update_prediction([0.0, 0.76, 1.0], n, zero)
    want = [sum(math.comb(n, c) * p**c * (1 - p) ** (n - c) for c in zero) for p in (0.0, 0.76)]
    np.testing.assert_allclose(got, [*want, 1.0], rtol=1e-12)


def _plan(**overrides):
    data = {
        "version": 2, "analysis_commit": "a" * 40, "question": "q", "measure": "test_modes_eff",
        "by": "test_j1", "curve_points": 16, "margin": 0.1, "relative_margin": 0.5,
        "assay_factor": 2.0, "zero_update_margin": 0.05, "reach_fraction": 0.9, "alpha": 0.05,
        "multiplicity": "holm", "interval": "t",
        "primary": [{"id": "p", "arm": "a", "reference": "r", "estimand": "curve",
                     "claim": "equivalent", "margin": "absolute"}],
        "secondary": [{"id": "s", "arm": "a", "reference": "r", "estimand": "level",
                       "gain": 0.1, "claim": "greater"}],
        "design": {"ci": {"grid": "sweeps/x.yaml", "graphs": {"from": 3, "to": 7}, "bases": [0],
                          "seeds": [0]}},
    }  # fmt: skip
    data.update(overrides)
    return data


def test_the_plan_is_read_strictly(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(_plan()))
    plan = S.load_plan(path)
    assert plan.designs["ci"]["graphs"] == (3, 4, 5, 6, 7) and plan.primary[0].margin == "absolute"
    path.write_text(yaml.safe_dump(_plan()) + "margin: 0.5\n")
    with pytest.raises(ValueError, match="duplicate key 'margin'"):
        S.load_plan(path)
    for bad, message in (
        ({"analysis_commit": "abc"}, "40-digit"),
        ({"margin": -1}, "margin must lie in"),
        ({"extra": 1}, "unknown keys \\['extra'\\]"),
        (
            {
                "secondary": [
                    {"id": "p", "arm": "a", "reference": "r", "estimand": "final", "claim": "less"}
                ]
            },
            "unique",
        ),  # fmt: skip
        (
            {
                "primary": [
                    {
                        "id": "q",
                        "arm": "a",
                        "reference": "r",
                        "estimand": "curve",
                        "claim": "equivalent",
                    }
                ]
            },
            "names its margin",
        ),  # fmt: skip
    ):
        path.write_text(yaml.safe_dump(_plan(**bad)))
        with pytest.raises(ValueError, match=message):
            S.load_plan(path)


def test_a_row_whose_reference_does_not_move_is_not_tested(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(_plan()))
    plan = S.load_plan(path)
    row = plan.primary[0]
    pairs = pd.DataFrame({"graph": range(6), "base": 0, "seed": 0,
                          "difference": [0.01, -0.02, 0.0, 0.01, 0.02, -0.01]})  # fmt: skip
    still = pairs.assign(reference_loss=0.1)  # less than 2 x 0.1
    moving = pairs.assign(reference_loss=0.5)
    d = S.decide_rows([row], {"p": still}, plan)["p"]
    assert d.verdict == "inconclusive" and "less than 2 x 0.1" in d.method
    d = S.decide_rows([row], {"p": moving}, plan)["p"]
    assert d.verdict == "holds" and d.seeds == 6 and "Student t over 6 graphs" in d.method


def test_a_relative_margin_is_tested_with_the_error_of_the_reference_loss(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(_plan()))
    plan = S.load_plan(path)
    row = dataclasses.replace(plan.primary[0], margin="relative")
    rng = np.random.default_rng(3)
    pairs = pd.DataFrame({"graph": np.repeat(range(8), 2), "base": np.tile([0, 1], 8), "seed": 0,
                          "difference": 0.01 * rng.standard_normal(16),
                          "reference_loss": 0.1 + 0.01 * rng.standard_normal(16)})  # fmt: skip
    d = S.decide_rows([row], {"p": pairs}, plan)["p"]  # 0.1 < 2 x 0.1, but the margin is relative
    assert d.verdict == "holds" and "relative margin 0.5" in d.method
    assert d.band == pytest.approx(0.5 * pairs.reference_loss.mean())
    g = pairs.groupby("graph")[["difference", "reference_loss"]].mean()
    up = stats.ttest_1samp(g.difference + 0.5 * g.reference_loss, 0, alternative="greater")
    down = stats.ttest_1samp(g.difference - 0.5 * g.reference_loss, 0, alternative="less")
    h = vd.RelativeTTest("x", g.difference.to_numpy(), g.reference_loss.to_numpy(), 0.5)
    assert h.p_value() == pytest.approx(max(up.pvalue, down.pvalue), rel=1e-9)
    still = pairs.assign(reference_loss=-0.01)
    assert "loses -0.01" in S.decide_rows([row], {"p": still}, plan)["p"].method


def test_relative_power_rises_with_the_graphs_and_the_reference_loss():
    rng = np.random.default_rng(0)

    def pilot(loss):
        return pd.DataFrame({"graph": np.repeat(range(6), 2),
                             "difference": 0.05 * rng.standard_normal(12),
                             "reference_loss": loss + 0.05 * rng.standard_normal(12)})  # fmt: skip

    small, large = pilot(0.05), pilot(1.0)
    assert S.relative_power(large, 0.5, 30, 1, 0.0125, simulations=2000) > 0.95
    assert S.relative_power(small, 0.5, 10, 1, 0.0125, simulations=2000) < 0.5
    few = S.relative_power(small, 0.5, 10, 1, 0.0125, simulations=2000)
    many = S.relative_power(small, 0.5, 200, 1, 0.0125, simulations=2000)
    assert many > few


def test_design_power_reads_the_pilot_through_the_registered_rows(tmp_path):
    """A pilot where the reference loses 2 (x - 0.3) and the arm tracks it plus a small graph
    effect: every row's pairs come from the pilot, the assay passes (mean loss 0.3 >= 2 x 0.1)
    and the power rises with the graphs of the design."""
    rng = np.random.default_rng(1)
    xs = np.linspace(0.3, 0.6, 7)
    frames = []
    for graph in range(6):
        for base in (0, 1):
            shift = 0.1 * rng.standard_normal()
            frames.append(_run("r", graph, xs, 3 - 2 * (xs - 0.3), base=base))
            frames.append(_run("a", graph, xs, 3 - 2 * (xs - 0.3) + shift, base=base))
    pilot = pd.concat(frames)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(_plan()))
    plan = S.load_plan(path)
    rows = [dataclasses.replace(plan.primary[0], id=m, margin=m) for m in ("absolute", "relative")]
    few, many = (S.design_power(pilot, rows, plan, g, 1) for g in (4, 40))
    assert few.pairs.tolist() == [12, 12] and few["assay passes"].all()
    assert few["reference loss"].tolist() == pytest.approx([0.3, 0.3])
    assert (many.power > few.power).all() and (many.power > 0.9).all()


def test_the_zero_update_row_compares_each_interval_with_the_prediction_at_its_start():
    n, zero = 4, [0, 4]  # weights vanish with no correct rollout and with all correct
    keys = {"variant": "a", "graph": 1, "base": 0, "seed": 0}
    prompts = pd.DataFrame([{**keys, "step": step, "split": split, "j1": j1}
                            for step, j1s in ((0, (0.5, 0.9)), (5, (0.8, 1.0)))
                            for split in ("train", "test") for j1 in j1s])  # fmt: skip
    predicted = S.zero_update_predicted(prompts, "a", n, zero)

    def share(p):
        return (1 - p) ** n + p**n

    want = [np.mean([share(0.5), share(0.9)]), np.mean([share(0.8), share(1.0)])]
    np.testing.assert_allclose(predicted.predicted, want, rtol=1e-12)
    runs = _run("a", 1, [0.5, 0.6, 0.7], [2.0, 2.0, 2.0], zero_grad_frac=[math.nan, 0.3, 0.6])
    pairs = S.zero_update_pairs(runs, predicted, "a")  # step 10 has no prediction after it
    assert pairs.difference.tolist() == pytest.approx([np.mean([0.3 - want[0], 0.6 - want[1]])])


def test_directional_power_is_the_level_at_no_effect_and_rises_with_it():
    assert S.directional_power(0.01, 0.01, 30, 1, 0.0, 0.05) == pytest.approx(0.05, abs=0.01)
    small, large = (S.directional_power(0.01, 0.01, 30, 1, e, 0.01) for e in (0.02, 0.2))
    assert small < large and large > 0.99
    assert S.directional_power(0.01, 0.01, 30, 1, -0.2, 0.01) == pytest.approx(large, abs=0.01)
