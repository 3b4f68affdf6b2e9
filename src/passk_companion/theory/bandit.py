"""A multi-armed bandit with a local and a global optimum, trained by many objectives at once.

Arms a = 0..A-1 (A = 100) have mean reward

    mu_a = 0.1 + 0.9 exp(-(a - 40)^2 / 50) + 0.5 exp(-(a - 75)^2 / 50),

a global optimum at arm 40 (mu = 1.0) and a local one at arm 75 (mu = 0.6). The softmax policy
starts near the local optimum, pi_a proportional to exp(-((a - 75)/5)^2 / 2) + 0.1. A pull of arm
a earns the real reward mu_a ("real", noise-free), a real reward with Gaussian noise
mu_a + noise_sd * N(0, 1) ("noisy": real-valued but as noisy as a coin at p = 1/2 when
noise_sd = 0.5), or a 0/1 reward drawn from Bernoulli(mu_a) ("binary", the regime of Theorem 3.1;
mu_40 exceeds 1 by 1e-11, so the draw is Bernoulli(min(mu_a, 1))). All have mean mu_a (to 1e-11),
so E_pi[r] is the same function.

`expected_flow` integrates the exact expected updates instead: z <- z + lr grad J(z) for
J = E_pi[mu] (pass@1's, and on a binary reward every objective's direction: Theorem 3.1) and
J = max@k of the real reward (pkpo and pkpo_loo's expectation, passk_companion.theory.maxk) and,
with `noise_sd`, max@k of the noisy reward (by quadrature over its mixture CDF), with no sampling
at all. Where the mass goes is read relative to the start (`moved`).

`train` runs every (seed, variant) pair as one row of a (rows, A) logit tensor: each update draws
a group of n pulls per row, computes the variant's objective weights w (one call per distinct
objective configuration, over all its rows), and takes z <- z + lr sum_i w_i (e_{a_i} - pi).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from passk_companion import objectives, validation
from passk_companion.theory.harness import score_estimate

__all__ = [
    "REWARDS",
    "GLOBAL",
    "LOCAL",
    "arm_means",
    "initial_logits",
    "Variant",
    "metrics",
    "moved",
    "BanditRun",
    "train",
    "expected_flow",
]

REWARDS = ("real", "noisy", "binary")
GLOBAL = (30, 50)  # the arms around the global optimum (arm 40)
LOCAL = (65, 85)  # the arms around the local optimum (arm 75), where the policy starts


def _arms(arms: int) -> Tensor:
    if not validation.is_integer(arms) or arms < 2:
        raise ValueError(f"arms must be an integer >= 2, got {arms!r}")
    return torch.arange(arms, dtype=torch.float64)


def arm_means(arms: int = 100) -> Tensor:
    """mu_a = 0.1 + 0.9 exp(-(a - 40)^2/50) + 0.5 exp(-(a - 75)^2/50), a = 0..arms-1."""
    a = _arms(arms)
    return 0.1 + 0.9 * torch.exp(-((a - 40) ** 2) / 50) + 0.5 * torch.exp(-((a - 75) ** 2) / 50)


def initial_logits(arms: int = 100) -> Tensor:
    """log(exp(-((a - 75)/5)^2 / 2) + 0.1): mass concentrated around the local optimum."""
    a = _arms(arms)
    return torch.log(torch.exp(-(((a - 75) / 5) ** 2) / 2) + 0.1)


@dataclass(frozen=True)
class Variant:
    """One training configuration: a registered objective with its k and parameters, on the
    real or the binary reward."""

    label: str
    objective: str
    k: int = 1
    reward: str = "real"
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"{self.label}: reward must be one of {REWARDS}, got {self.reward!r}")
        objectives.get(self.objective, **self.params)  # raises on an unknown objective

    @property
    def config(self) -> tuple:
        """What the weights depend on: variants sharing it share one weights call."""
        return (self.objective, self.k, tuple(sorted(self.params.items())))


def metrics(logits: Tensor, means: Tensor, window: tuple[int, int] = GLOBAL) -> dict[str, Tensor]:
    """Per row: E_pi[mu] ("reward"), the entropy in nats, the mass on arms window[0]..window[1]
    inclusive ("mass_window"), and on the LOCAL window ("mass_local")."""
    logp = torch.log_softmax(logits, -1)
    pi = logp.exp()
    lo, hi = window
    return {
        "reward": pi @ means,
        "entropy": -(pi * logp).sum(-1),
        "mass_window": pi[..., lo : hi + 1].sum(-1),
        "mass_local": pi[..., LOCAL[0] : LOCAL[1] + 1].sum(-1),
    }


def moved(logits: Tensor, start: Tensor, window: tuple[int, int]) -> Tensor:
    """Per row: the mass on `window` now minus at the start (logits and start: (..., arms)).
    A run escapes when its GLOBAL mass has gained, and is trapped when its LOCAL mass has
    gained, more than a threshold: two gains that cannot both exceed 1/4, since the windows start
    with 0.09 and 0.63 of the mass."""
    lo, hi = window
    now = torch.softmax(logits, -1)[..., lo : hi + 1].sum(-1)
    return now - torch.softmax(start, -1)[..., lo : hi + 1].sum(-1)


@dataclass(frozen=True)
class BanditRun:
    """history: one row per (recorded step, seed, variant) with the `metrics` columns;
    logits: the final logits (seeds, variants, arms)."""

    variants: list[Variant]
    seeds: list[int]
    history: pd.DataFrame
    logits: Tensor

    def final(self) -> pd.DataFrame:
        """The last recorded step: one row per (seed, variant)."""
        last = self.history.step.max()
        return self.history[self.history.step == last].reset_index(drop=True)


def train(
    variants: list[Variant],
    seeds: list[int],
    *,
    steps: int,
    n: int = 16,
    lr: float = 0.1,
    means: Tensor | None = None,
    logits0: Tensor | None = None,
    record_every: int = 250,
    window: tuple[int, int] = GLOBAL,
    noise_sd: float = 0.5,
) -> BanditRun:
    """Train every (seed, variant) row for `steps` updates of n pulls each (module docstring).

    Each seed has its own generator, which draws, per step, n uniforms per variant for the arms
    (inverse-CDF sampling), n for the Bernoulli rewards and n normals for the noisy ones: a
    seed's runs do not depend on the other seeds."""
    means, logits0 = _checked(variants, seeds, steps, n, lr, record_every, noise_sd, means, logits0)
    layout = _Layout.of(variants, len(seeds))
    n_var, arms = len(variants), len(means)
    z = logits0.expand(layout.rows, arms).clone()
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    seed_col = np.tile(np.asarray(seeds), n_var)
    label_col = np.repeat(np.asarray([v.label for v in layout.ordered]), len(seeds))
    records = []
    for step in range(steps + 1):
        if step % record_every == 0 or step == steps:
            m = metrics(z, means, window)
            records.append(
                pd.DataFrame(
                    {"step": step, "seed": seed_col, "variant": label_col}
                    | {key: val.numpy() for key, val in m.items()}
                )
            )
        if step == steps:
            break
        z += lr * _update(z, means, layout, gens, n, noise_sd)
    final = z.view(n_var, len(seeds), arms)[torch.argsort(layout.order)].transpose(0, 1)
    return BanditRun(variants, list(seeds), pd.concat(records, ignore_index=True), final)


def _checked(
    variants: list[Variant],
    seeds: list[int],
    steps: int,
    n: int,
    lr: float,
    record_every: int,
    noise_sd: float,
    means: Tensor | None,
    logits0: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The arguments of :func:`train` checked (ValueError naming the first bad one), and the arm
    means and initial logits as float64 vectors (the defaults where None)."""
    for name, value in (("steps", steps), ("n", n), ("record_every", record_every)):
        if not validation.is_integer(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (math.isfinite(noise_sd) and noise_sd >= 0):
        raise ValueError(f"noise_sd must be a finite number >= 0, got {noise_sd!r}")
    if not variants or not seeds:
        raise ValueError("need at least one variant and one seed")
    if len({v.label for v in variants}) != len(variants):
        raise ValueError("variant labels must be distinct")
    means = arm_means() if means is None else means.to(torch.float64)
    logits0 = initial_logits(len(means)) if logits0 is None else logits0.to(torch.float64)
    if logits0.shape != means.shape or means.ndim != 1:
        raise ValueError("means and logits0 must be vectors of one length (the arms)")
    if not bool(torch.all(torch.isfinite(means) & (means >= 0))):
        raise ValueError("means must be finite and >= 0 (binary rewards are Bernoulli(min(mu, 1)))")
    for v in variants:
        if v.k > n:
            raise ValueError(f"{v.label}: k = {v.k} exceeds the group size n = {n}")
    return means, logits0


@dataclass(frozen=True)
class _Layout:
    """The rows of one batched run: variant-major (row = v * seeds + s), with the variants that
    share an objective configuration adjacent, so each weights call reads and writes one
    contiguous block (objective, k, first row, last row + 1)."""

    ordered: list[Variant]
    order: Tensor  # ordered[i] = variants[order[i]]
    rows: int
    binary_row: Tensor
    noisy_row: Tensor
    blocks: list[tuple[objectives.Objective, int, int, int]]

    @classmethod
    def of(cls, variants: list[Variant], n_seeds: int) -> _Layout:
        configs = list(dict.fromkeys(v.config for v in variants))
        order = sorted(range(len(variants)), key=lambda j: configs.index(variants[j].config))
        ordered = [variants[j] for j in order]
        blocks = []
        for cfg in configs:
            js = [j for j, v in enumerate(ordered) if v.config == cfg]
            blocks.append(
                (
                    objectives.get(cfg[0], **dict(cfg[2])),
                    cfg[1],
                    js[0] * n_seeds,
                    (js[-1] + 1) * n_seeds,
                )
            )
        return cls(
            ordered=ordered,
            order=torch.tensor(order),
            rows=len(variants) * n_seeds,
            binary_row=torch.tensor([v.reward == "binary" for v in ordered]).repeat_interleave(
                n_seeds
            ),
            noisy_row=torch.tensor([v.reward == "noisy" for v in ordered]).repeat_interleave(
                n_seeds
            ),
            blocks=blocks,
        )


def _update(
    z: Tensor,
    means: Tensor,
    layout: _Layout,
    gens: list[torch.Generator],
    n: int,
    noise_sd: float,
) -> Tensor:
    """One step's gradient estimate for every row: n pulls per row from each seed's generator
    (n uniforms per variant for the arms, n for the Bernoulli rewards, n normals for the noise),
    the rewards, the objectives' weights block by block, and their score estimate."""
    n_var, arms = len(layout.ordered), z.shape[1]
    draws = [torch.rand(2, n_var, n, generator=g, dtype=torch.float64) for g in gens]
    noise = [torch.randn(n_var, n, generator=g, dtype=torch.float64) for g in gens]
    u = torch.stack(draws, 2)[:, layout.order].reshape(2, layout.rows, n)  # variant j: [:, j]
    eps = torch.stack(noise, 1)[layout.order].reshape(layout.rows, n)
    pi = torch.softmax(z, -1)
    arm = torch.searchsorted(torch.cumsum(pi, -1), u[0], right=True).clamp_max(arms - 1)
    mu = means[arm]
    rewards = torch.where(layout.binary_row[:, None], (u[1] < mu).to(torch.float64), mu)
    rewards = torch.where(layout.noisy_row[:, None], mu + noise_sd * eps, rewards)
    w = torch.cat([obj.weights(rewards[lo:hi], k) for obj, k, lo, hi in layout.blocks])
    return score_estimate(pi, arm, w)


def expected_flow(
    ks: list[int],
    *,
    steps: int,
    lr: float,
    means: Tensor | None = None,
    logits0: Tensor | None = None,
    record_every: int = 250,
    noise_sd: float | None = None,
) -> tuple[pd.DataFrame, dict[str, Tensor]]:
    """Deterministic flows of the exact expected updates from the start: z <- z + lr grad J(z),
    one row per J: "E[r]" (E_pi[mu]) and "max@k" of the real reward mu for each k in `ks`
    (closed-form gradients, passk_companion.theory.maxk). With `noise_sd` > 0, also
    "max@k / noisy" for each k: max@k of the noisy reward mu_a + noise_sd N(0, 1) of `train`,
    by quadrature over the mixture CDF sum_a pi_a Phi((x - mu_a) / noise_sd)
    (maxk.NoisyQuadrature); pkpo and pkpo_loo on the noisy reward are unbiased for its gradient.
    The noisy reward has mean mu_a, so its E[r] flow is the "E[r]" row.
    Returns the history (step, flow, metrics) and the final logits of each flow."""
    from passk_companion.theory.maxk import NoisyQuadrature, grad_expected_reward, grad_max_at_k

    if not validation.is_integer(steps) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if noise_sd is not None and not (math.isfinite(noise_sd) and noise_sd > 0):
        raise ValueError(f"noise_sd must be a finite number > 0 (or None), got {noise_sd!r}")
    means = arm_means() if means is None else means.to(torch.float64)
    logits0 = initial_logits(len(means)) if logits0 is None else logits0.to(torch.float64)
    labels = ["E[r]"] + [f"max@{k}" for k in ks]
    noisy = [f"max@{k} / noisy" for k in ks] if noise_sd is not None else []
    real_rows = slice(1, len(labels))
    labels += noisy
    z = logits0.expand(len(labels), -1).clone()
    table = means.expand(len(ks), -1)
    k_row = torch.tensor(ks, dtype=torch.float64)
    quad = NoisyQuadrature.build(means[None], noise_sd) if noisy else None
    records = []
    for step in range(steps + 1):
        if step % record_every == 0 or step == steps:
            m = metrics(z, means)
            records.append(
                pd.DataFrame(
                    {"step": step, "flow": labels} | {key: val.numpy() for key, val in m.items()}
                )
            )
        if step == steps:
            break
        parts = [
            grad_expected_reward(z[:1], means[None]),
            grad_max_at_k(z[real_rows], table, k_row),
        ]
        if quad is not None:
            parts.append(quad.grad(z[real_rows.stop :], k_row))
        z = z + lr * torch.cat(parts)
    return pd.concat(records, ignore_index=True), dict(zip(labels, z, strict=True))
