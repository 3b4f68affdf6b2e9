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

Tabular prompts do not share parameters, so independent replicates (seeds) can be stacked as
groups of prompts in one run (`group`): the history then has one row per group and step.
Objectives are compared at equal progress with :func:`at_matched` (the value of a metric where a
run first reaches a given J_1), never at equal step counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from . import objectives
from .contextual import ContextualPolicy
from .exact import check_policy, grad_j1, pass_at_k, success_prob
from .harness import WeightProfile, group_estimates, weight_profile
from .passk import alpha_k
from .repro import progress

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
    "crossing",
    "at_matched",
    "per_prompt_at",
    "matched_difference",
    "matched_difference_per_prompt",
    "matched_change",
    "entropy_fixed_point",
    "entropy_stationary_point",
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
    logits: Tensor,
    correct: Tensor,
    ks: list[int],
    mode_threshold: float = 0.01,
    rare: Tensor | None = None,
) -> dict[str, float]:
    """Prompt-averaged J_1, J_k, the gap J_k - J_1 and alpha_k for each k, the mass on the
    most probable correct answer, the number of correct answers holding >= mode_threshold of
    the mass, the policy entropy, the entropy H_c of the renormalised correct distribution and
    the effective number of correct modes exp(H_c); with a `rare` mask (P, m), the mass on those
    (correct) answers ("rare_mass") and their share of the correct mass ("rare_share")."""
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
    trace = _prompt_trace(logits, correct, rare)
    out["correct_entropy"] = float(trace["correct_entropy"].mean())
    out["modes_eff"] = float(trace["modes_eff"].mean())
    if rare is not None:
        out["rare_mass"] = float((pi * rare).sum(1).mean())
        out["rare_share"] = float(trace["rare_share"].mean())
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
    record_first: int = 0  # also record every step before this one (fast early dynamics)
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
    """history: one row per recorded step (and group); first_signal: per prompt, the first step
    whose objective update (without the entropy bonus) was nonzero, or -1 if none; traces: per
    prompt values at the recorded steps, "step" (T,) and "J1", "correct_entropy", "modes_eff",
    "rare_share" (with a rare mask) of shape (T, P) (see _prompt_trace)."""

    config: TrainConfig
    history: pd.DataFrame
    logits: Tensor
    first_signal: Tensor
    traces: dict = field(default_factory=dict)


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


def _record(
    step: int,
    logits: Tensor,
    correct: Tensor,
    cfg: TrainConfig,
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
    cfg: TrainConfig,
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
            for name, value in _prompt_trace(logits, correct, rare).items():
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


def _prompt_trace(logits: Tensor, correct: Tensor, rare: Tensor | None) -> dict[str, Tensor]:
    """Per prompt: J_1, the entropy H_c of the renormalised correct mass q, the effective number
    of correct modes exp(H_c), and (with a `rare` mask) the rare answers' share of q."""
    pc = torch.softmax(logits, -1) * correct
    j1 = pc.sum(1)
    q = pc / j1[:, None]
    h_c = -(q * torch.log(q.clamp_min(1e-300))).sum(1)
    out = {"J1": j1, "correct_entropy": h_c, "modes_eff": h_c.exp()}
    if rare is not None:
        out["rare_share"] = (q * rare).sum(1)
    return out


def train_tabular(
    logits0: Tensor,
    correct: Tensor,
    cfg: TrainConfig,
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
    n_prompts: int,
    m: int,
    mode_logits: list[float],
    seed: int = 0,
    wrong_scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Prompts with len(mode_logits) correct modes of unequal prior mass (their logits, plus small
    noise) among m answers; the wrong answers get N(0, wrong_scale^2) logits. A very negative
    mode logit makes a correct answer that starts rare (an undiscovered mode).
    Returns (logits, correct)."""
    if not mode_logits or len(mode_logits) >= m:
        raise ValueError("need at least one correct mode and fewer correct modes than answers")
    if not all(math.isfinite(v) for v in mode_logits):
        raise ValueError("mode_logits must be finite")
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


def crossing(x: np.ndarray, target: float) -> tuple[int, int, float] | None:
    """Where a recorded series first reaches `target`: (i0, i1, w) such that the crossing lies a
    fraction w of the way from record i0 to record i1 (linear interpolation; i0 = i1, w = 1 if
    the series starts at or above the target, or does not move); None if it never gets there."""
    hit = np.flatnonzero(np.asarray(x, dtype=float) >= target)
    if len(hit) == 0:
        return None
    i = int(hit[0])
    if i == 0 or x[i] == x[i - 1]:
        return i, i, 1.0
    return i - 1, i, float((target - x[i - 1]) / (x[i] - x[i - 1]))


def at_matched(history: pd.DataFrame, target: float, column: str, by: str = "J1") -> float:
    """`column` where the run first reaches `by` >= target, linearly interpolated between the two
    recorded steps around the crossing (NaN if the run never reaches it; the first row if it starts
    there). Comparing runs at matched J_1 removes the speed difference between objectives."""
    y = history[column].to_numpy(dtype=float)
    cross = crossing(history[by].to_numpy(dtype=float), target)
    if cross is None:
        return math.nan
    i0, i1, w = cross
    return float(y[i1]) if i0 == i1 else float(y[i0] + w * (y[i1] - y[i0]))


def entropy_fixed_point(
    omega, n_correct: int, n_wrong: int, beta: float, tol: float = 1e-13
) -> float:
    """J_1 at a stationary point of the exact update omega(J_1) grad J_1 + beta grad H on one
    tabular prompt with n_correct correct and n_wrong wrong answers.

    Stationarity, pi (omega (r - J_1)) = beta pi (log pi + H), gives log pi_a = omega r_a / beta +
    const, so J_1 solves the fixed point

        J_1 = n_c e^{omega(J_1)/beta} / (n_c e^{omega(J_1)/beta} + n_w),

    found by bisection on (0, 1). For pass@1 (omega = 1) this is pi ~ exp(r / beta). For omega
    non-increasing in J_1 (alpha_k), the right side is non-increasing and the root is unique."""
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be finite and > 0, got {beta}")
    if n_correct < 1 or n_wrong < 1:
        raise ValueError("need n_correct >= 1 and n_wrong >= 1")

    def rhs(j1: float) -> float:
        a = float(omega(j1)) / beta
        return 1.0 / (1.0 + n_wrong / n_correct * math.exp(-a))  # n_c e^a / (n_c e^a + n_w)

    lo, hi = 1e-15, 1 - 1e-15
    if rhs(hi) >= hi:  # the root lies within 1e-15 of 1 (float64 cannot resolve it further)
        return rhs(hi)
    if rhs(lo) <= lo:
        raise ValueError("no fixed point in (0, 1) for this omega")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rhs(mid) > mid else (lo, mid)
    return 0.5 * (lo + hi)


def entropy_stationary_point(
    objective: str, n: int, k: int, beta: float, n_correct: int, n_wrong: int
) -> tuple[float, float]:
    """The J_1 predicted by :func:`entropy_fixed_point` for the exact update of `objective` (its
    omega from harness.weight_profile, as training uses it) with entropy coefficient beta, and the
    largest |update| of that exact update at the predicted policy pi ~ exp(omega(J_1*) r / beta),
    which is 0 (to round-off) when the prediction is a stationary point."""
    profile = weight_profile(objectives.get(objective), n, k)

    def omega(p: float) -> float:
        clamped = min(max(p, _P_CLAMP), 1 - _P_CLAMP)
        return float(profile.omega(torch.tensor([clamped], dtype=torch.float64))[0])

    j1_star = entropy_fixed_point(omega, n_correct, n_wrong, beta)
    correct = torch.zeros(1, n_correct + n_wrong, dtype=torch.bool)
    correct[0, :n_correct] = True
    z = (omega(j1_star) / beta) * correct.to(torch.float64)
    j1 = success_prob(z, correct).clamp(_P_CLAMP, 1 - _P_CLAMP)
    u = profile.omega(j1)[:, None] * grad_j1(z, correct) + beta * grad_entropy(z)
    return j1_star, float(u.abs().max())


def per_prompt_at(run: TabularRun, levels: list[float], column: str) -> Tensor:
    """(L, P): for each level and prompt, `column` (a trace: "modes_eff", "rare_share", "J1")
    where that prompt's J_1 first reaches the level, linearly interpolated between recorded steps
    (the value at step 0 if it starts there); NaN where the prompt never reaches it. Tabular
    prompts are independent, so this is the per-prompt notion of equal progress."""
    j1 = run.traces["J1"]  # (T, P)
    values = run.traces[column]
    out = torch.full((len(levels), j1.shape[1]), math.nan, dtype=torch.float64)
    for li, level in enumerate(levels):
        crossed = j1 >= level
        reached = crossed.any(0)
        idx = crossed.to(torch.int64).argmax(0)  # first crossing (0 if none: masked below)
        prev = (idx - 1).clamp_min(0)
        cols = torch.arange(j1.shape[1])
        x1, x0 = j1[idx, cols], j1[prev, cols]
        y1, y0 = values[idx, cols], values[prev, cols]
        span = x1 - x0
        w = torch.where(span > 0, (level - x0) / torch.where(span > 0, span, 1.0), 1.0)
        interp = torch.where(idx == 0, y1, y0 + w * (y1 - y0))
        out[li] = torch.where(reached, interp.to(torch.float64), out[li])
    return out


def _matched_pairs(
    run_a: TabularRun, run_b: TabularRun, levels: list[float], column: str
) -> tuple[Tensor, Tensor, list[float]]:
    """(L, P) column(a) - column(b) at matched per-prompt J_1 (0 where not both reached), the
    (L, P) mask of (level, prompt) pairs BOTH runs reach, and the levels that contributed."""
    a, b = per_prompt_at(run_a, levels, column), per_prompt_at(run_b, levels, column)
    both = ~(a.isnan() | b.isnan())
    used = [lv for li, lv in enumerate(levels) if bool(both[li].any())]
    return torch.where(both, a - b, 0.0), both, used


def matched_difference(
    run_a: TabularRun, run_b: TabularRun, levels: list[float], column: str, group: Tensor
) -> tuple[np.ndarray, list[float]]:
    """Per group (replicate): the mean over (level, prompt) pairs that BOTH runs reach of
    column(a) - column(b) at matched per-prompt J_1; and the levels that contributed."""
    diff, both, used = _matched_pairs(run_a, run_b, levels, column)
    out = []
    for g in torch.unique(group).tolist():
        count = int(both[:, group == g].sum())
        out.append(float(diff[:, group == g].sum() / count) if count else math.nan)
    return np.asarray(out), used


def matched_difference_per_prompt(
    run_a: TabularRun, run_b: TabularRun, levels: list[float], column: str
) -> tuple[np.ndarray, list[float]]:
    """Per prompt: the mean over the levels that BOTH runs reach for that prompt of column(a) -
    column(b) at matched J_1 (NaN where no level is shared); and the levels that contributed.
    Tabular prompts are independent, so these are independent units for a bootstrap."""
    diff, both, used = _matched_pairs(run_a, run_b, levels, column)
    count = both.sum(0)
    per = torch.where(count > 0, diff.sum(0) / count.clamp_min(1), torch.tensor(math.nan))
    return per.numpy(), used


def matched_change(run: TabularRun, level: float, column: str) -> np.ndarray:
    """Per prompt: column where the prompt reaches J_1 = level minus column at step 0 (NaN for
    prompts that never reach it)."""
    at = per_prompt_at(run, [level], column)[0]
    return (at - run.traces[column][0].to(torch.float64)).numpy()
