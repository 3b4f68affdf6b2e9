"""The expected weight of an objective: E[sum_i w_i grad log pi(y_i)] = omega(p) grad J_1.

For i.i.d. rollouts and weights that depend only on a rollout's reward and the group's count c of
correct ones, the expected update of any tabular softmax prompt is a multiple omega(J_1) of
grad J_1 (notebook 02): pass1_reinforce gives omega = 1, pkpo gives alpha_k (Theorem 3.1), GRPO
about 1 / sqrt(p (1 - p)). :func:`weight_profile` evaluates an objective once on every reward
pattern; :meth:`WeightProfile.omega` sums the Binomial law of c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from passk_companion import objectives
from passk_companion.objectives import Objective

__all__ = [
    "P_CLAMP",
    "WeightProfile",
    "weight_profile",
    "has_weight_profile",
    "expected_weight_multiple",
]

P_CLAMP = 1e-12  # training evaluates omega(p) on J_1 clamped to [P_CLAMP, 1 - P_CLAMP]


@dataclass(frozen=True)
class WeightProfile:
    """The weights w_1(c), w_0(c) of a correct and a wrong rollout in a group of n with c correct,
    for an objective whose weights depend on (r_i, c) only (i.i.d. rollouts)."""

    n: int
    k: int
    w1: Tensor  # (n + 1,)
    w0: Tensor  # (n + 1,)

    def omega(self, p: Tensor) -> Tensor:
        """omega(p) = sum_c Bin(c; n, p) [c w_1(c) (1 - p) - (n - c) w_0(c) p] / (p (1 - p)),
        elementwise over p in (0, 1) (see expected_weight_multiple)."""
        p = torch.as_tensor(p, dtype=torch.float64)
        if bool(torch.any((p <= 0) | (p >= 1))):
            raise ValueError("p must lie in (0, 1)")
        n = self.n
        c = torch.arange(n + 1, dtype=torch.float64)
        log_binom = (
            torch.lgamma(c.new_tensor(n + 1.0)) - torch.lgamma(c + 1) - torch.lgamma(n - c + 1)
        )
        pp = p.reshape(-1, 1)
        pmf = torch.exp(log_binom + c * torch.log(pp) + (n - c) * torch.log1p(-pp))
        terms = c * self.w1 * (1 - pp) - (n - c) * self.w0 * pp
        return ((pmf * terms).sum(1) / (pp[:, 0] * (1 - pp[:, 0]))).reshape(p.shape)


def has_weight_profile(objective: str | Objective) -> bool:
    """Whether omega(p) is defined: i.i.d. rollouts and weights that depend on (r_i, c) only."""
    obj = objectives.get(objective) if isinstance(objective, str) else objective
    return obj.sampler == "iid" and not obj.needs_logprobs


def weight_profile(
    objective: str | Objective, n: int, k: int, draws: int = 4000, seed: int = 0
) -> WeightProfile:
    """Evaluate the objective once on every reward pattern (c ones then n - c zeros, c = 0..n).
    Stochastic objectives are averaged over `draws` repetitions (Monte Carlo in w only)."""
    obj = objectives.seeded(objective, seed)
    if not has_weight_profile(obj):
        raise ValueError(f"{obj.name}: omega(p) needs i.i.d. rollouts and weights of (r_i, c) only")
    c = torch.arange(n + 1)
    rewards = (torch.arange(n)[None, :] < c[:, None]).to(torch.float64)  # row c: c ones first
    reps = draws if obj.stochastic else 1
    w = obj.weights(rewards.repeat(reps, 1), k).view(reps, n + 1, n).mean(0)
    pos = rewards > 0
    w1 = (w * pos).sum(1) / pos.sum(1).clamp_min(1)
    w0 = (w * ~pos).sum(1) / (~pos).sum(1).clamp_min(1)
    return WeightProfile(n, k, w1, w0)


def expected_weight_multiple(
    objective: str | Objective,
    p: np.ndarray | float,
    n: int,
    k: int,
    draws: int = 4000,
    seed: int = 0,
) -> np.ndarray:
    """omega(p) with E[sum_i w_i grad log pi(y_i)] = omega(p) grad J_1, for any tabular softmax.

    For weights that depend on (r_i, c) only, with w_1(c), w_0(c) the weights of a correct and a
    wrong rollout in a group with c correct (given e_y - pi averages to grad J_1 / p over correct
    answers and to -grad J_1 / (1 - p) over wrong ones):

        omega(p) = sum_c Bin(c; n, p) [c w_1(c) (1 - p) - (n - c) w_0(c) p] / (p (1 - p)).

    pass1_reinforce gives omega = 1, and pkpo gives alpha_k(p) (Theorem 3.1).
    """
    profile = weight_profile(objective, n, k, draws, seed)
    return profile.omega(torch.as_tensor(np.asarray(p, dtype=float))).numpy()
