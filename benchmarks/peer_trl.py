"""Peer comparison with TRL's GRPOTrainer (optional: `pip install .[bench]`).

Both trainers run GRPO on the same path-finding task with a model of the same size, freshly
initialised (no pretraining, no download): the same batch (prompts x generations), the same
maximum completion length, CPU, one thread. An untrained model almost never finds a valid path,
so the reward here is shaped to have variance: verifier reward + 0.5 x [answer starts at the
source]. Printed, from the same run:
  * steps/s and rollout tokens/s of each, and their ratio;
  * that `companion.objectives.get("grpo")` weights x n equal TRL's advantages on the very
    rewards TRL computed (scale_rewards="group"), and `dr_grpo` x n for scale_rewards="none".

TRL runs a Hugging Face GPT-2 (GPT2LMHeadModel built from a GPT2Config; same layers, heads and
width as our GPT) with a word-level tokenizer built in memory over the task's tokens.
Run: `.venv/bin/python benchmarks/peer_trl.py [--steps 10]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from companion import objectives, train

try:  # optional dependencies
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise SystemExit(f"peer_trl needs the bench extra (pip install .[bench]): {err}") from None


def token_names(task) -> list[str]:
    return [f"n{i}" for i in range(task.n_nodes)] + ["SEP", "EOS", "PAD"]


def make_tokenizer(task) -> PreTrainedTokenizerFast:
    vocab = {name: i for i, name in enumerate(token_names(task))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="PAD"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="EOS", pad_token="PAD", unk_token="PAD"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--profile", default="ci")
    args = ap.parse_args()
    torch.set_num_threads(1)
    prof = train.get_profile(args.profile)
    task = train.build_task(prof.task)
    names = token_names(task)
    b, n = prof.rl.batch_prompts, prof.rl.n

    # --- TRL -------------------------------------------------------------------------------
    tokenizer = make_tokenizer(task)
    gcfg = GPT2Config(
        vocab_size=task.vocab_size,
        n_positions=3 + task.max_new_tokens,
        n_embd=prof.model.n_embd,
        n_layer=prof.model.n_layer,
        n_head=prof.model.n_head,
        bos_token_id=task.sep,
        eos_token_id=task.eos,
        pad_token_id=task.pad,
    )
    pairs = task.rl_pairs.repeat(max(1, (b * args.steps) // len(task.rl_pairs) + 1), 1)
    prompts = [f"n{s} n{t} SEP" for s, t in pairs.tolist()]
    data = Dataset.from_dict(
        {"prompt": prompts, "source": pairs[:, 0].tolist(), "target": pairs[:, 1].tolist()}
    )
    tokens_seen = {"trl": 0}

    def reward(completions, source, target, **_):
        ids = [[names.index(w) if w in names else task.pad for w in c.split()] for c in completions]
        width = task.max_new_tokens
        rows = [(r + [task.eos])[:width] + [task.pad] * max(0, width - len(r) - 1) for r in ids]
        ans = torch.tensor([row[:width] for row in rows])
        tokens_seen["trl"] += sum(min(len(r) + 1, width) for r in ids)
        pairs_t = torch.tensor(list(zip(source, target, strict=True)))
        starts = (ans[:, 0] == pairs_t[:, 0]).to(torch.float64)
        return (task.verify(pairs_t, ans) + 0.5 * starts).tolist()

    def run_trl(scale: str) -> tuple[float, int, list]:
        snapshots: list = []
        holder: dict = {}

        class Snapshot(TrainerCallback):
            def on_step_end(self, targs, state, control, **kw):
                logs = holder["trainer"]._logs
                snapshots.append((list(logs["rewards"]["reward"]), list(logs["advantages"])))

        tokens_seen["trl"] = 0
        with tempfile.TemporaryDirectory() as tmp:
            cfg = GRPOConfig(
                output_dir=tmp,
                per_device_train_batch_size=b * n,
                num_generations=n,
                max_completion_length=task.max_new_tokens,
                max_steps=args.steps,
                learning_rate=prof.rl.lr,
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
            torch.manual_seed(0)
            trainer = GRPOTrainer(
                model=GPT2LMHeadModel(gcfg),
                reward_funcs=reward,
                args=cfg,
                train_dataset=data,
                processing_class=tokenizer,
                callbacks=[Snapshot()],
            )
            holder["trainer"] = trainer
            t0 = time.perf_counter()
            trainer.train()
            return time.perf_counter() - t0, tokens_seen["trl"], snapshots

    trl_s, trl_tokens, snap_group = run_trl("group")
    _, _, snap_none = run_trl("none")

    # --- ours (same sizes, fresh model, no pretraining) --------------------------------------
    base = train.build_model(task, prof.model, torch.device("cpu"))
    ours_cfg = dataclasses.replace(
        prof.rl, objective="grpo", steps=args.steps, eval_every=args.steps, n_eval=2, eval_prompts=2
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train.train_rl(base, task, ours_cfg, Path(tmp), progress=False)
        ours_s = time.perf_counter() - t0
        import json

        tm = json.loads((Path(tmp) / "timings.json").read_text())

    print(
        f"{args.steps} GRPO steps, {b} prompts x {n} generations, max {task.max_new_tokens} "
        f"completion tokens, CPU, 1 thread"
    )
    print(
        f"  TRL GRPOTrainer  {args.steps / trl_s:6.2f} steps/s  "
        f"{trl_tokens / trl_s:9.0f} rollout tokens/s"
    )
    print(
        f"  companion        {args.steps / ours_s:6.2f} steps/s  "
        f"{tm['rollout_tokens'] / ours_s:9.0f} rollout tokens/s"
    )
    print(f"  ratio (companion / TRL): {trl_s / ours_s:.2f}x steps/s")

    for scale, name, snaps in (("group", "grpo", snap_group), ("none", "dr_grpo", snap_none)):
        worst, spread = 0.0, 0.0
        for rewards, adv in snaps:
            r = torch.tensor(rewards[-b * n :], dtype=torch.float64).view(b, n)
            a = torch.tensor(adv[-b * n :], dtype=torch.float64).view(b, n)
            worst = max(worst, float((objectives.get(name).weights(r, 1) * n - a).abs().max()))
            spread = max(spread, float(r.std(1).max()))
        print(
            f"  {name} weights x n vs TRL advantages (scale_rewards={scale!r}) on TRL's rewards, "
            f"{len(snaps)} steps: max |difference| = {worst:.2e} (largest within-group reward "
            f"std {spread:.2f})"
        )


if __name__ == "__main__":
    main()
