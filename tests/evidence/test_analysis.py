"""Run analysis at equal progress and the pre-registered decisions, on synthetic run tables whose
answers are known by construction; and the pre-registration file's strict reader."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from passk_companion.evidence import analysis, preregistration

ROOT = Path(__file__).resolve().parents[2]
PREREG = ROOT / "params" / "preregistered" / "04.yaml"


def _run(variant, graph, base, seed, j1_curve, modes_curve, prompts=4, kl=1.0):
    """metrics and prompts tables of one run: every prompt has the aggregate's value + offset."""
    steps = np.arange(len(j1_curve)) * 10
    keys = {"variant": variant, "graph": graph, "base": base, "seed": seed}
    metrics = pd.DataFrame({**keys, "step": steps, "test_j1": j1_curve, "test_kl": kl})
    rows = []
    for s, j, m in zip(steps, j1_curve, modes_curve, strict=True):
        for x in range(prompts):
            off = 0.01 * (x - (prompts - 1) / 2)
            rows.append({**keys, "step": s, "split": "test", "prompt": x, "j1": j + off,
                         "modes_eff": m + off, "distinct@64": 2 * m})  # fmt: skip
    return metrics, pd.DataFrame(rows)


def test_matched_table_interpolates_at_the_runs_own_gain():
    metrics, prompts = _run("a", 0, 0, 0, [0.3, 0.4, 0.5], [3.0, 2.0, 1.0])
    t = analysis.matched_table(metrics, prompts, {"early": 0.05, "never": 0.9})
    early = t[t.level == "early"].set_index("prompt")
    # 0.3 + 0.05 is halfway from step 0 to step 10: modes halfway from 3.0 to 2.0
    assert early.step.to_numpy() == pytest.approx([5.0] * 4) and early.reached.all()
    assert early.modes_eff.to_numpy() == pytest.approx(2.5 + 0.01 * (np.arange(4) - 1.5))
    base = t[t.level == "base"].set_index("prompt")
    assert base.modes_eff.to_numpy() == pytest.approx(3.0 + 0.01 * (np.arange(4) - 1.5))
    never = t[t.level == "never"]
    assert not never.reached.any() and never.modes_eff.isna().all()


def _design(effect, noise, graphs=3, bases=3, seeds=3, reach=True, kl=1.0, hard_offset=0.0):
    """rloo and pkpo runs whose modes at every level differ by `effect` (+ per-seed noise)."""
    rng = np.random.default_rng(0)
    runs, prompts = [], []
    for g in range(graphs):
        for b in range(bases):
            for s in range(seeds):
                for variant, delta in (("rloo", 0.0), ("pkpo", effect + noise * rng.normal())):
                    j1 = [0.3, 0.4, 0.5] if reach or variant == "rloo" else [0.3, 0.31, 0.32]
                    modes = [3.0, 2.0 + delta, 1.5 + delta]
                    m, p = _run(variant, g, b, s, j1, modes, kl=kl)
                    if variant == "pkpo":
                        p.loc[p.step > 0, "j1"] += hard_offset
                    runs.append(m)
                    prompts.append(p)
    return pd.concat(runs), pd.concat(prompts)


def _prereg(**changes):
    pre = preregistration.load(PREREG)
    family = (
        preregistration.Row("eq", "pkpo", "rloo", "early", "equivalent", "test_modes_eff"),
        preregistration.Row("more", "pkpo", "rloo", "late", "greater", "test_modes_eff"),
        preregistration.Row("fall", "rloo", "base", "late", "less", "test_modes_eff"),
    )
    return dataclasses.replace(pre, family=family, bootstrap_resamples=2000, **changes)


def test_decide_equivalence_holds_for_equal_arms_and_fails_for_a_large_difference():
    pre = _prereg()
    runs, prompts = _design(effect=0.0, noise=0.01)
    got = analysis.decide(analysis.matched_table(runs, prompts, pre.levels), pre)
    assert got["eq"].verdict == "holds" and got["fall"].verdict == "holds"
    assert got["more"].verdict == "inconclusive"
    assert got["eq"].seeds == 27 and "3 graphs, 9 bases, 27 runs" in got["eq"].method
    runs, prompts = _design(effect=0.5, noise=0.01)
    got = analysis.decide(analysis.matched_table(runs, prompts, pre.levels), pre)
    assert got["eq"].verdict == "fails" and got["more"].verdict == "holds"
    assert got["eq"].estimate == pytest.approx(0.75 * 0.5, abs=0.02)  # the early crossing: w = 0.75


def test_rows_that_cannot_be_tested_say_why_and_count_in_the_family():
    pre = _prereg()
    runs, prompts = _design(effect=0.0, noise=0.01, reach=False)
    got = analysis.decide(analysis.matched_table(runs, prompts, pre.levels), pre)
    assert (
        got["eq"].verdict == "inconclusive"
        and "0 of 27 paired runs reach it" in got["eq"].statistic
    )
    assert math.isnan(got["eq"].estimate)
    runs, prompts = _design(effect=0.0, noise=0.01, kl=0.0)  # no run moved from its base
    got = analysis.decide(analysis.matched_table(runs, prompts, pre.levels), pre)
    assert all(d.verdict == "inconclusive" for d in got.values())


def test_hard_prompt_gain_needs_enough_hard_prompts():
    pre = dataclasses.replace(
        _prereg(min_hard_prompts=3, hard_j1=0.5),
        family=(preregistration.Row("hard", "pkpo", "rloo", "early", "greater", "hard_j1_gain"),),
    )
    runs, prompts = _design(effect=0.0, noise=0.0, hard_offset=0.05)
    matched = analysis.matched_table(runs, prompts, pre.levels)
    assert len(analysis.hard_prompts(matched, 0.5)) == 12  # 4 prompts x 3 graphs below 0.5
    got = analysis.decide(matched, pre)["hard"]
    assert got.verdict == "holds" and got.estimate == pytest.approx(0.75 * 0.05)  # w = 0.75
    few = dataclasses.replace(pre, min_hard_prompts=13)
    assert "fewer than 13" in analysis.decide(matched, few)["hard"].statistic


def test_log_ratio_fit_recovers_slope_and_intercept():
    alpha = np.array([0.1, 0.5, 1.0, 2.0, 4.0])
    slope, intercept = analysis.log_ratio_fit(1.5 * alpha**0.8, alpha)
    assert slope == pytest.approx(0.8) and intercept == pytest.approx(math.log(1.5))
    with pytest.raises(ValueError, match="at least 3"):
        analysis.log_ratio_fit(np.array([1.0, 0.0, -1.0]), np.ones(3))


def test_the_preregistration_is_read_strictly(tmp_path):
    pre = preregistration.load(PREREG)
    assert pre.design["full"].graphs == (1, 2, 3, 4, 5) and len(pre.family) == 12
    assert set(pre.arms()) >= {"rloo", "pkpo_loo_k4", "pkpo_loo_k8", "sgd_rloo"}
    data = yaml.safe_load(PREREG.read_text())
    for change, message in (
        ({"margin": 0.1}, "unknown key(s) ['margin']"),
        ({"equivalence_margin": -0.1}, "equivalence_margin must be > 0"),
        ({"alpha": float("nan")}, "alpha must be finite"),
        ({"multiplicity": "bonferroni"}, "multiplicity must be one of"),
    ):
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump({**data, **change}))
        with pytest.raises(ValueError, match=None) as err:
            preregistration.load(path)
        assert message in str(err.value), str(err.value)
    broken = {**data, "family": [{**data["family"][0], "level": "middle"}]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(ValueError, match="level must be one of"):
        preregistration.load(path)
    missing = {k: v for k, v in data.items() if k != "kl_trained"}
    path.write_text(yaml.safe_dump(missing))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['kl_trained'\]"):
        preregistration.load(path)


@pytest.mark.parametrize(
    ("draws", "unit"), [(1, "Student t over bases"), (2, "6 draws of 3 bases")]
)
def test_the_gradient_check_names_what_its_interval_is_over(draws, unit):
    pre = preregistration.load(PREREG)
    rng = np.random.default_rng(0)
    fits = pd.DataFrame(
        [{"graph": 1, "base": b, "draw": d, "slope": 1 + rng.normal(0, 0.01),
          "intercept": rng.normal(0, 0.01)} for b in range(3) for d in range(draws)]
    )  # fmt: skip
    decided = analysis.decide_grad_check(fits, pre)
    assert all(unit in d.method and d.seeds == 3 * draws for d in decided.values())
    assert decided["slope"].verdict == "holds"


def test_the_column_crossing_is_the_one_series_rule():
    """matching.crossings of a (T, P) table equals matching.crossing of each column, and
    interpolate reads a series there (the one rule behind every equal-progress comparison)."""
    from passk_companion.evidence import matching

    x = np.array([[0.1, 0.5, 0.2, 0.0], [0.3, 0.6, 0.2, 0.1], [0.7, 0.9, 0.4, 0.2]])
    y = np.arange(12.0).reshape(3, 4) ** 2
    i0, i1, w, reached = matching.crossings(x, 0.4)
    for j in range(x.shape[1]):
        one = matching.crossing(x[:, j], 0.4)
        assert (one is None) == (not reached[j])
        if one is not None:
            assert one == (i0[j], i1[j], pytest.approx(w[j]))
    got = matching.interpolate(y, i0, i1, w)
    assert got[1] == y[0, 1]  # starts above the level: its first record
    assert got[0] == pytest.approx(y[1, 0] + 0.25 * (y[2, 0] - y[1, 0]))
    assert got[2] == y[2, 2] and not reached[3]


def test_the_margin_of_notebook_03_is_read_strictly(tmp_path):
    got = preregistration.load_margin(
        ROOT / "params" / "preregistered" / "03.yaml", "passk_keeps_modes_matched"
    )
    assert got.margin == 0.10 and got.confidence == 0.95
    with pytest.raises(ValueError, match="margins has no entry 'other'"):
        preregistration.load_margin(ROOT / "params" / "preregistered" / "03.yaml", "other")
    bad = tmp_path / "m.yaml"
    bad.write_text(
        "version: 1\nrationale: r\nmargins:\n  c: {measure: m, margin: -1, confidence: 0.95}\n"
    )
    with pytest.raises(ValueError, match="c.margin must be > 0"):
        preregistration.load_margin(bad, "c")
