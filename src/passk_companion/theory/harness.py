"""The exact-gradient harness: how far is an objective's gradient estimate from the truth?

On a tabular softmax policy (logits (P, m), and `correct` (P, m): a boolean mask for a 0/1
verifier, or real per-answer rewards) the score of answer a is grad_z log pi(a) = e_a - pi, so one
group's estimate is, without autograd,

    g = sum_i w_i (e_{y_i} - pi) = scatter_add(w, y) - (sum_i w_i) pi          (P, m per group).

`check` draws `groups` independent groups of n i.i.d. rollouts per prompt, and reports
  * bias: the Monte Carlo mean against the exact gradient of the objective's `unbiased_for` target
    (TARGETS: "pass@1" = E_pi[r]; "pass@k", 0/1 tables only; "max@k" = E[max of k rewards],
    which is pass@k on a boolean table, by Theorem 3.1's closed form; "pass@k-swor"), as z-scores
    z = (mean - exact) / stderr per coordinate. The tolerance is a Bonferroni bound: the test
    passes if max |z| <= Phi^{-1}(1 - alpha / (2 d)) over the d coordinates with nonzero
    variance, i.e. an unbiased estimator fails with probability <= alpha (1e-3) under the CLT;
  * variance: the trace of the covariance of one group's estimate, averaged over prompts;
  * cosine of the mean estimate to grad J_1, and the weight multiple <mean, grad J_1>/|grad J_1|^2;
  * the fraction of groups whose estimate is exactly zero (Situation I and its relatives).

passk_companion.theory.weights gives that multiple exactly, from the Binomial law of c, and
`exact_mean_estimate` the exact expectation of one group's estimate by enumerating every ordered
n-tuple of answers (small m^n), a check with no sampling error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from passk_companion import objectives
from passk_companion.evidence.verdicts import bonferroni_z
from passk_companion.objectives import SAMPLERS, Objective
from passk_companion.theory import maxk
from passk_companion.theory.exact import autograd, cosine, grad_j1, grad_jk, pass_at_k_swor
from passk_companion.theory.sampling import gumbel_top_k, rewards_of, sample_iid

__all__ = [
    "TARGETS",
    "score_estimate",
    "exact_mean_estimate",
    "HarnessReport",
    "group_estimates",
    "zero_signal",
    "check",
]

GradFn = Callable[[Tensor, Tensor, int], Tensor]


def _binary_only(name: str, grad_fn: GradFn) -> GradFn:
    def fn(logits: Tensor, correct: Tensor, k: int) -> Tensor:
        if correct.dtype != torch.bool:
            raise ValueError(f"target {name!r} needs a boolean reward table (a 0/1 verifier)")
        return grad_fn(logits, correct, k)

    return fn


def _max_at_k(logits: Tensor, table: Tensor, k: int) -> Tensor:
    """grad max@k: Theorem 3.1's alpha_k grad J_1 on a boolean table (pass@k), else autograd."""
    if table.dtype == torch.bool:
        return grad_jk(logits, table, k)
    return maxk.grad_max_at_k(logits, table, k)


def _pass_at_1(logits: Tensor, table: Tensor, k: int) -> Tensor:
    if table.dtype == torch.bool:
        return grad_j1(logits, table)
    return maxk.grad_expected_reward(logits, table)


TARGETS: dict[str, GradFn] = {
    "pass@1": _pass_at_1,
    "pass@k": _binary_only("pass@k", grad_jk),
    "max@k": _max_at_k,
    "pass@k-swor": _binary_only(
        "pass@k-swor", lambda logits, correct, k: autograd(pass_at_k_swor, logits, correct, k)
    ),
}


def score_estimate(pi: Tensor, answers: Tensor, w: Tensor) -> Tensor:
    """sum_i w_i (e_{y_i} - pi) per row: the gradient in the logits of sum_i w_i log pi(y_i),
    for probabilities pi (R, m), answers (R, n) and weights (R, n)."""
    return torch.zeros_like(pi).scatter_add_(1, answers, w) - w.sum(1, keepdim=True) * pi


def _sample_groups(
    objective: Objective,
    logits: Tensor,
    correct: Tensor,
    n: int,
    k: int,
    groups: int,
    generator: torch.Generator | None,
    sampler: str | None = None,
) -> tuple[Tensor, Tensor]:
    """(estimates (P, groups, m), rewards (P, groups, n)) for `groups` fresh groups per prompt,
    drawn by `sampler` ("iid" or "swor"; default: the objective's own)."""
    maxk.check_table(logits, correct)
    sampler = sampler or objective.sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {SAMPLERS}")
    p, m = logits.shape
    logits_rep = logits.detach().to(torch.float64).repeat_interleave(groups, 0)
    if sampler == "swor":
        answers = gumbel_top_k(logits_rep, n, generator)
    else:
        answers = sample_iid(logits_rep, n, generator)
    rewards = rewards_of(correct.repeat_interleave(groups, 0), answers)
    logprobs = torch.log_softmax(logits_rep, -1).gather(1, answers)
    w = objective.weights(rewards, k, logprobs=logprobs)
    g = score_estimate(torch.softmax(logits_rep, -1), answers, w)
    return g.view(p, groups, m), rewards.view(p, groups, n)


def group_estimates(
    objective: Objective,
    logits: Tensor,
    correct: Tensor,
    n: int,
    k: int,
    groups: int,
    generator: torch.Generator | None = None,
    sampler: str | None = None,
) -> Tensor:
    """`groups` independent single-group gradient estimates per prompt: shape (P, groups, m)."""
    return _sample_groups(objective, logits, correct, n, k, groups, generator, sampler)[0]


def zero_signal(
    objective: str | Objective,
    logits: Tensor,
    correct: Tensor,
    n: int,
    k: int,
    groups: int = 20_000,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Situation I, measured per prompt: the fraction of groups with no correct rollout (every
    reward 0), the fraction with an exactly zero estimate, and max |estimate| over the
    no-correct groups. The same seed draws the same rollouts for every objective."""
    obj = objectives.seeded(objective, seed)
    gen = torch.Generator().manual_seed(seed)
    g, rewards = _sample_groups(obj, logits.to(torch.float64), correct, n, k, groups, gen)
    none_correct = (rewards == 0).all(-1)
    return {
        "no_correct": none_correct.to(torch.float64).mean(1),
        "zero_estimate": (g == 0).all(-1).to(torch.float64).mean(1),
        "max_abs_when_no_correct": (g.abs().amax(-1) * none_correct).amax(1),
    }


_MAX_TUPLES = 1_000_000  # exact_mean_estimate enumerates P * m^n ordered tuples at most


def exact_mean_estimate(
    objective: str | Objective, logits: Tensor, correct: Tensor, n: int, k: int
) -> Tensor:
    """E[sum_i w_i (e_{y_i} - pi)] exactly, per prompt (P, m), for n i.i.d. rollouts: the sum over
    all m^n ordered tuples of answers of P(tuple) times the group's estimate. No sampling error,
    so an unbiased objective matches its target to rounding. Needs a deterministic objective for
    i.i.d. rollouts and P * m^n <= 10^6."""
    obj = objectives.get(objective) if isinstance(objective, str) else objective
    if obj.sampler != "iid" or obj.stochastic:
        raise ValueError(f"{obj.name}: exact enumeration needs i.i.d. rollouts and fixed weights")
    maxk.check_table(logits, correct)
    p, m = logits.shape
    if p * m**n > _MAX_TUPLES:
        raise ValueError(f"P * m^n = {p * m**n} tuples exceeds {_MAX_TUPLES}; use check()")
    tuples = torch.cartesian_prod(*[torch.arange(m)] * n).reshape(-1, n)  # (m^n, n)
    count = len(tuples)
    log_pi = torch.log_softmax(logits.detach().to(torch.float64), -1)
    answers = tuples.repeat(p, 1)  # prompt-major: rows x * count .. (x + 1) * count - 1
    rows = torch.arange(p).repeat_interleave(count)
    logprobs = log_pi[rows[:, None], answers]
    rewards = correct.to(torch.float64)[rows[:, None], answers]
    w = obj.weights(rewards, k, logprobs=logprobs)
    g = score_estimate(log_pi.exp()[rows], answers, w)
    prob = logprobs.sum(1).exp()
    return (prob[:, None] * g).view(p, count, m).sum(1)


@dataclass(frozen=True)
class HarnessReport:
    """What `check` measured for one objective at one (n, k)."""

    objective: str
    target: str | None
    n: int
    k: int
    groups: int
    mean: Tensor  # (P, m) Monte Carlo mean of one group's estimate
    stderr: Tensor  # (P, m) its standard error
    exact: Tensor | None  # (P, m) exact gradient of the target, if any
    max_abs_z: float  # max |z| over coordinates (nan without a target)
    z_threshold: float  # Bonferroni threshold at family-wise level alpha
    variance: float  # trace of one group's covariance, averaged over prompts
    noise_to_signal: float  # trace(cov) / |mean|^2, averaged over prompts (scale-free)
    cos_to_grad_j1: Tensor  # (P,) (grad J_1 is grad E_pi[r] for a real reward table)
    weight_multiple: Tensor  # (P,) <mean, grad J_1> / |grad J_1|^2
    zero_fraction: Tensor  # (P,) fraction of groups with an exactly zero estimate

    @property
    def unbiased_ok(self) -> bool | None:
        """True/False for objectives with a target, None otherwise."""
        return None if self.target is None else bool(self.max_abs_z <= self.z_threshold)

    def summary(self) -> dict[str, object]:
        """One flat row for a table."""
        return {
            "objective": self.objective,
            "unbiased_for": self.target or "-",
            "n": self.n,
            "k": self.k,
            "max|z|": self.max_abs_z,
            "z_threshold": self.z_threshold,
            "unbiased_ok": self.unbiased_ok,
            "variance": self.variance,
            "noise_to_signal": self.noise_to_signal,
            "cos_to_gradJ1": float(self.cos_to_grad_j1.min()),
            "weight_multiple_mean": float(self.weight_multiple.mean()),
        }


def check(
    objective: str | Objective,
    logits: Tensor,
    correct: Tensor,
    n: int,
    k: int,
    groups: int = 20_000,
    seed: int = 0,
    alpha: float = 1e-3,
    chunk: int = 4096,
    sampler: str | None = None,
) -> HarnessReport:
    """Monte Carlo check of one objective on a tabular policy (see the module docstring).

    Rollouts come from the objective's own `sampler` unless `sampler` is given; the bias test
    against `unbiased_for` is only meaningful under the objective's own sampler."""
    if groups < 2:
        raise ValueError(f"groups must be >= 2, got {groups}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    obj = objectives.seeded(objective, seed)
    logits = logits.detach().to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(logits.shape, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    zeros = torch.zeros(logits.shape[0], dtype=torch.float64)
    for start in range(0, groups, chunk):
        g = group_estimates(obj, logits, correct, n, k, min(chunk, groups - start), gen, sampler)
        total += g.sum(1)
        total_sq += (g**2).sum(1)
        zeros += (g == 0).all(-1).sum(1)
    mean = total / groups
    var = ((total_sq - groups * mean**2) / (groups - 1)).clamp_min(0)
    stderr = (var / groups).sqrt()

    exact = None
    max_z, threshold = math.nan, math.nan
    target = obj.unbiased_for if (sampler or obj.sampler) == obj.sampler else None
    if target is not None:
        if target not in TARGETS:
            raise ValueError(f"{obj.name}: unknown target {target!r}; known: {sorted(TARGETS)}")
        exact = TARGETS[target](logits, correct, k)
        diff = (mean - exact).abs()
        live = stderr > 0
        if bool(torch.any(~live & (diff > 1e-12))):
            max_z = math.inf  # a deterministic coordinate that disagrees
        else:
            max_z = float((diff[live] / stderr[live]).max()) if live.any() else 0.0
        threshold = bonferroni_z(max(1, int(live.sum())), alpha)

    g1 = grad_j1(logits, correct)
    g1_sq = (g1**2).sum(1)
    cos = cosine(mean, g1, dim=1)
    multiple = (mean * g1).sum(1) / g1_sq.clamp_min(1e-300)
    return HarnessReport(
        objective=obj.name,
        target=target,
        n=n,
        k=k,
        groups=groups,
        mean=mean,
        stderr=stderr,
        exact=exact,
        max_abs_z=max_z,
        z_threshold=threshold,
        variance=float(var.sum(1).mean()),
        noise_to_signal=float((var.sum(1) / (mean**2).sum(1).clamp_min(1e-300)).mean()),
        cos_to_grad_j1=cos,
        weight_multiple=multiple,
        zero_fraction=zeros / groups,
    )
