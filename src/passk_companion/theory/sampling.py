"""Samplers for tabular (categorical) policies.

`sample_iid` draws the n rollouts of each prompt independently (with replacement), the setting
of Theorem 3.1. Without-replacement samplers (Gumbel-top-k) join here for open question 2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from passk_companion.theory.exact import check_policy
from passk_companion.theory.passk import check_k

__all__ = [
    "sample_iid",
    "rewards_of",
    "no_correct_fraction",
    "gumbel_top_k",
    "correlated_pass_at_k",
]


def sample_iid(logits: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n i.i.d. answers per prompt from softmax(logits): LongTensor of shape (P, n)."""
    check_k(n, name="n")
    probs = torch.softmax(logits.detach(), -1)
    return torch.multinomial(probs, n, replacement=True, generator=generator)


def rewards_of(correct: Tensor, answers: Tensor) -> Tensor:
    """The 0/1 verifier reward of each sampled answer: correct[x, answers[x, i]], float (P, n)."""
    return correct.gather(1, answers).to(torch.float64)


def no_correct_fraction(
    logits: Tensor, correct: Tensor, n: int, groups: int, generator: torch.Generator | None = None
) -> Tensor:
    """Per prompt, the fraction of `groups` independent groups of n rollouts with no correct one.

    Its expectation is (1 - J_1)^n ("Situation I": every sampled pass@k gradient is 0 there).
    """
    check_policy(logits, correct)
    check_k(groups, name="groups")
    rep = logits.repeat_interleave(groups, 0)
    rewards = rewards_of(correct.repeat_interleave(groups, 0), sample_iid(rep, n, generator))
    return (rewards.sum(1) == 0).to(torch.float64).view(-1, groups).mean(1)


def gumbel_top_k(logits: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """k distinct answers per prompt, drawn without replacement from softmax(logits), in the order
    of successive (Plackett-Luce) draws: the indices of the k largest logits + Gumbel(0, 1) noise
    (Gumbel-top-k; Kool, van Hoof & Welling 2019). LongTensor (P, k)."""
    check_k(k, logits.shape[-1], name="k")
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
    return torch.topk(logits.detach().to(torch.float64) + gumbel, k, dim=-1).indices


def correlated_pass_at_k(
    success: Tensor, mix: Tensor, k: int, groups: int, generator: torch.Generator | None = None
) -> float:
    """Monte Carlo pass@k when all k draws of a group share a latent l ~ mix with success
    probability success[l] (see passk_companion.theory.passk.pass_at_k_correlated for the exact
    value)."""
    check_k(k)
    check_k(groups, name="groups")
    latent = torch.multinomial(mix.to(torch.float64), groups, replacement=True, generator=generator)
    p = success.to(torch.float64)[latent][:, None].expand(groups, k)
    hits = torch.bernoulli(p, generator=generator)
    return float((hits.sum(1) > 0).to(torch.float64).mean())
