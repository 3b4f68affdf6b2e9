"""max@k with real-valued rewards (passk_companion.theory.maxk) and PKPO's Gaussian toy
(passk_companion.theory.gaussian_toy): exact values against enumeration, Theorem 3.1 on 0/1 tables,
the collinearity condition (SymPy and numerics), the quadrature against a closed form and Monte
Carlo, and the trainer."""

import itertools
import math

import numpy as np
import pytest
import sympy as sp
import torch

from passk_companion.theory import exact, gaussian_toy, maxk


def random_policy(seed, p=6, m=5, values=None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(p, m, generator=g, dtype=torch.float64)
    if values is None:
        table = torch.rand(p, m, generator=g, dtype=torch.float64)
    else:
        idx = torch.randint(len(values), (p, m), generator=g)
        table = torch.tensor(values, dtype=torch.float64)[idx]
    return logits, table


def brute_max_at_k(logits, table, k):
    """sum over all ordered k-tuples of answers of prod pi * max g."""
    pi = torch.softmax(logits, -1)
    m = logits.shape[1]
    out = torch.zeros(len(pi), dtype=torch.float64)
    for tup in itertools.product(range(m), repeat=k):
        idx = list(tup)
        out += pi[:, idx].prod(1) * table[:, idx].max(1).values
    return out


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("values", [None, [0.0, 0.5, 1.0], [-1.0, 2.0, 2.0, 3.5]])
def test_max_at_k_equals_enumeration(k, values):
    logits, table = random_policy(k, values=values)
    torch.testing.assert_close(
        maxk.max_at_k(logits, table, k), brute_max_at_k(logits, table, k), rtol=0, atol=1e-13
    )


def test_boolean_tables_give_pass_at_k_and_theorem_3_1():
    logits, table = random_policy(0, values=[0.0, 1.0])
    mask = table > 0.5
    for k in (1, 2, 5, 16):
        for t in (mask, mask.double()):
            torch.testing.assert_close(
                maxk.max_at_k(logits, t, k), exact.pass_at_k(logits, mask, k)
            )
            torch.testing.assert_close(
                maxk.grad_max_at_k(logits, t, k), exact.grad_jk(logits, mask, k)
            )
    torch.testing.assert_close(maxk.expected_reward(logits, mask), exact.success_prob(logits, mask))


def test_ties_and_answer_order_do_not_matter():
    logits, table = random_policy(1, values=[0.2, 0.2, 0.7])
    perm = torch.randperm(logits.shape[1], generator=torch.Generator().manual_seed(0))
    for k in (1, 3, 6):
        torch.testing.assert_close(
            maxk.max_at_k(logits[:, perm], table[:, perm], k), maxk.max_at_k(logits, table, k)
        )


def test_expected_reward_gradient_matches_autograd():
    logits, table = random_policy(2)
    torch.testing.assert_close(
        maxk.grad_expected_reward(logits, table),
        exact.autograd(maxk.expected_reward, logits, table),
    )
    torch.testing.assert_close(
        maxk.grad_max_at_k(logits, table, 1), maxk.grad_expected_reward(logits, table)
    )


@pytest.mark.parametrize("k", [2, 4, 8])
def test_cosine_is_one_exactly_when_the_reward_has_two_values(k):
    """The module's condition for m answers: cos = 1 iff at most two distinct reward values
    (k >= 2, every pi_a > 0); otherwise strictly below 1."""
    logits, table = random_policy(k, p=400, m=4, values=[0.0, 0.5, 1.0])
    cos = maxk.cosine_to_expected_reward(logits, table, k)
    distinct = torch.tensor([len(set(row.tolist())) for row in table])
    two = distinct == 2
    assert two.any() and (distinct == 3).any()
    assert torch.all((cos[two] - 1).abs() < 1e-12)
    assert torch.all(cos[distinct == 3] < 1 - 1e-13)  # below 1 beyond rounding (~1e-16)
    affine = 0.3 + 0.4 * (table > 0.25).double()  # an affine image of a 0/1 verifier
    cos_affine = maxk.cosine_to_expected_reward(logits, affine, k)
    constant = affine.amin(1) == affine.amax(1)  # both gradients 0: cosine undefined (NaN)
    assert torch.all((cos_affine[~constant] - 1).abs() < 1e-12)
    assert torch.all(torch.isnan(cos_affine[constant]))
    real = torch.rand(400, 4, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    assert torch.all(maxk.cosine_to_expected_reward(logits, real, k) < 1 - 1e-13)
    assert torch.all((maxk.cosine_to_expected_reward(logits, real, 1) - 1).abs() < 1e-12)


def test_sympy_three_answer_statement():
    s = maxk.three_answer_cross_product()
    assert s["residual"] == 0
    # the closed form against torch at random points: cross product of the two logit gradients
    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 5):
        logits = torch.randn(1, 3, generator=g, dtype=torch.float64)
        gaps = torch.rand(2, generator=g, dtype=torch.float64)
        table = (0.1 + torch.cat([torch.zeros(1), torch.cumsum(gaps, 0)]))[None]
        cross = torch.linalg.cross(
            maxk.grad_expected_reward(logits, table), maxk.grad_max_at_k(logits, table, k)
        )[0, 0]
        pi = torch.softmax(logits, -1)[0]
        subs = {
            s["p_1"]: float(pi[0]),
            s["p_2"]: float(pi[1]),
            s["p_3"]: float(pi[2]),
            s["d_1"]: float(gaps[0]),
            s["d_2"]: float(gaps[1]),
            s["k"]: k,
        }
        assert float(s["claimed"].subs(subs)) == pytest.approx(float(cross), abs=1e-14)
        assert float(s["cross"].subs({**subs, s["g_1"]: 0.1})) == pytest.approx(
            float(cross), abs=1e-14
        )
    assert s["claimed"].subs(s["k"], 1) == 0
    assert s["claimed"].subs(s["d_1"], 0) == 0 and s["claimed"].subs(s["d_2"], 0) == 0
    assert sp.simplify(s["claimed"].subs(s["k"], 2)) != 0


@pytest.mark.parametrize(
    ("logits", "table", "msg"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), "shape"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64), "boolean mask or real floats"),
        (torch.zeros(2, 3), torch.tensor([[0.0, float("nan"), 1.0]] * 2), "finite"),
        (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3), "floating point"),
    ],
)
def test_bad_tables_are_refused(logits, table, msg):
    with pytest.raises(ValueError, match=msg):
        maxk.max_at_k(logits, table, 2)


# --- max@k of a noisy reward, by quadrature ------------------------------------------------------


def test_noisy_max_at_1_is_the_expected_reward():
    logits, table = random_policy(11, p=5, m=7)
    for sigma in (0.05, 0.5, 2.0):
        torch.testing.assert_close(
            maxk.noisy_max_at_k(logits, table, sigma, 1),
            maxk.expected_reward(logits, table),
            rtol=0,
            atol=1e-13,
        )


def test_noisy_max_of_one_arm_is_the_max_of_k_gaussians():
    # E[max of k N(mu, s^2)] = mu + s c_k: c_2 = 1/sqrt(pi), c_3 = 3/(2 sqrt(pi)); every arm has
    # the same mean, so the policy does not matter
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    table = torch.full((3, 4), 0.3, dtype=torch.float64)
    for k, c in ((2, 1 / math.sqrt(math.pi)), (3, 1.5 / math.sqrt(math.pi))):
        want = torch.full((3,), 0.3 + 0.5 * c, dtype=torch.float64)
        got = maxk.noisy_max_at_k(logits, table, 0.5, k)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-13)


def test_noisy_max_at_k_matches_monte_carlo():
    logits = torch.tensor([[0.4, -0.3, 1.0, 0.0]], dtype=torch.float64)
    table = torch.tensor([[0.1, 0.9, 0.5, 0.6]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    draws = 200_000
    pi = torch.softmax(logits[0], -1)
    for k, sigma in ((2, 0.5), (4, 0.2), (8, 0.05)):
        arm = torch.multinomial(pi, draws * k, replacement=True, generator=g).view(draws, k)
        noise = torch.randn(draws, k, generator=g, dtype=torch.float64)
        best = (table[0][arm] + sigma * noise).max(1).values
        exact_value = maxk.noisy_max_at_k(logits, table, sigma, k)[0]
        z = (best.mean() - exact_value) / (best.std() / math.sqrt(draws))
        assert abs(float(z)) < 4.5  # Bonferroni over 3 checks at ~2e-5 each


def test_noisy_max_at_k_converges_and_tends_to_the_noise_free_value():
    logits, table = random_policy(5, p=4, m=9)
    for k in (2, 8, 16):
        fine = maxk.noisy_max_at_k(logits, table, 0.5, k, nodes_per_sd=64)
        torch.testing.assert_close(
            maxk.noisy_max_at_k(logits, table, 0.5, k), fine, rtol=0, atol=1e-13
        )
        # noise of sd s moves the max of k draws by at most s E[max_i |eps_i|] <= s sqrt(2 log 2k)
        small = maxk.noisy_max_at_k(logits, table, 1e-4, k)
        bound = 1e-4 * math.sqrt(2 * math.log(2 * k))
        assert float((small - maxk.max_at_k(logits, table, k)).abs().max()) < bound


def test_noisy_gradient_matches_autograd_and_finite_differences():
    logits, table = random_policy(8, p=3, m=6)
    ks = torch.tensor([2.0, 5.0, 16.0], dtype=torch.float64)
    z = logits.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(maxk.noisy_max_at_k(z, table, 0.3, ks).sum(), z)
    closed = maxk.NoisyQuadrature.build(table, 0.3).grad(logits, ks)
    torch.testing.assert_close(closed, auto, rtol=0, atol=1e-13)
    h = 1e-6
    for j in range(6):
        e = torch.zeros_like(logits)
        e[:, j] = h
        fd = (
            maxk.noisy_max_at_k(logits + e, table, 0.3, ks)
            - maxk.noisy_max_at_k(logits - e, table, 0.3, ks)
        ) / (2 * h)
        torch.testing.assert_close(closed[:, j], fd, rtol=0, atol=1e-8)
    # one shared table row serves every row of logits
    shared = maxk.NoisyQuadrature.build(table[:1], 0.3).grad(logits, ks)
    per_row = maxk.NoisyQuadrature.build(table[:1].expand(3, -1), 0.3).grad(logits, ks)
    torch.testing.assert_close(shared, per_row, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"nodes_per_sd": 1}, "nodes_per_sd"),
        ({"table": torch.ones(2, 3, dtype=torch.bool)}, "boolean"),
        ({"k": 0}, "k"),
    ],
)
def test_noisy_max_at_k_refuses_bad_parameters(kwargs, msg):
    args = {
        "logits": torch.zeros(2, 3, dtype=torch.float64),
        "table": torch.rand(2, 3, dtype=torch.float64),
        "sigma": 0.5,
        "k": 2,
    } | kwargs
    nodes = {"nodes_per_sd": args.pop("nodes_per_sd")} if "nodes_per_sd" in args else {}
    with pytest.raises(ValueError, match=msg):
        maxk.noisy_max_at_k(args["logits"], args["table"], args["sigma"], args["k"], **nodes)


# --- PKPO's Gaussian toy ------------------------------------------------------------------------


def test_quadrature_matches_the_closed_form_and_converges():
    theta = torch.linspace(-0.5, 1.5, 401, dtype=torch.float64)
    closed = gaussian_toy.reward_mean(theta)
    torch.testing.assert_close(gaussian_toy.max_at_k(theta, 1), closed, rtol=0, atol=1e-13)
    for k in (2, 8, 16):
        fine = gaussian_toy.max_at_k(theta, k, nodes=1024)
        torch.testing.assert_close(gaussian_toy.max_at_k(theta, k), fine, rtol=0, atol=1e-13)


def test_quadrature_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    draws = 400_000
    for theta, k in ((0.9, 4), (0.7, 2), (1.02, 8)):
        x = theta + gaussian_toy.SIGMA * torch.randn(draws, k, generator=g, dtype=torch.float64)
        best = gaussian_toy.cliff_reward(x).max(1).values
        z = (best.mean() - gaussian_toy.max_at_k(theta, k)) / (best.std() / math.sqrt(draws))
        assert abs(float(z)) < 4.5  # Bonferroni over 3 checks at ~2e-5 each
        above = (x[:, 0] > 1).double().mean()
        assert float(above) == pytest.approx(float(gaussian_toy.beyond_cliff(theta)), abs=4e-3)


def test_optimum_is_a_maximum_and_moves_toward_the_cliff():
    thetas = [gaussian_toy.optimum(k) for k in (1, 2, 4, 8, 16)]
    assert all(a < b < 1 for a, b in zip(thetas, thetas[1:], strict=False))
    for k, t in zip((1, 2, 4, 8, 16), thetas, strict=True):
        best = float(gaussian_toy.max_at_k(t, k))
        grid = torch.linspace(-1, 2, 30001, dtype=torch.float64)
        assert best >= float(gaussian_toy.max_at_k(grid, k).max()) - 1e-12
        theta = torch.tensor(t, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(gaussian_toy.max_at_k(theta, k), theta)
        assert abs(float(grad)) < 1e-6


def test_training_reaches_the_optimum():
    steps_at, theta = gaussian_toy.train([1, 8], [0, 1], steps=2000, lr=0.01, record_every=10)
    assert theta.shape == (len(steps_at), 2, 2) and steps_at[-1] == 2000
    late = theta[steps_at >= 1000].mean(0)
    for j, k in enumerate((1, 8)):
        assert np.all(np.abs(late[j] - gaussian_toy.optimum(k)) < 0.02)
    same = gaussian_toy.train([1, 8], [1], steps=50, lr=0.01)[1]
    np.testing.assert_array_equal(same[:, :, 0], theta[: len(same), :, 1])  # seeds independent


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"steps": 0}, "steps"),
        ({"lr": float("nan")}, "lr"),
        ({"sigma": 0.0}, "sigma"),
        ({"theta0": float("inf")}, "theta0"),
        ({"n": 4, "steps": 5}, "k must be <= n"),
    ],
)
def test_training_refuses_bad_parameters(kwargs, msg):
    args = {"steps": 5} | kwargs
    with pytest.raises(ValueError, match=msg):
        gaussian_toy.train([1, 8], [0], **args)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_toy.max_at_k(0.5, 2, sigma=-1.0)
