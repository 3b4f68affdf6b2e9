"""Where an entropy bonus stops training: the stationary points of the exact tabular update
omega(J_1) grad J_1 + beta grad H (notebook 03). See :func:`entropy_fixed_point`."""

from __future__ import annotations

import math

import torch

from passk_companion import objectives
from passk_companion.theory.exact import grad_j1, success_prob
from passk_companion.theory.policy_metrics import grad_entropy
from passk_companion.theory.weights import P_CLAMP, weight_profile

__all__ = ["entropy_fixed_point", "entropy_stationary_point"]


def entropy_fixed_point(
    omega, n_correct: int, n_wrong: int, beta: float, tol: float = 1e-13
) -> float:
    """J_1 at a stationary point of the exact update omega(J_1) grad J_1 + beta grad H on one
    tabular prompt with n_correct correct and n_wrong wrong answers.

    Stationarity, pi (omega (r - J_1)) = beta pi (log pi + H), gives log pi_a = omega r_a / beta +
    const, so J_1 solves the fixed point

        J_1 = n_c e^{omega(J_1)/beta} / (n_c e^{omega(J_1)/beta} + n_w),

    found by bisection on (0, 1). For pass@1 (omega = 1) this is pi ~ exp(r / beta). For omega
    non-increasing in J_1 (alpha_k), the right side is non-increasing and the root is unique."""
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be finite and > 0, got {beta}")
    if n_correct < 1 or n_wrong < 1:
        raise ValueError("need n_correct >= 1 and n_wrong >= 1")

    def rhs(j1: float) -> float:
        a = float(omega(j1)) / beta
        return 1.0 / (1.0 + n_wrong / n_correct * math.exp(-a))  # n_c e^a / (n_c e^a + n_w)

    lo, hi = 1e-15, 1 - 1e-15
    if rhs(hi) >= hi:  # the root lies within 1e-15 of 1 (float64 cannot resolve it further)
        return rhs(hi)
    if rhs(lo) <= lo:
        raise ValueError("no fixed point in (0, 1) for this omega")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rhs(mid) > mid else (lo, mid)
    return 0.5 * (lo + hi)


def entropy_stationary_point(
    objective: str, n: int, k: int, beta: float, n_correct: int, n_wrong: int
) -> tuple[float, float]:
    """The J_1 predicted by :func:`entropy_fixed_point` for the exact update of `objective` (its
    omega from harness.weight_profile, as training uses it) with entropy coefficient beta, and the
    largest |update| of that exact update at the predicted policy pi ~ exp(omega(J_1*) r / beta),
    which is 0 (to round-off) when the prediction is a stationary point."""
    profile = weight_profile(objectives.get(objective), n, k)

    def omega(p: float) -> float:
        clamped = min(max(p, P_CLAMP), 1 - P_CLAMP)
        return float(profile.omega(torch.tensor([clamped], dtype=torch.float64))[0])

    j1_star = entropy_fixed_point(omega, n_correct, n_wrong, beta)
    correct = torch.zeros(1, n_correct + n_wrong, dtype=torch.bool)
    correct[0, :n_correct] = True
    z = (omega(j1_star) / beta) * correct.to(torch.float64)
    j1 = success_prob(z, correct).clamp(P_CLAMP, 1 - P_CLAMP)
    u = profile.omega(j1)[:, None] * grad_j1(z, correct) + beta * grad_entropy(z)
    return j1_star, float(u.abs().max())
