"""Objective variants: exact formulas (brute force over subsets), the registry, validation, and
the exact-gradient harness. New registered objectives are picked up automatically."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from passk_companion import objectives
from passk_companion.objectives import Objective
from passk_companion.objectives.passk_family import (
    PKPO,
    PKPOLoo,
    max_at_k_estimate,
    max_at_k_weights,
)
from passk_companion.theory import exact, harness, maxk, passk, weights

ALL = objectives.names()
UNBIASED = [n for n in ALL if objectives.get(n).unbiased_for is not None]
# omega(p) is defined for i.i.d. rollouts and weights that depend on (r_i, c) only
EXCHANGEABLE = [
    n for n in ALL if objectives.get(n).sampler == "iid" and not objectives.get(n).needs_logprobs
]
# objectives with a target that accept real-valued rewards (checked on a real reward table too)
REAL_UNBIASED = [n for n in UNBIASED if not objectives.get(n).binary_only]
# deterministic i.i.d. objectives with a target: their exact expectation can be enumerated
ENUMERABLE = [
    n for n in UNBIASED if objectives.get(n).sampler == "iid" and not objectives.get(n).stochastic
]


def some_logprobs(rows):
    """Valid log-probabilities of n distinct rollouts (each 1/(n+1))."""
    return torch.full_like(rows, -math.log(rows.shape[1] + 1))


def all_binary_rows(n):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


def test_registry_lists_the_required_variants():
    required = {
        "pass1_reinforce",
        "grpo",
        "dr_grpo",
        "pkpo",
        "pkpo_loo",
        "passk_chen",
        "risk_seeking",
        "best_of_k_naive",
    }
    assert required <= set(ALL)
    assert {objectives.get(n).unbiased_for for n in ALL} >= {"pass@1", "max@k", None}
    assert objectives.get("pkpo").unbiased_for == objectives.get("pkpo_loo").unbiased_for == "max@k"
    assert set(REAL_UNBIASED) >= {"pkpo", "pkpo_loo", "pass1_reinforce"}


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_pkpo_is_the_subset_average(n):
    """w_i = (1/C(n,k)) sum_{|S|=k, S contains i} max_S r  (all reward patterns, all k)."""
    rows = all_binary_rows(n)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        brute = torch.zeros_like(rows)
        loo = torch.zeros_like(rows)
        for s in subsets:
            best = rows[:, list(s)].max(1).values
            for i in s:
                rest = [j for j in s if j != i]
                best_rest = rows[:, rest].max(1).values if rest else torch.zeros(len(rows))
                brute[:, i] += best
                loo[:, i] += best - best_rest
        brute /= len(subsets)
        loo /= len(subsets)
        torch.testing.assert_close(objectives.get("pkpo").weights(rows, k), brute)
        torch.testing.assert_close(objectives.get("pkpo_loo").weights(rows, k), loo)


@pytest.mark.parametrize(("n", "k"), [(2, 1), (4, 2), (8, 3), (8, 8), (16, 4)])
def test_chen_matches_reference_formula(n, k):
    rows = all_binary_rows(n) if n <= 8 else torch.bernoulli(torch.full((64, n), 0.3))
    got = objectives.get("passk_chen").weights(rows, k)
    for row, w in zip(rows, got, strict=True):
        n_neg = int((row == 0).sum())
        mean = 1 - math.comb(n_neg, k) / math.comb(n, k)
        std = math.sqrt(mean * (1 - mean))
        pos = (1 - mean) / (std + 1e-6)
        # scipy's comb (used by the reference code) is 0 for n_neg - 1 < 0
        c_neg = math.comb(n_neg - 1, k - 1) if n_neg > 0 else 0
        neg = (1 - mean - c_neg / math.comb(n - 1, k - 1)) / (std + 1e-6)
        want = torch.where(row > 0, pos, neg).to(torch.float64) / n
        torch.testing.assert_close(w, want)


def test_group_baselines_match_their_formulas():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0], [0.2, 0.9, 0.4, 0.4, 0.0]], dtype=torch.float64)
    n = r.shape[1]
    mean = r.mean(1, keepdim=True)
    torch.testing.assert_close(objectives.get("dr_grpo").weights(r, 1), (r - mean) / n)
    torch.testing.assert_close(
        objectives.get("grpo").weights(r, 1), (r - mean) / (r.std(1, keepdim=True) + 1e-4) / n
    )
    loo = torch.stack([(r.sum(1) - r[:, i]) / (n - 1) for i in range(n)], 1)
    torch.testing.assert_close(objectives.get("pass1_reinforce").weights(r, 1), (r - loo) / n)
    beta = 3.0
    z = torch.log(torch.exp(beta * r).mean(1, keepdim=True)) / beta
    want = (torch.exp(beta * (r - z)) - 1) / beta / n
    torch.testing.assert_close(objectives.get("risk_seeking", beta=beta).weights(r, 1), want)
    torch.testing.assert_close(  # beta -> 0 recovers Dr. GRPO
        objectives.get("risk_seeking", beta=1e-7).weights(r, 1), (r - mean) / n, atol=1e-6, rtol=0
    )


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 24), st.data())
def test_every_objective_is_zero_without_a_correct_rollout(n, data):
    """Situation I: with c = 0, every variant's weights (hence its estimate) are exactly 0."""
    k = data.draw(st.integers(1, n))
    rows = torch.zeros(3, n, dtype=torch.float64)
    for name in ALL:
        obj = objectives.get(name)
        if n >= obj.min_group:
            w = obj.weights(rows, k, logprobs=some_logprobs(rows))
            assert torch.count_nonzero(w) == 0, name


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 20), st.data())
def test_pkpo_weights_bounded_and_monotone(n, data):
    k = data.draw(st.integers(1, n))
    rows = torch.bernoulli(torch.full((8, n), data.draw(st.floats(0.05, 0.95))))
    w = objectives.get("pkpo").weights(rows, k)
    assert torch.all(w >= 0) and torch.all(w <= k / n + 1e-15)
    assert torch.all(w[rows == 1] == k / n)


@pytest.mark.parametrize(
    ("rewards", "k", "msg"),
    [
        (torch.ones(4), 1, r"\(B, n\) tensor"),
        (torch.ones(2, 4), 5, "exceeds the group size"),
        (torch.ones(2, 4), 0, "k must be an integer >= 1"),
        (torch.empty(0, 4), 1, "non-empty"),
    ],
)
def test_bad_input_is_rejected(rewards, k, msg):
    with pytest.raises(ValueError, match=msg):
        objectives.get("pkpo").weights(rewards, k)


def test_binary_only_objectives_refuse_real_rewards():
    with pytest.raises(ValueError, match="binary"):
        objectives.get("passk_chen").weights(torch.full((2, 4), 0.5), 2)
    assert torch.all(objectives.get("pkpo").weights(torch.full((2, 4), 0.5), 2) > 0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rewards_are_refused_by_name(name, bad):
    """Not "rewards must be binary" (the old message for NaN), but what is wrong."""
    rows = torch.ones(2, 4, dtype=torch.float64)
    rows[1, 2] = bad
    with pytest.raises(ValueError, match=f"{name}: rewards must be finite"):
        objectives.get(name).weights(rows, 2, logprobs=some_logprobs(rows))


@pytest.mark.parametrize("name", ALL)
def test_complex_rewards_are_refused_not_cast(name):
    """torch casts complex to float64 by dropping the imaginary part; weights() must refuse."""
    rows = torch.ones(2, 4, dtype=torch.complex128) * (1 + 1j)
    with pytest.raises(ValueError, match=f"{name}: rewards must be real numbers"):
        objectives.get(name).weights(rows, 2, logprobs=some_logprobs(rows.real))


def test_integer_and_boolean_rewards_are_accepted():
    rows = torch.tensor([[1, 0, 0, 1]])
    want = objectives.get("pkpo").weights(rows.to(torch.float64), 2)
    torch.testing.assert_close(objectives.get("pkpo").weights(rows, 2), want)
    torch.testing.assert_close(objectives.get("pkpo").weights(rows.bool(), 2), want)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_swor_refuses_non_finite_logprobs(bad):
    """NaN log-probabilities used to give NaN weights silently."""
    rows = torch.ones(2, 4)
    lp = torch.full((2, 4), -2.0)
    lp[0, 1] = bad
    with pytest.raises(ValueError, match="swor_ordered: logprobs must be finite"):
        objectives.get("swor_ordered").weights(rows, 2, logprobs=lp)
    with pytest.raises(ValueError, match="swor_ordered: logprobs must be real"):
        objectives.get("swor_ordered").weights(rows, 2, logprobs=lp.to(torch.complex128))


def test_registry_errors_and_extension():
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        objectives.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        objectives.register("pkpo")(type("Other", (Objective,), {"_weights": lambda s, r, k: r}))
    with pytest.raises(ValueError, match="n >= 2"):
        objectives.get("pass1_reinforce").weights(torch.ones(3, 1), 1)

    @objectives.register("_test_variant")
    class Variant(Objective):
        unbiased_for = "pass@1"

        def _weights(self, rewards, k):
            return rewards / rewards.shape[1]  # plain REINFORCE: unbiased for pass@1

    try:
        assert "_test_variant" in objectives.names()
        logits, correct = exact.logits_for_success(torch.tensor([0.3, 0.6]), 5, 2)
        assert harness.check("_test_variant", logits, correct, n=4, k=1, groups=20_000).unbiased_ok
    finally:
        objectives.unregister("_test_variant")
    assert "_test_variant" not in objectives.names()
    assert "swor_ordered" in objectives.names("swor") and "swor_ordered" not in objectives.names(
        "iid"
    )


def _policy(seed=0, p=6, m=9, n_correct=2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(p, m, generator=g, dtype=torch.float64)
    correct = torch.zeros(p, m, dtype=torch.bool)
    correct[:, :n_correct] = True
    return logits, correct


@pytest.mark.parametrize("name", UNBIASED)
@pytest.mark.parametrize(("n", "k"), [(4, 1), (4, 4), (8, 2), (8, 5)])
def test_unbiased_objectives_pass_the_harness(name, n, k):
    """Bonferroni bound at family-wise level 1e-3 (see passk_companion.theory.harness)."""
    report = harness.check(name, *_policy(seed=n + k), n=n, k=k, groups=40_000, seed=n * k)
    assert report.unbiased_ok, report.summary()
    assert report.max_abs_z < report.z_threshold


def test_harness_detects_a_biased_estimator():
    """The check can fail: a variant that claims pass@k but is not unbiased for it."""

    class Pretender(objectives.get("best_of_k_naive").__class__):
        unbiased_for = "pass@k"

    class Scaled(objectives.get("pkpo").__class__):
        def _weights(self, rewards, k):
            return 1.05 * super()._weights(rewards, k)  # 5% too long

    pretender = Pretender(generator=torch.Generator().manual_seed(0))
    assert not harness.check(pretender, *_policy(), n=8, k=4, groups=40_000).unbiased_ok
    assert not harness.check(Scaled(), *_policy(), n=8, k=4, groups=40_000).unbiased_ok


def test_logprobs_required_where_declared():
    rows = torch.ones(2, 4)
    with pytest.raises(ValueError, match="needs logprobs"):
        objectives.get("swor_ordered").weights(rows, 2)
    with pytest.raises(ValueError, match="<= 0"):
        objectives.get("swor_ordered").weights(rows, 2, logprobs=torch.ones(2, 4))
    with pytest.raises(ValueError, match="i.i.d."):
        weights.expected_weight_multiple("swor_ordered", 0.5, 4, 2)


def test_swor_score_coefficients_match_autograd():
    """c_i of swor_ordered = d log P(s_1..s_k) / d l_i, by autograd of the ordered likelihood."""
    lp = torch.log(torch.tensor([[0.3, 0.2, 0.1, 0.05]], dtype=torch.float64))
    l = lp.clone().requires_grad_(True)
    p = l.exp()
    log_p = (l - torch.log1p(-(torch.cumsum(p, 1) - p))).sum()
    (coef,) = torch.autograd.grad(log_p, l)
    w = objectives.get("swor_ordered").weights(torch.ones(1, 4), 4, logprobs=lp)
    torch.testing.assert_close(w, coef)


def test_group_estimate_equals_autograd_of_the_surrogate():
    logits, correct = _policy(p=3, m=5)
    obj = objectives.get("pkpo")
    gen = torch.Generator().manual_seed(3)
    est = harness.group_estimates(obj, logits, correct, n=6, k=3, groups=1, generator=gen)[:, 0]
    answers = torch.multinomial(
        torch.softmax(logits, -1), 6, replacement=True, generator=torch.Generator().manual_seed(3)
    )
    w = obj.weights(correct.gather(1, answers).double(), 3)
    z = logits.clone().requires_grad_(True)
    surrogate = (w * torch.log_softmax(z, -1).gather(1, answers)).sum()
    (g,) = torch.autograd.grad(surrogate, z)
    torch.testing.assert_close(est, g)


def test_expected_weight_multiple_closed_forms():
    p = np.linspace(0.02, 0.98, 25)
    for k in (1, 2, 4, 8):
        np.testing.assert_allclose(
            weights.expected_weight_multiple("pkpo", p, 16, k),
            passk.alpha_k(p, k),
            rtol=1e-10,
            atol=1e-13,  # cancellation in the Binomial sum as p -> 1
        )
        np.testing.assert_allclose(
            weights.expected_weight_multiple("pkpo_loo", p, 16, k),
            passk.alpha_k(p, k),
            rtol=1e-10,
            atol=1e-13,
        )
    np.testing.assert_allclose(weights.expected_weight_multiple("pass1_reinforce", p, 16, 1), 1)
    np.testing.assert_allclose(weights.expected_weight_multiple("dr_grpo", p, 16, 1), 15 / 16)


@pytest.mark.parametrize("name", EXCHANGEABLE)
def test_expected_multiple_matches_monte_carlo(name):
    """The Binomial formula for omega(p) against the harness's Monte Carlo projection."""
    j1 = torch.tensor([0.15, 0.4, 0.7])
    logits, correct = exact.logits_for_success(j1, 6, 2)
    report = harness.check(name, logits, correct, n=8, k=4, groups=60_000, seed=11)
    want = weights.expected_weight_multiple(name, j1.numpy(), 8, 4, draws=20_000)
    g1_norm = exact.grad_j1(logits, correct).norm(dim=1)
    tol = (5 * report.stderr.norm(dim=1) / g1_norm).numpy() + 0.01 * np.abs(want)
    assert np.all(np.abs(report.weight_multiple.numpy() - want) <= tol)


# --- real-valued rewards: PKPO's estimators of grad max@k -----------------------------------


def brute_subset_weights(rows, k):
    """(1/C(n,k)) sum over k-subsets I containing i of max_I g, and of max_I g - max_{I\\i} g
    (max of the empty set = 0), by looping over every subset."""
    n = rows.shape[1]
    subsets = list(itertools.combinations(range(n), k))
    plain, minus_one = torch.zeros_like(rows), torch.zeros_like(rows)
    estimate = torch.zeros(len(rows), dtype=rows.dtype)
    for s in subsets:
        best = rows[:, list(s)].max(1).values
        estimate += best
        for i in s:
            rest = [j for j in s if j != i]
            best_rest = rows[:, rest].max(1).values if rest else torch.zeros(len(rows))
            plain[:, i] += best
            minus_one[:, i] += best - best_rest
    return plain / len(subsets), minus_one / len(subsets), estimate / len(subsets)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7), st.data())
def test_real_pkpo_weights_are_subset_averages(n, data):
    """Real rewards (with ties: values drawn from a small set, and negative ones) against brute
    force over every k-subset, to 1e-9."""
    k = data.draw(st.integers(1, n))
    values = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(-3, 3, width=32))
    rows = torch.tensor(
        data.draw(st.lists(st.lists(values, min_size=n, max_size=n), min_size=1, max_size=6)),
        dtype=torch.float64,
    )
    plain, minus_one, estimate = brute_subset_weights(rows, k)
    tol = {"rtol": 0, "atol": 1e-9}
    torch.testing.assert_close(objectives.get("pkpo").weights(rows, k), plain, **tol)
    torch.testing.assert_close(objectives.get("pkpo_loo").weights(rows, k), minus_one, **tol)
    torch.testing.assert_close(max_at_k_estimate(rows, k), estimate, **tol)


def test_ties_get_equal_weights_whatever_their_order():
    rows = torch.tensor([[0.5, 0.2, 0.5, 0.9, 0.5, 0.2]], dtype=torch.float64)
    for k in range(1, 7):
        for minus_one in (False, True):
            w = max_at_k_weights(rows, k, minus_one)
            perm = torch.tensor([5, 3, 1, 0, 4, 2])
            torch.testing.assert_close(max_at_k_weights(rows[:, perm], k, minus_one), w[:, perm])
            for value in (0.5, 0.2):
                tied = w[rows == value]
                torch.testing.assert_close(tied, tied[:1].expand_as(tied), rtol=0, atol=1e-15)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 12])
def test_binary_fast_path_equals_the_real_formula(n):
    """The closed forms for 0/1 rewards and the sorted-cumsum formula agree on every pattern."""
    rows = all_binary_rows(n) if n <= 8 else torch.bernoulli(torch.full((256, n), 0.4)).double()
    for k in range(1, n + 1):
        tol = {"rtol": 0, "atol": 1e-12}
        torch.testing.assert_close(PKPO.binary_weights(rows, k), max_at_k_weights(rows, k), **tol)
        torch.testing.assert_close(
            PKPOLoo.binary_weights(rows, k), max_at_k_weights(rows, k, True), **tol
        )
        c = rows.sum(1)
        torch.testing.assert_close(max_at_k_estimate(rows, k), passk.pass_at_k_unbiased(n, c, k))


def test_real_weights_scale_to_large_groups():
    """No loop over subsets: n = 4096 with C(n, n/2) ~ 1e1231 still gives finite weights that
    sum to k * (the max@k estimate)."""
    rows = torch.rand(4, 4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for k in (1, 64, 2048, 4096):
        w = objectives.get("pkpo").weights(rows, k)
        assert torch.all(torch.isfinite(w)) and torch.all(w >= 0)
        torch.testing.assert_close(w.sum(1), k * max_at_k_estimate(rows, k))
        assert torch.all(objectives.get("pkpo_loo").weights(rows, k) >= -1e-12)


def _real_policy(seed=0, p=5, m=7):
    """Random logits and a real reward table with ties (values in {0, .3, .3, .7, 1, ...})."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(p, m, generator=g, dtype=torch.float64)
    table = torch.tensor([0.0, 0.3, 0.3, 0.7, 1.0, 0.45, 0.1], dtype=torch.float64)[:m]
    table = table[torch.argsort(torch.rand(p, m, generator=g), 1)]
    return logits, table


@pytest.mark.parametrize("name", ENUMERABLE)
@pytest.mark.parametrize("real", [False, True])
@pytest.mark.parametrize(("n", "k"), [(3, 1), (4, 2), (5, 5)])
def test_exact_expectation_equals_the_target_gradient(name, real, n, k):
    """Enumerating every ordered n-tuple of answers: E[estimate] equals the exact gradient of the
    declared target (autograd of E[max of k] for real tables) to rounding; binary tables too."""
    obj = objectives.get(name)
    if real and obj.binary_only:
        pytest.skip("binary rewards only")
    logits, table = _real_policy(seed=n * k, p=3, m=4)
    if not real:
        table = table > 0.5
    got = harness.exact_mean_estimate(obj, logits, table, n, k)
    want = harness.TARGETS[obj.unbiased_for](logits, table, k)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_exact_expectation_detects_a_biased_estimator():
    logits, table = _real_policy(p=3, m=4)
    for name in ("dr_grpo", "risk_seeking"):
        got = harness.exact_mean_estimate(name, logits, table, 4, 2)
        assert (got - maxk.grad_max_at_k(logits, table, 2)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="exceeds"):
        harness.exact_mean_estimate("pkpo", *_real_policy(m=7), 8, 2)
    with pytest.raises(ValueError, match="i.i.d."):
        harness.exact_mean_estimate("best_of_k_naive", logits, table, 3, 2)


@pytest.mark.parametrize("name", REAL_UNBIASED)
@pytest.mark.parametrize(("n", "k"), [(4, 1), (4, 4), (8, 3)])
def test_unbiased_objectives_pass_the_harness_on_real_rewards(name, n, k):
    """The same Bonferroni bias test (family-wise 1e-3) on a real reward table."""
    report = harness.check(name, *_real_policy(seed=n + k), n=n, k=k, groups=40_000, seed=n * k)
    assert report.target == objectives.get(name).unbiased_for
    assert report.unbiased_ok, report.summary()


def test_harness_detects_the_binary_formula_on_real_rewards():
    """Claiming max@k with PKPO's 0/1 weights on thresholded rewards must fail the test."""

    class Thresholded(PKPO):
        def _weights(self, rewards, k):
            return self.binary_weights((rewards >= 0.5).to(rewards.dtype), k)

    assert not harness.check(Thresholded(), *_real_policy(), n=8, k=4, groups=40_000).unbiased_ok


def test_targets_on_real_tables():
    logits, table = _real_policy()
    with pytest.raises(ValueError, match="boolean reward table"):
        harness.TARGETS["pass@k"](logits, table, 2)
    with pytest.raises(ValueError, match="boolean reward table"):
        harness.TARGETS["pass@k-swor"](logits, table, 2)
    with pytest.raises(ValueError, match="swor_ordered: rewards must be binary"):
        harness.check("swor_ordered", logits, table, 4, 2, groups=10)
    torch.testing.assert_close(
        harness.TARGETS["pass@1"](logits, table, 3), maxk.grad_expected_reward(logits, table)
    )
    mask = table > 0.5
    torch.testing.assert_close(  # on 0/1 tables max@k is pass@k (Theorem 3.1's closed form)
        harness.TARGETS["max@k"](logits, mask, 3), maxk.grad_max_at_k(logits, mask.double(), 3)
    )
    torch.testing.assert_close(
        harness.TARGETS["max@k"](logits, mask, 3), exact.grad_jk(logits, mask, 3)
    )
