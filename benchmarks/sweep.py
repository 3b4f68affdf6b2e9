"""Benchmark: trials per second of `passk-companion sweep` with 1 and with 2 local workers.

The same grid of smoke-profile trials runs twice into fresh folders, once per worker count, after
the shared base has been pretrained once (its file is copied in, so only the trials are timed).
Printed: trials/s of each and their ratio, measured in the same run (on this 2-core machine the
ideal is 2x; process start-up and the shared machine take some of it). Nothing is asserted.

Run: `.venv/bin/python benchmarks/sweep.py [--trials 8] [--steps 6]`; `--quick` for 2 trials of 2
steps (seconds, for `make test`).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from passk_companion.model import config, pretrain, sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=8, help="trials in the grid (seeds)")
    ap.add_argument("--steps", type=int, default=6, help="RL steps per trial")
    ap.add_argument("--quick", action="store_true", help="2 trials of 2 steps: seconds")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.steps = 2, 2
    if args.trials < 1 or args.steps < 1:
        ap.error("--trials and --steps must be >= 1")
    grid = sweep.parse_grid(
        {
            "profile": "smoke",
            "overrides": {"steps": args.steps, "eval_every": args.steps},
            "grid": {"seed": list(range(args.trials))},
        }
    )
    profile = config.for_profile("smoke")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        name = f"{pretrain.base_digest(profile)}.pt"
        base = Path(tmp) / "base" / name
        pretrain.load_or_pretrain(profile, base, "cpu", progress=False)
        rates = {}
        for workers in (1, 2):
            out = Path(tmp) / f"w{workers}"
            (out / "bases").mkdir(parents=True)
            shutil.copy(base, out / "bases" / name)
            t0 = time.perf_counter()
            result = sweep.run(grid, out, workers=workers, progress=False)
            wall = time.perf_counter() - t0
            if not result.ok:
                raise SystemExit(f"trials failed: {result.failed}")
            rates[workers] = args.trials / wall
            print(f"  {workers} worker(s): {args.trials} trials in {wall:6.1f} s = "
                  f"{rates[workers]:.3f} trials/s")  # fmt: skip
    print(f"ratio (2 workers / 1 worker): {rates[2] / rates[1]:.2f}x trials/s "
          f"({args.trials} trials of {args.steps} smoke steps)")  # fmt: skip


if __name__ == "__main__":
    main()
