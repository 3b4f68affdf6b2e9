"""Objectives for rollouts drawn WITHOUT replacement (open question 2 of arXiv 2511.16231).

When the n rollouts of a prompt are distinct draws in Plackett-Luce order (Gumbel-top-k, stochastic
beam search), pass@k of the first k is J_k^wor = E[max_{i<=k} r(s_i)], which is not a function of
J_1 alone (passk_companion.theory.exact.pass_at_k_swor), so PKPO's weights no longer estimate its
gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from passk_companion import validation
from passk_companion.objectives.base import Objective, register


@register("swor_ordered")
class SworOrderedScore(Objective):
    """Score function of the ordered without-replacement sample (Kool, van Hoof & Welling 2019):

        log P(s_1..s_k) = sum_{i<=k} [l_i - log(1 - sum_{j<i} e^{l_j})],   l_i = log pi(s_i),
        grad log P      = sum_{i<=k} c_i grad l_i,
        c_i             = 1 + sum_{i<i'<=k} e^{l_i} / (1 - sum_{j<i'} e^{l_j}),
        w_i             = (max_{j<=k} r_j - b) c_i for i <= k, and 0 for the rollouts after k.

    E[sum_i w_i grad l_i] = grad J_k^wor for any baseline b independent of the row's own sample:
    a constant, or (default, baseline="batch_loo") the mean of F = max_{j<=k} r_j over the OTHER
    rows of the batch (independent groups), which removes most of the variance when F is mostly
    1. So this is unbiased for "pass@k-swor" when the rollouts come from the "swor" sampler in
    draw order.
    With no correct rollout among the first k, every weight is 0 (Situation I carries over).
    """

    unbiased_for = "pass@k-swor"
    sampler = "swor"
    needs_logprobs = True

    def __init__(
        self, baseline: float | str = "batch_loo", generator: torch.Generator | None = None
    ) -> None:
        super().__init__(generator)
        if isinstance(baseline, str):
            validation.choice(baseline, f"{self.name}.baseline", ["batch_loo"])
            self.baseline: float | str = baseline
        else:
            self.baseline = validation.number(baseline, f"{self.name}.baseline")

    def _weights(self, rewards: Tensor, k: int, **extra: Tensor) -> Tensor:
        probs = extra["logprobs"][:, :k].exp()
        used_before = torch.cumsum(probs, 1) - probs  # sum_{j<i} pi_j
        inv_left = 1 / (1 - used_before).clamp_min(1e-300)  # 1 / (1 - sum_{j<i'} pi_j)
        # sum_{i'>i} inv_left[i'] via a reversed cumulative sum, shifted by one
        tail = torch.flip(torch.cumsum(torch.flip(inv_left, [1]), 1), [1]) - inv_left
        coef = 1 + probs * tail
        best = rewards[:, :k].amax(1, keepdim=True)
        if self.baseline == "batch_loo":
            rows = best.shape[0]
            base = (best.sum() - best) / (rows - 1) if rows > 1 else torch.zeros_like(best)
        else:
            base = torch.full_like(best, float(self.baseline))
        score = best - base
        w = torch.zeros_like(rewards)
        w[:, :k] = score * coef
        return w
