"""Benchmark: run-steps per core-second of sweeps that pack R trials into one ensemble, against
the sweep with one run per job (--ensemble 1), on the same trials in the same run.

For each shape (`ci`: the ci profile, 16 prompts x 16 rollouts; `saturation`: 16 x 32 rollouts,
the shape of the saturation experiment), the same T trials (RLOO and pkpo_loo arms over seeds,
one shared base pretrained before anything is timed) run as a sweep with one worker and
--ensemble R for R in 1, 4, 16, 64 (at most T). Timed: the sweep's wall time and the CPU time of
its worker processes (RL steps and evaluations, every 5 steps as the ci profile does), so
run-steps per core-second = T x steps / core-seconds, printed with the ratio to R = 1. Every
sweep's results.csv must equal the R = 1 one (the ensemble changes no bit). Then a
torch.profiler view of the trials' training at R = 1 and at the largest R: the shares of matrix
math, other tensor ops and per-op framework overhead, and the tensor ops per run-step.

Run: `.venv/bin/python benchmarks/ensemble.py [--trials 64] [--steps 10] [--shapes ci saturation]`;
`--quick`: smoke profile (8 rollouts), 8 trials of 2 steps, R in 1 and 4, both shapes at 8
rollouts (seconds, for `make test`).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from passk_companion.model import config, grid, pretrain, rl, sweep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout import kernel_split  # noqa: E402 - the profiler split of benchmarks/rollout.py

SHAPES = {"ci": {}, "saturation": {"n": 32}}


def _grid(profile: str, trials: int, steps: int, shape: dict) -> grid.Grid:
    """T trials: RLOO and pkpo_loo (k = 8) alternating, seeds 0 .. T/2 - 1, on one base."""
    arms = [{"name": "rloo", "objective": "pass1_reinforce"},
            {"name": "pkpo_loo_k8", "objective": "pkpo_loo", "k": 8}]  # fmt: skip
    eval_every = min(5, steps)
    return grid.parse_grid({
        "profile": profile,
        "overrides": {"steps": steps, "eval_every": eval_every, **shape},
        "variants": arms,
        "grid": {"seed": list(range(max(1, trials // 2)))},
    })  # fmt: skip


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sweep(g: grid.Grid, out: Path, ensemble: int) -> tuple[float, float, pd.DataFrame]:
    """(wall s, worker CPU s, results) of one sweep with one worker process."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    result = sweep.run(g, out, workers=1, progress=False, ensemble=ensemble)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if not result.ok:
        raise SystemExit(f"the sweep failed: {result.summary()}")
    table = pd.read_csv(result.results).drop(columns=list(sweep.TIMING_COLUMNS))
    return wall, cpu, table


def _profile_split(g: grid.Grid, base_path: Path, tmp: Path, r: int, label: str) -> None:
    """The profiler split of training r of the grid's trials as one ensemble, in this process."""
    trials = g.trials()[:r]
    prof = config.for_profile(g.profile)

    def train() -> None:
        runs = [rl.Run(pretrain.load_or_pretrain(prof, base_path, "cpu", progress=False), prof,
                       t.config, tmp / f"{label}{r}" / t.name) for t in trials]  # fmt: skip
        rl.train_ensemble(runs, fresh=True, progress=False)

    train()  # warm-up
    cpu, matrix, other, ops = kernel_split(train)
    run_steps = sum(t.config.steps for t in trials)
    print(f"  R = {r:<3} {cpu / run_steps:7.1f} ms per run-step: matrix math {matrix:6.1%}, "
          f"other tensor ops {other:6.1%}, framework overhead {1 - matrix - other:6.1%} "
          f"({ops / run_steps:.0f} tensor ops per run-step)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="RL steps per trial")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64], help="values of R")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--quick", action="store_true", help="smoke, 8 trials of 2 steps, R in 1, 4")
    args = ap.parse_args()
    profile = "ci"
    if args.quick:
        profile, args.trials, args.steps, args.sizes = "smoke", 8, 2, [1, 4]
    if args.trials < 2 or args.steps < 1 or min(args.sizes) < 1:
        ap.error("--trials must be >= 2, --steps and every size >= 1")
    sizes = sorted({min(r, args.trials) for r in [1, *args.sizes]})
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for shape in args.shapes:
            overrides = {"n": 8} if args.quick else SHAPES[shape]
            g = _grid(profile, args.trials, args.steps, overrides)
            prof = config.for_profile(profile)
            base_path = sweep.base_file(tmp / "bases-src", profile, 0, 0)
            base_path.parent.mkdir(parents=True, exist_ok=True)  # one base serves every shape
            t0 = time.perf_counter()
            pretrain.load_or_pretrain(prof, base_path, "cpu", progress=False)
            print(f"shape {shape} ({profile} profile, {g.trials()[0].config.batch_prompts} "
                  f"prompts x {g.trials()[0].config.n} rollouts), {len(g.trials())} trials of "
                  f"{args.steps} steps; base pretrained in {time.perf_counter() - t0:.0f} s "
                  "(not timed below)")  # fmt: skip
            run_steps = len(g.trials()) * args.steps
            reference, rate1 = None, None
            for r in sizes:
                out = tmp / f"{shape}-R{r}"
                (out / "bases").mkdir(parents=True)
                (out / "bases" / base_path.name).write_bytes(base_path.read_bytes())
                wall, cpu, table = _sweep(g, out, r)
                same = True if reference is None else table.equals(reference)
                reference = table if reference is None else reference
                rate = run_steps / cpu
                rate1 = rate1 or rate
                print(f"  --ensemble {r:<3} {wall:7.1f} s wall, {cpu:7.1f} core-s: "
                      f"{rate:6.2f} run-steps per core-second, {rate / rate1:5.2f} x R = 1 "
                      f"(results.csv equal to R = 1: {same})")  # fmt: skip
                if not same:
                    raise SystemExit("an ensemble changed results.csv")
            print("torch.profiler, the trials' training in this process (time per run-step):")
            for r in (sizes[0], sizes[-1]):
                _profile_split(g, base_path, tmp, r, shape)


if __name__ == "__main__":
    main()
