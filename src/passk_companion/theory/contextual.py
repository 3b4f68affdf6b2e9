"""A linear-softmax contextual policy: prompts share parameters, so reweighting them matters.

pi(.|x) = softmax(phi(x)^T W + b(x)) with shared W (d, m), fixed features phi(x) (d,) and fixed
per-prompt offsets b(x) (m,) that set the difficulty. With u(x) = d J(x) / d logits(x) (the tabular
gradient of passk_companion.theory.exact), the chain rule gives d J(x) / d W = phi(x) u(x)^T, and
the batch objective (1/P) sum_x J(x) has gradient (1/P) sum_x phi(x) u(x)^T.

Per prompt, Theorem 3.1 gives d J_k(x)/dW = alpha_k(J_1(x)) d J_1(x)/dW: cosine 1. For the batch,
the per-prompt factors alpha_k(J_1(x)) differ, so sum_x alpha_k(x) grad J_1(x) need not point along
sum_x grad J_1(x): the update direction of the whole batch changes with k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from passk_companion.theory.exact import cosine, grad_j1, grad_jk, success_prob

__all__ = [
    "ContextualPolicy",
    "easy_hard_policy",
    "per_prompt_gradients",
    "per_prompt_cosine",
    "batch_cosine",
]


@dataclass(frozen=True)
class ContextualPolicy:
    """features (P, d), weight (d, m), offsets (P, m), correct (P, m) bool."""

    features: Tensor
    weight: Tensor
    offsets: Tensor
    correct: Tensor

    def logits(self, weight: Tensor | None = None) -> Tensor:
        """logits(x) = phi(x)^T W + b(x), shape (P, m)."""
        return self.features @ (self.weight if weight is None else weight) + self.offsets

    def success_prob(self) -> Tensor:
        """J_1 per prompt."""
        return success_prob(self.logits(), self.correct)


def easy_hard_policy(
    n_prompts: int, d: int, m: int, spread: float, seed: int = 0, base: float = -1.0
) -> ContextualPolicy:
    """Half easy, half hard prompts: answer 0 is correct, and its offset is base + spread/2 on easy
    prompts and base - spread/2 on hard ones (so `spread` sets the difficulty gap in logits).
    Features and W are standard normal / 0.5-scaled, shared across prompts."""
    if n_prompts < 2 or d < 1 or m < 2:
        raise ValueError("need n_prompts >= 2, d >= 1 and m >= 2")
    if spread < 0:
        raise ValueError(f"spread must be >= 0, got {spread}")
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n_prompts, d, generator=g, dtype=torch.float64)
    weight = 0.5 * torch.randn(d, m, generator=g, dtype=torch.float64)
    hard = torch.arange(n_prompts) >= n_prompts // 2
    offsets = torch.zeros(n_prompts, m, dtype=torch.float64)
    offsets[:, 0] = base + torch.where(hard, -spread / 2, spread / 2)
    correct = torch.zeros(n_prompts, m, dtype=torch.bool)
    correct[:, 0] = True
    return ContextualPolicy(features, weight, offsets, correct)


def per_prompt_gradients(policy: ContextualPolicy, k: int) -> tuple[Tensor, Tensor]:
    """(d J_1(x)/dW, d J_k(x)/dW) for every prompt, each of shape (P, d, m), in closed form."""
    logits = policy.logits()
    u1 = grad_j1(logits, policy.correct)
    uk = grad_jk(logits, policy.correct, k)
    phi = policy.features[:, :, None]
    return phi * u1[:, None, :], phi * uk[:, None, :]


def batch_cosine(policy: ContextualPolicy, k: int) -> float:
    """cos(sum_x grad J_k(x), sum_x grad J_1(x)) for the shared parameters W."""
    g1, gk = per_prompt_gradients(policy, k)
    return float(cosine(gk.sum(0).flatten(), g1.sum(0).flatten(), dim=0))


def per_prompt_cosine(policy: ContextualPolicy, k: int) -> Tensor:
    """cos(grad J_k(x), grad J_1(x)) per prompt, shape (P,); NaN where grad J_k underflows to 0."""
    g1, gk = per_prompt_gradients(policy, k)
    return cosine(gk.flatten(1), g1.flatten(1), dim=1)
