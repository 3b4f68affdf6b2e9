"""Benchmark: the pass@k diagnostic (passk_companion.integrations.diagnostics) on 10^6 rollouts.

1. `diagnose` on arrays: 125,000 prompts x n = 8 rollouts with 0/1 rewards (every k of
   1, 2, 4, 8: pass@k, J_1, alpha_k, the shares), then its bootstrap interval over prompts,
   against a per-group Python loop of the same quantities (math.comb for pass@k), timed on a
   subset of groups in the same run and scaled linearly (the loop is O(groups x k)).
2. Ragged groups (n from 2 to 16) and real-valued rewards (max@k), the same way.
3. `python -m passk_companion diagnose` end to end (in this process) on a CSV of the rollouts with a
   step column: reading, the curve, the interval, the trend, the JSON.

Prints rollouts per second and the speed-up over the loop (nothing is asserted). Run:
`.venv/bin/python benchmarks/diagnose.py` (10^6 rollouts), or `--quick` (2 x 10^4, seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from passk_companion import cli
from passk_companion.integrations import diagnostics


def loop_diagnostic(groups: list[list[float]], ks: list[int]) -> np.ndarray:
    """The per-group Python loop: pass@k at each k (NaN above n), J_1, alpha_k, all-wrong."""
    rows = []
    for g in groups:
        n, c = len(g), int(sum(g))
        p = c / n
        row = [1 - math.comb(n - c, k) / math.comb(n, k) if k <= n else math.nan for k in ks]
        row += [p] + [k * (1 - p) ** (k - 1) for k in ks] + [float(c == 0)]
        rows.append(row)
    return np.array(rows)


def loop_max_at_k(groups: list[list[float]], ks: list[int]) -> np.ndarray:
    """max@k per group by its sorted form, a Python loop over groups and ranks."""
    rows = []
    for g in groups:
        s, n = sorted(g), len(g)
        rows.append(
            [
                sum(math.comb(i - 1, k - 1) * s[i - 1] for i in range(k, n + 1)) / math.comb(n, k)
                if k <= n
                else math.nan
                for k in ks
            ]
        )
    return np.array(rows)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def split(ids: np.ndarray, rewards: np.ndarray, first: int) -> list[list[float]]:
    """The first `first` groups as Python lists (ids are 0..G-1, rows sorted by id)."""
    cut = np.searchsorted(ids, first)
    bounds = np.flatnonzero(np.diff(ids[:cut])) + 1
    return [part.tolist() for part in np.split(rewards[:cut], bounds)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rollouts", type=int, default=1_000_000)
    ap.add_argument("--loop-groups", type=int, default=5_000, help="groups timed in the loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2 x 10^4 rollouts: seconds")
    args = ap.parse_args()
    if args.quick:
        args.rollouts, args.loop_groups, args.repeats = 20_000, 500, 1
    if args.rollouts < 16 or args.loop_groups < 1 or args.repeats < 1:
        ap.error("--rollouts must be >= 16, --loop-groups and --repeats >= 1")
    rng = np.random.default_rng(0)
    n = 8
    groups = args.rollouts // n
    ids = np.repeat(np.arange(groups), n)
    p = rng.beta(0.5, 1.0, size=groups)  # many hard prompts: Situation I is common
    rewards = (rng.random(ids.size) < p[ids]).astype(np.float64)
    ks = [1, 2, 4, 8]
    total = ids.size
    print(f"diagnostic of {total:,} rollouts ({groups:,} prompts x n = {n}, 0/1 rewards)")

    result: dict = {}
    vec = best_of(lambda: result.update(d=diagnostics.diagnose(ids, rewards, ks)), args.repeats)
    d = result["d"]
    boot = best_of(lambda: d._cache.clear() or d.interval(), args.repeats)
    few = split(ids, rewards, min(args.loop_groups, groups))
    loop = best_of(lambda: loop_diagnostic(few, ks), 1) * groups / len(few)
    ref = loop_diagnostic(few, ks)
    mine = np.hstack(
        [
            d.per_group[: len(few)],
            d.j1[: len(few), None],
            d.alpha[: len(few)],
            (d.correct[: len(few), None] == 0).astype(float),
        ]
    )
    diff = float(np.nanmax(np.abs(mine - ref)))
    print(f"  vectorised diagnose     {vec:8.3f} s   {total / vec:14,.0f} rollouts/s")
    print(f"  bootstrap (1000)        {boot:8.3f} s   {total / boot:14,.0f} rollouts/s")
    print(
        f"  per-group Python loop   {loop:8.3f} s   {total / loop:14,.0f} rollouts/s   "
        f"(timed on {len(few):,} groups, scaled)"
    )
    print(f"  speed-up                {loop / vec:8.1f} x   (max |difference| {diff:.1e})")

    sizes = rng.integers(2, 17, size=total // 9)
    ragged_ids = np.repeat(np.arange(sizes.size), sizes)
    real = rng.random(ragged_ids.size)
    rk = [1, 2, 4, 8, 16]
    vec_r = best_of(lambda: result.update(r=diagnostics.diagnose(ragged_ids, real, rk)), 1)
    few_r = split(ragged_ids, real, min(args.loop_groups, sizes.size))
    loop_r = best_of(lambda: loop_max_at_k(few_r, rk), 1) * sizes.size / len(few_r)
    diff_r = float(
        np.nanmax(np.abs(result["r"].per_group[: len(few_r)] - loop_max_at_k(few_r, rk)))
    )
    print(f"\nragged groups (n = 2..16), real rewards (max@k), {ragged_ids.size:,} rollouts")
    print(f"  vectorised diagnose     {vec_r:8.3f} s   {ragged_ids.size / vec_r:14,.0f} rollouts/s")
    print(
        f"  per-group Python loop   {loop_r:8.3f} s   {ragged_ids.size / loop_r:14,.0f} rollouts/s"
    )
    print(f"  speed-up                {loop_r / vec_r:8.1f} x   (max |difference| {diff_r:.1e})")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rollouts.csv"
        steps = ids * 10 // groups  # ten training steps; the prompt ids repeat across steps
        pd.DataFrame(
            {"step": steps, "prompt_id": ids % (groups // 10 + 1), "reward": rewards}
        ).to_csv(path, index=False)
        argv = ["diagnose", str(path), "--format", "json", "--quiet"]
        with contextlib.redirect_stdout(io.StringIO()):
            end = best_of(lambda: cli.main(argv), 1)
    print(f"\ncompanion diagnose on a CSV of {total:,} rows (10 steps), to JSON, in this process")
    print(f"  end to end              {end:8.3f} s   {total / end:14,.0f} rollouts/s")


if __name__ == "__main__":
    main()
