"""Peer comparison with TRL's GRPOTrainer (needs the optional bench extra, in its own venv:
`python3.11 -m venv .venv-bench && .venv-bench/bin/pip install -r requirements.txt -e '.[bench]'`).

Both trainers run GRPO on the same path-finding task from the SAME policy: the profile's
pretrained base (`--init pretrained`, the default; RL starts from a base in practice) or a fresh
initialisation (`--init fresh`), copied weight for weight into a Hugging Face GPT2LMHeadModel
(same layers, heads and width, ReLU, no dropout, tied embeddings; the copy's logits are
checked against ours and the difference printed). Same batch (prompts x generations), same maximum
completion length, same number of steps, temperature 1, CPU, one thread; TRL gets a word-level
tokenizer built in memory over the task's tokens (nothing is downloaded). The reward given to TRL
is verifier reward + 0.5 x [answer starts at the source], so that groups have variance even from a
fresh model (ours trains on the verifier reward; the work per step does not depend on the values).

What is timed, on both sides: the RL steps only, each from the start of sampling to the end of
its optimizer step, summed over the steps (not setup, pretraining, model building, evaluation).
  * TRL: a callback from on_step_begin to on_step_end (generation, rewards, advantages, forward,
    backward, clipping, optimizer step);
  * passk_companion: the step phases `rl.train_rl` writes to timings.json (sampling, verification,
    weights, forward + backward + clipping + optimizer step), for a run with no evaluation between;
    and the same for --ensemble runs (seeds) trained as one ensemble, reported in run-steps per
    second and per core-second (every run's share of the ensemble's step time, summed).
Wall-clock time; and CPU time of this process as well where timings.json records it ("cpu"),
which a shared machine disturbs much less (TRL's is taken in the same callback). After --warmup
uncounted repetitions, each of --repeats repetitions trains both, one after the other in this
process; printed: steps/s and rollout tokens/s of each, each repetition's ratio, and the median
ratio with its spread (min-max). Only ratios from one run mean anything.
Also checked, on the rewards TRL computed: `passk_companion.objectives.get("grpo")` weights x n
equal TRL's advantages (scale_rewards="group"), and `dr_grpo` weights x n for scale_rewards="none".

Run: `.venv-bench/bin/python benchmarks/peer_trl.py [--steps 10] [--repeats 5] [--warmup 1]
[--profile ci] [--init pretrained|fresh] [--base FILE]`; `--quick`: smoke profile, fresh model,
2 steps, 1 repetition, no warm-up (seconds, for `make test`). Without the extra it exits with
status 2 and says what to install.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from passk_companion import objectives
from passk_companion.model import config, pretrain, rl
from passk_companion.model.gpt import GPT

try:  # the optional bench extra
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, TrainerCallback
    from transformers import logging as hf_logging
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer
except ImportError as err:  # pragma: no cover - exercised only without the extra
    print(
        f"benchmarks/peer_trl.py needs the optional bench extra (TRL, transformers, datasets, "
        f"accelerate), which is not installed here ({err}). Install it into a separate venv: "
        "python3.11 -m venv .venv-bench && .venv-bench/bin/pip install -r requirements.txt "
        "-e '.[bench]', then run .venv-bench/bin/python benchmarks/peer_trl.py",
        file=sys.stderr,
    )
    raise SystemExit(2) from None


def token_names(task) -> list[str]:
    return [f"n{i}" for i in range(task.n_nodes)] + ["SEP", "EOS", "PAD"]


def make_tokenizer(task) -> PreTrainedTokenizerFast:
    vocab = {name: i for i, name in enumerate(token_names(task))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="PAD"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="EOS", pad_token="PAD", unk_token="PAD"
    )


def gpt2_copy(model: GPT, task) -> GPT2LMHeadModel:
    """A GPT2LMHeadModel holding our GPT's weights (GPT-2's Conv1D stores W transposed)."""
    cfg = model.cfg
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=cfg.vocab_size,
            n_positions=cfg.block_size,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            activation_function="relu",  # ReLU, as ours
            resid_pdrop=0.0,  # ours has no dropout
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=task.sep,
            eos_token_id=task.eos,
            pad_token_id=task.pad,
        )
    )
    state = {  # run 0 of our (one-run) ensemble
        "transformer.wte.weight": model.tok.weight[0],
        "transformer.wpe.weight": model.pos.weight[0],
        "transformer.ln_f.weight": model.ln_f.weight[0],
        "transformer.ln_f.bias": model.ln_f.bias[0],
        "lm_head.weight": model.tok.weight[0],
    }
    for i, blk in enumerate(model.blocks):
        h = f"transformer.h.{i}."
        for ours, theirs in ((blk.ln1, "ln_1"), (blk.ln2, "ln_2")):
            state[h + theirs + ".weight"] = ours.weight[0]
            state[h + theirs + ".bias"] = ours.bias[0]
        for ours, theirs in (
            (blk.qkv, "attn.c_attn"),
            (blk.proj, "attn.c_proj"),
            (blk.fc, "mlp.c_fc"),
            (blk.out, "mlp.c_proj"),
        ):
            state[h + theirs + ".weight"] = ours.weight[0].T
            state[h + theirs + ".bias"] = ours.bias[0]
    hf.load_state_dict({k: v.detach().clone().contiguous() for k, v in state.items()})
    return hf


@torch.no_grad()
def logit_difference(model: GPT, hf: GPT2LMHeadModel, task) -> float:
    """max |our logits - the copy's| on random valid walks of the RL pairs."""
    seq = task.random_walks(task.rl_train_pairs[:64], torch.Generator().manual_seed(0))
    model.eval()
    hf.eval()
    return float((model(seq) - hf(seq).logits).abs().max())


class TrlRunner:
    """TRL's GRPOTrainer on the task from a copy of `base`; `run` returns (wall s, CPU s of the
    timed steps, rollout tokens, (rewards, advantages) of each step)."""

    def __init__(self, base: GPT, task, prof: config.ProfileConfig, steps: int):
        self.base, self.task, self.prof, self.steps = base, task, prof, steps
        self.names = token_names(task)
        self.tokenizer = make_tokenizer(task)
        b = prof.rl.batch_prompts
        pairs = task.rl_train_pairs
        pairs = pairs.repeat(max(1, (b * steps) // len(pairs) + 1), 1)
        self.data = Dataset.from_dict(
            {
                "prompt": [f"n{s} n{t} SEP" for s, t in pairs.tolist()],
                "source": pairs[:, 0].tolist(),
                "target": pairs[:, 1].tolist(),
            }
        )
        self.tokens = 0

    def reward(self, completions, source, target, **_):
        task, names = self.task, self.names
        ids = [[names.index(w) if w in names else task.pad for w in c.split()] for c in completions]
        width = task.max_new_tokens
        rows = [(r + [task.eos])[:width] + [task.pad] * max(0, width - len(r) - 1) for r in ids]
        ans = torch.tensor([row[:width] for row in rows])
        self.tokens += sum(min(len(r) + 1, width) for r in ids)
        pairs = torch.tensor(list(zip(source, target, strict=True)))
        starts = (ans[:, 0] == pairs[:, 0]).to(torch.float64)
        return (task.verify(pairs, ans) + 0.5 * starts).tolist()

    def run(self, scale: str) -> tuple[float, float, int, list]:
        snapshots: list = []
        timed = {"wall": 0.0, "cpu": 0.0, "wall0": 0.0, "cpu0": 0.0}
        holder: dict = {}

        class Probe(TrainerCallback):
            def on_step_begin(self, targs, state, control, **kw):
                timed["wall0"], timed["cpu0"] = time.perf_counter(), time.process_time()

            def on_step_end(self, targs, state, control, **kw):
                timed["wall"] += time.perf_counter() - timed["wall0"]
                timed["cpu"] += time.process_time() - timed["cpu0"]
                logs = holder["trainer"]._logs
                snapshots.append((list(logs["rewards"]["reward"]), list(logs["advantages"])))

        b, n = self.prof.rl.batch_prompts, self.prof.rl.n
        self.tokens = 0
        with tempfile.TemporaryDirectory() as tmp:
            cfg = GRPOConfig(
                output_dir=tmp,
                per_device_train_batch_size=b * n,
                num_generations=n,
                max_completion_length=self.task.max_new_tokens,
                max_steps=self.steps,
                learning_rate=self.prof.rl.lr,
                beta=0.0,
                temperature=1.0,
                use_cpu=True,
                report_to=[],
                logging_steps=10**9,
                save_strategy="no",
                scale_rewards=scale,
                bf16=False,
                seed=0,
                disable_tqdm=True,
            )
            trainer = GRPOTrainer(
                model=gpt2_copy(self.base, self.task),
                reward_funcs=self.reward,
                args=cfg,
                train_dataset=self.data,
                processing_class=self.tokenizer,
                callbacks=[Probe()],
            )
            trainer.remove_callback(PrinterCallback)  # no metrics dict on stdout
            holder["trainer"] = trainer
            trainer.train()
        return timed["wall"], timed["cpu"], self.tokens, snapshots


def run_companion(
    base: GPT, task, prof: config.ProfileConfig, steps: int, runs: int = 1
) -> tuple[float, float, int]:
    """Our GRPO from copies of `base`, `runs` of them (seeds 0 .. runs - 1) as one ensemble:
    (wall s, CPU s or nan, rollout tokens) of the steps of all the runs together."""
    cfg = dataclasses.replace(
        prof.rl, objective="grpo", steps=steps, eval_every=steps, device="cpu"
    )
    with tempfile.TemporaryDirectory() as tmp:
        group = [rl.Run(base, prof, dataclasses.replace(cfg, seed=r), Path(tmp) / f"r{r}")
                 for r in range(runs)]  # fmt: skip
        results = rl.train_ensemble(group, progress=False)
        if results[0].error is not None:
            raise results[0].error
        shares = [json.loads((Path(tmp) / f"r{r}" / "timings.json").read_text())
                  for r in range(runs)]  # fmt: skip
    wall = sum(tm[k] for tm in shares for k in ("sample", "verify", "weights", "backward"))
    cpu = sum(tm.get("cpu", float("nan")) for tm in shares)
    return wall, cpu, int(sum(tm["rollout_tokens"] for tm in shares))


def spread(name: str, ratios: list[float]) -> str:
    return (
        f"{name}: median {statistics.median(ratios):.2f}x over {len(ratios)} runs, "
        f"spread {min(ratios):.2f}x - {max(ratios):.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="runs first, not counted")
    ap.add_argument("--profile", default="ci")
    ap.add_argument("--init", choices=("pretrained", "fresh"), default="pretrained")
    ap.add_argument("--base", help="base file to reuse (pretrained there if missing)")
    ap.add_argument(
        "--numerics",
        choices=config.NUMERICS,
        default="float32",
        help="our model's numerics (float32 by default, as TRL's; the CPU profiles' own is "
        "'portable', float64)",
    )
    ap.add_argument(
        "--ensemble", type=int, default=16, help="also time this many runs as one ensemble"
    )
    ap.add_argument("--quick", action="store_true", help="smoke profile, fresh, 2 steps, 1 run")
    args = ap.parse_args()
    if args.quick:
        args.profile, args.init, args.steps, args.repeats, args.warmup = "smoke", "fresh", 2, 1, 0
        args.ensemble = 4
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0 or args.ensemble < 1:
        ap.error("--steps, --repeats and --ensemble must be >= 1, --warmup >= 0")
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    prof = config.for_profile(args.profile)
    prof = dataclasses.replace(prof, model=dataclasses.replace(prof.model, numerics=args.numerics))
    task = config.build_task(prof.task)
    b, n = prof.rl.batch_prompts, prof.rl.n
    with tempfile.TemporaryDirectory() as tmp:
        if args.init == "pretrained":
            path = Path(args.base) if args.base else Path(tmp) / "base.pt"
            base = pretrain.load_or_pretrain(prof, path, "cpu", progress=False, owned=not args.base)
        else:
            torch.manual_seed(0)
            base = config.build_model(task, prof.model, torch.device("cpu"))
    base.eval()
    diff = logit_difference(base, gpt2_copy(base, task), task)
    print(
        f"{args.steps} GRPO steps x {args.repeats} runs, profile {args.profile}, {args.init} "
        f"model: {b} prompts x {n} generations, max {task.max_new_tokens} completion tokens, "
        f"CPU, 1 thread; timed: the steps only; TRL's GPT-2 copy of our model: max |logit "
        f"difference| {diff:.1e}"
    )
    trl = TrlRunner(base, task, prof, args.steps)
    walls, cpus, snap_group, ens_walls, ens_cpus = [], [], [], [], []
    for rep in range(-args.warmup, args.repeats):
        trl_wall, trl_cpu, trl_tokens, snaps = trl.run("group")
        snap_group = snap_group or snaps
        wall, cpu, tokens = run_companion(base, task, prof, args.steps)
        if rep < 0:
            print(f"  warm-up run (not counted): ratio {trl_wall / wall:.2f}x wall")
            continue
        walls.append(trl_wall / wall)
        cpus.append(trl_cpu / cpu)
        cpu_note = f", {cpus[-1]:.2f}x CPU" if cpu == cpu else ""
        print(
            f"  run {rep + 1}: TRL {args.steps / trl_wall:6.2f} steps/s "
            f"{trl_tokens / trl_wall:8.0f} tokens/s | companion {args.steps / wall:6.2f} steps/s "
            f"{tokens / wall:8.0f} tokens/s | ratio {walls[-1]:.2f}x wall{cpu_note}"
        )
        e_wall, e_cpu, _ = run_companion(base, task, prof, args.steps, args.ensemble)
        ens_walls.append(trl_wall / (e_wall / args.ensemble))  # run-steps per second, vs TRL's
        ens_cpus.append(trl_cpu / (e_cpu / args.ensemble))
        print(
            f"           ensemble of {args.ensemble}: {args.ensemble * args.steps / e_wall:6.2f} "
            f"run-steps/s | ratio {ens_walls[-1]:.2f}x wall, {ens_cpus[-1]:.2f}x CPU"
        )
    print("  " + spread("ratio companion / TRL, wall-clock steps/s", walls))
    if all(c == c for c in cpus):  # no NaN: timings.json records CPU time
        print("  " + spread("ratio companion / TRL, CPU time per step", cpus))
    print("  " + spread(f"ratio ensemble of {args.ensemble} / TRL, run-steps per second",
                        ens_walls))  # fmt: skip
    print("  " + spread(f"ratio ensemble of {args.ensemble} / TRL, run-steps per core-second",
                        ens_cpus))  # fmt: skip

    _, _, _, snap_none = trl.run("none")
    for scale, name, snaps in (("group", "grpo", snap_group), ("none", "dr_grpo", snap_none)):
        worst, most = 0.0, 0.0
        for rewards, adv in snaps:
            r = torch.tensor(rewards[-b * n :], dtype=torch.float64).view(b, n)
            a = torch.tensor(adv[-b * n :], dtype=torch.float64).view(b, n)
            worst = max(worst, float((objectives.get(name).weights(r, 1) * n - a).abs().max()))
            most = max(most, float(r.std(1).max()))
        print(
            f"  {name} weights x n vs TRL advantages (scale_rewards={scale!r}) on TRL's rewards, "
            f"{len(snaps)} steps: max |difference| = {worst:.2e} (largest within-group reward "
            f"std {most:.2f})"
        )


if __name__ == "__main__":
    main()
