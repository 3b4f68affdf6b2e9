"""Exact J_1, J_k and their gradients for tabular softmax policies.

This is the reference against which every gradient estimator is checked.

A tabular policy has logits z of shape (P, m): prompt x has its own softmax
pi(.|x) = softmax(z_x) over m answers, and a boolean mask `correct` of shape (P, m) says which
answers the verifier accepts.
With r_a = 1[a correct]:

    J_1(x) = sum_a pi_a r_a               d J_1 / d z_a = pi_a (r_a - J_1)   (softmax score)
    J_k(x) = 1 - (sum_{a wrong} pi_a)^k   d J_k / d z_a = alpha_k(J_1) d J_1 / d z_a  (Thm 3.1)

J_k is computed from the wrong mass in log space (logsumexp), a code path independent of J_1,
so comparing autograd of J_k with alpha_k times autograd of J_1 is a real check of Theorem 3.1.
Gradients are per prompt, shape (P, m): prompts do not share parameters in a tabular policy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from passk_companion.theory.passk import alpha_k, check_k

__all__ = [
    "check_policy",
    "success_prob",
    "pass_at_k",
    "grad_j1",
    "grad_jk",
    "autograd",
    "logits_for_success",
    "cosine",
    "pass_at_k_swor",
    "wrong_mass_entropy",
    "orthogonal_part",
]


def check_policy(logits: Tensor, correct: Tensor) -> None:
    """Raise ValueError unless logits (P, m) float and correct (P, m) bool have matching shapes."""
    if logits.ndim != 2 or correct.shape != logits.shape:
        raise ValueError(
            f"logits and correct must both have shape (P, m); got {tuple(logits.shape)} "
            f"and {tuple(correct.shape)}"
        )
    if correct.dtype != torch.bool:
        raise ValueError("correct must be a boolean mask")
    if not torch.is_floating_point(logits):
        raise ValueError("logits must be a floating point tensor")


def success_prob(logits: Tensor, correct: Tensor) -> Tensor:
    """J_1 per prompt, shape (P,): the softmax mass on correct answers."""
    check_policy(logits, correct)
    return (torch.softmax(logits, -1) * correct).sum(-1)


def pass_at_k(logits: Tensor, correct: Tensor, k: int) -> Tensor:
    """J_k per prompt, shape (P,): 1 - exp(k (logsumexp z_wrong - logsumexp z))."""
    check_policy(logits, correct)
    check_k(k)
    log_wrong = torch.logsumexp(logits.masked_fill(correct, float("-inf")), -1)
    return 1 - torch.exp(k * (log_wrong - torch.logsumexp(logits, -1)))


def grad_j1(logits: Tensor, correct: Tensor) -> Tensor:
    """Closed form d J_1 / d z = pi * (r - J_1), shape (P, m)."""
    pi = torch.softmax(logits, -1)
    j1 = (pi * correct).sum(-1, keepdim=True)
    return pi * (correct.to(pi.dtype) - j1)


def grad_jk(logits: Tensor, correct: Tensor, k: int) -> Tensor:
    """Closed form d J_k / d z = alpha_k(J_1) d J_1 / d z (Theorem 3.1), shape (P, m)."""
    j1 = success_prob(logits, correct)
    return alpha_k(j1, k)[:, None] * grad_j1(logits, correct)


def autograd(fn: Callable[..., Tensor], logits: Tensor, *args: object) -> Tensor:
    """Gradient of sum_x fn(logits, *args)[x] with respect to logits, by torch autograd."""
    z = logits.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(z, *args).sum(), z)
    return g


def logits_for_success(j1: Tensor, m: int, n_correct: int) -> tuple[Tensor, Tensor]:
    """A tabular policy with the given J_1 per prompt: mass j1 spread evenly over the first
    n_correct answers, 1 - j1 evenly over the other m - n_correct. Returns (logits, correct)."""
    if not 0 < n_correct < m:
        raise ValueError(f"need 0 < n_correct < m, got n_correct={n_correct}, m={m}")
    j1 = torch.as_tensor(j1, dtype=torch.float64).reshape(-1)
    if torch.any((j1 <= 0) | (j1 >= 1)):
        raise ValueError("j1 must lie in (0, 1)")
    correct = torch.zeros(j1.numel(), m, dtype=torch.bool)
    correct[:, :n_correct] = True
    probs = torch.where(correct, (j1 / n_correct)[:, None], ((1 - j1) / (m - n_correct))[:, None])
    return probs.log(), correct


def cosine(a: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """Cosine similarity along `dim`, exact for tiny vectors (torch's version clamps the norm
    product at 1e-8, which reports 0 for gradients like alpha_64 grad J_1 ~ 1e-100).
    NaN where either vector is exactly zero."""
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim))


# Largest number of wrong answers per prompt for which pass_at_k_swor enumerates subsets exactly.
SWOR_MAX_WRONG = 16


def pass_at_k_swor(logits: Tensor, correct: Tensor, k: int) -> Tensor:
    """Exact pass@k when the k samples are drawn WITHOUT replacement (successive Plackett-Luce
    draws, the law of Gumbel-top-k), per prompt, shape (P,); differentiable in logits.

        P(first k draws all wrong) = sum_{S subset W, |S| = k} f(S),
        f(empty) = 1,  f(S) = sum_{a in S} f(S \\ a) pi_a / (1 - pi(S \\ a)),

    where f(S) is the probability that the first |S| draws are the set S in some order
    (Kool, van Hoof & Welling 2019, arXiv 1903.06059). Then J_k^wor = 1 - that sum. Unlike the
    i.i.d. J_k it depends on how the wrong mass is spread, not only on J_1. If fewer than k answers
    are wrong, some draw must be correct and J_k^wor = 1 (for J_1 > 0).

    Cost: O(w 2^w) vectorized steps for w wrong answers; needs the same w <= SWOR_MAX_WRONG on
    every prompt (the wrong answers of each prompt are taken in column order).
    """
    check_policy(logits, correct)
    check_k(k)
    n_wrong = (~correct).sum(1)
    if not bool(torch.all(n_wrong == n_wrong[0])):
        raise ValueError("pass_at_k_swor needs the same number of wrong answers on every prompt")
    w = int(n_wrong[0])
    if w > SWOR_MAX_WRONG:
        raise ValueError(
            f"pass_at_k_swor enumerates subsets: at most {SWOR_MAX_WRONG} wrong answers"
        )
    pi = torch.softmax(logits, -1)
    if k > w:
        return torch.ones(len(pi), dtype=pi.dtype)
    order = torch.argsort(correct.to(torch.int8), dim=1, stable=True)[:, :w]  # wrong columns
    q = pi.gather(1, order)  # (P, w)
    f: list[Tensor] = [torch.ones(len(pi), dtype=pi.dtype)]
    mass: list[Tensor] = [torch.zeros(len(pi), dtype=pi.dtype)]
    all_wrong = torch.zeros(len(pi), dtype=pi.dtype)
    for s in range(1, 1 << w):
        low = (s & -s).bit_length() - 1
        mass.append(mass[s & (s - 1)] + q[:, low])
        total = torch.zeros(len(pi), dtype=pi.dtype)
        for a in range(w):
            if s >> a & 1:
                rest = s & ~(1 << a)
                total = total + f[rest] * q[:, a] / (1 - mass[rest])
        f.append(total)
        if s.bit_count() == k:
            all_wrong = all_wrong + total
    return 1 - all_wrong


def wrong_mass_entropy(logits: Tensor, correct: Tensor) -> Tensor:
    """Entropy (nats) of the policy restricted to the wrong answers and renormalised, per prompt:
    low when the wrong mass sits on few answers, log |W| when it is spread evenly."""
    check_policy(logits, correct)
    log_q = torch.log_softmax(logits.masked_fill(correct, float("-inf")), -1)
    return -(log_q.exp() * log_q.masked_fill(correct, 0.0)).sum(-1)


def orthogonal_part(g: Tensor, onto: Tensor) -> Tensor:
    """g minus its projection on `onto`, row by row: the part no reweighting can explain."""
    coef = (g * onto).sum(-1, keepdim=True) / (onto * onto).sum(-1, keepdim=True)
    return g - coef * onto


def pass_at_k_latent(
    logits: Tensor, correct: Tensor, temperatures: Tensor, mix: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """(J_1, J_k) per prompt when the k draws of a group share a latent temperature.

    The latent l ~ mix is drawn once per group; given l, the k draws are i.i.d. from
    softmax(z / tau_l) with success probability P_l. Then (exchangeable, not independent draws)

        J_1 = sum_l mix_l P_l,     J_k = 1 - sum_l mix_l (1 - P_l)^k,
        grad J_k = sum_l mix_l k (1 - P_l)^(k-1) grad P_l,

    which is not a multiple of grad J_1 = sum_l mix_l grad P_l unless the P_l move together.
    Differentiable in logits (use :func:`autograd`)."""
    check_policy(logits, correct)
    check_k(k)
    temperatures = torch.as_tensor(temperatures, dtype=logits.dtype)
    mix = torch.as_tensor(mix, dtype=logits.dtype)
    if (
        temperatures.ndim != 1
        or temperatures.shape != mix.shape
        or not bool((temperatures > 0).all())
    ):
        raise ValueError("temperatures and mix must be 1-D of the same length, temperatures > 0")
    if bool((mix < 0).any()) or abs(float(mix.sum()) - 1) > 1e-9:
        raise ValueError("mix must be a probability vector")
    p_l = torch.stack([success_prob(logits / t, correct) for t in temperatures], -1)  # (P, L)
    return (p_l * mix).sum(-1), 1 - ((1 - p_l) ** k * mix).sum(-1)
