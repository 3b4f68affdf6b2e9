"""Benchmark: rollout throughput, and where the time of one RL step goes.

1. Tokens/s of batched i.i.d. sampling with the KV cache (each prompt encoded once, rollouts that
   share a prefix share its rows, finished rows dropped) against recomputing every row's whole
   prefix at every token; same model, prompts and seed in the same run (the answers are checked
   equal), ratio printed.
2. One RL step's split between sampling, verification, weights and scoring + backward +
   optimizer (from `rl.train_rl`'s timings.json), and rollout tokens/s inside training.
3. A torch.profiler view of the two heavy phases, sampling and scoring + backward
   (`sample_iid`, then `sequence_logprob` and backward on its rollouts): the share of their CPU
   time spent in matrix-math kernels (mm, addmm, bmm, baddbmm, attention), in the other kernels
   (elementwise, reductions, copies), and in per-op framework overhead (the rest: Python, the
   dispatcher, autograd bookkeeping), with the number of tensor operations each runs.
4. Numerics: the RL step time of the CPU profiles' portable float64 kernels
   (passk_companion.model.portable: the same bits on every CPU) against torch's float32 kernels, on
   the same model (cast), prompts and seed in the same run; ratio printed.
5. --estimate: time a few pretraining and RL steps of the `gpu` profile on this machine and
   extrapolate one whole run (an estimate, not a measurement), and the RL steps of --ensemble
   runs trained as one ensemble.

The model is the profile's base after a short pretraining (at most --pretrain-steps steps), since
RL starts from a base: its rollouts end at different lengths and often repeat, as in training.
Run: `.venv/bin/python benchmarks/rollout.py [--profile ci] [--steps 10] [--estimate]`;
`--quick`: smoke profile, untrained model, 2 steps (seconds, for `make test`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from passk_companion.model import config, gpt, pretrain, rl
from passk_companion.model.generate import answer_mask, sample_iid, sequence_logprob

MATRIX_KERNELS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
}


def rollout_tokens_per_s(model, task, prompts, n, use_cache, repeats):
    """(tokens/s, best seconds, answers) over `repeats` identical runs."""
    best, answers = float("inf"), None
    for _ in range(repeats):
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        answers, _ = sample_iid(
            model, prompts, n, task.max_new_tokens, task.eos, task.pad, 1.0, gen, use_cache
        )
        best = min(best, time.perf_counter() - t0)
    return int(answer_mask(answers, task.eos).sum()) / best, best, answers


def kernel_split(fn) -> tuple[float, float, float, int]:
    """(ms of one call of fn, share in matrix-math kernels, share in the other tensor ops,
    tensor ops called). Shares are the profiler's self times of aten ops over the wall time of an
    unprofiled call (one thread); the rest is framework overhead outside the ops (Python,
    autograd, dispatch). The profiler's self times are wall times, so both sides are: on a busy
    machine, time the others' processes take inflates both alike. Tiny tensors make the "other
    tensor ops" share itself mostly per-op cost."""
    c0 = time.perf_counter()
    fn()
    cpu = time.perf_counter() - c0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    aten = [e for e in prof.events() if e.name.startswith("aten::")]
    matrix = sum(e.self_cpu_time_total for e in aten if e.name in MATRIX_KERNELS) / 1e6
    other = sum(e.self_cpu_time_total for e in aten if e.name not in MATRIX_KERNELS) / 1e6
    calls = sum(1 for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten"))
    return cpu * 1e3, min(matrix / cpu, 1.0), min(other / cpu, 1.0 - min(matrix / cpu, 1.0)), calls


def with_numerics(model, numerics: str):
    """A copy of `model` that computes with `numerics` ("portable": float64 weights and the
    portable kernels; "float32": torch's kernels in float32)."""
    from passk_companion.model.gpt import GPT

    twin = GPT(dataclasses.replace(model.cfg, portable=numerics == "portable"))
    twin.to(torch.float64 if numerics == "portable" else torch.float32)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="ci")
    ap.add_argument("--steps", type=int, default=10, help="RL steps for the time split")
    ap.add_argument("--pretrain-steps", type=int, default=150, help="0: an untrained model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--estimate", action="store_true", help="extrapolate the gpu profile")
    ap.add_argument("--ensemble", type=int, default=4, help="--estimate: runs of one ensemble")
    ap.add_argument("--device", default=None)
    ap.add_argument("--quick", action="store_true", help="smoke, untrained, 2 steps: seconds")
    args = ap.parse_args()
    if args.quick:
        args.profile, args.steps, args.pretrain_steps, args.repeats = "smoke", 2, 0, 1
        args.estimate = False
    if args.steps < 1 or args.repeats < 1 or args.pretrain_steps < 0:
        ap.error("--steps and --repeats must be >= 1, --pretrain-steps >= 0")
    torch.set_num_threads(1)
    prof = config.for_profile(args.profile)
    task = config.build_task(prof.task)
    with tempfile.TemporaryDirectory() as tmp:
        if args.pretrain_steps:
            short = dataclasses.replace(
                prof.pretrain, steps=min(prof.pretrain.steps, args.pretrain_steps)
            )
            base = dataclasses.replace(prof, pretrain=short)
            model = pretrain.load_or_pretrain(base, Path(tmp) / "base.pt", args.device, False)
        else:
            torch.manual_seed(0)
            model = config.build_model(task, prof.model, gpt.pick_device(args.device))
        model.eval()
        dev = next(model.parameters()).device
        pairs = task.rl_train_pairs[: prof.rl.batch_prompts]
        prompts = task.prompts(pairs).to(dev)
        n = prof.rl.n
        cached, t_c, a_c = rollout_tokens_per_s(model, task, prompts, n, True, args.repeats)
        plain, t_p, a_p = rollout_tokens_per_s(model, task, prompts, n, False, args.repeats)
        print(
            f"profile {args.profile}: {model.n_params()} parameters "
            f"({'untrained' if not args.pretrain_steps else 'short pretraining'}), {len(pairs)} "
            f"prompts x {n} rollouts, up to {task.max_new_tokens} tokens, device {dev}"
        )
        print(f"  KV cache       {cached:10.0f} tokens/s  ({t_c * 1e3:.1f} ms per batch)")
        print(f"  recompute      {plain:10.0f} tokens/s  ({t_p * 1e3:.1f} ms per batch)")
        print(
            f"  speed-up       {cached / plain:10.2f} x   (same answers: {torch.equal(a_c, a_p)})"
        )

        cfg = dataclasses.replace(prof.rl, steps=args.steps, eval_every=args.steps)
        cfg = dataclasses.replace(cfg, device=args.device)
        t0 = time.perf_counter()
        rl.train_rl(model, prof, cfg, Path(tmp) / "rl", progress=False)
        wall = time.perf_counter() - t0
        tm = json.loads((Path(tmp) / "rl" / "timings.json").read_text())
        parts = {k: tm[k] for k in ("sample", "verify", "weights", "backward")}
        total = sum(parts.values())
        print(
            f"\nRL step split over {args.steps} steps ({total / args.steps * 1e3:.1f} ms per step, "
            f"'backward' = scoring + backward + optimizer):"
        )
        for name, t in parts.items():
            print(f"  {name:<9} {t / total:6.1%}")
        print(f"  rollout tokens/s in training: {tm['rollout_tokens'] / tm['sample']:.0f}")

        rows = prompts.repeat_interleave(n, 0)
        answers = a_c.view(len(rows), -1)

        def score():
            model.zero_grad(set_to_none=True)
            logp, ent = sequence_logprob(model, rows, answers, task.eos)
            (logp.sum() + ent.sum()).backward()

        def draw():
            gen = torch.Generator(device=dev).manual_seed(1)
            sample_iid(model, prompts, n, task.max_new_tokens, task.eos, task.pad, 1.0, gen)

        print("\ntorch.profiler, one call each (CPU time; shares from the ops' self times):")
        for name, fn in (("sampling", draw), ("scoring + backward", score)):
            fn()  # warm-up
            cpu, matrix, other, ops = kernel_split(fn)
            print(
                f"  {name:<19} {cpu:7.1f} ms: matrix math {matrix:6.1%}, other tensor ops "
                f"{other:6.1%}, framework overhead {1 - matrix - other:6.1%} ({ops} tensor ops)"
            )

        print("\nnumerics, the same RL steps from the same weights (best of --repeats):")
        per_step = {}
        for numerics in ("float32", "portable"):
            twin = with_numerics(model, numerics)
            best = float("inf")
            for r in range(args.repeats):
                t0 = time.perf_counter()
                rl.train_rl(twin, prof, cfg, Path(tmp) / f"{numerics}{r}", progress=False)
                best = min(best, time.perf_counter() - t0)
            per_step[numerics] = best / args.steps
            print(f"  {numerics:<9} {per_step[numerics] * 1e3:8.1f} ms per step (with evaluations)")
        print(
            f"  portable / float32: {per_step['portable'] / per_step['float32']:.2f} x the time "
            "(the price of CPU-independent numbers)"
        )

        if args.estimate:
            full = config.for_profile("gpu")
            ftask = config.build_task(full.task)
            few = dataclasses.replace(full.pretrain, steps=5)
            t0 = time.perf_counter()
            fmodel, _ = pretrain.pretrain(
                ftask, full.model, few, device=args.device, progress=False
            )
            per_pre = (time.perf_counter() - t0) / 5
            fcfg = dataclasses.replace(full.rl, steps=2, eval_every=2, device=args.device)
            t0 = time.perf_counter()
            rl.train_rl(fmodel, full, fcfg, Path(tmp) / "full", progress=False)
            fwall = time.perf_counter() - t0
            ftm = json.loads((Path(tmp) / "full" / "timings.json").read_text())
            per_rl = sum(ftm[k] for k in ("sample", "verify", "weights", "backward")) / 2
            per_eval = (fwall - 2 * per_rl) / 2  # the run evaluates at steps 0 and 2
            n_evals = full.rl.steps // full.rl.eval_every + 1
            est = per_pre * full.pretrain.steps + per_rl * full.rl.steps + per_eval * n_evals
            print(
                f"\ngpu profile on this machine ({fmodel.n_params()} parameters): "
                f"{per_pre:.2f} s per pretraining step, {per_rl:.2f} s per RL step, "
                f"{per_eval:.1f} s per evaluation and setup ({n_evals} evaluations)"
            )
            print(
                f"  estimated one run: {est / 3600:.1f} h (ESTIMATE, extrapolated, at most "
                f"{full.pretrain.steps} pretraining steps, 1 thread)"
            )
            runs = [
                rl.Run(fmodel, full, dataclasses.replace(fcfg, seed=r), Path(tmp) / f"ens{r}")
                for r in range(args.ensemble)
            ]
            rl.train_ensemble(runs, progress=False)
            phases = ("sample", "verify", "weights", "backward")
            shares = [json.loads((r.out / "timings.json").read_text()) for r in runs]
            ens_rl = sum(t[k] for t in shares for k in phases) / 2 / args.ensemble
            ens_est = per_pre * full.pretrain.steps + args.ensemble * (
                ens_rl * full.rl.steps + per_eval * n_evals
            )
            print(
                f"  in an ensemble of {args.ensemble}: {ens_rl:.2f} s per RL step and run "
                f"({per_rl / ens_rl:.2f}x one run's), so {args.ensemble} runs of one base would "
                f"take about {ens_est / 3600:.1f} h (ESTIMATE, from 2 steps; evaluations counted "
                "one run at a time)"
            )
    print(f"\n(wall time of the RL part: {wall:.1f} s)")


if __name__ == "__main__":
    main()
