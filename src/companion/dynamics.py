"""Training dynamics of tabular and contextual softmax policies (Theorem 3.2, open question 3).

One update rule, parameterised by the objective, the mode and the entropy bonus. In logit space,
for prompt x with J_1 = J_1(x):

  mode "exact":    u(x) = omega_obj(J_1) grad_z J_1(x)  (the *expected* update of the objective;
                   omega from companion.harness.weight_profile; pass1_reinforce gives grad J_1,
                   pkpo gives alpha_k grad J_1 = grad J_k, Theorem 3.1)
  mode "sampled":  u(x) = sum_i w_i (e_{y_i} - pi)  for one group of n i.i.d. rollouts
  entropy bonus:   u(x) += beta grad_z H(pi(.|x)),  grad_z H = -pi (log pi + H)

Tabular policies take z <- z + lr u. Contextual policies (companion.contextual) take
W <- W + lr (1/P) sum_x phi(x) u(x)^T, the chain rule through logits = phi^T W + b.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from . import objectives
from .contextual import ContextualPolicy
from .exact import check_policy, grad_j1, pass_at_k, success_prob
from .harness import WeightProfile, group_estimates, weight_profile
from .passk import alpha_k

__all__ = [
    "entropy",
    "grad_entropy",
    "policy_metrics",
    "TrainConfig",
    "TabularRun",
    "train_tabular",
    "train_contextual",
    "multimodal_tabular",
    "late_slope",
]

MODES = ("exact", "sampled")
_P_CLAMP = 1e-12  # omega(p) is evaluated on J_1 clamped to [1e-12, 1 - 1e-12]


def entropy(logits: Tensor) -> Tensor:
    """H(pi(.|x)) in nats, per prompt."""
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def grad_entropy(logits: Tensor) -> Tensor:
    """d H / d z = -pi (log pi + H), per prompt (P, m)."""
    logp = torch.log_softmax(logits, -1)
    pi = logp.exp()
    return -pi * (logp + entropy(logits)[:, None])


def policy_metrics(
    logits: Tensor, correct: Tensor, ks: list[int], mode_threshold: float = 0.01
) -> dict[str, float]:
    """Prompt-averaged J_1, J_k, the gap J_k - J_1 and alpha_k for each k, the mass on the
    most probable correct answer, the number of correct answers holding >= mode_threshold of
    the mass, the policy entropy, and the entropy of the renormalised correct distribution."""
    pi = torch.softmax(logits, -1)
    j1 = success_prob(logits, correct)
    out: dict[str, float] = {"J1": float(j1.mean())}
    for k in ks:
        jk = pass_at_k(logits, correct, k)
        out[f"J{k}"] = float(jk.mean())
        out[f"gap{k}"] = float((jk - j1).mean())
        out[f"alpha{k}"] = float(alpha_k(j1.clamp(0, 1), k).mean())
    pc = pi * correct
    out["best_mode_mass"] = float(pc.amax(1).mean())
    out["modes"] = float((pc >= mode_threshold).sum(1).to(torch.float64).mean())
    out["entropy"] = float(entropy(logits).mean())
    q = pc / pc.sum(1, keepdim=True)
    out["correct_entropy"] = float(-(q * torch.log(q.clamp_min(1e-300))).sum(1).mean())
    return out


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a tabular/contextual run."""

    objective: str = "pass1_reinforce"
    mode: str = "exact"  # "exact" (expected update) or "sampled" (one group of n per prompt)
    n: int = 16  # rollouts per group (sets omega in exact mode too)
    k: int = 8  # the k of pass@k objectives
    lr: float = 1.0
    steps: int = 1000
    entropy: float = 0.0  # entropy bonus coefficient beta
    ks: tuple[int, ...] = (1, 4, 16, 64)  # pass@k tracked in the metrics
    record_every: int = 10
    seed: int = 0
    params: dict = field(default_factory=dict)  # extra objective parameters (e.g. beta)

    def __post_init__(self) -> None:
        objectives.get(self.objective, **self.params)  # raises on an unknown objective
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("n", "k", "steps", "record_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.k > self.n:
            raise ValueError(f"k = {self.k} must be <= n = {self.n}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.entropy < 0:
            raise ValueError(f"entropy must be >= 0, got {self.entropy}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError("ks must be a non-empty tuple of k >= 1")


@dataclass(frozen=True)
class TabularRun:
    """history: one row per recorded step; first_signal: per prompt, the first step whose
    objective update (without the entropy bonus) was nonzero, or -1 if none."""

    config: TrainConfig
    history: pd.DataFrame
    logits: Tensor
    first_signal: Tensor


def _objective_update(
    cfg: TrainConfig,
    obj: objectives.Objective,
    profile: WeightProfile | None,
    logits: Tensor,
    correct: Tensor,
    gen: torch.Generator,
) -> Tensor:
    if cfg.mode == "exact":
        assert profile is not None
        j1 = success_prob(logits, correct).clamp(_P_CLAMP, 1 - _P_CLAMP)
        return profile.omega(j1)[:, None] * grad_j1(logits, correct)
    return group_estimates(obj, logits, correct, cfg.n, cfg.k, 1, gen)[:, 0]


def _run(cfg: TrainConfig, correct: Tensor, logits_fn, apply_update, desc: str) -> TabularRun:
    obj = objectives.get(cfg.objective, **cfg.params)
    if obj.stochastic:
        obj.generator = torch.Generator().manual_seed(cfg.seed + 1)
    profile = weight_profile(obj, cfg.n, cfg.k, seed=cfg.seed) if cfg.mode == "exact" else None
    gen = torch.Generator().manual_seed(cfg.seed)
    first = torch.full((correct.shape[0],), -1, dtype=torch.long)
    rows = []
    for step in tqdm(range(cfg.steps + 1), desc=desc, leave=False):
        logits = logits_fn()
        if step % cfg.record_every == 0 or step == cfg.steps:
            rows.append({"step": step, **policy_metrics(logits, correct, list(cfg.ks))})
        if step == cfg.steps:
            break
        u = _objective_update(cfg, obj, profile, logits, correct, gen)
        newly = (first < 0) & (u != 0).any(1)
        first[newly] = step
        if cfg.entropy > 0:
            u = u + cfg.entropy * grad_entropy(logits)
        apply_update(u)
    return TabularRun(cfg, pd.DataFrame(rows), logits_fn(), first)


def train_tabular(logits0: Tensor, correct: Tensor, cfg: TrainConfig) -> TabularRun:
    """Gradient ascent on tabular logits (P, m) with the update of the module docstring."""
    check_policy(logits0, correct)
    state = {"z": logits0.detach().to(torch.float64).clone()}

    def apply(u: Tensor) -> None:
        state["z"] = state["z"] + cfg.lr * u

    desc = f"{cfg.objective} ({cfg.mode}, entropy {cfg.entropy:g})"
    return _run(cfg, correct, lambda: state["z"], apply, desc)


def train_contextual(
    policy: ContextualPolicy, cfg: TrainConfig
) -> tuple[ContextualPolicy, TabularRun]:
    """Gradient ascent on the shared W of a contextual policy; returns the trained policy too."""
    state = {"W": policy.weight.clone()}
    n_prompts = policy.features.shape[0]

    def apply(u: Tensor) -> None:
        state["W"] = state["W"] + cfg.lr * policy.features.T @ u / n_prompts

    desc = f"contextual {cfg.objective} ({cfg.mode})"
    run = _run(cfg, policy.correct, lambda: policy.logits(state["W"]), apply, desc)
    trained = ContextualPolicy(policy.features, state["W"], policy.offsets, policy.correct)
    return trained, run


def multimodal_tabular(
    n_prompts: int, m: int, mode_logits: list[float], seed: int = 0, wrong_scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Prompts with len(mode_logits) correct modes of unequal prior mass (their logits, plus small
    noise) among m answers; the wrong answers get N(0, wrong_scale^2) logits.
    Returns (logits, correct)."""
    if len(mode_logits) >= m:
        raise ValueError("need fewer correct modes than answers")
    g = torch.Generator().manual_seed(seed)
    logits = wrong_scale * torch.randn(n_prompts, m, generator=g, dtype=torch.float64)
    modes = torch.tensor(mode_logits, dtype=torch.float64)
    logits[:, : len(modes)] = modes + 0.1 * torch.randn(
        n_prompts, len(modes), generator=g, dtype=torch.float64
    )
    correct = torch.zeros(n_prompts, m, dtype=torch.bool)
    correct[:, : len(modes)] = True
    return logits, correct


def late_slope(steps: np.ndarray, values: np.ndarray, start_fraction: float = 0.5) -> float:
    """Slope of log(values) against log(steps) over the last part of a run: values ~ steps^slope."""
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    keep = (steps >= start_fraction * steps.max()) & (steps > 0) & (values > 0)
    if keep.sum() < 2:
        raise ValueError("not enough positive points to fit a slope")
    return float(np.polyfit(np.log(steps[keep]), np.log(values[keep]), 1)[0])
