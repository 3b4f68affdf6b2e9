"""Benchmark: the vectorized pass@k estimator and the objective weights.

1. `pass_at_k_unbiased` over 10^4 prompts x n = 256 x every k in 1..256, against a straightforward
   per-problem Python loop of the same product formula (the HumanEval `estimator`), timed on a
   subset of problems in the same run and extrapolated linearly (the loop is O(problems x k)).
2. The weights of every registered objective at B = 1024, n = 64, k = 8, against plain RLOO
   (`pass1_reinforce`) as the baseline.

Run: `.venv/bin/python benchmarks/estimators.py` (prints ratios; nothing is asserted).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from companion import objectives
from companion.passk import pass_at_k_unbiased


def loop_estimator(n: int, c: int, k: int) -> float:
    """HumanEval's per-problem estimator: 1 - prod_{i=n-c+1}^{n} (1 - k/i)."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=10_000)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--loop-problems", type=int, default=200, help="problems timed in the loop")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = args.n
    c = rng.integers(0, n + 1, size=(args.problems, 1))
    ks = np.arange(1, n + 1)

    vec_s = best_of(lambda: pass_at_k_unbiased(n, c, ks), args.repeats)
    sub = c[: args.loop_problems, 0]
    loop_sub_s = best_of(
        lambda: [[loop_estimator(n, int(ci), int(k)) for k in ks] for ci in sub], 1
    )
    loop_s = loop_sub_s * args.problems / len(sub)
    vec = pass_at_k_unbiased(n, c[: len(sub)], ks)
    ref = np.array([[loop_estimator(n, int(ci), int(k)) for k in ks] for ci in sub])
    max_diff = float(np.abs(vec - ref).max())
    print(f"pass_at_k_unbiased: {args.problems} problems x n={n} x k=1..{n}")
    print(f"  vectorized       {vec_s:8.3f} s")
    print(f"  python loop      {loop_s:8.3f} s  (timed on {len(sub)} problems, scaled)")
    print(f"  speed-up         {loop_s / vec_s:8.1f} x   (max |difference| {max_diff:.1e})")

    batch, group, k = 1024, 64, 8
    rewards = torch.bernoulli(
        torch.full((batch, group), 0.3, dtype=torch.float64),
        generator=torch.Generator().manual_seed(0),
    )
    base = best_of(lambda: objectives.get("pass1_reinforce").weights(rewards, k), 5 * args.repeats)
    print(
        f"\nobjective weights at B={batch}, n={group}, k={k} (baseline pass1_reinforce "
        f"{base * 1e3:.2f} ms)"
    )
    for name in objectives.names():
        obj = objectives.get(name)
        if obj.stochastic:
            obj.generator = torch.Generator().manual_seed(0)
        t = best_of(lambda obj=obj: obj.weights(rewards, k), 5 * args.repeats)
        print(f"  {name:<18} {t * 1e3:8.2f} ms   {t / base:6.2f} x baseline")


if __name__ == "__main__":
    main()
