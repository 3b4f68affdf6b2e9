"""Benchmark: rollout throughput with and without the KV cache; the time split of an RL step.

1. Tokens/s of batched i.i.d. sampling with the KV cache against recomputing the whole prefix at
   every token, same model, prompts and seed, in the same run (ratio printed).
2. The split of an RL step between sampling, verification, weights and backward (from a short
   `train_rl` run), and rollout tokens/s inside training.
3. --estimate: time a few pretraining and RL steps of a profile (default "full") on this machine
   and extrapolate the profile's whole run (an estimate, not a measurement of the full run).

Run: `.venv/bin/python benchmarks/rollout.py [--profile ci] [--estimate]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from companion import train
from companion.models.generate import answer_mask, sample_iid


def rollout_tokens_per_s(model, task, prompts, n, use_cache, repeats=3):
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        answers, _ = sample_iid(
            model,
            prompts,
            n,
            task.max_new_tokens,
            task.eos,
            task.pad,
            generator=gen,
            use_cache=use_cache,
        )
        best = min(best, time.perf_counter() - t0)
        tokens = int(answer_mask(answers, task.eos).sum())
    return tokens / best, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="ci")
    ap.add_argument("--steps", type=int, default=10, help="RL steps for the time split")
    ap.add_argument("--estimate", action="store_true", help="extrapolate the full profile")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    prof = train.get_profile(args.profile)
    task = train.build_task(prof.task)
    with tempfile.TemporaryDirectory() as tmp:
        short = dataclasses.replace(prof.pretrain, steps=min(prof.pretrain.steps, 50))
        prof_short = dataclasses.replace(prof, pretrain=short)
        model = train.load_or_pretrain(
            prof_short, Path(tmp) / "base.pt", args.device, progress=False
        )
        dev = next(model.parameters()).device
        pairs = task.rl_pairs[: prof.rl.batch_prompts]
        prompts = task.prompts(pairs).to(dev)
        cached, t_c = rollout_tokens_per_s(model, task, prompts, prof.rl.n, True)
        plain, t_p = rollout_tokens_per_s(model, task, prompts, prof.rl.n, False)
        print(
            f"profile {args.profile}: {model.n_params()} parameters, {len(pairs)} prompts x "
            f"{prof.rl.n} rollouts, up to {task.max_new_tokens} tokens, device {dev}"
        )
        print(f"  KV cache       {cached:10.0f} tokens/s  ({t_c * 1e3:.1f} ms per batch)")
        print(f"  recompute      {plain:10.0f} tokens/s  ({t_p * 1e3:.1f} ms per batch)")
        print(f"  speed-up       {cached / plain:10.2f} x")

        cfg = dataclasses.replace(
            prof.rl,
            steps=args.steps,
            eval_every=args.steps,
            n_eval=8,
            eval_prompts=4,
            device=args.device,
        )
        t0 = time.perf_counter()
        train.train_rl(model, task, cfg, Path(tmp) / "rl", progress=False)
        wall = time.perf_counter() - t0
        tm = json.loads((Path(tmp) / "rl" / "timings.json").read_text())
        parts = {k: tm[k] for k in ("sample", "verify", "weights", "backward")}
        total = sum(parts.values())
        print(
            f"\nRL step split over {args.steps} steps ({total / args.steps * 1e3:.1f} ms per step):"
        )
        for name, t in parts.items():
            print(f"  {name:<9} {t / total:6.1%}")
        print(f"  rollout tokens/s in training: {tm['rollout_tokens'] / tm['sample']:.0f}")

        if args.estimate:
            full = train.get_profile("full")
            ftask = train.build_task(full.task)
            few = dataclasses.replace(full.pretrain, steps=5)
            t0 = time.perf_counter()
            fmodel = train.pretrain(ftask, full.model, few, args.device, progress=False)
            per_pre = (time.perf_counter() - t0) / 5
            fcfg = dataclasses.replace(full.rl, steps=2, eval_every=2, device=args.device)
            train.train_rl(fmodel, ftask, fcfg, Path(tmp) / "full", progress=False)
            ftm = json.loads((Path(tmp) / "full" / "timings.json").read_text())
            per_rl = sum(ftm[k] for k in ("sample", "verify", "weights", "backward")) / 2
            t0 = time.perf_counter()
            train.evaluate(fmodel, ftask, fcfg, 0)
            per_eval = time.perf_counter() - t0
            n_evals = full.rl.steps // full.rl.eval_every + 1
            est = per_pre * full.pretrain.steps + per_rl * full.rl.steps + per_eval * n_evals
            print(
                f"\nfull profile on this machine ({fmodel.n_params()} parameters): "
                f"{per_pre:.2f} s per pretraining step, {per_rl:.2f} s per RL step, "
                f"{per_eval:.1f} s per evaluation ({n_evals} evaluations)"
            )
            print(
                f"  estimated one run: {est / 3600:.1f} h (ESTIMATE, extrapolated, CPU, 1 thread)"
            )
    print(f"\n(wall time of the RL part: {wall:.1f} s)")


if __name__ == "__main__":
    main()
