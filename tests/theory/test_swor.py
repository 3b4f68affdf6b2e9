"""Sampling without replacement: Gumbel-top-k against enumeration, exact SWOR pass@k."""

import itertools
import math

import pytest
import torch

from passk_companion.theory import exact, passk, sampling


def sequential_law(probs):
    """All ordered k-tuples of distinct answers with their successive-draw probabilities."""
    m = len(probs)

    def law(k):
        out = {}
        for tup in itertools.permutations(range(m), k):
            pr, used = 1.0, 0.0
            for a in tup:
                pr *= probs[a] / (1 - used)
                used += probs[a]
            out[tup] = pr
        return out

    return law


def test_swor_matches_enumeration_and_the_notes_example():
    probs = torch.tensor([[0.2, 0.4, 0.2, 0.1, 0.1]], dtype=torch.float64)
    correct = torch.tensor([[True, False, False, False, False]])
    law = sequential_law(probs[0].tolist())
    for k in range(1, 6):
        brute = sum(p for tup, p in law(k).items() if any(correct[0, a] for a in tup))
        got = exact.pass_at_k_swor(probs.log(), correct, k)
        assert float(got) == pytest.approx(brute, abs=1e-12)
    got = [float(exact.pass_at_k_swor(probs.log(), correct, k)) for k in (2, 3, 4)]
    assert got == pytest.approx([0.428, 0.666, 0.873], abs=5e-4)


def test_swor_at_least_iid_and_equal_at_k1():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 7, generator=g, dtype=torch.float64)
    correct = torch.zeros(40, 7, dtype=torch.bool)
    correct[:, :2] = True
    for k in range(1, 7):
        swor = exact.pass_at_k_swor(logits, correct, k)
        iid = exact.pass_at_k(logits, correct, k)
        assert torch.all(swor >= iid - 1e-12)
        if k == 1:
            torch.testing.assert_close(swor, iid)
    assert torch.all(exact.pass_at_k_swor(logits, correct, 6) == 1)  # only 5 wrong answers


def test_swor_depends_on_how_the_wrong_mass_is_spread():
    concentrated = torch.tensor([[0.2, 0.8, 1e-12, 1e-12, 1e-12]], dtype=torch.float64)
    spread = torch.tensor([[0.2, 0.2, 0.2, 0.2, 0.2]], dtype=torch.float64)
    correct = torch.tensor([[True, False, False, False, False]])
    a = float(exact.pass_at_k_swor(concentrated.log(), correct, 2))
    b = float(exact.pass_at_k_swor(spread.log(), correct, 2))
    assert a == pytest.approx(1.0, abs=1e-9) and b == pytest.approx(0.4, abs=1e-12)
    assert passk.pass_at_k(0.2, 2) == pytest.approx(0.36)  # i.i.d. sees only J_1


def test_gumbel_top_k_inclusion_frequencies():
    """Empirical frequencies of ordered pairs and of inclusion against the exact law."""
    probs = [0.5, 0.25, 0.15, 0.1]
    logits = torch.tensor(probs, dtype=torch.float64).log().expand(200_000, 4)
    draws = sampling.gumbel_top_k(logits, 2, torch.Generator().manual_seed(0))
    assert torch.all(draws[:, 0] != draws[:, 1])
    law = sequential_law(probs)(2)
    counts = torch.bincount(draws[:, 0] * 4 + draws[:, 1], minlength=16).double() / len(draws)
    for (a, b), p in law.items():
        se = math.sqrt(p * (1 - p) / len(draws))
        assert abs(float(counts[a * 4 + b]) - p) < 5 * se
    incl = torch.zeros(4, dtype=torch.float64)
    for (a, b), p in law.items():
        incl[a] += p
        incl[b] += p
    freq = torch.bincount(draws.flatten(), minlength=4).double() / len(draws)
    assert torch.all((freq - incl).abs() < 5 * torch.sqrt(incl * (1 - incl) / len(draws)))


def test_swor_bad_input():
    with pytest.raises(ValueError, match="same number of wrong"):
        exact.pass_at_k_swor(torch.zeros(2, 3), torch.tensor([[1, 0, 0], [1, 1, 0]]).bool(), 1)
    with pytest.raises(ValueError, match="k must be <= n"):
        sampling.gumbel_top_k(torch.zeros(2, 3), 4)


def test_symbolic_swor_matches_dp_and_minor_has_even_split_factor():
    import sympy as sp

    from passk_companion.theory import symbolic

    q = [sp.Rational(2, 10), sp.Rational(4, 10), sp.Rational(2, 10), sp.Rational(1, 10)]
    q.append(1 - sum(q))
    correct = torch.tensor([[True, False, False, False, False]])
    logits = torch.tensor([[float(v) for v in q]], dtype=torch.float64).log()
    for k in (1, 2, 3):
        expr = symbolic.swor_pass_at_k_expr(q, [0], k)
        assert float(expr) == pytest.approx(
            float(exact.pass_at_k_swor(logits, correct, k)), abs=1e-12
        )
    z, minor = symbolic.swor_collinearity_minor()
    assert sp.simplify(minor.subs(z[2], z[1])) == 0  # collinear when the wrong mass is even
    assert minor.subs({z[0]: 0, z[1]: 0, z[2]: 1}) != 0  # and not otherwise


def test_swor_gradient_not_collinear_and_pushes_wrong_mass_together():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(30, 6, generator=g, dtype=torch.float64)
    correct = torch.zeros(30, 6, dtype=torch.bool)
    correct[:, 0] = True
    gk = exact.autograd(exact.pass_at_k_swor, logits, correct, 3)
    g1 = exact.grad_j1(logits, correct)
    cos = exact.cosine(gk, g1)
    assert cos.max() < 1 - 1e-6
    resid = exact.orthogonal_part(gk, g1)
    torch.testing.assert_close((resid * g1).sum(1), torch.zeros(30, dtype=torch.float64))
    dh = (exact.autograd(exact.wrong_mass_entropy, logits, correct) * resid).sum(1)
    assert (dh < 0).float().mean() > 0.5


def test_correlated_pass_at_k_below_iid():
    corr, iid = passk.pass_at_k_correlated([0.05, 0.6], [0.5, 0.5], 4)
    assert corr == pytest.approx(1 - 0.5 * 0.95**4 - 0.5 * 0.4**4)
    assert iid == pytest.approx(1 - (1 - 0.325) ** 4) and corr < iid
    mc = sampling.correlated_pass_at_k(
        torch.tensor([0.05, 0.6]),
        torch.tensor([0.5, 0.5]),
        4,
        200_000,
        torch.Generator().manual_seed(0),
    )
    assert mc == pytest.approx(corr, abs=5 * math.sqrt(corr * (1 - corr) / 200_000))
    with pytest.raises(ValueError, match="probability vector"):
        passk.pass_at_k_correlated([0.1, 0.2], [0.5, 0.6], 2)
