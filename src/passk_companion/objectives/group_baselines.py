"""Pass@1-style objectives with a group baseline: RLOO, GRPO, Dr. GRPO and risk-seeking GRPO.

All return w_i = A_i / n, so that sum_i w_i grad log pi(y_i) is the group mean of A_i grad log pi.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from passk_companion import validation
from passk_companion.objectives.base import Objective, StdNormalized, register


@register("pass1_reinforce")
class Pass1Reinforce(Objective):
    """REINFORCE with the leave-one-out baseline (RLOO; Kool et al. 2019, "Buy 4 REINFORCE
    samples"):

        A_i = r_i - (1/(n-1)) sum_{j != i} r_j,   w_i = A_i / n.

    The baseline of i does not depend on y_i, so E[sum_i w_i grad log pi(y_i)] = grad J_1.
    """

    unbiased_for = "pass@1"
    binary_only = False
    min_group = 2

    def _weights(self, rewards: Tensor, k: int) -> Tensor:
        n = rewards.shape[1]
        loo_mean = (rewards.sum(1, keepdim=True) - rewards) / (n - 1)
        return (rewards - loo_mean) / n


@register("grpo")
class GRPO(StdNormalized):
    """GRPO's group-normalised advantage (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300):

        A_i = (r_i - mean(r)) / (std(r) + eps),   w_i = A_i / n,

    with the unbiased standard deviation (torch.std, as in TRL and verl) and eps = 1e-4 (TRL's).
    For binary rewards the std normalisation reweights prompts by about 1/sqrt(p(1-p)).
    """

    unbiased_for = None
    binary_only = False
    min_group = 2

    default_eps = 1e-4

    def _weights(self, rewards: Tensor, k: int) -> Tensor:
        n = rewards.shape[1]
        centred = rewards - rewards.mean(1, keepdim=True)
        return centred / (rewards.std(1, keepdim=True) + self.eps) / n


@register("dr_grpo")
class DrGRPO(Objective):
    """Dr. GRPO (Liu et al. 2025, arXiv 2503.20783): GRPO without the std normalisation,

        A_i = r_i - mean(r),   w_i = A_i / n.

    Its expectation is ((n-1)/n) grad J_1: the sample's own reward sits in the baseline.
    """

    unbiased_for = None
    binary_only = False

    def _weights(self, rewards: Tensor, k: int) -> Tensor:
        n = rewards.shape[1]
        return (rewards - rewards.mean(1, keepdim=True)) / n


@register("risk_seeking")
class RiskSeeking(Objective):
    """Risk-seeking GRPO (Jiang et al. 2025, arXiv 2509.24261), J_RS = (1/beta) log E[e^{beta r}]:

        Z = (1/beta) log((1/n) sum_j e^{beta r_j}),   A_i = (e^{beta (r_i - Z)} - 1) / beta,
        w_i = A_i / n.

    beta -> 0 recovers Dr. GRPO's A_i = r_i - mean(r); larger beta favours rare successes.
    """

    unbiased_for = None
    binary_only = False

    def __init__(self, beta: float = 2.0, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        # above ~700, e^(beta r) overflows float64: the weights would be infinite
        self.beta = validation.number(beta, f"{self.name}.beta", low=0, low_open=True, high=500)

    def _weights(self, rewards: Tensor, k: int) -> Tensor:
        n = rewards.shape[1]
        z = (torch.logsumexp(self.beta * rewards, 1, keepdim=True) - math.log(n)) / self.beta
        return torch.expm1(self.beta * (rewards - z)) / self.beta / n


@register("unlikeliness")
class Unlikeliness(StdNormalized):
    """The unlikeliness reward (He, Fried & Welleck 2025, arXiv 2506.02355), then GRPO's group
    normalisation:

        r~_i = r_i (1 - beta rank_i / n),   rank_i in {0..n-1} ascending in log pi(y_i)
                                            (rank 0 = the least likely rollout),
        A_i = (r~_i - mean(r~)) / (std(r~) + eps),   w_i = A_i / n.

    Among the correct rollouts of a group, the less likely ones get more weight: a shaped
    variant (unbiased for nothing), which notebook 06 rebuilds from scratch as its tutorial.
    """

    unbiased_for = None
    needs_logprobs = True
    min_group = 2

    def __init__(
        self, beta: float = 0.25, eps: float | None = None, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(eps, generator)
        self.beta = validation.number(beta, f"{self.name}.beta", low=0, high=1)

    def _weights(self, rewards: Tensor, k: int, **extra: Tensor) -> Tensor:
        n = rewards.shape[1]
        rank = extra["logprobs"].argsort(1).argsort(1).to(rewards.dtype)
        shaped = rewards * (1 - self.beta * rank / n)
        centred = shaped - shaped.mean(1, keepdim=True)
        return centred / (shaped.std(1, keepdim=True) + self.eps) / n
