"""Pass@k objectives for binary rewards: PKPO, its leave-one-out-minus-one form, Chen et al.'s
analytic advantage, and the naive best-of-k heuristic.

Notation: a group of n i.i.d. rollouts with c correct, rho(n, c, k) = 1 - C(n-c, k)/C(n, k) the
unbiased pass@k estimate (companion.passk.pass_at_k_unbiased), with rho(., ., 0) = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..passk import pass_at_k_unbiased
from .base import Objective, StdNormalized, register


def rho(n: int, c: Tensor, k: int) -> Tensor:
    """rho(n, c, k) elementwise over c (float64 tensor); 0 when k = 0 (an empty subset)."""
    if k == 0:
        return torch.zeros_like(c, dtype=torch.float64)
    return pass_at_k_unbiased(n, c.to(torch.int64), k).to(c.device)


@register("pkpo")
class PKPO(Objective):
    """PKPO, binary rewards (Walder & Karkhanis 2025, arXiv 2505.15201, Sec. 3):

        w_i = k/n                         if rollout i is correct,
        w_i = (k/n) rho(n-1, c, k-1)      if it is wrong.

    Averaging the k-sample score-function estimator over all C(n, k) subsets gives exactly these
    weights, so E[sum_i w_i grad log pi(y_i)] = grad pass@k. All weights are 0 when c = 0.
    """

    unbiased_for = "pass@k"

    def _weights(self, rewards: Tensor, k: int) -> Tensor:
        n = rewards.shape[1]
        c_if_wrong = rewards.sum(1).clamp_max(n - 1)  # a wrong rollout has <= n-1 correct peers
        wrong = (k / n) * rho(n - 1, c_if_wrong, k - 1)
        return torch.where(rewards > 0, torch.full_like(rewards, k / n), wrong[:, None])


@register("pkpo_loo")
class PKPOLooMinusOne(Objective):
    """PKPO with the leave-one-out "minus one" baseline (Walder & Karkhanis 2025, eq. 33):

        s_i = (1 / C(n, k)) sum_{|I| = k, i in I} [max_{j in I} r_j - max_{j in I \\ i} r_j].

    For binary rewards: s_i = C(n-c, k-1)/C(n, k) = (k/n)(1 - rho(n-1, c-1, k-1)) if i is correct
    (no other correct rollout in I), and 0 if wrong. The baseline of sample i depends only on the
    other samples, so the estimator stays unbiased for grad pass@k; it is defined at k = n.
    """

    unbiased_for = "pass@k"

    def _weights(self, rewards: Tensor, k: int) -> Tensor:
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
