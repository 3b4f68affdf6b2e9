"""Training dynamics of tabular and contextual softmax policies (Theorem 3.2, open question 3).

One update rule, parameterised by the objective, the mode and the entropy bonus. In logit space,
for prompt x with J_1 = J_1(x):

  mode "exact":    u(x) = omega_obj(J_1) grad_z J_1(x)  (the *expected* update of the objective;
                   omega from passk_companion.theory.weights.weight_profile; pass1_reinforce gives
                   grad J_1,
                   pkpo gives alpha_k grad J_1 = grad J_k, Theorem 3.1)
  mode "sampled":  u(x) = sum_i w_i (e_{y_i} - pi)  for one group of n i.i.d. rollouts
  entropy bonus:   u(x) += beta grad_z H(pi(.|x)),  grad_z H = -pi (log pi + H)

Tabular policies take z <- z + lr u. Contextual policies (passk_companion.theory.contextual) take
W <- W + lr (1/P) sum_x phi(x) u(x)^T, the chain rule through logits = phi^T W + b.

Tabular prompts do not share parameters, so independent replicates (seeds) can be stacked as
groups of prompts in one run (`group`): the history then has one row per group and step.
Objectives are compared at equal progress (passk_companion.evidence.matching,
passk_companion.theory.tabular_matching), never at equal step counts. Metrics:
passk_companion.theory.policy_metrics; stationary points of the entropy bonus:
passk_companion.theory.stationary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from passk_companion import objectives
from passk_companion import validation as check
from passk_companion.runtime import progress
from passk_companion.theory.contextual import ContextualPolicy
from passk_companion.theory.exact import check_policy, grad_j1, success_prob
from passk_companion.theory.harness import group_estimates
from passk_companion.theory.policy_metrics import grad_entropy, policy_metrics, prompt_trace
from passk_companion.theory.weights import P_CLAMP, WeightProfile, weight_profile

__all__ = ["MODES", "TabularConfig", "TabularRun", "train_tabular", "train_contextual"]

MODES = ("exact", "sampled")


@dataclass(frozen=True)
class TabularConfig:
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
    record_first: int = 0  # also record every step before this one (fast early dynamics)
    seed: int = 0
    params: dict = field(default_factory=dict)  # extra objective parameters (e.g. beta)

    def __post_init__(self) -> None:
        objectives.get(self.objective, **self.params)  # raises on an unknown objective
        check.choice(self.mode, "mode", MODES)
        for name in ("n", "k", "steps", "record_every"):
            check.integer(getattr(self, name), name, minimum=1, maximum=10_000_000)
        check.integer(self.record_first, "record_first", minimum=0)
        check.integer(self.seed, "seed", minimum=0)
        if self.k > self.n:
            raise ValueError(f"k = {self.k} must be <= n = {self.n}")
        check.number(self.lr, "lr", low=0, low_open=True)
        check.number(self.entropy, "entropy", low=0)
        if not self.ks:
            raise ValueError("ks must be a non-empty tuple of k >= 1")
        for k in self.ks:
            check.integer(k, "ks entry", minimum=1)


@dataclass(frozen=True)
class TabularRun:
    """history: one row per recorded step (and group); first_signal: per prompt, the first step
    whose objective update (without the entropy bonus) was nonzero, or -1 if none; traces: per
    prompt values at the recorded steps, "step" (T,) and "J1", "correct_entropy", "modes_eff",
    "rare_share" (with a rare mask) of shape (T, P) (see _prompt_trace)."""

    config: TabularConfig
    history: pd.DataFrame
    logits: Tensor
    first_signal: Tensor
    traces: dict = field(default_factory=dict)


def _objective_update(
    cfg: TabularConfig,
    obj: objectives.Objective,
    profile: WeightProfile | None,
    logits: Tensor,
    correct: Tensor,
    gen: torch.Generator,
) -> Tensor:
    if cfg.mode == "exact":
        assert profile is not None
        j1 = success_prob(logits, correct).clamp(P_CLAMP, 1 - P_CLAMP)
        return profile.omega(j1)[:, None] * grad_j1(logits, correct)
    return group_estimates(obj, logits, correct, cfg.n, cfg.k, 1, gen)[:, 0]


def _record(
    step: int,
    logits: Tensor,
    correct: Tensor,
    cfg: TabularConfig,
    group: Tensor | None,
    rare: Tensor | None,
) -> list[dict]:
    if group is None:
        return [{"step": step, **policy_metrics(logits, correct, list(cfg.ks), rare=rare)}]
    rows = []
    for g in torch.unique(group).tolist():
        sel = group == g
        sub_rare = None if rare is None else rare[sel]
        m = policy_metrics(logits[sel], correct[sel], list(cfg.ks), rare=sub_rare)
        rows.append({"step": step, "group": g, **m})
    return rows


def _run(
    cfg: TabularConfig,
    correct: Tensor,
    logits_fn,
    apply_update,
    desc: str,
    group: Tensor | None = None,
    rare: Tensor | None = None,
) -> TabularRun:
    obj = objectives.get(cfg.objective, **cfg.params)
    if obj.stochastic:
        obj.generator = torch.Generator().manual_seed(cfg.seed + 1)
    profile = weight_profile(obj, cfg.n, cfg.k, seed=cfg.seed) if cfg.mode == "exact" else None
    gen = torch.Generator().manual_seed(cfg.seed)
    first = torch.full((correct.shape[0],), -1, dtype=torch.long)
    rows = []
    traces: dict[str, list] = {"step": []}
    for step in progress(range(cfg.steps + 1), desc=desc, leave=False):
        logits = logits_fn()
        if step % cfg.record_every == 0 or step == cfg.steps or step < cfg.record_first:
            rows.extend(_record(step, logits, correct, cfg, group, rare))
            for name, value in prompt_trace(logits, correct, rare).items():
                traces.setdefault(name, []).append(value)
            traces["step"].append(step)
        if step == cfg.steps:
            break
        u = _objective_update(cfg, obj, profile, logits, correct, gen)
        newly = (first < 0) & (u != 0).any(1)
        first[newly] = step
        if cfg.entropy > 0:
            u = u + cfg.entropy * grad_entropy(logits)
        apply_update(u)
    stacked = {
        name: torch.tensor(v) if name == "step" else torch.stack(v)
        for name, v in traces.items()
        if v
    }
    return TabularRun(cfg, pd.DataFrame(rows), logits_fn(), first, stacked)


def train_tabular(
    logits0: Tensor,
    correct: Tensor,
    cfg: TabularConfig,
    group: Tensor | None = None,
    rare: Tensor | None = None,
) -> TabularRun:
    """Gradient ascent on tabular logits (P, m) with the update of the module docstring.

    group (P,) int: replicate of each prompt (metrics are then recorded per group); rare (P, m)
    bool: answers whose mass is tracked (policy_metrics)."""
    check_policy(logits0, correct)
    if group is not None and group.shape != (logits0.shape[0],):
        raise ValueError(f"group must have shape ({logits0.shape[0]},), got {tuple(group.shape)}")
    if rare is not None and rare.shape != correct.shape:
        raise ValueError("rare must have the shape of correct")
    state = {"z": logits0.detach().to(torch.float64).clone()}

    def apply(u: Tensor) -> None:
        state["z"] = state["z"] + cfg.lr * u

    desc = f"{cfg.objective} ({cfg.mode}, entropy {cfg.entropy:g})"
    return _run(cfg, correct, lambda: state["z"], apply, desc, group, rare)


def train_contextual(
    policy: ContextualPolicy, cfg: TabularConfig
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
