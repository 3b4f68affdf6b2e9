"""Theorem 3.1 and its corollaries, checked symbolically and against autograd."""

import pytest
import sympy as sp
import torch

from passk_companion.theory import exact, passk, symbolic


def test_general_statement_residuals_are_zero():
    thm = symbolic.theorem_3_1_general(3)
    assert thm.residuals == (0, 0, 0) and thm.holds


@pytest.mark.parametrize(("m", "correct"), [(2, [0]), (4, [0, 2]), (5, [1, 2, 4])])
def test_softmax_instance_residuals_are_zero(m, correct):
    thm = symbolic.theorem_3_1_softmax(m, correct)
    assert thm.holds
    # the wrong-mass form of 1 - J_1 used for J_k is an identity
    wrong = sum(sp.exp(thm.params[a]) for a in range(m) if a not in correct)
    assert sp.simplify(wrong / sum(sp.exp(z) for z in thm.params) - (1 - thm.J1)) == 0


def test_a_wrong_scalar_leaves_a_residual():
    """The check can fail: with alpha_k replaced by k the residual is not 0."""
    thm = symbolic.theorem_3_1_general(1)
    (t,) = thm.params
    assert sp.simplify(thm.grad_Jk[0] - symbolic.K * sp.diff(thm.J1, t)) != 0


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_enumeration_gives_pass_at_k(k):
    _, residual = symbolic.passk_by_enumeration(3, [0], k)
    assert residual == 0
    _, residual = symbolic.passk_by_enumeration(4, [1, 3], min(k, 3))
    assert residual == 0


def test_alpha_and_gap_limits():
    lim = symbolic.alpha_limits()
    assert lim["J1->0"] == symbolic.K
    assert lim["J1->1 (k>=2)"] == 0
    assert lim["J1->1 (k=1)"] == 1
    assert lim["gap J1->0"] == 0 and lim["gap J1->1"] == 0


def test_gap_peak_symbolic_matches_numeric():
    p_star, g_star = symbolic.gap_peak_symbolic()
    for k in (2, 4, 8, 16, 64):
        ps, gs = passk.gap_peak(k)
        assert float(p_star.subs(symbolic.K, k)) == pytest.approx(ps, rel=1e-12)
        assert float(g_star.subs(symbolic.K, k)) == pytest.approx(gs, rel=1e-12)


def test_no_signal_probability():
    n = sp.Symbol("n", integer=True, positive=True)
    assert sp.simplify(symbolic.no_signal_probability() - (1 - symbolic.P) ** n) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_autograd_theorem_k_1_to_64(seed):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(16, 7, generator=g, dtype=torch.float64)
    correct = torch.rand(16, 7, generator=g) < 0.3
    correct[:, 0] = True  # at least one correct answer
    correct[:, 1] = False  # and one wrong answer per prompt
    j1 = exact.success_prob(logits, correct)
    g1 = exact.autograd(exact.success_prob, logits, correct)
    torch.testing.assert_close(g1, exact.grad_j1(logits, correct))
    for k in range(1, 65):
        gk = exact.autograd(exact.pass_at_k, logits, correct, k)
        torch.testing.assert_close(gk, passk.alpha_k(j1, k)[:, None] * g1, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(gk, exact.grad_jk(logits, correct, k), rtol=1e-10, atol=1e-14)
