"""Metrics of a tabular softmax policy: entropy, J_1 and pass@k, the gap, alpha_k, and the
diversity of the correct mass (its entropy H_c and effective number of modes exp(H_c)).

For prompt x with policy pi = softmax(z_x) and correct set C: J_1 = sum_{a in C} pi_a; the
correct distribution q_a = pi_a / J_1 on C; H_c = -sum_a q_a log q_a; modes_eff = exp(H_c), which
is the number of correct answers when q is uniform and 1 when one answer holds all the mass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from passk_companion.theory.exact import pass_at_k, success_prob
from passk_companion.theory.passk import alpha_k

__all__ = ["entropy", "grad_entropy", "policy_metrics", "prompt_trace"]


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
    trace = prompt_trace(logits, correct, rare)
    out["correct_entropy"] = float(trace["correct_entropy"].mean())
    out["modes_eff"] = float(trace["modes_eff"].mean())
    if rare is not None:
        out["rare_mass"] = float((pi * rare).sum(1).mean())
        out["rare_share"] = float(trace["rare_share"].mean())
    return out


def prompt_trace(logits: Tensor, correct: Tensor, rare: Tensor | None) -> dict[str, Tensor]:
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
