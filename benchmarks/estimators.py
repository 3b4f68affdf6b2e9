"""Benchmark: the vectorized pass@k estimator and the objective weights.

1. `pass_at_k_unbiased` over 10^4 prompts x n = 256 x every k in 1..256, against a straightforward
   per-problem Python loop of the same product formula (the HumanEval `estimator`), timed on a
   subset of problems in the same run and extrapolated linearly (the loop is O(problems x k)).
2. The weights of every registered objective at B = 1024, n = 64, k = 8, against plain RLOO
   (`pass1_reinforce`) as the baseline (objectives that need log-probabilities get those of n
   distinct rollouts).
3. PKPO's real-valued weights (sort + cumulative sums, O(n log n) per group) against their binary
   closed form on the same 0/1 rewards, and against a loop over every k-subset on a few groups
   (timed and extrapolated to the batch; the subset loop is O(C(n, k) k) per group).

Run: `.venv/bin/python benchmarks/estimators.py` (prints ratios; nothing is asserted), or with
`--quick` for small sizes that finish in a few seconds.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np
import torch

from passk_companion import objectives
from passk_companion.objectives.passk_family import PKPO, max_at_k_weights
from passk_companion.theory.passk import pass_at_k_unbiased


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


def subset_loop_weights(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """PKPO's definition, literally: average max_I g over every k-subset I containing i."""
    w = torch.zeros_like(rewards)
    subsets = list(itertools.combinations(range(rewards.shape[1]), k))
    for s in subsets:
        w[:, list(s)] += rewards[:, list(s)].amax(1, keepdim=True)
    return w / len(subsets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=10_000)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--loop-problems", type=int, default=200, help="problems timed in the loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1024, help="groups for the objective weights")
    ap.add_argument("--quick", action="store_true", help="small sizes: finishes in seconds")
    args = ap.parse_args()
    if args.quick:
        args.problems, args.n, args.loop_problems, args.repeats, args.batch = 500, 64, 20, 1, 128
    for name in ("problems", "n", "loop_problems", "repeats", "batch"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
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

    batch, group, k = args.batch, 64, 8
    gen = torch.Generator().manual_seed(0)
    rewards = torch.bernoulli(torch.full((batch, group), 0.3, dtype=torch.float64), generator=gen)
    logprobs = torch.full_like(rewards, -math.log(2 * group))  # n distinct rollouts, mass 1/2
    base = best_of(lambda: objectives.get("pass1_reinforce").weights(rewards, k), 5 * args.repeats)
    print(
        f"\nobjective weights at B={batch}, n={group}, k={k} (baseline pass1_reinforce "
        f"{base * 1e3:.2f} ms)"
    )
    for name in objectives.names():
        obj = objectives.get(name)
        if obj.stochastic:
            obj.generator = torch.Generator().manual_seed(0)
        t = best_of(lambda obj=obj: obj.weights(rewards, k, logprobs=logprobs), 5 * args.repeats)
        print(f"  {name:<18} {t * 1e3:8.2f} ms   {t / base:6.2f} x baseline")

    real = torch.rand(batch, group, generator=gen, dtype=torch.float64)
    fast = best_of(lambda: PKPO.binary_weights(rewards, k), 5 * args.repeats)
    sorted_binary = best_of(lambda: max_at_k_weights(rewards, k), 5 * args.repeats)
    sorted_real = best_of(lambda: max_at_k_weights(real, k), 5 * args.repeats)
    same = float((max_at_k_weights(rewards, k) - PKPO.binary_weights(rewards, k)).abs().max())
    print(f"\nPKPO weights at B={batch}, n={group}, k={k} (baseline: binary closed form)")
    print(f"  binary closed form      {fast * 1e3:8.2f} ms   1.00 x")
    print(
        f"  sort + cumsum, 0/1      {sorted_binary * 1e3:8.2f} ms   {sorted_binary / fast:5.2f} x"
    )
    print(f"  sort + cumsum, real     {sorted_real * 1e3:8.2f} ms   {sorted_real / fast:5.2f} x")
    print(f"  (max |sorted - closed form| on 0/1 rewards: {same:.1e})")
    small_n, small_k, few = 16, 4, 4
    small = real[:few, :small_n]
    loop_s = best_of(lambda: subset_loop_weights(small, small_k), 1) * batch / few
    vec_s = best_of(lambda: max_at_k_weights(real[:, :small_n], small_k), 5 * args.repeats)
    diff = float(
        (subset_loop_weights(small, small_k) - max_at_k_weights(small, small_k)).abs().max()
    )
    print(
        f"  subset loop at n={small_n}, k={small_k}: {loop_s:8.3f} s for B={batch} (timed on {few} "
        f"groups, scaled) = {loop_s / vec_s:,.0f} x sort + cumsum (max |difference| {diff:.1e})"
    )


if __name__ == "__main__":
    main()
