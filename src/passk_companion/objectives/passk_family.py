"""Pass@k and max@k objectives: PKPO and its leave-one-out-minus-one form (real-valued rewards,
with the 0/1 case as a fast path), Chen et al.'s analytic advantage, and the naive best-of-k
heuristic.

Notation: a group of n i.i.d. rollouts with rewards g_1..g_n; for 0/1 rewards c of them correct and
rho(n, c, k) = 1 - C(n-c, k)/C(n, k) the unbiased pass@k estimate
(passk_companion.objectives.estimators.pass_at_k_unbiased), with rho(., ., 0) = 0. max@k = E[max
of k i.i.d. rewards]; for 0/1 rewards it is pass@k.

Real-valued weights (Walder & Karkhanis 2025, arXiv 2505.15201): sort the group ascending,
g_(1) <= ... <= g_(n) (ties in any order: the max of a subset does not depend on it). A k-subset
containing the sample of rank i has its max at rank i in C(i-1, k-1) subsets; for j > i, it has
its max at rank j in C(j-2, k-2) of them. Averaging over the C(n, k) subsets:

    pkpo      s_(i) = [C(i-1, k-1) g_(i) + sum_{j>i} C(j-2, k-2) g_(j)] / C(n, k)
    pkpo_loo  s_(i) = [C(i-1, k-1) g_(i) - sum_{j<i} C(j-1, k-2) g_(j)] / C(n, k)

(the second subtracts max over I \\ i, a (k-1)-subset of the others, whose rank-j member, j < i,
is its max in C(j-1, k-2) of them; the j > i terms cancel). One sort and one cumulative sum per
group: O(n log n), vectorised over the batch.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from passk_companion.objectives.base import Objective, StdNormalized, is_binary, register
from passk_companion.objectives.estimators import pass_at_k_unbiased

__all__ = ["rho", "subset_coefficients", "max_at_k_weights", "max_at_k_estimate"]


def rho(n: int, c: Tensor, k: int) -> Tensor:
    """rho(n, c, k) elementwise over c (float64 tensor); 0 when k = 0 (an empty subset)."""
    if k == 0:
        return torch.zeros_like(c, dtype=torch.float64)
    return pass_at_k_unbiased(n, c.to(torch.int64), k).to(c.device)


def _comb(a: int, b: int) -> int:
    """C(a, b), and 0 outside 0 <= b <= a."""
    return math.comb(a, b) if 0 <= b <= a else 0


@functools.lru_cache(maxsize=512)
def subset_coefficients(n: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Subset counts over C(n, k) for the ranks i = 1..n of an ascending sort, float64 (n,):

        top[i]   = C(i-1, k-1) / C(n, k)   (k-subsets containing rank i, where i is the max)
        above[i] = C(i-2, k-2) / C(n, k)   (... containing a given lower rank too)
        below[i] = C(i-1, k-2) / C(n, k)   ((k-1)-subsets of the others without a given higher
                                            rank, where i is the max)

    Each ratio of Python integers is rounded once (correctly rounded division), so the weights
    carry no error from large binomials; the tensors are cached per (n, k), read-only."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k = {k}, n = {n}")
    total = math.comb(n, k)
    rows = [
        [_comb(i - 1, k - 1) / total, _comb(i - 2, k - 2) / total, _comb(i - 1, k - 2) / total]
        for i in range(1, n + 1)
    ]
    top, above, below = torch.tensor(rows, dtype=torch.float64).T.contiguous()
    return top, above, below


def max_at_k_weights(rewards: Tensor, k: int, minus_one: bool = False) -> Tensor:
    """PKPO's per-sample weights for real-valued rewards (B, n) (module docstring): the
    subset-averaged max, s (minus_one=False), or s^(loo-1) with the max of the other k-1 members
    of each subset as baseline (minus_one=True). float64 (B, n), in the rollouts' order."""
    n = rewards.shape[1]
    top, above, below = (c.to(rewards.device) for c in subset_coefficients(n, k))
    g, order = torch.sort(rewards.to(torch.float64), dim=1, stable=True)
    own = top * g
    if minus_one:
        lower = below * g
        sorted_w = own - (torch.cumsum(lower, 1) - lower)  # - sum_{j<i} below_j g_(j)
    else:
        higher = above * g
        suffix = torch.flip(torch.cumsum(torch.flip(higher, [1]), 1), [1])
        sorted_w = own + (suffix - higher)  # + sum_{j>i} above_j g_(j)
    return torch.empty_like(sorted_w).scatter_(1, order, sorted_w)


def max_at_k_estimate(rewards: Tensor, k: int) -> Tensor:
    """The unbiased estimate of max@k from each group of n rewards (B, n) -> (B,):
    rho^(g) = (1/C(n, k)) sum_{i>=k} C(i-1, k-1) g_(i), the mean of max over all k-subsets
    (for 0/1 rewards, rho(n, c, k))."""
    top, _, _ = subset_coefficients(rewards.shape[1], k)
    return (torch.sort(rewards.to(torch.float64), dim=1).values * top.to(rewards.device)).sum(1)


@register("pkpo")
class PKPO(Objective):
    """PKPO (Walder & Karkhanis 2025, arXiv 2505.15201): the k-sample score-function estimator
    averaged over all C(n, k) subsets, s_i = (1/C(n, k)) sum_{|I| = k, i in I} max_{j in I} g_j,
    so E[sum_i s_i grad log pi(y_i)] = grad max@k. Real rewards: `max_at_k_weights`. Binary
    rewards (the fast path, equal to it):

        w_i = k/n                         if rollout i is correct,
        w_i = (k/n) rho(n-1, c, k-1)      if it is wrong,

    the gradient of pass@k. All weights are 0 when every reward is 0.
    """

    unbiased_for = "max@k"
    binary_only = False

    def _weights(self, rewards: Tensor, k: int) -> Tensor:
        if is_binary(rewards):
            return self.binary_weights(rewards, k)
        return max_at_k_weights(rewards, k)

    @staticmethod
    def binary_weights(rewards: Tensor, k: int) -> Tensor:
        """The closed form for 0/1 rewards (B, n)."""
        n = rewards.shape[1]
        c_if_wrong = rewards.sum(1).clamp_max(n - 1)  # a wrong rollout has <= n-1 correct peers
        wrong = (k / n) * rho(n - 1, c_if_wrong, k - 1)
        return torch.where(rewards > 0, torch.full_like(rewards, k / n), wrong[:, None])


@register("pkpo_loo")
class PKPOLoo(Objective):
    """PKPO with the leave-one-out "minus one" baseline (Walder & Karkhanis 2025, eq. 33):

        s_i = (1 / C(n, k)) sum_{|I| = k, i in I} [max_{j in I} g_j - max_{j in I \\ i} g_j],

    with the max of an empty set = 0. The baseline of sample i depends only on the other samples,
    so the estimator stays unbiased for grad max@k; it is defined at k = n and every weight is
    >= 0. Real rewards: `max_at_k_weights(..., minus_one=True)`. Binary rewards (the fast path):
    s_i = C(n-c, k-1)/C(n, k) = (k/n)(1 - rho(n-1, c-1, k-1)) if i is correct (no other correct
    rollout in I), and 0 if wrong.
    """

    unbiased_for = "max@k"
    binary_only = False

    def _weights(self, rewards: Tensor, k: int) -> Tensor:
        if is_binary(rewards):
            return self.binary_weights(rewards, k)
        return max_at_k_weights(rewards, k, minus_one=True)

    @staticmethod
    def binary_weights(rewards: Tensor, k: int) -> Tensor:
        """The closed form for 0/1 rewards (B, n)."""
        n = rewards.shape[1]
        c_others = (rewards.sum(1) - 1).clamp_min(0)
        correct_w = (k / n) * (1 - rho(n - 1, c_others, k - 1))
        return torch.where(rewards > 0, correct_w[:, None], torch.zeros_like(rewards))


@register("passk_chen")
class PassKChen(StdNormalized):
    """Pass@k Training, analytic advantage (Chen et al. 2025, arXiv 2508.10751; RUCAIBox code):

        R = rho(n, c, k),  sigma = sqrt(R (1 - R)),
        A_correct = (1 - R) / (sigma + eps),
        A_wrong   = (1 - R - C(n-c-1, k-1)/C(n-1, k-1)) / (sigma + eps)
                  = (rho(n-1, c, k-1) - R) / (sigma + eps),
        w_i = A_i / n.

    This is PKPO's weight rescaled by n/k, centred by the group-mean pass@k, divided by sigma:
    a shaped variant, not an unbiased one (the sigma normalisation reweights prompts).
    """

    unbiased_for = None

    default_eps = 1e-6

    def _weights(self, rewards: Tensor, k: int) -> Tensor:
        n = rewards.shape[1]
        c = rewards.sum(1)
        group = rho(n, c, k)
        sigma = torch.sqrt(group * (1 - group)).clamp_min(0)
        a_correct = (1 - group) / (sigma + self.eps)
        a_wrong = (rho(n - 1, c.clamp_max(n - 1), k - 1) - group) / (sigma + self.eps)
        adv = torch.where(rewards > 0, a_correct[:, None], a_wrong[:, None])
        return adv / n


@register("best_of_k_naive")
class BestOfKNaive(Objective):
    """The naive "best of a random k-subset" estimator users often try (biased):

    draw one random k-subset S of the n rollouts; the first rollout of S with the highest reward
    gets weight max_{j in S} r_j, every other rollout gets 0. Unlike the k-sample score function
    (which credits *every* member of S with max_S r), this reinforces only the winner, so its
    expectation is not grad pass@k. Kept as a cautionary baseline; pass a generator to seed it.
    """

    unbiased_for = None
    stochastic = True

    def _weights(self, rewards: Tensor, k: int) -> Tensor:
        batch, n = rewards.shape
        keys = torch.rand(batch, n, generator=self.generator, dtype=torch.float64)
        subset = torch.topk(keys, k, dim=1).indices  # a uniform random k-subset per row
        sub_r = rewards.gather(1, subset)
        best = sub_r.argmax(1)  # first maximum among the subset (in random order)
        winner = subset.gather(1, best[:, None])
        w = torch.zeros_like(rewards)
        return w.scatter_(1, winner, sub_r.gather(1, best[:, None]))
