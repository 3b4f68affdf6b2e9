"""pass@k core: closed forms against brute force, the estimator against exact rationals."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from passk_companion.objectives import estimators
from passk_companion.theory import passk


def exact_estimator(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@st.composite
def nck(draw, max_n=60):
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(0, n))
    k = draw(st.integers(1, n))
    return n, c, k


@given(nck())
def test_estimator_matches_exact_rationals(case):
    n, c, k = case
    got = passk.pass_at_k_unbiased(n, c, k)
    assert got == pytest.approx(float(exact_estimator(n, c, k)), rel=1e-12, abs=1e-15)


@given(nck())
def test_estimator_in_unit_interval_and_k1_is_c_over_n(case):
    n, c, k = case
    v = passk.pass_at_k_unbiased(n, c, k)
    assert 0.0 <= v <= 1.0
    assert passk.pass_at_k_unbiased(n, c, 1) == pytest.approx(c / n, rel=1e-12, abs=1e-15)


@given(nck(max_n=40))
def test_estimator_monotone_in_k_and_c(case):
    n, c, _ = case
    ks = np.arange(1, n + 1)
    in_k = passk.pass_at_k_unbiased(n, c, ks)
    assert np.all(np.diff(in_k) >= -1e-12)
    cs = np.arange(0, n + 1)
    for k in (1, max(1, n // 2), n):
        in_c = passk.pass_at_k_unbiased(n, cs, k)
        assert np.all(np.diff(in_c) >= -1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_estimator_is_mean_over_subsets(n):
    """rho(n, c, k) = fraction of k-subsets of n labelled samples holding a correct one."""
    for labels in itertools.product([0, 1], repeat=n):
        c = sum(labels)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(labels, k))
            brute = Fraction(sum(max(s) for s in subsets), len(subsets))
            assert passk.pass_at_k_unbiased(n, c, k) == pytest.approx(float(brute), abs=1e-14)


@settings(max_examples=40)
@given(st.integers(1, 12), st.fractions(0, 1, max_denominator=50), st.data())
def test_estimator_unbiased_over_binomial(n, p, data):
    """E_{c ~ Bin(n, p)}[rho(n, c, k)] = 1 - (1 - p)^k exactly (rational arithmetic)."""
    k = data.draw(st.integers(1, n))
    mean = sum(
        math.comb(n, c) * p**c * (1 - p) ** (n - c) * exact_estimator(n, c, k) for c in range(n + 1)
    )
    assert mean == 1 - (1 - p) ** k
    assert passk.pass_at_k(float(p), k) == pytest.approx(float(mean), abs=1e-12)


def test_estimator_plug_in_is_biased():
    """Guard that the unbiasedness test can fail: the plug-in 1 - (1 - c/n)^k does not pass it."""
    n, k, p = 6, 3, Fraction(1, 3)
    plug = sum(
        math.comb(n, c) * p**c * (1 - p) ** (n - c) * (1 - (1 - Fraction(c, n)) ** k)
        for c in range(n + 1)
    )
    assert plug != 1 - (1 - p) ** k


def test_estimator_large_n_no_overflow():
    n = 100_000
    c = np.array([0, 1, 10, 500, 99_999, 100_000])
    got = passk.pass_at_k_unbiased(n, c, 50_000)
    assert np.all(np.isfinite(got))
    assert got[0] == 0.0 and got[-1] == 1.0 and got[-2] == 1.0
    assert got[1] == pytest.approx(0.5, rel=1e-12)  # one correct: k/n
    # against log-gamma (independent formula) in the middle of the range
    lg = math.lgamma
    ref = 1 - math.exp(lg(n - 10 + 1) - lg(n - 10 - 50_000 + 1) - lg(n + 1) + lg(n - 50_000 + 1))
    assert got[2] == pytest.approx(ref, rel=1e-9)


def test_estimator_broadcasts_and_blocks(monkeypatch):
    rng = np.random.default_rng(0)
    n = rng.integers(64, 200, size=(30, 1))
    c = rng.integers(0, 64, size=(30, 1))
    ks = np.arange(1, 65)
    full = passk.pass_at_k_unbiased(n, c, ks)
    assert full.shape == (30, 64)
    monkeypatch.setattr(estimators, "_BLOCK_ELEMENTS", 7)  # force many small blocks
    assert np.array_equal(passk.pass_at_k_unbiased(n, c, ks), full)
    for (i, j), v in np.ndenumerate(full[::7, ::9]):
        ni, ci, kj = int(n[i * 7, 0]), int(c[i * 7, 0]), int(ks[j * 9])
        assert v == pytest.approx(float(exact_estimator(ni, ci, kj)), rel=1e-12, abs=1e-15)


def test_estimator_torch_in_torch_out():
    got = passk.pass_at_k_unbiased(torch.tensor([10, 10]), torch.tensor([0, 3]), 2)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    assert got.tolist() == pytest.approx([0.0, float(exact_estimator(10, 3, 2))])


@pytest.mark.parametrize(
    ("n", "c", "k", "msg"),
    [
        (5, 2, 0, "k must be >= 1"),
        (5, 2, 6, "k must be <= n"),
        (5, 6, 2, "c .* must be <= n"),
        (-1, 0, 1, "n must be non-negative"),
        (5, -1, 1, "c must be non-negative"),
        (5, 2, 1.5, "k must hold integers"),
    ],
)
def test_estimator_rejects_bad_input(n, c, k, msg):
    with pytest.raises(ValueError, match=msg):
        passk.pass_at_k_unbiased(n, c, k)


@given(st.floats(0, 1), st.integers(1, 200))
def test_closed_forms_consistent(p, k):
    jk, j1 = passk.pass_at_k(p, k), passk.pass_at_k(p, 1)
    assert 0 <= jk <= 1
    assert j1 == pytest.approx(p)
    assert passk.gap(p, k) == pytest.approx(jk - j1, abs=1e-12)
    assert passk.alpha_k(p, k) >= 0


def test_alpha_is_derivative_of_pass_at_k():
    p = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    for k in (1, 2, 5, 32):
        (g,) = torch.autograd.grad(passk.pass_at_k(p, k).sum(), p)
        torch.testing.assert_close(g, passk.alpha_k(p.detach(), k))


@pytest.mark.parametrize("k", [2, 3, 4, 8, 16, 64, 256])
def test_gap_peak_is_argmax(k):
    p_star, g_star = passk.gap_peak(k)
    grid = np.linspace(0, 1, 200_001)
    values = passk.gap(grid, k)
    assert p_star == pytest.approx(grid[values.argmax()], abs=1e-4)
    assert g_star == pytest.approx(values.max(), abs=1e-9)
    assert g_star == pytest.approx(passk.gap(p_star, k), abs=1e-12)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="k must be >= 1"):
        passk.pass_at_k(0.5, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        passk.alpha_k(1.5, 2)
    with pytest.raises(ValueError, match="k >= 2"):
        passk.gap_peak(1)
    with pytest.raises(ValueError, match="integer"):
        passk.gap(0.3, 2.5)


@given(st.floats(1e-4, 0.999), st.sampled_from([0.5, 0.9, 0.99]))
def test_n_for_signal_is_smallest(p, prob):
    n = passk.n_for_signal(p, prob)
    assert 1 - (1 - p) ** n >= prob - 1e-12
    if n > 1:
        assert 1 - (1 - p) ** (n - 1) < prob + 1e-12


@pytest.mark.parametrize("n", [2**63, 2**64 + 5, 10**30])
def test_integers_beyond_int64_are_refused_with_the_right_message(n):
    with pytest.raises(ValueError, match="n is too large"):
        passk.pass_at_k_unbiased(n, 1, 1)
    with pytest.raises(ValueError, match="c is too large"):
        passk.pass_at_k_unbiased(5, n, 1)


def test_signal_size_is_the_derivative_in_the_correct_logit():
    import torch

    from passk_companion.theory import exact, passk

    for p, k in ((0.1, 4), (0.5, 2), (0.9, 8)):
        z = torch.tensor([[math.log(p / (1 - p)), 0.0]], dtype=torch.float64)
        correct = torch.tensor([[True, False]])
        grad = exact.autograd(exact.pass_at_k, z, correct, k)
        assert float(grad[0, 0]) == pytest.approx(passk.signal_size(p, k), rel=1e-12)
