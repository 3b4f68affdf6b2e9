"""Objectives for rollouts drawn WITHOUT replacement (open question 2 of arXiv 2511.16231).

When the n rollouts of a prompt are distinct draws in Plackett-Luce order (Gumbel-top-k, stochastic
beam search), pass@k of the first k is J_k^wor = E[max_{i<=k} r(s_i)], which is not a function of
J_1 alone (companion.exact.pass_at_k_swor), so PKPO's weights no longer estimate its gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Objective, register


@register("swor_ordered")
class SworOrderedScore(Objective):
    """Score function of the ordered without-replacement sample (Kool, van Hoof & Welling 2019):

        log P(s_1..s_k) = sum_{i<=k} [l_i - log(1 - sum_{j<i} e^{l_j})],   l_i = log pi(s_i),
        grad log P      = sum_{i<=k} c_i grad l_i,
        c_i             = 1 + sum_{i<i'<=k} e^{l_i} / (1 - sum_{j<i'} e^{l_j}),
        w_i             = (max_{j<=k} r_j - b) c_i for i <= k, and 0 for the rollouts after k.

    E[sum_i w_i grad l_i] = grad J_k^wor for any constant baseline b (default 0), so this is
    unbiased for "pass@k-swor" when the rollouts come from the "swor" sampler in draw order.
    With no correct rollout among the first k, every weight is 0 (Situation I carries over).
    """

    unbiased_for = "pass@k-swor"
    sampler = "swor"
    needs_logprobs = True

    def __init__(self, baseline: float = 0.0, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        self.baseline = float(baseline)

    def _weights(self, rewards: Tensor, k: int, **extra: Tensor) -> Tensor:
        probs = extra["logprobs"][:, :k].exp()
        used_before = torch.cumsum(probs, 1) - probs  # sum_{j<i} pi_j
        inv_left = 1 / (1 - used_before).clamp_min(1e-300)  # 1 / (1 - sum_{j<i'} pi_j)
        # sum_{i'>i} inv_left[i'] via a reversed cumulative sum, shifted by one
        tail = torch.flip(torch.cumsum(torch.flip(inv_left, [1]), 1), [1]) - inv_left
        coef = 1 + probs * tail
        score = rewards[:, :k].amax(1, keepdim=True) - self.baseline
        w = torch.zeros_like(rewards)
        w[:, :k] = score * coef
        return w
