"""Objective variants: exact formulas (brute force over subsets), the registry, validation, and
the exact-gradient harness. New registered objectives are picked up automatically."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion import exact, harness, objectives, passk
from companion.objectives import Objective

ALL = objectives.names()
UNBIASED = [n for n in ALL if objectives.get(n).unbiased_for is not None]
# omega(p) is defined for i.i.d. rollouts and weights that depend on (r_i, c) only
EXCHANGEABLE = [
    n for n in ALL if objectives.get(n).sampler == "iid" and not objectives.get(n).needs_logprobs
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
    assert {objectives.get(n).unbiased_for for n in ALL} >= {"pass@1", "pass@k", None}


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
        (torch.full((2, 4), 0.5), 2, "binary"),
        (torch.empty(0, 4), 1, "non-empty"),
    ],
)
def test_bad_input_is_rejected(rewards, k, msg):
    with pytest.raises(ValueError, match=msg):
        objectives.get("pkpo").weights(rewards, k)


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
        assert harness.run("_test_variant", logits, correct, n=4, k=1, groups=20_000).unbiased_ok
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
    """Bonferroni bound at family-wise level 1e-3 (see companion.harness)."""
    report = harness.run(name, *_policy(seed=n + k), n=n, k=k, groups=40_000, seed=n * k)
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
    assert not harness.run(pretender, *_policy(), n=8, k=4, groups=40_000).unbiased_ok
    assert not harness.run(Scaled(), *_policy(), n=8, k=4, groups=40_000).unbiased_ok


def test_logprobs_required_where_declared():
    rows = torch.ones(2, 4)
    with pytest.raises(ValueError, match="needs logprobs"):
        objectives.get("swor_ordered").weights(rows, 2)
    with pytest.raises(ValueError, match="<= 0"):
        objectives.get("swor_ordered").weights(rows, 2, logprobs=torch.ones(2, 4))
    with pytest.raises(ValueError, match="i.i.d."):
        harness.expected_weight_multiple("swor_ordered", 0.5, 4, 2)


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
            harness.expected_weight_multiple("pkpo", p, 16, k),
            passk.alpha_k(p, k),
            rtol=1e-10,
            atol=1e-13,  # cancellation in the Binomial sum as p -> 1
        )
        np.testing.assert_allclose(
            harness.expected_weight_multiple("pkpo_loo", p, 16, k),
            passk.alpha_k(p, k),
            rtol=1e-10,
            atol=1e-13,
        )
    np.testing.assert_allclose(harness.expected_weight_multiple("pass1_reinforce", p, 16, 1), 1)
    np.testing.assert_allclose(harness.expected_weight_multiple("dr_grpo", p, 16, 1), 15 / 16)


@pytest.mark.parametrize("name", EXCHANGEABLE)
def test_expected_multiple_matches_monte_carlo(name):
    """The Binomial formula for omega(p) against the harness's Monte Carlo projection."""
    j1 = torch.tensor([0.15, 0.4, 0.7])
    logits, correct = exact.logits_for_success(j1, 6, 2)
    report = harness.run(name, logits, correct, n=8, k=4, groups=60_000, seed=11)
    want = harness.expected_weight_multiple(name, j1.numpy(), 8, 4, draws=20_000)
    g1_norm = exact.grad_j1(logits, correct).norm(dim=1)
    tol = (5 * report.stderr.norm(dim=1) / g1_norm).numpy() + 0.01 * np.abs(want)
    assert np.all(np.abs(report.weight_multiple.numpy() - want) <= tol)
