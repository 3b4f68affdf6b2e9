"""The random streams of a train run, each a generator seeded from the run's `seed`.

A run draws from separate streams, so that one kind of draw never shifts another: its prompts
and rollouts, its stochastic objective's draws, the rollouts of each KL estimate, and the
samples of the sampled check of the exact evaluation. In an ensemble every run keeps its own
streams, which is why a run draws the same numbers alone and with others.
"""

from __future__ import annotations

import torch

__all__ = ["rollouts", "objective", "kl", "sampled_check", "generator"]

KL_OFFSET = 20_000  # the KL streams: seeds KL_OFFSET + seed * KL_STRIDE + step
KL_STRIDE = 7919  # a prime, so that (seed, step) pairs of nearby seeds do not collide
CHECK_OFFSET = 10_000  # the sampled check's stream: seed CHECK_OFFSET + seed


def rollouts(seed: int) -> int:
    """The seed of the stream of prompt batches and rollouts."""
    return seed


def objective(seed: int) -> int:
    """The seed of a stochastic objective's stream."""
    return seed + 1


def kl(seed: int, step: int) -> int:
    """The seed of the rollouts of the KL estimate at evaluation step `step`."""
    return KL_OFFSET + seed * KL_STRIDE + step


def sampled_check(seed: int) -> int:
    """The seed of the samples that check the exact evaluation."""
    return CHECK_OFFSET + seed


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded with `seed`."""
    return torch.Generator(device=device).manual_seed(seed)
