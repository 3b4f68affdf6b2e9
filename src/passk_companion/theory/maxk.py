"""max@k of tabular softmax policies with real-valued per-answer rewards: where Theorem 3.1 stops.

A tabular policy has logits z (P, m) and a reward table g (P, m): answer a of prompt x earns g_a
(a boolean table is the 0/1 verifier of passk_companion.theory.exact). With k i.i.d. draws,

    E_pi[r]  = sum_a pi_a g_a                                            (J_1 for a 0/1 table)
    max@k    = E[max of k draws] = sum_a g_(a) (F_a^k - F_{a-1}^k)      (pass@k for a 0/1 table)

where answers are sorted by ascending reward, g_(1) <= ... <= g_(m), F_a = pi_(1) + ... + pi_(a)
is the policy mass on the a lowest-reward answers and F_0 = 0: the max of k draws is <= g_(a)
exactly when all k draws fall among the a lowest, with probability F_a^k. Ties need no care (the
terms of a tied block telescope). The gradient of max@k comes by autograd.

Collinearity. Writing d_a = g_(a+1) - g_(a) >= 0, max@k = g_(m) - sum_{a<m} d_a F_a^k and
E_pi[r] = g_(m) - sum_{a<m} d_a F_a. In logit space grad_z f = pi * (u - <pi, u>) with u the
partial derivatives of f in pi, a map whose kernel is the constant vectors; so grad max@k and
grad E_pi[r] are collinear exactly when the successive differences of their u are proportional:
(k d_a F_a^{k-1})_a against (d_a)_a. Every pi_a > 0 makes F_a strictly increasing, so for k >= 2
this needs at most one nonzero gap d_a: a reward with at most two distinct values, i.e. an affine
image of a 0/1 verifier (Theorem 3.1). `three_answer_cross_product` states the m = 3 case in SymPy.

Noisy rewards. When a draw of answer a earns mu_a + sigma eps, eps ~ N(0, 1), the reward of one
draw has the mixture CDF F(x) = sum_a pi_a Phi((x - mu_a) / sigma), and the max of k draws has
CDF F^k, so max@k = integral of x d[F(x)^k] = hi - integral_lo^hi F(x)^k dx + (tails), with
[lo, hi] = [min mu - L sigma, max mu + L sigma]. `noisy_max_at_k` computes it by composite
Gauss-Legendre quadrature (`NoisyQuadrature`, whose `grad` is its gradient in the logits in
closed form, checked against autograd through the quadrature). This is PKPO's max@k (Walder &
Karkhanis 2025) of a real reward with noise, beyond arXiv 2511.16231.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy as sp
import torch
from torch import Tensor

from passk_companion.theory.exact import cosine
from passk_companion.theory.passk import check_k

__all__ = [
    "check_table",
    "expected_reward",
    "grad_expected_reward",
    "max_at_k",
    "grad_max_at_k",
    "NoisyQuadrature",
    "noisy_max_at_k",
    "cosine_to_expected_reward",
    "three_answer_cross_product",
]


def check_table(logits: Tensor, table: Tensor) -> None:
    """Raise ValueError unless logits (P, m) are floating point and the reward table (P, m) is
    a boolean mask or finite real numbers."""
    if logits.ndim != 2 or table.shape != logits.shape:
        raise ValueError(
            f"logits and the reward table must both have shape (P, m); got {tuple(logits.shape)} "
            f"and {tuple(table.shape)}"
        )
    if not torch.is_floating_point(logits):
        raise ValueError("logits must be a floating point tensor")
    if table.dtype != torch.bool:
        if not torch.is_floating_point(table):
            raise ValueError(
                f"the reward table must be a boolean mask or real floats, got dtype {table.dtype}"
            )
        if not bool(torch.all(torch.isfinite(table))):
            raise ValueError("the reward table must be finite (no NaN or inf)")


def expected_reward(logits: Tensor, table: Tensor) -> Tensor:
    """E_pi[r] per prompt, shape (P,) (J_1 for a boolean table)."""
    check_table(logits, table)
    return (torch.softmax(logits, -1) * table.to(logits.dtype)).sum(-1)


def grad_expected_reward(logits: Tensor, table: Tensor) -> Tensor:
    """Closed form d E_pi[r] / d z = pi * (g - E_pi[r]), shape (P, m)."""
    check_table(logits, table)
    pi = torch.softmax(logits, -1)
    g = table.to(pi.dtype)
    return pi * (g - (pi * g).sum(-1, keepdim=True))


def max_at_k(logits: Tensor, table: Tensor, k: int | Tensor) -> Tensor:
    """E[max of k i.i.d. rewards] per prompt, shape (P,): sum_a g_(a) (F_a^k - F_{a-1}^k) over
    answers sorted by ascending reward (module docstring); differentiable in logits. `k` is one
    k, or a tensor (P,) of one k per prompt.

    Computed in the summed-by-parts form g_(m) - sum_{a<m} d_a F_a^k, d_a = g_(a+1) - g_(a):
    no term involves F_m = 1, so the gradient has no O(k) terms that cancel (it can be 1e-9 and
    still be accurate to ~1e-16 relative)."""
    check_table(logits, table)
    check_k(k)
    g = table.to(logits.dtype)
    g_sorted, order = torch.sort(g, dim=-1, stable=True)
    cdf = torch.cumsum(torch.softmax(logits, -1).gather(-1, order)[:, :-1], -1)  # F_1..F_{m-1}
    gaps = g_sorted[:, 1:] - g_sorted[:, :-1]
    if isinstance(k, Tensor):
        if k.shape != (logits.shape[0],):
            raise ValueError(
                f"a k per prompt needs shape ({logits.shape[0]},), got {tuple(k.shape)}"
            )
        k = k.to(cdf.dtype)[:, None]
    return g_sorted[:, -1] - (gaps * cdf**k).sum(-1)


def grad_max_at_k(logits: Tensor, table: Tensor, k: int | Tensor) -> Tensor:
    """d max@k / d z in closed form, shape (P, m) (grad_jk of passk_companion.theory.exact on 0/1
    tables; tests check it against autograd of max_at_k).

    With the answers sorted by reward, max@k = g_(m) - sum_{a<m} d_a F_a^k, F_a = sum_{j<=a} pi_(j),
    so d max@k / d pi_(j) = -sum_{a >= j, a < m} d_a k F_a^(k-1), and the softmax chain rule gives
    d / dz = pi (u - <pi, u>) for u = d max@k / d pi."""
    check_table(logits, table)
    check_k(k)
    pi = torch.softmax(logits, -1)
    g = table.to(pi.dtype)
    g_sorted, order = torch.sort(g, dim=-1, stable=True)
    cdf = torch.cumsum(pi.gather(-1, order)[:, :-1], -1)
    gaps = g_sorted[:, 1:] - g_sorted[:, :-1]
    kk = k.to(pi.dtype)[:, None] if isinstance(k, Tensor) else k
    v = gaps * kk * cdf ** (kk - 1)  # (P, m - 1)
    u_sorted = torch.zeros_like(pi)
    u_sorted[:, :-1] = -torch.flip(torch.cumsum(torch.flip(v, [-1]), -1), [-1])
    u = torch.empty_like(u_sorted).scatter_(-1, order, u_sorted)
    return pi * (u - (pi * u).sum(-1, keepdim=True))


NOISY_SPAN = 10.0  # [lo, hi] reaches this many noise sd past the extreme means: Phi(-10) < 1e-23
NOISY_NODES = 16  # Gauss-Legendre nodes per panel of one noise sd


@dataclass(frozen=True)
class NoisyQuadrature:
    """The policy-free part of the noisy max@k quadrature of one reward table (P, m): the upper end
    `hi`, the weights w (N,) of the nodes x_n on [lo, hi] (panels of width at most sigma,
    `nodes_per_sd` Gauss-Legendre nodes each) and cdf[p, n, a] = Phi((x_n - mu_pa) / sigma).
    It does not depend on the policy, so a flow builds it once; a table of one row serves
    logits of any number of rows."""

    hi: float
    weights: Tensor
    cdf: Tensor

    @classmethod
    def build(
        cls, means: Tensor, sigma: float, nodes_per_sd: int = NOISY_NODES
    ) -> NoisyQuadrature:  # fmt: skip
        if means.ndim != 2 or not torch.is_floating_point(means):
            raise ValueError("noisy rewards need a (P, m) table of real means, not a boolean one")
        if not bool(torch.all(torch.isfinite(means))):
            raise ValueError("the means must be finite (no NaN or inf)")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        if isinstance(nodes_per_sd, bool) or not isinstance(nodes_per_sd, int) or nodes_per_sd < 2:
            raise ValueError(f"nodes_per_sd must be an integer >= 2, got {nodes_per_sd!r}")
        lo = float(means.min()) - NOISY_SPAN * sigma
        hi = float(means.max()) + NOISY_SPAN * sigma
        panels = math.ceil((hi - lo) / sigma)
        u, w = np.polynomial.legendre.leggauss(nodes_per_sd)
        edges = np.linspace(lo, hi, panels + 1)
        half = (edges[1:] - edges[:-1])[:, None] / 2
        x = torch.from_numpy((edges[:-1, None] + half * (u[None] + 1)).ravel()).to(means.dtype)
        weights = torch.from_numpy((half * w[None]).ravel()).to(means.dtype)
        cdf = torch.special.ndtr((x[None, :, None] - means[:, None, :]) / sigma)  # (P, N, m)
        return cls(hi, weights, cdf)

    def _k(self, k: int | Tensor, rows: int, dtype: torch.dtype) -> float | Tensor:
        check_k(k)
        if isinstance(k, Tensor):
            if k.shape != (rows,):
                raise ValueError(f"a k per prompt needs shape ({rows},), got {tuple(k.shape)}")
            return k.to(dtype)[:, None]
        return k

    def _check(self, logits: Tensor) -> None:
        rows, _, m = self.cdf.shape
        if logits.ndim != 2 or logits.shape[1] != m or rows not in (1, logits.shape[0]):
            raise ValueError(
                f"logits must have shape (P, {m}) with P = {rows} (or any P when the table has "
                f"one row), got {tuple(logits.shape)}"
            )

    def _mix(self, pi: Tensor) -> Tensor:
        """F(x_n) per prompt, (P, N)."""
        return (self.cdf @ pi[:, :, None]).squeeze(-1)

    def value(self, logits: Tensor, k: int | Tensor) -> Tensor:
        """max@k per prompt, (P,): hi - sum_n w_n F(x_n)^k. Differentiable in logits."""
        self._check(logits)
        mix = self._mix(torch.softmax(logits, -1))
        return self.hi - (self.weights * mix ** self._k(k, len(logits), mix.dtype)).sum(-1)

    def grad(self, logits: Tensor, k: int | Tensor) -> Tensor:
        """d max@k / d logits, (P, m), in closed form: u_a = -sum_n w_n k F_n^(k-1) Phi_na, the
        partial derivative in pi_a, through the softmax chain rule pi (u - <pi, u>) (tests check
        it against autograd of `value`)."""
        self._check(logits)
        pi = torch.softmax(logits, -1)
        mix = self._mix(pi)
        kk = self._k(k, len(logits), mix.dtype)
        u = -((self.weights * kk * mix ** (kk - 1))[:, None, :] @ self.cdf).squeeze(1)
        return pi * (u - (pi * u).sum(-1, keepdim=True))


def noisy_max_at_k(
    logits: Tensor,
    means: Tensor,
    sigma: float,
    k: int | Tensor,
    *,
    nodes_per_sd: int = NOISY_NODES,
) -> Tensor:
    """E[max of k i.i.d. rewards] per prompt, shape (P,), when a draw of answer a earns
    means[:, a] + sigma * N(0, 1): hi - integral_lo^hi F(x)^k dx with F the mixture CDF
    sum_a pi_a Phi((x - mu_a) / sigma) (module docstring), by composite Gauss-Legendre over
    panels of one sd (:class:`NoisyQuadrature`; its `grad` gives the gradient in the logits).
    Differentiable in logits. `k` is one k, or a
    tensor (P,) of one k per prompt. k = 1 gives E_pi[mu]; the tails beyond 10 sd add less than
    1e-20."""
    check_table(logits, means)
    return NoisyQuadrature.build(means, sigma, nodes_per_sd).value(logits, k)


def cosine_to_expected_reward(logits: Tensor, table: Tensor, k: int) -> Tensor:
    """cos(grad max@k, grad E_pi[r]) per prompt (NaN where a gradient is exactly zero)."""
    return cosine(grad_max_at_k(logits, table, k), grad_expected_reward(logits, table), dim=-1)


def three_answer_cross_product() -> dict[str, sp.Expr]:
    """SymPy statement of the collinearity condition for m = 3 answers.

    Rewards g_1 <= g_2 <= g_3 (gaps d_1 = g_2 - g_1, d_2 = g_3 - g_2), policy masses p_1, p_2,
    p_3 = 1 - p_1 - p_2 > 0, k >= 1. Both logit gradients sum to zero, so their cross product is a
    multiple of (1, 1, 1); its first component `cross` is 0 exactly when they are collinear.
    Returns the symbols, both gradients, `cross`, the closed form

        claimed = k d_1 d_2 p_1 p_2 p_3 ((p_1 + p_2)^(k-1) - p_1^(k-1)),

    and `residual` = simplify(cross - claimed) (0 when the closed form is right). `claimed` is 0
    iff k = 1, d_1 = 0 or d_2 = 0: the reward takes at most two distinct values."""
    p1, p2, p3, d1, d2, g1 = sp.symbols("p_1 p_2 p_3 d_1 d_2 g_1", positive=True)
    k = sp.Symbol("k", positive=True, integer=True)
    p = sp.Matrix([p1, p2, p3])
    g = sp.Matrix([g1, g1 + d1, g1 + d1 + d2])
    max_k = g[2] - d2 * (p1 + p2) ** k - d1 * p1**k  # g_(3) - sum_a d_a F_a^k, F_3 = 1
    mean = (p.T * g)[0]

    def logit_grad(f: sp.Expr) -> sp.Matrix:
        u = sp.Matrix([sp.diff(f, v) for v in (p1, p2, p3)])
        avg = (p.T * u)[0]
        return sp.Matrix([p[i] * (u[i] - avg) for i in range(3)])

    grad_mean, grad_max = logit_grad(mean), logit_grad(max_k)
    cross = grad_mean.cross(grad_max)[0]
    claimed = k * d1 * d2 * p1 * p2 * p3 * ((p1 + p2) ** (k - 1) - p1 ** (k - 1))
    on_simplex = {p3: 1 - p1 - p2}
    residual = sp.simplify(cross.subs(on_simplex) - claimed.subs(on_simplex))
    return {
        "p_1": p1,
        "p_2": p2,
        "p_3": p3,
        "d_1": d1,
        "d_2": d2,
        "g_1": g1,
        "k": k,
        "grad_mean": grad_mean,
        "grad_max": grad_max,
        "cross": cross,
        "claimed": claimed,
        "residual": residual,
    }
