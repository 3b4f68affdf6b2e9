"""Exact evaluation of a GPT on the DAG task: every valid path scored in one batched forward.

The task's valid answers are enumerable (passk_companion.model.tasks.DagTask.valid_paths), so for
prompt x with valid paths y_1..y_M and pi = pi_theta(. | x) at temperature tau:

    J_1(x)        = sum_j pi(y_j)                          (exact pass@1)
    pass@k(x)     = 1 - (1 - J_1(x))^k                     (exact, any k; Theorem 3.1's premise)
    D_k(x)        = sum_j [1 - (1 - pi(y_j))^k]            (expected distinct correct, k draws)
    modes_eff(x)  = exp(H(q)),  q_j = pi(y_j) / J_1(x)     (effective number of correct modes)

None of these is sampled, so two checkpoints can be compared without evaluation noise. KL to a
reference model is estimated by sampling: KL(pi || ref) = E_{y ~ pi}[log pi(y) - log ref(y)].

:class:`RegimeRule` is the rule, fixed before any run, that a base model must meet for exploration
to be observable at all (neither saturated nor hopeless). Pretraining checks it on the RL *train*
prompts (selection never looks at the test prompts); notebook 04 reports it on the test prompts
too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from passk_companion import objectives as objective_registry
from passk_companion.model import streams
from passk_companion.model.generate import sample_iid, sequence_logprob
from passk_companion.model.gpt import GPT
from passk_companion.model.tasks import DagTask
from passk_companion.theory.passk import pass_at_k_unbiased

__all__ = [
    "RegimeRule",
    "PathSet",
    "path_logprobs",
    "exact_metrics",
    "kl_to_reference",
    "evaluate_sampled",
    "sampled_check",
    "mean_gradient_norms",
]


@dataclass(frozen=True)
class RegimeRule:
    """The base must leave room to explore: on the prompts it is given, mean J_1 in [mean_low,
    mean_high] and at least `hard_fraction` of the prompts with J_1 < hard_j1. Pretraining
    selects a base on the RL train prompts (`pretrain.pretrain`); notebook 04 also reports
    whether the test prompts meet it."""

    mean_low: float = 0.3
    mean_high: float = 0.6
    hard_j1: float = 0.05
    hard_fraction: float = 0.10

    def __post_init__(self) -> None:
        if not 0 <= self.mean_low < self.mean_high <= 1:
            raise ValueError("RegimeRule needs 0 <= mean_low < mean_high <= 1")
        if not (0 < self.hard_j1 < 1 and 0 < self.hard_fraction < 1):
            raise ValueError("RegimeRule needs hard_j1 and hard_fraction in (0, 1)")

    def holds(self, j1: Tensor) -> bool:
        """Whether per-prompt J_1 values meet the rule."""
        mean = float(j1.mean())
        hard = float((j1 < self.hard_j1).to(torch.float64).mean())
        return self.mean_low <= mean <= self.mean_high and hard >= self.hard_fraction

    def describe(self) -> str:
        return (
            f"mean J_1 in [{self.mean_low}, {self.mean_high}] and >= "
            f"{self.hard_fraction:.0%} of the prompts with J_1 < {self.hard_j1}"
        )


@dataclass(frozen=True)
class PathSet:
    """All valid paths of a list of (source, target) pairs, ready for one batched forward; in an
    ensemble, `run` names the run each path is scored by (None: a single model)."""

    pairs: Tensor  # (P, 2)
    prompts: Tensor  # (M, 3): the prompt of each path
    answers: Tensor  # (M, L): path, EOS, PAD...
    owner: Tensor  # (M,): index of the pair of each path
    run: Tensor | None = None  # (M,): the run of each path, grouped by run

    @classmethod
    def build(cls, task: DagTask, pairs: Tensor) -> PathSet:
        answers, owner = task.valid_paths(pairs)
        return cls(pairs, task.prompts(pairs)[owner], answers, owner)

    @classmethod
    def of_runs(cls, paths: dict[int, PathSet]) -> PathSet:
        """One set of the paths of several runs (run -> its paths), in run order; the pairs of
        run r follow those of the runs before it, so `owner` indexes the concatenated pairs."""
        order = sorted(paths)
        offsets = torch.cumsum(torch.tensor([0] + [len(paths[r]) for r in order]), 0)
        return cls(
            torch.cat([paths[r].pairs for r in order]),
            torch.cat([paths[r].prompts for r in order]),
            torch.cat([paths[r].answers for r in order]),
            torch.cat([paths[r].owner + offsets[i] for i, r in enumerate(order)]),
            torch.cat([torch.full((len(paths[r].owner),), r) for r in order]),
        )

    def __len__(self) -> int:
        return len(self.pairs)


@torch.no_grad()
def path_logprobs(
    model: GPT, task: DagTask, paths: PathSet, temperature: float = 1.0, chunk: int = 16384
) -> Tensor:
    """log pi(y_j | x) of every path (float64, shape (M,)), in chunks of `chunk` sequences (with
    the portable kernels the chunks change no bit: a row's logits do not depend on its batch)."""
    dev = next(model.parameters()).device
    out = []
    for start in range(0, len(paths.answers), chunk):
        sl = slice(start, start + chunk)
        run = None if paths.run is None else paths.run[sl].to(dev)
        logp, _ = sequence_logprob(
            model, paths.prompts[sl].to(dev), paths.answers[sl].to(dev), task.eos, temperature,
            run,
        )  # fmt: skip
        out.append(logp.to(torch.float64).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def exact_metrics(
    model: GPT,
    task: DagTask,
    paths: PathSet,
    distinct_ks: tuple[int, ...] = (64,),
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """Per-prompt exact metrics (module docstring): "j1", "modes_eff" and "distinct@k" for each k
    in `distinct_ks`, each a float64 tensor of shape (P,) over the pairs of `paths` (of every run
    of an ensemble, when `paths.run` names them)."""
    was_training = model.training
    model.eval()
    try:
        logp = path_logprobs(model, task, paths, temperature)
    finally:
        model.train(was_training)
    p = len(paths)
    prob = logp.exp()
    j1 = torch.zeros(p, dtype=torch.float64).index_add_(0, paths.owner, prob)
    # q_j = pi_j / J_1 in log space, so the entropy stays exact when J_1 is tiny
    log_j1 = torch.full((p,), float("-inf"), dtype=torch.float64)
    log_j1 = log_j1.scatter_reduce(0, paths.owner, logp, "amax")
    shifted = torch.zeros(p, dtype=torch.float64).index_add_(
        0, paths.owner, (logp - log_j1[paths.owner]).exp()
    )
    log_j1 = log_j1 + shifted.log()
    log_q = logp - log_j1[paths.owner]
    entropy = torch.zeros(p, dtype=torch.float64).index_add_(0, paths.owner, -log_q.exp() * log_q)
    out = {"j1": j1.clamp(0, 1), "modes_eff": entropy.exp()}
    for k in distinct_ks:
        hit = 1.0 - _power(1.0 - prob.clamp(max=1.0), k)  # 1 - (1 - pi)^k: y drawn in k tries
        out[f"distinct@{k}"] = torch.zeros(p, dtype=torch.float64).index_add_(0, paths.owner, hit)
    return out


def _power(x: Tensor, k: int) -> Tensor:
    """x^k for an integer k >= 1 by repeated squaring: correctly rounded multiplications only,
    so an entry's value does not depend on its position in the tensor (ATen's vectorised `pow`
    and its scalar tail round differently)."""
    if k < 1:
        raise ValueError(f"distinct@k needs k >= 1, got {k}")
    out, square = None, x
    while True:
        if k & 1:
            out = square if out is None else out * square
        k >>= 1
        if not k:
            return out
        square = square * square


@torch.no_grad()
def kl_to_reference(
    model: GPT,
    reference: GPT,
    task: DagTask,
    pairs: Tensor,
    samples: int,
    generator: torch.Generator | list[torch.Generator | None],
    temperature: float = 1.0,
    prompt_run: Tensor | None = None,
) -> Tensor:
    """Per-prompt Monte Carlo estimate of KL(pi_model || pi_reference) over whole answers,
    mean of log pi(y) - log ref(y) over `samples` draws y ~ pi (float64, shape (P,)). In an
    ensemble, `prompt_run` names the run of each pair (grouped by run), `reference` holds one
    reference per run of `model` and `generator` one generator per run."""
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        prompts = task.prompts(pairs).to(dev)
        answers, logp = sample_iid(
            model, prompts, samples, task.max_new_tokens, task.eos, task.pad, temperature,
            generator, prompt_run=prompt_run,
        )  # fmt: skip
    finally:
        model.train(was_training)
    b, n, length = answers.shape
    ref_logp, _ = sequence_logprob(
        reference,
        prompts.repeat_interleave(n, 0),
        answers.view(b * n, length),
        task.eos,
        temperature,
        None if prompt_run is None else prompt_run.to(dev).repeat_interleave(n),
    )
    return (logp.to(torch.float64) - ref_logp.to(torch.float64).view(b, n)).mean(1).cpu()


@torch.no_grad()
def evaluate_sampled(
    model: GPT, task: DagTask, pairs: torch.Tensor, n: int, seed: int, temperature: float = 1.0
) -> dict[str, torch.Tensor]:
    """Per-prompt sampled evaluation with n i.i.d. samples (the check of the exact one):
    "correct" counts c (P,), "pass@1" = c / n, and "distinct" correct paths among the n."""
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(streams.sampled_check(seed))
    model.eval()
    answers, _ = sample_iid(
        model,
        task.prompts(pairs).to(dev),
        n,
        task.max_new_tokens,
        task.eos,
        task.pad,
        temperature,
        gen,
    )
    answers = answers.cpu()
    p = answers.shape[0]
    rewards = task.verify(pairs.repeat_interleave(n, 0), answers.view(p * n, -1)).view(p, n)
    c = rewards.sum(1).to(torch.int64)
    rows = torch.cat([torch.arange(p).repeat_interleave(n)[:, None], answers.view(p * n, -1)], 1)
    unique_ok = torch.unique(rows[rewards.view(-1) > 0], dim=0)
    distinct = torch.bincount(unique_ok[:, 0], minlength=p).to(torch.float64)
    return {"correct": c, "pass@1": pass_at_k_unbiased(n, c, 1), "distinct": distinct}


def sampled_check(
    model: GPT, task: DagTask, paths: PathSet, n: int, seed: int
) -> tuple[float, float, float]:
    """The exact evaluation checked by sampling: (exact mean J_1, sampled mean pass@1, z), with n
    i.i.d. samples per prompt of `paths` and z = (sampled - exact) / se, where
    se = sqrt(sum_x J_1(x) (1 - J_1(x)) / n) / P is the sampled mean's standard error under the
    exact J_1. |z| stays small (|z| < 4 but for 6e-5 of draws) if both are right."""
    exact = exact_metrics(model, task, paths, ())["j1"].numpy()
    correct = evaluate_sampled(model, task, paths.pairs, n, seed=seed)["correct"].numpy()
    se = float(np.sqrt(np.sum(exact * (1 - exact) / n)) / len(exact))
    sampled = float(correct.mean() / n)
    return float(exact.mean()), sampled, float((sampled - exact.mean()) / se)


def zero_weight_counts(objective: str, n: int, k: int) -> list[int]:
    """The numbers c of correct rollouts in a group of n at which every weight of `objective` is
    exactly zero (its update vanishes), found by evaluating its weights on one group per c (c
    correct rollouts first). For pkpo_loo the weight of a correct rollout is C(n-c, k-1)/C(n, k)
    (Walder & Karkhanis 2025), zero for c >= n - k + 2; for every objective with a group baseline,
    c = 0 and c = n (Situation I, and saturation)."""
    if n < 1 or k < 1:
        raise ValueError(f"n and k must be >= 1, got n={n}, k={k}")
    rewards = (torch.arange(n)[None, :] < torch.arange(n + 1)[:, None]).to(torch.float64)
    weights = objective_registry.get(objective).weights(rewards, k)
    return [c for c in range(n + 1) if bool((weights[c] == 0).all())]


def _prompt_gradients(
    model: GPT,
    task: DagTask,
    pairs: Tensor,
    variants: dict[str, tuple[str, int]],
    n: int,
    groups: int,
    generator: torch.Generator,
    temperature: float,
) -> Iterator[tuple[int, str, tuple[Tensor, ...]] | Tensor]:
    """The Monte Carlo mean gradient estimate of each variant for each prompt x,
    (1/G) sum_g sum_i w_gi grad log pi(y_gi) over G = `groups` groups of n i.i.d. rollouts (the
    same rollouts for every variant), yielded as (x, label, gradients per parameter); then the
    (P,) count of groups with a correct rollout."""
    dev = next(model.parameters()).device
    p = len(pairs)
    was_training = model.training
    model.eval()
    prompts = task.prompts(pairs).to(dev).repeat(groups, 1)  # row g * P + x
    answers, logp_old = sample_iid(
        model, prompts, n, task.max_new_tokens, task.eos, task.pad, temperature, generator
    )
    rewards = task.verify(
        pairs.repeat(groups, 1).repeat_interleave(n, 0), answers.view(-1, answers.shape[-1]).cpu()
    ).view(groups * p, n)
    weights = {
        label: objective_registry.get(name).weights(rewards, k, logprobs=logp_old.cpu())
        for label, (name, k) in variants.items()
    }
    params = [q for q in model.parameters() if q.requires_grad]
    try:
        for x in range(p):
            rows = torch.arange(groups) * p + x
            logp, _ = sequence_logprob(
                model,
                prompts[rows].repeat_interleave(n, 0),
                answers[rows].view(groups * n, -1),
                task.eos,
                temperature,
            )
            logp = logp.view(groups, n)
            for j, (label, w) in enumerate(weights.items()):
                surrogate = (w[rows].to(dev, logp.dtype) * logp).sum() / groups
                grads = torch.autograd.grad(surrogate, params, retain_graph=j < len(weights) - 1)
                yield x, label, grads
    finally:
        model.train(was_training)
    yield (rewards.view(groups, p, n).sum(-1) > 0).sum(0).to(torch.float64)


def mean_gradient_norms(
    model: GPT,
    task: DagTask,
    pairs: Tensor,
    variants: dict[str, tuple[str, int]],
    n: int,
    groups: int,
    generator: torch.Generator,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """At fixed parameters, the norm of the Monte Carlo mean gradient estimate of each variant,
    per prompt: |(1/G) sum_g sum_i w_gi grad log pi(y_gi)| over G = `groups` groups of n i.i.d.
    rollouts (the same rollouts for every variant).

    variants: label -> (objective name, k). For an objective unbiased for pass@k the mean tends to
    grad J_k(x) = alpha_k(J_1(x)) grad J_1(x) (Theorem 3.1), so the ratio of its norm to the
    pass@1 estimator's tends to alpha_k(J_1(x)). Returns label -> (P,) norms, plus
    "groups_with_signal" (P,): how many of the G groups had a correct rollout."""
    out = {label: torch.zeros(len(pairs), dtype=torch.float64) for label in variants}
    for item in _prompt_gradients(model, task, pairs, variants, n, groups, generator, temperature):
        if isinstance(item, Tensor):
            out["groups_with_signal"] = item
        else:
            x, label, grads = item
            out[label][x] = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).cpu()
    return out


def batch_update_cosine(
    model: GPT,
    task: DagTask,
    pairs: Tensor,
    variants: dict[str, tuple[str, int]],
    n: int,
    groups: int,
    generator: torch.Generator,
    temperature: float = 1.0,
) -> float:
    """At fixed parameters, the cosine between the expected batch updates of two variants: the
    sums over the prompts of their Monte Carlo mean gradient estimates (as in
    :func:`mean_gradient_norms`, on the same rollouts). Per prompt, an objective unbiased for
    pass@k has grad J_k(x) = alpha_k(J_1(x)) grad J_1(x) (Theorem 3.1); with parameters shared
    across prompts, weights alpha_k(J_1(x)) that differ between prompts whose gradients point in
    different directions turn the sum: the cosine measures how far."""
    if len(variants) != 2:
        raise ValueError(f"batch_update_cosine compares two variants, got {len(variants)}")
    total: dict[str, Tensor] = {}
    for item in _prompt_gradients(model, task, pairs, variants, n, groups, generator, temperature):
        if not isinstance(item, Tensor):
            _, label, grads = item
            flat = torch.cat([g.double().flatten() for g in grads]).cpu()
            total[label] = total[label] + flat if label in total else flat
    a, b = (total[label] for label in variants)
    return float(torch.dot(a, b) / (a.norm() * b.norm()))
