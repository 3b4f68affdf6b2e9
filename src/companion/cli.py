"""Command line: `python -m companion train ...` (and `companion train ...` once installed).

    python -m companion train --objective pkpo --k 8 --sampler iid --entropy 0.01 \\
        --profile ci --out runs/x

Pretrains the profile's base model once (cached at <out>/base.pt, or --base PATH to share one),
then runs RL; metrics.csv, checkpoint.pt and timings.json go to --out. Re-running the same command
resumes from the checkpoint; --fresh starts over.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from . import objectives, train


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="companion", description="pass@k companion")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="pretrain (cached) then RL with one objective variant")
    t.add_argument("--objective", default="pkpo", help=f"one of: {', '.join(objectives.names())}")
    t.add_argument("--k", type=int, default=None, help="k of pass@k objectives")
    t.add_argument("--n", type=int, default=None, help="rollouts per prompt")
    t.add_argument("--sampler", default="iid", choices=train.SAMPLERS)
    t.add_argument("--entropy", type=float, default=0.0, help="token-entropy bonus coefficient")
    t.add_argument("--steps", type=int, default=None, help="RL steps (default: the profile's)")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--profile", default="ci", help=f"one of: {', '.join(sorted(train.PROFILES))}")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument(
        "--base", default=None, help="pretrained base checkpoint (default <out>/base.pt)"
    )
    t.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    t.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    r = sub.add_parser("report", help="build REPORT.md from claims.csv and print it")
    r.add_argument("--claims", default=None, help="claims.csv (default: results/claims.csv)")
    h = sub.add_parser("html", help="render results/ into a static site (results/site)")
    h.add_argument("--results", default=None, help="results folder (default: results/)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "html":
        from .repro import results_dir
        from .site import build_site

        try:
            index = build_site(Path(args.results) if args.results else results_dir())
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"site: {index}")
        return 0
    if args.command == "report":
        from .report import build

        try:
            path = build(Path(args.claims) if args.claims else None)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(path.read_text())
        return 0
    try:
        profile = train.get_profile(args.profile)
        overrides = {
            k: v
            for k, v in {"k": args.k, "n": args.n, "steps": args.steps, "lr": args.lr}.items()
            if v is not None
        }
        cfg = dataclasses.replace(
            profile.rl,
            objective=args.objective,
            sampler=args.sampler,
            entropy=args.entropy,
            seed=args.seed,
            device=args.device,
            **overrides,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    base = train.load_or_pretrain(
        profile, args.base or out / "base.pt", args.device, progress=not args.quiet
    )
    t1 = time.perf_counter()
    task = train.build_task(profile.task)
    df = train.train_rl(base, task, cfg, out, fresh=args.fresh, progress=not args.quiet)
    t2 = time.perf_counter()
    summary = {
        "pretrain_s": round(t1 - t0, 2),
        "rl_s": round(t2 - t1, 2),
        "device": str(next(base.parameters()).device),
        "params": base.n_params(),
        "final": {k: round(float(v), 4) for k, v in df.iloc[-1].items()},
    }
    timings = out / "timings.json"
    if timings.is_file():
        tm = json.loads(timings.read_text())
        summary["rollout_tokens_per_s"] = round(tm["rollout_tokens"] / max(tm["sample"], 1e-9), 1)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
