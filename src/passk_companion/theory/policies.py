"""Tabular policies to train and measure: prompts with several correct modes of unequal mass."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["multimodal_tabular"]


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
