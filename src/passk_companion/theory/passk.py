"""Pass@k for a 0/1 verifier: exact law, gradient factor, gap, and the unbiased estimator.

Notation (paper, arXiv 2511.16231, Sec. 3): for one prompt x, J_1 = p is the probability that one
sample from the policy is correct. With k i.i.d. samples,

    J_k = pass@k = 1 - (1 - p)^k                                   (Theorem 3.1, first line)
    grad J_k = alpha_k * grad J_1,   alpha_k = k (1 - p)^(k - 1)     (Theorem 3.1)
    Delta(k) = J_k - J_1 = (1 - p)(1 - (1 - p)^(k - 1))            (the exploration gap, Sec. 3.2)

The unbiased estimator and the check of k live with the objectives that use them
(passk_companion.objectives.estimators) and are re-exported here. Every function here accepts
Python numbers, numpy arrays or torch tensors and broadcasts. The
closed forms are plain arithmetic, so on torch tensors they are differentiable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from passk_companion.objectives.estimators import check_k, pass_at_k_unbiased

ArrayLike = Any  # float | np.ndarray | torch.Tensor

__all__ = [
    "pass_at_k",
    "alpha_k",
    "gap",
    "gap_peak",
    "pass_at_k_unbiased",
    "check_k",
    "n_for_signal",
    "signal_size",
    "pass_at_k_correlated",
]


def _check_prob(p: ArrayLike) -> None:
    p_arr = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
    if np.any((p_arr < 0) | (p_arr > 1)) or np.any(np.isnan(p_arr)):
        raise ValueError("p (= J_1) must lie in [0, 1]")


def pass_at_k(p: ArrayLike, k: ArrayLike) -> ArrayLike:
    """Exact pass@k of k i.i.d. samples: J_k = 1 - (1 - p)^k (Theorem 3.1).

    >>> float(pass_at_k(0.5, 2))
    0.75
    """
    check_k(k)
    _check_prob(p)
    return 1 - (1 - p) ** k


def alpha_k(p: ArrayLike, k: ArrayLike) -> ArrayLike:
    """The scalar of Theorem 3.1: grad J_k = alpha_k grad J_1 with alpha_k = k (1 - p)^(k - 1).

    alpha_k -> k as p -> 0 and alpha_k -> 0 as p -> 1 (for k >= 2): the pass@k gradient is the
    pass@1 gradient, reweighted towards prompts the policy rarely solves.
    """
    check_k(k)
    _check_prob(p)
    return k * (1 - p) ** (k - 1)


def gap(p: ArrayLike, k: ArrayLike) -> ArrayLike:
    """The exploration gap Delta(k) = J_k - J_1 = (1 - p)(1 - (1 - p)^(k - 1)) (Sec. 3.2)."""
    check_k(k)
    _check_prob(p)
    return (1 - p) * (1 - (1 - p) ** (k - 1))


def signal_size(p: ArrayLike, k: ArrayLike) -> ArrayLike:
    """The size of the pass@k signal, k p (1 - p)^k: dJ_k/dz_c of a softmax whose one correct
    answer has logit z_c and probability p = J_1 (symbolic.signal_magnitude derives it). It
    vanishes as J_1 -> 0 and as J_1 -> 1 and peaks at J_1 = 1 / (k + 1)."""
    check_k(k)
    _check_prob(p)
    return k * p * (1 - p) ** k


def gap_peak(k: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """The p that maximises Delta(k), and Delta(k) there.

    d Delta / dp = k (1 - p)^(k - 1) - 1 = 0 gives (1 - p*) = k^(-1/(k-1)), so
        p* = 1 - k^(-1/(k-1)),   Delta*(k) = k^(-1/(k-1)) (1 - 1/k).
    Defined for k >= 2 (for k = 1 the gap is identically 0).
    """
    check_k(k)
    k_arr = k.to(torch.float64) if isinstance(k, torch.Tensor) else np.asarray(k, dtype=float)
    if np.any(np.asarray(k_arr.cpu() if isinstance(k_arr, torch.Tensor) else k_arr) < 2):
        raise ValueError("gap_peak needs k >= 2: for k = 1 the gap is identically zero")
    q = k_arr ** (-1.0 / (k_arr - 1))
    p_star, gap_star = 1 - q, q * (1 - 1 / k_arr)
    if not isinstance(k, torch.Tensor) and np.ndim(k) == 0:
        return float(p_star), float(gap_star)
    return p_star, gap_star


def n_for_signal(p: ArrayLike, prob: float) -> ArrayLike:
    """Smallest n with P(at least one correct among n rollouts) = 1 - (1 - p)^n >= prob.

    From (1 - p)^n <= 1 - prob: n = ceil(log(1 - prob) / log(1 - p)) for 0 < p < 1 (Situation I).
    """
    if not 0 < prob < 1:
        raise ValueError(f"prob must lie in (0, 1), got {prob}")
    p_arr = np.asarray(p, dtype=float)
    if np.any((p_arr <= 0) | (p_arr >= 1)):
        raise ValueError("p must lie in (0, 1) for a finite, non-trivial n")
    # the small relative nudge keeps exact ratios (e.g. p = 0.5, prob = 0.75 -> 2) from rounding up
    n = np.ceil(np.log1p(-prob) / np.log1p(-p_arr) * (1 - 1e-12))
    return n.astype(np.int64) if n.ndim else int(n)


def pass_at_k_correlated(success: ArrayLike, mix: ArrayLike, k: int) -> tuple[float, float]:
    """pass@k when the k draws share a latent variable (a temperature, a mode, a seed).

    With latent value l drawn with probability mix[l] once per group, and success probability
    success[l] given l, the draws are exchangeable but not independent:
        pass@k = 1 - sum_l mix[l] (1 - success[l])^k  <=  1 - (1 - p)^k,
        p = sum_l mix[l] success[l],
    by Jensen's inequality ((1 - x)^k is convex). Returns (correlated pass@k, i.i.d. pass@k at p).
    """
    check_k(k)
    s, w = np.asarray(success, dtype=float), np.asarray(mix, dtype=float)
    if s.shape != w.shape or s.ndim != 1:
        raise ValueError("success and mix must be 1-D arrays of the same length")
    if np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise ValueError("mix must be a probability vector")
    _check_prob(s)
    p = float((w * s).sum())
    return float(1 - (w * (1 - s) ** k).sum()), float(1 - (1 - p) ** k)
