"""PKPO's continuous toy (Walder & Karkhanis 2025, arXiv 2505.15201, Fig. 1): a Gaussian policy
x ~ N(theta, sigma^2) and the "cliff" reward g(x) = x^2 for 0 <= x <= 1, 0 otherwise.

Higher reward sits next to the cliff at x = 1; one sample (k = 1) keeps away from it, while the
best of k samples (max@k) rewards risk, so the optimum theta*(k) moves toward 1 as k grows.

Exact max@k by quadrature. R = g(X) lies in [0, 1]; for r in [0, 1],
P(R > r) = P(sqrt(r) < X <= 1) = Phi((1 - theta)/sigma) - Phi((sqrt(r) - theta)/sigma), so

    max@k(theta) = int_0^1 P(max_k R > r) dr = int_0^1 2u [1 - (1 - P(R > u^2))^k] du,

(substituting r = u^2), a smooth integrand on [0, 1], integrated by Gauss-Legendre with `nodes`
points. For k = 1 the closed form E[X^2 1{0 <= X <= 1}] (`reward_mean`) checks it.

Training: theta <- theta + lr sum_i w_i d/dtheta log N(x_i; theta, sigma^2), with
d/dtheta log N = (x_i - theta)/sigma^2 and w the weights of a registered objective on the n
rewards g(x_i) of each group (PKPO's estimators are unbiased for d max@k / d theta).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from passk_companion import objectives, validation
from passk_companion.theory.passk import check_k

__all__ = [
    "SIGMA",
    "cliff_reward",
    "max_at_k",
    "reward_mean",
    "beyond_cliff",
    "optimum",
    "train",
]

SIGMA = 0.1  # the policy's standard deviation in PKPO's toy
NODES = 128  # Gauss-Legendre points (notebook 07 states the quadrature error against 1024)


def _check_sigma(sigma: float) -> float:
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def _phi(x: Tensor) -> Tensor:
    """Standard normal CDF, differentiable."""
    return 0.5 * torch.erfc(-x / math.sqrt(2.0))


@lru_cache(maxsize=16)
def _legendre(nodes: int) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre nodes and weights on [0, 1]."""
    if nodes < 2:
        raise ValueError(f"nodes must be >= 2, got {nodes}")
    x, w = np.polynomial.legendre.leggauss(nodes)
    return torch.tensor((x + 1) / 2), torch.tensor(w / 2)


def cliff_reward(x: Tensor) -> Tensor:
    """g(x) = x^2 for 0 <= x <= 1, 0 otherwise."""
    return torch.where((x >= 0) & (x <= 1), x * x, torch.zeros_like(x))


def max_at_k(theta: Tensor | float, k: int, sigma: float = SIGMA, nodes: int = NODES) -> Tensor:
    """E[max of k rewards g(x_i)], x_i ~ N(theta, sigma^2) i.i.d., by Gauss-Legendre quadrature
    (module docstring); elementwise over theta, float64, differentiable in theta."""
    check_k(k)
    sigma = _check_sigma(sigma)
    theta = torch.as_tensor(theta, dtype=torch.float64)
    u, w = _legendre(nodes)
    t = theta[..., None]
    above = (_phi((1 - t) / sigma) - _phi((u - t) / sigma)).clamp_min(0)  # P(R > u^2)
    return (w * 2 * u * (1 - (1 - above) ** k)).sum(-1)


def reward_mean(theta: Tensor | float, sigma: float = SIGMA) -> Tensor:
    """Closed form of max@1 = E[X^2 1{0 <= X <= 1}], X ~ N(theta, sigma^2): with a = -theta/sigma,
    b = (1 - theta)/sigma and phi the standard normal density,
    (theta^2 + sigma^2)(Phi(b) - Phi(a)) + sigma (theta phi(a) - (1 + theta) phi(b))."""
    sigma = _check_sigma(sigma)
    theta = torch.as_tensor(theta, dtype=torch.float64)
    a, b = -theta / sigma, (1 - theta) / sigma

    def density(x: Tensor) -> Tensor:
        return torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)

    return (theta**2 + sigma**2) * (_phi(b) - _phi(a)) + sigma * (
        theta * density(a) - (1 + theta) * density(b)
    )


def beyond_cliff(theta: Tensor | float, sigma: float = SIGMA) -> Tensor:
    """P(x > 1): the chance that one sample falls off the cliff (reward 0)."""
    theta = torch.as_tensor(theta, dtype=torch.float64)
    return 1 - _phi((1 - theta) / _check_sigma(sigma))


def optimum(k: int, sigma: float = SIGMA, nodes: int = NODES, xtol: float = 1e-10) -> float:
    """theta*(k) = argmax_theta max@k(theta): the best point of a grid on [-1, 2] (step 1e-3),
    refined by bounded Brent search within one grid step on each side."""
    grid = torch.linspace(-1.0, 2.0, 3001, dtype=torch.float64)
    best = float(grid[int(torch.argmax(max_at_k(grid, k, sigma, nodes)))])
    step = float(grid[1] - grid[0])
    res = minimize_scalar(
        lambda th: -float(max_at_k(th, k, sigma, nodes)),
        bounds=(best - step, best + step),
        method="bounded",
        options={"xatol": xtol},
    )
    return float(res.x)


def train(
    ks: list[int],
    seeds: list[int],
    *,
    steps: int,
    n: int = 16,
    lr: float = 0.01,
    theta0: float = 0.5,
    sigma: float = SIGMA,
    objective: str = "pkpo_loo",
    record_every: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic gradient ascent on theta for every k in `ks` and every seed, vectorised over
    seeds (one weights call per k and step). Each seed's groups come from its own generator.

    Returns (recorded steps (T,), theta (T, len(ks), len(seeds)))."""
    for name, value in (("steps", steps), ("n", n), ("record_every", record_every)):
        if not validation.is_integer(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not math.isfinite(theta0):
        raise ValueError(f"theta0 must be finite, got {theta0!r}")
    sigma = _check_sigma(sigma)
    for k in ks:
        check_k(k, n)
    if not seeds:
        raise ValueError("seeds must not be empty")
    obj = objectives.get(objective)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    theta = torch.full((len(ks), len(seeds)), float(theta0), dtype=torch.float64)
    recorded, history = [], []
    for step in range(steps + 1):
        if step % record_every == 0 or step == steps:
            recorded.append(step)
            history.append(theta.clone())
        if step == steps:
            break
        eps = torch.stack(
            [torch.randn(len(ks), n, generator=g, dtype=torch.float64) for g in gens], 1
        )  # (K, S, n)
        x = theta[..., None] + sigma * eps
        rewards = cliff_reward(x)
        for j, k in enumerate(ks):
            w = obj.weights(rewards[j], k)
            theta[j] += lr * (w * eps[j]).sum(1) / sigma  # (x - theta)/sigma^2 = eps/sigma
    return np.array(recorded), torch.stack(history).numpy()
