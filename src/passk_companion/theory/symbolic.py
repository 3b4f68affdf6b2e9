"""SymPy derivations behind notebook 01 (Theorem 3.1 of arXiv 2511.16231 and its corollaries).

Each function returns SymPy expressions, so that the notebook can display them and the tests can
assert that a residual simplifies to exactly 0.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy as sp

__all__ = [
    "Theorem31",
    "theorem_3_1_general",
    "theorem_3_1_softmax",
    "passk_by_enumeration",
    "alpha_limits",
    "gap_peak_symbolic",
    "no_signal_probability",
    "swor_pass_at_k_expr",
    "swor_collinearity_minor",
    "SignalMagnitude",
    "signal_magnitude",
    "entropy_optimum_j1",
]

K = sp.Symbol("k", integer=True, positive=True)
P = sp.Symbol("J_1", nonnegative=True)  # J_1 = p, used where J_1 is a plain number in [0, 1]


@dataclass(frozen=True)
class Theorem31:
    """grad J_k and alpha_k grad J_1 for one setting, and their simplified difference."""

    params: tuple[sp.Symbol, ...]
    J1: sp.Expr
    Jk: sp.Expr
    alpha: sp.Expr
    grad_Jk: tuple[sp.Expr, ...]
    residuals: tuple[sp.Expr, ...]  # simplify(grad_Jk[i] - alpha * d J1 / d params[i])

    @property
    def holds(self) -> bool:
        """True when every residual simplified to exactly 0."""
        return all(r == 0 for r in self.residuals)


def _theorem(params: tuple[sp.Symbol, ...], J1: sp.Expr, one_minus_J1: sp.Expr) -> Theorem31:
    Jk = 1 - one_minus_J1**K
    alpha = K * one_minus_J1 ** (K - 1)
    grad_Jk = tuple(sp.diff(Jk, t) for t in params)
    residuals = tuple(
        sp.simplify(g - alpha * sp.diff(J1, t)) for g, t in zip(grad_Jk, params, strict=True)
    )
    return Theorem31(params, J1, Jk, alpha, grad_Jk, residuals)


def theorem_3_1_general(n_params: int = 3) -> Theorem31:
    """J_1 an arbitrary (undefined) function of n_params parameters, k a symbolic positive integer.

    J_k = 1 - (1 - J_1)^k, and the claim is d J_k / d theta_i = k (1 - J_1)^(k-1) d J_1 / d theta_i.
    """
    if n_params < 1:
        raise ValueError(f"n_params must be >= 1, got {n_params}")
    theta = sp.symbols(f"theta1:{n_params + 1}", real=True)
    J1 = sp.Function("J_1")(*theta)
    return _theorem(theta, J1, 1 - J1)


def theorem_3_1_softmax(m: int, correct: list[int]) -> Theorem31:
    """A softmax policy pi = softmax(z) over m answers with the given answers correct.

    J_1 = sum_{a correct} e^{z_a} / sum_b e^{z_b}; 1 - J_1 is written as the wrong mass
    sum_{a wrong} e^{z_a} / sum_b e^{z_b} (an identity, checked in tests), which lets SymPy use
    that it is positive when it simplifies (W/S)^k for symbolic k.
    """
    if m < 2 or not correct or not set(correct) < set(range(m)):
        raise ValueError("need m >= 2 and a non-empty proper subset of range(m) as correct answers")
    z = sp.symbols(f"z0:{m}", real=True)
    total = sum(sp.exp(zi) for zi in z)
    J1 = sum(sp.exp(z[a]) for a in correct) / total
    wrong_mass = sum(sp.exp(z[a]) for a in range(m) if a not in correct) / total
    return _theorem(z, J1, wrong_mass)


def passk_by_enumeration(m: int, correct: list[int], k: int) -> tuple[sp.Expr, sp.Expr]:
    """pass@k from its definition, summing over all m^k ordered tuples of k i.i.d. draws.

    Returns (J_k by enumeration, J_k by enumeration minus (1 - (1 - J_1)^k)), both in the
    probabilities q_0..q_{m-1} with q_{m-1} eliminated by sum q = 1. The residual expands to 0.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = sp.symbols(f"q0:{m}", positive=True)
    reward = [1 if a in correct else 0 for a in range(m)]
    jk = sum(
        sp.Mul(*(q[a] for a in draws)) * max(reward[a] for a in draws)
        for draws in itertools.product(range(m), repeat=k)
    )
    closure = {q[-1]: 1 - sum(q[:-1])}
    J1 = sum(q[a] for a in correct)
    jk = sp.expand(jk.subs(closure))
    return jk, sp.expand(jk - (1 - (1 - J1.subs(closure)) ** k))


def alpha_limits() -> dict[str, sp.Expr]:
    """Limits of alpha_k = k (1 - J_1)^(k-1): -> k as J_1 -> 0; -> 0 as J_1 -> 1 when k >= 2.

    k >= 2 is written k = j + 1 with j a positive integer, so SymPy can take the limit.
    """
    j = sp.Symbol("j", integer=True, positive=True)
    alpha = K * (1 - P) ** (K - 1)
    return {
        "J1->0": sp.limit(alpha, P, 0, "+"),
        "J1->1 (k>=2)": sp.limit(alpha.subs(K, j + 1), P, 1, "-"),
        "J1->1 (k=1)": sp.limit(alpha.subs(K, 1), P, 1, "-"),
        "gap J1->0": sp.limit((1 - (1 - P) ** K) - P, P, 0, "+"),
        "gap J1->1": sp.limit((1 - (1 - P) ** K) - P, P, 1, "-"),
    }


def gap_peak_symbolic() -> tuple[sp.Expr, sp.Expr]:
    """Solve d Delta/dJ_1 = k (1 - J_1)^(k-1) - 1 = 0: returns (p*, Delta(p*)) in k."""
    q = sp.Symbol("q", positive=True)  # q = 1 - J_1
    (q_star,) = sp.solve(sp.Eq(K * q ** (K - 1), 1), q)
    p_star = 1 - q_star
    gap_star = sp.simplify((1 - q_star**K) - p_star)
    return p_star, gap_star


def no_signal_probability(n: sp.Symbol | int | None = None) -> sp.Expr:
    """P(no correct rollout among n i.i.d. rollouts) = prod_{i=1}^n (1 - J_1) = (1 - J_1)^n.

    In that event every sampled estimator of grad J_k is a sum of zero-reward terms ("Situation I").
    """
    n = sp.Symbol("n", integer=True, positive=True) if n is None else n
    i = sp.Symbol("i", integer=True, positive=True)
    return sp.Product(1 - P, (i, 1, n)).doit()


def swor_pass_at_k_expr(pi: list[sp.Expr], correct: list[int], k: int) -> sp.Expr:
    """pass@k of k draws WITHOUT replacement (successive Plackett-Luce draws) from probabilities
    pi, by enumerating the ordered k-tuples of distinct answers:

        J_k^wor = sum_{(s_1..s_k) distinct, some s_i correct}
                      prod_i pi(s_i) / (1 - sum_{j<i} pi(s_j)).
    """
    if not 1 <= k <= len(pi):
        raise ValueError(f"need 1 <= k <= m = {len(pi)}, got k = {k}")
    total = sp.Integer(0)
    for draws in itertools.permutations(range(len(pi)), k):
        if not any(a in correct for a in draws):
            continue
        prob, used = sp.Integer(1), sp.Integer(0)
        for a in draws:
            prob *= pi[a] / (1 - used)
            used += pi[a]
        total += prob
    return total


def swor_collinearity_minor() -> tuple[tuple[sp.Symbol, ...], sp.Expr]:
    """Softmax over 3 answers (answer 0 correct), k = 2 draws without replacement.

    Both gradients sum to 0 over the logits (softmax shift invariance), so they are collinear iff
    the 2x2 minor dJ_2^wor/dz_1 dJ_1/dz_2 - dJ_2^wor/dz_2 dJ_1/dz_1 vanishes. Returns (z, minor
    factored); the minor carries a factor (e^{z_1} - e^{z_2}): collinear only when the wrong mass
    is split evenly.
    """
    z = sp.symbols("z0:3", real=True)
    total = sum(sp.exp(zi) for zi in z)
    pi = [sp.exp(zi) / total for zi in z]
    j2 = swor_pass_at_k_expr(pi, [0], 2)
    j1 = pi[0]
    g2 = [sp.diff(j2, zi) for zi in z]
    g1 = [sp.diff(j1, zi) for zi in z]
    return z, sp.factor(sp.simplify(g2[1] * g1[2] - g2[2] * g1[1]))


@dataclass(frozen=True)
class SignalMagnitude:
    """The size of the pass@k gradient for a softmax with one correct answer (logit z_c).

    With w the summed exponentials of the wrong logits, p = J_1 = e^{z_c} / (e^{z_c} + w), so
    d J_1 / d z_c = p (1 - p) and, by Theorem 3.1, d J_k / d z_c = alpha_k p (1 - p) = k p (1-p)^k.
    """

    dJk_dz: sp.Expr  # d J_k / d z_c, in z_c and w
    residual: sp.Expr  # simplify(dJk_dz - k p (1 - p)^k) with p in terms of z_c, w: 0
    in_p: sp.Expr  # k p (1 - p)^k
    p_peak: sp.Expr  # the p in (0, 1) where it peaks: 1 / (k + 1)
    value_at_peak: sp.Expr
    limit_at_0: sp.Expr
    limit_at_1: sp.Expr  # for k >= 1

    @property
    def holds(self) -> bool:
        return self.residual == 0


def signal_magnitude() -> SignalMagnitude:
    """Derive d J_k / d z_c = k p (1 - p)^k, its peak at p = 1/(k+1) and its limits (0 at both
    ends): the pass@k signal vanishes where J_1 -> 0 (Situation I's regime) as well as J_1 -> 1."""
    z, w = sp.Symbol("z_c", real=True), sp.Symbol("w", positive=True)
    p_of_z = sp.exp(z) / (sp.exp(z) + w)
    dJk_dz = sp.diff(1 - (1 - p_of_z) ** K, z)
    in_p = K * P * (1 - P) ** K
    residual = sp.simplify(dJk_dz - in_p.subs(P, p_of_z))
    # d/dp [p (1-p)^k] = (1-p)^(k-1) (1 - p - k p); for p < 1 the first factor is > 0
    reduced = sp.simplify(sp.diff(P * (1 - P) ** K, P) / (1 - P) ** (K - 1))
    (p_peak,) = sp.solve(reduced, P)
    j = sp.Symbol("j", integer=True, nonnegative=True)
    return SignalMagnitude(
        dJk_dz=sp.simplify(dJk_dz),
        residual=residual,
        in_p=in_p,
        p_peak=sp.simplify(p_peak),
        value_at_peak=sp.simplify(in_p.subs(P, p_peak)),
        limit_at_0=sp.limit(in_p, P, 0, "+"),
        limit_at_1=sp.limit(in_p.subs(K, j + 1), P, 1, "-"),
    )


def entropy_optimum_j1(n_correct: int, n_wrong: int, beta: sp.Expr | float) -> sp.Expr:
    """J_1 at the maximiser of J_1 + beta H(pi) over a tabular softmax (one prompt): the
    stationarity condition d/dz [J_1 + beta H] = pi (r - J_1) - beta pi (log pi + H) = 0 gives
    log pi_a = r_a / beta + const, i.e. pi proportional to exp(r / beta), so

        J_1* = n_c e^{1/beta} / (n_c e^{1/beta} + n_w).
    """
    e = sp.exp(1 / sp.nsimplify(beta))
    return n_correct * e / (n_correct * e + n_wrong)
