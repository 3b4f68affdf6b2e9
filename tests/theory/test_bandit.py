"""The 100-arm bandit (passk_companion.theory.bandit): its reward landscape, its metrics, and the
vectorised trainer against a per-row reference loop."""

import math

import numpy as np
import pytest
import torch

from passk_companion import objectives
from passk_companion.theory import bandit


def test_landscape_has_a_global_and_a_local_optimum():
    mu = bandit.arm_means().numpy()
    a = np.arange(100)
    want = 0.1 + 0.9 * np.exp(-((a - 40) ** 2) / 50) + 0.5 * np.exp(-((a - 75) ** 2) / 50)
    np.testing.assert_allclose(mu, want, rtol=1e-15)
    assert int(mu.argmax()) == 40 and mu[40] == pytest.approx(1.0, abs=1e-10)
    assert mu[75] == pytest.approx(0.6, abs=1e-10)
    assert mu[74] < mu[75] > mu[76]  # a local optimum
    assert all(mu[j] > mu[j + 1] for j in range(40, 58))  # a valley between the two


def test_initial_policy_sits_near_the_local_optimum():
    pi = torch.softmax(bandit.initial_logits(), -1).numpy()
    a = np.arange(100)
    prior = np.exp(-(((a - 75) / 5) ** 2) / 2) + 0.1
    np.testing.assert_allclose(pi, prior / prior.sum(), rtol=1e-12)
    m = bandit.metrics(bandit.initial_logits()[None], bandit.arm_means())
    assert float(m["mass_window"][0]) == pytest.approx(pi[30:51].sum())
    assert float(m["reward"][0]) == pytest.approx(float(pi @ bandit.arm_means().numpy()))


def test_metrics():
    uniform = torch.zeros(2, 100, dtype=torch.float64)
    m = bandit.metrics(uniform, bandit.arm_means(), window=(30, 50))
    torch.testing.assert_close(m["entropy"], torch.full((2,), math.log(100), dtype=torch.float64))
    torch.testing.assert_close(m["mass_window"], torch.full((2,), 0.21, dtype=torch.float64))
    point = torch.full((1, 100), -1e4, dtype=torch.float64)
    point[0, 40] = 0
    m = bandit.metrics(point, bandit.arm_means())
    assert float(m["mass_window"][0]) == 1.0 and float(m["entropy"][0]) == pytest.approx(
        0, abs=1e-9
    )


VARIANTS = [
    bandit.Variant("pkpo_loo4/real", "pkpo_loo", 4, "real"),
    bandit.Variant("rs4/binary", "risk_seeking", 1, "binary", {"beta": 4.0}),
    bandit.Variant("dr/real", "dr_grpo", 1, "real"),
    bandit.Variant("pkpo_loo4/binary", "pkpo_loo", 4, "binary"),
    bandit.Variant("pkpo_loo4/noisy", "pkpo_loo", 4, "noisy"),
]


def reference(variants, seeds, steps, n, lr, arms=12, noise_sd=0.5):
    """The trainer's update, one row at a time, consuming each seed's stream in the same way."""
    means = bandit.arm_means(arms).clamp_max(1.0) * 0.9 + 0.05
    z0 = bandit.initial_logits(arms)
    out = torch.empty(len(seeds), len(variants), arms, dtype=torch.float64)
    z = {(s, j): z0.clone() for s in range(len(seeds)) for j in range(len(variants))}
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    for _ in range(steps):
        draws = [torch.rand(2, len(variants), n, generator=g, dtype=torch.float64) for g in gens]
        noise = [torch.randn(len(variants), n, generator=g, dtype=torch.float64) for g in gens]
        for s in range(len(seeds)):
            for j, v in enumerate(variants):
                pi = torch.softmax(z[s, j], -1)
                arm = torch.searchsorted(torch.cumsum(pi, -1), draws[s][0, j], right=True)
                arm = arm.clamp_max(arms - 1)
                r = {
                    "real": means[arm],
                    "noisy": means[arm] + noise_sd * noise[s][j],
                    "binary": (draws[s][1, j] < means[arm]).double(),
                }[v.reward]
                w = objectives.get(v.objective, **v.params).weights(r[None], v.k)[0]
                grad = torch.zeros(arms, dtype=torch.float64).index_add_(0, arm, w) - w.sum() * pi
                z[s, j] = z[s, j] + lr * grad
    for (s, j), logits in z.items():
        out[s, j] = logits
    return out, means, z0


def test_vectorised_trainer_equals_the_reference_loop():
    out, means, z0 = reference(VARIANTS, [3, 7], steps=30, n=6, lr=0.5)
    run = bandit.train(VARIANTS, [3, 7], steps=30, n=6, lr=0.5, means=means, logits0=z0)
    torch.testing.assert_close(run.logits, out, rtol=0, atol=1e-12)
    final = run.final()
    assert len(final) == 2 * len(VARIANTS) and set(final.step) == {30}
    row = final[(final.seed == 7) & (final.variant == "rs4/binary")].iloc[0]
    m = bandit.metrics(out[1, 1][None], means)
    assert row.reward == pytest.approx(float(m["reward"][0]), abs=1e-12)
    assert row.mass_window == pytest.approx(float(m["mass_window"][0]), abs=1e-12)


def test_seeds_are_independent_streams():
    both = bandit.train(VARIANTS, [0, 1], steps=20, n=4, record_every=5)
    alone = bandit.train(VARIANTS, [1], steps=20, n=4, record_every=5)
    torch.testing.assert_close(both.logits[1], alone.logits[0], rtol=0, atol=0)
    assert sorted(both.history.step.unique()) == [0, 5, 10, 15, 20]


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"steps": 0}, "steps"),
        ({"lr": float("inf")}, "lr"),
        ({"n": 2}, "exceeds the group size"),
        ({"means": torch.full((100,), float("nan"))}, "means"),
        ({"logits0": torch.zeros(5)}, "one length"),
    ],
)
def test_trainer_refuses_bad_parameters(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        bandit.train(VARIANTS, [0], **({"steps": 3} | kwargs))


def test_variant_validation():
    with pytest.raises(ValueError, match="reward must be one of"):
        bandit.Variant("x", "dr_grpo", reward="ternary")
    with pytest.raises(ValueError, match="unknown objective"):
        bandit.Variant("x", "nope")
    with pytest.raises(ValueError, match="beta"):
        bandit.Variant("x", "risk_seeking", params={"beta": -1.0})
    with pytest.raises(ValueError, match="distinct"):
        bandit.train([VARIANTS[0], VARIANTS[0]], [0], steps=2)
    with pytest.raises(ValueError, match="arms"):
        bandit.arm_means(1)


def test_noisy_reward_with_no_noise_is_the_real_reward():
    real = [bandit.Variant("v", "pkpo_loo", 4, "real")]
    noisy = [bandit.Variant("v", "pkpo_loo", 4, "noisy")]
    kw = {"steps": 30, "n": 8, "lr": 0.2, "record_every": 10}
    a = bandit.train(real, [0, 1], **kw).logits
    assert torch.equal(a, bandit.train(noisy, [0, 1], noise_sd=0.0, **kw).logits)
    assert not torch.equal(a, bandit.train(noisy, [0, 1], noise_sd=0.5, **kw).logits)
    with pytest.raises(ValueError, match="noise_sd"):
        bandit.train(noisy, [0], steps=1, noise_sd=float("nan"))


def test_expected_flow_of_max_at_1_is_the_flow_of_the_expected_reward():
    history, final = bandit.expected_flow([1, 4], steps=50, lr=0.5, record_every=25)
    torch.testing.assert_close(final["max@1"], final["E[r]"], rtol=0, atol=1e-12)
    assert not torch.allclose(final["max@4"], final["E[r]"])
    assert set(history.flow) == {"E[r]", "max@1", "max@4"} and set(history.step) == {0, 25, 50}
    start = bandit.initial_logits()
    assert float(bandit.moved(start, start, bandit.GLOBAL)) == 0.0
    # the windows start with 0.09 and 0.63 of the mass: both cannot gain more than 1/4
    share = torch.softmax(start, -1)
    assert float(share[30:51].sum()) + float(share[65:86].sum()) + 0.5 > 1.0


def test_expected_flow_of_the_noisy_reward():
    history, final = bandit.expected_flow([1, 4], steps=40, lr=0.5, record_every=20, noise_sd=0.5)
    assert set(history.flow) == {"E[r]", "max@1", "max@4", "max@1 / noisy", "max@4 / noisy"}
    # max@1 of the noisy reward is E[r]: the noise has mean 0
    torch.testing.assert_close(final["max@1 / noisy"], final["E[r]"], rtol=0, atol=1e-12)
    assert not torch.allclose(final["max@4 / noisy"], final["max@4"])
    # the noise-free rows do not depend on the noisy ones
    _, alone = bandit.expected_flow([1, 4], steps=40, lr=0.5, record_every=20)
    torch.testing.assert_close(final["max@4"], alone["max@4"], rtol=0, atol=0)
    # one step is lr times the quadrature gradient at the start
    from passk_companion.theory import maxk

    _, one = bandit.expected_flow([4], steps=1, lr=0.5, noise_sd=0.5)
    z0 = bandit.initial_logits()[None]
    grad = maxk.NoisyQuadrature.build(bandit.arm_means()[None], 0.5).grad(z0, 4)
    torch.testing.assert_close(one["max@4 / noisy"], (z0 + 0.5 * grad)[0], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="noise_sd"):
        bandit.expected_flow([2], steps=2, lr=0.5, noise_sd=0.0)
