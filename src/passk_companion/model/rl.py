"""RLVR on the tiny GPT: RL from a pretrained base with any registered objective, an optional
token-entropy bonus, an i.i.d. or without-replacement sampler, and AdamW or plain SGD.

One RL step (CleanRL-style, every knob in `RLConfig`):
  1. draw `batch_prompts` RL *train* pairs;
  2. sample n rollouts per prompt (`sampler`: "iid", or "swor" = stochastic beam search);
  3. verify them: rewards r (B, n) in {0, 1};
  4. weights w = objective.weights(r, k, logprobs) (B, n);
  5. loss = -(w * log pi(rollout)).sum(1).mean() - entropy * mean token entropy;
     optimizer step (AdamW, or SGD without momentum), gradient clipped at `grad_clip` (0: never).
A step whose loss or gradient is not finite stops the run with an error naming the step. With
`stop_gain`, the run ends at the first evaluation whose test J_1 is that much above the base's
(it has passed the last matched level it is compared at); `steps` is then the most it may take.

Every `eval_every` steps the train and test prompts are evaluated exactly
(:mod:`passk_companion.model.evaluation`: J_1, pass@k for any k, expected distinct correct paths,
effective correct modes) and the KL to the base is estimated on the test prompts. Aggregates go to
metrics.csv, per-prompt values to prompts.csv, and a checkpoint (model, optimizer, RNG states,
tables) is written atomically, so an interrupted run resumes to exactly the metrics of an
uninterrupted one. Checkpoints hold plain data only and are loaded weights-only
(:mod:`passk_companion.model.checkpoint`); a run holds an exclusive lock on its folder.

:func:`run_trial` is the one trial function: `python -m passk_companion train` and every backend of
`passk_companion.model.sweep` call it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from passk_companion import objectives
from passk_companion.files import (
    atomic_write_text,
    exclusive,
    remove_stale_temporaries,
    writable_dir,
)
from passk_companion.model import checkpoint
from passk_companion.model.config import (
    ProfileConfig,
    RLConfig,
    build_model,
    build_task,
    check_fits,
)
from passk_companion.model.evaluation import PathSet, RegimeRule, exact_metrics, kl_to_reference
from passk_companion.model.generate import answer_mask, sample_iid, sample_swor, sequence_logprob
from passk_companion.model.gpt import GPT, pick_device
from passk_companion.model.pretrain import load_or_pretrain
from passk_companion.model.tasks import DagTask
from passk_companion.repro import progress as progress_bar
from passk_companion.theory.passk import alpha_k, pass_at_k

__all__ = ["REPORT_KS", "SPLITS", "train_rl", "run_key", "load_trained", "run_trial"]

REPORT_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # exact pass@k columns in metrics.csv
SPLITS = ("train", "test")


def _make_optimizer(model: GPT, cfg: RLConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return model.ops.sgd(model.parameters(), lr=cfg.lr)
    return model.ops.adamw(model.parameters(), lr=cfg.lr, weight_decay=0.0)


def _rl_step(
    model: GPT,
    opt: torch.optim.Optimizer,
    task: DagTask,
    cfg: RLConfig,
    obj: objectives.Objective,
    gen: torch.Generator,
    timings: dict[str, float],
    step: int,
) -> dict:
    dev = next(model.parameters()).device
    t0, cpu0 = time.perf_counter(), time.process_time()
    train_pairs = task.rl_train_pairs
    idx = torch.randint(len(train_pairs), (cfg.batch_prompts,), generator=gen, device=dev).cpu()
    pairs = train_pairs[idx]
    prompts = task.prompts(pairs).to(dev)
    model.eval()
    sampler = sample_swor if cfg.sampler == "swor" else sample_iid
    answers, logp_old = sampler(
        model, prompts, cfg.n, task.max_new_tokens, task.eos, task.pad, cfg.temperature, gen
    )
    t1 = time.perf_counter()
    b, n, length = answers.shape
    rewards = task.verify(pairs.repeat_interleave(n, 0), answers.view(b * n, length).cpu())
    rewards = rewards.view(b, n)
    t2 = time.perf_counter()
    w = obj.weights(rewards, cfg.k, logprobs=logp_old.cpu()).to(dev)
    t3 = time.perf_counter()
    model.train()
    logp, ent = sequence_logprob(
        model, prompts.repeat_interleave(n, 0), answers.view(b * n, -1), task.eos, cfg.temperature
    )
    loss = -(w.to(logp.dtype) * logp.view(b, n)).sum(1).mean() - cfg.entropy * ent.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    grad_norm = float(model.ops.clip_grad_norm_(list(model.parameters()), clip))
    loss_value = float(loss.detach())
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
        raise ValueError(
            f"RL step {step + 1}: the loss ({loss_value}) or the gradient norm ({grad_norm}) is "
            f"not finite; lower lr (now {cfg.lr:g}) or check the objective's parameters"
        )
    opt.step()
    t4 = time.perf_counter()
    for key, dt in (
        ("sample", t1 - t0),
        ("verify", t2 - t1),
        ("weights", t3 - t2),
        ("backward", t4 - t3),
    ):
        timings[key] = timings.get(key, 0.0) + dt
    timings["cpu"] = timings.get("cpu", 0.0) + time.process_time() - cpu0  # process CPU s
    timings["rollout_tokens"] = timings.get("rollout_tokens", 0.0) + float(
        answer_mask(answers, task.eos).sum()
    )
    p_hat = rewards.mean(1)
    return {
        "reward": float(p_hat.mean()),
        "alpha_batch": float(alpha_k(p_hat.numpy(), cfg.k).mean()),
        "zero_grad_frac": float((w == 0).all(1).float().mean()),
        "grad_norm": grad_norm,
        "token_entropy": float(ent.detach().mean()),
    }


_MAY_BE_NAN = ("test_hard_j1",)  # NaN when no test prompt is hard for the base


@contextlib.contextmanager
def _diverged(step: int) -> Iterator[None]:
    """Turn the arithmetic errors of a diverged model (weights so large that products overflow,
    sampling from probabilities that are not finite) into a ValueError naming the RL step."""
    try:
        yield
    except (OverflowError, FloatingPointError) as err:
        reason = f"{type(err).__name__}: {err}"
    except RuntimeError as err:
        text = str(err).splitlines()[0] if str(err) else ""
        if not any(word in text for word in ("inf", "nan", "NaN")):
            raise
        reason = f"RuntimeError: {text}"
    else:
        return
    raise ValueError(
        f"RL step {step}: the model diverged ({reason}); lower lr or check the objective's "
        "parameters"
    ) from None


def _check_finite(row: dict, step: int) -> None:
    """Stop a run whose evaluation at `step` is not finite (a diverged model), naming the step
    and the metrics, before the row reaches metrics.csv."""
    bad = [k for k, v in row.items() if k not in _MAY_BE_NAN and not math.isfinite(v)]
    if bad:
        raise ValueError(
            f"RL step {step}: the metrics {bad} are not finite; lower lr or check the "
            "objective's parameters"
        )


_GENERATOR_BYTES = 2**16  # a random generator's state (5056 bytes on the CPU) fits in this


def _load_run(path: Path, model: GPT, run: tuple[DagTask, RLConfig] | None, remedy: str) -> dict:
    """A run checkpoint for `model` (and the task and config of `run`), its declared sizes
    bounded by what they hold (the model, the optimizer's two moments, the generators, the
    evaluated rows: at most 1 GiB of them without a `run`) before anything is read."""
    total, largest = checkpoint.state_bytes(model)
    rows = 2**30
    if run is not None:
        task, cfg = run
        evaluations = cfg.steps // cfg.eval_every + 2
        prompts = len(task.rl_train_pairs) + len(task.rl_test_pairs)
        rows = evaluations * (prompts * 10 + len(REPORT_KS) * 2 + 40) * 32  # pickled numbers
    saved = checkpoint.load(
        path, _RUN_FIELDS, "run checkpoint", remedy,
        max_bytes=3 * total + rows + 2**24, max_tensor_bytes=max(largest, _GENERATOR_BYTES),
    )  # fmt: skip
    if run is not None and not 0 <= saved["step"] <= run[1].steps:
        raise checkpoint.CheckpointError(
            f"{path} is not a usable run checkpoint (step {saved['step']} is outside 0.."
            f"{run[1].steps}); {remedy}"
        )
    return saved


def _reached(rows: list[dict], stop_gain: float | None) -> bool:
    """Whether the last evaluation's test J_1 is at least `stop_gain` above the base's (the
    evaluation at step 0): the run has passed the last level it is compared at."""
    return stop_gain is not None and rows[-1]["test_j1"] - rows[0]["test_j1"] >= stop_gain


def run_key(cfg: RLConfig, threads: int | None = None) -> str:
    """What a resumed run must share with the checkpoint: every RLConfig field except the spelling
    of the device, plus the number of torch CPU threads (which changes float reductions)."""
    fields = dataclasses.asdict(cfg)
    fields.pop("device")
    fields["threads"] = torch.get_num_threads() if threads is None else threads
    return json.dumps(fields, sort_keys=True, default=str)


_RUN_FIELDS = {
    "key": str,
    "model": dict,
    "opt": dict,
    "gen": torch.Tensor,
    "rows": list,
    "prompt_rows": dict,
    "step": int,
}


class _Evaluator:
    """Exact evaluation of the train and test prompts, plus the KL to the base on test prompts."""

    def __init__(self, base: GPT, task: DagTask, cfg: RLConfig, regime: RegimeRule) -> None:
        self.base, self.task, self.cfg = base, task, cfg
        self.paths = {s: PathSet.build(task, getattr(task, f"rl_{s}_pairs")) for s in SPLITS}
        with torch.no_grad():
            base_j1 = exact_metrics(base, task, self.paths["test"], (), cfg.temperature)["j1"]
        self.hard = base_j1 < regime.hard_j1  # test prompts the base almost never solves

    def __call__(self, model: GPT, step: int) -> tuple[dict, dict[str, list]]:
        cfg, task = self.cfg, self.task
        row: dict[str, float] = {"step": step}
        per: dict[str, list] = {}
        dev = next(model.parameters()).device
        for split in SPLITS:
            paths = self.paths[split]
            m = exact_metrics(model, task, paths, (64,), cfg.temperature)
            j1 = m["j1"]
            row[f"{split}_j1"] = float(j1.mean())
            for k in REPORT_KS:
                row[f"{split}_pass@{k}"] = float(pass_at_k(j1, k).mean())
            row[f"{split}_distinct@64"] = float(m["distinct@64"].mean())
            row[f"{split}_modes_eff"] = float(m["modes_eff"].mean())
            if split == "test":
                gen = torch.Generator(device=dev).manual_seed(20_000 + cfg.seed * 7919 + step)
                kl = kl_to_reference(
                    model, self.base, task, paths.pairs, cfg.kl_samples, gen, cfg.temperature
                )
                row["test_kl"] = float(kl.mean())
                row["test_hard_j1"] = float(j1[self.hard].mean()) if self.hard.any() else math.nan
            else:
                kl = torch.full_like(j1, math.nan)
            per_split = {
                "step": [step] * len(paths),
                "split": [split] * len(paths),
                "prompt": list(range(len(paths))),
                "source": paths.pairs[:, 0].tolist(),
                "target": paths.pairs[:, 1].tolist(),
                "j1": j1.tolist(),
                "distinct@64": m["distinct@64"].tolist(),
                "modes_eff": m["modes_eff"].tolist(),
                "kl": kl.tolist(),
            }
            for name, values in per_split.items():
                per.setdefault(name, []).extend(values)
        return row, per


def train_rl(
    base: GPT,
    profile: ProfileConfig,
    cfg: RLConfig,
    out_dir: str | Path,
    *,
    fresh: bool = False,
    until: int | None = None,
    progress: bool = True,
    fresh_hint: bool = True,
) -> pd.DataFrame:
    """RL from a copy of `base` on the task of `profile` (whose regime rule marks the test
    prompts reported as hard); writes out_dir/metrics.csv, prompts.csv, checkpoint.pt and
    timings.json; resumable from the checkpoint; holds an exclusive lock on out_dir.

    fresh: ignore an existing checkpoint. until: stop after this step (to simulate an
    interruption; the run can be resumed by calling again). fresh_hint: whether the caller has
    a --fresh flag to suggest in errors (`train` does, `sweep` does not)."""
    out = writable_dir(out_dir, "out_dir")
    task = build_task(profile.task)
    with exclusive(out):
        remove_stale_temporaries(out)
        return _train_rl(base, task, cfg, out, profile.regime, fresh, until, progress, fresh_hint)


def _train_rl(
    base: GPT,
    task: DagTask,
    cfg: RLConfig,
    out: Path,
    regime: RegimeRule,
    fresh: bool,
    until: int | None,
    progress: bool,
    fresh_hint: bool = True,
) -> pd.DataFrame:
    ckpt_path, csv_path, prompts_path = (
        out / "checkpoint.pt",
        out / "metrics.csv",
        out / "prompts.csv",
    )
    dev = pick_device(cfg.device) if cfg.device else next(base.parameters()).device
    base = base.to(dev).eval()
    model = copy.deepcopy(base)
    opt = _make_optimizer(model, cfg)
    obj = objectives.get(cfg.objective, **cfg.objective_params)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    if obj.stochastic:
        obj.generator = torch.Generator().manual_seed(cfg.seed + 1)
    key = run_key(cfg)
    rows: list[dict] = []
    prompt_rows: dict[str, list] = {}
    start = 0
    if ckpt_path.exists() and not fresh:
        remedy = "delete it, or pass --fresh to start over" if fresh_hint else "delete it"
        saved = _load_run(ckpt_path, model, (task, cfg), remedy)
        if saved["key"] != key:
            raise ValueError(
                f"{ckpt_path} belongs to another run configuration (objective, sizes, seed or "
                "threads differ); "
                + ("pass --fresh (fresh=True) to start over, or use another --out" if fresh_hint
                   else "delete it, or use another output folder")
            )  # fmt: skip
        what = "run checkpoint"
        checkpoint.restore(model, saved["model"], ckpt_path, what, remedy)
        checkpoint.restore_optimizer(opt, saved["opt"], ckpt_path, what, remedy)
        checkpoint.restore_generator(gen, saved["gen"], ckpt_path, what, remedy)
        if obj.stochastic and saved.get("obj_gen") is not None:
            checkpoint.restore_generator(
                obj.generator, saved["obj_gen"], ckpt_path, what, remedy, "obj_gen"
            )
        rows, prompt_rows, start = saved["rows"], saved["prompt_rows"], saved["step"]
    evaluate = _Evaluator(base, task, cfg, regime)
    timings: dict[str, float] = {}
    acc: list[dict] = []
    last = cfg.steps if until is None else min(until, cfg.steps)
    bar = progress_bar(
        range(start, last + 1),
        desc=f"rl {cfg.objective}/{cfg.sampler} s{cfg.seed}",
        disable=not progress,
        leave=False,
    )
    for step in bar:
        if step % cfg.eval_every == 0 or step == cfg.steps:
            if step > start or not rows:
                with _diverged(step):
                    row, per = evaluate(model, step)
                if acc:
                    row.update({k: float(np.mean([a[k] for a in acc])) for k in acc[0]})
                _check_finite(row, step)
                rows.append(row)
                for name, values in per.items():
                    prompt_rows.setdefault(name, []).extend(values)
                bar.set_postfix(test_j1=f"{row['test_j1']:.3f}")
            acc = []
            checkpoint.save(
                ckpt_path,
                {
                    "key": key,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "opt": opt.state_dict(),
                    "gen": gen.get_state(),
                    "rows": rows,
                    "prompt_rows": prompt_rows,
                    "step": step,
                    "obj_gen": obj.generator.get_state() if obj.stochastic else None,
                },
            )
            atomic_write_text(csv_path, pd.DataFrame(rows).to_csv(index=False))
            atomic_write_text(prompts_path, pd.DataFrame(prompt_rows).to_csv(index=False))
        if step == last or _reached(rows, cfg.stop_gain):
            break
        with _diverged(step + 1):
            acc.append(_rl_step(model, opt, task, cfg, obj, gen, timings, step))
    if timings:
        atomic_write_text(out / "timings.json", json.dumps(timings, indent=1))
    return pd.DataFrame(rows)


def load_trained(out_dir: str | Path, profile: ProfileConfig, device: str | None = None) -> GPT:
    """The model of a run's latest checkpoint (out_dir/checkpoint.pt), loaded weights-only."""
    path = Path(out_dir) / "checkpoint.pt"
    task = build_task(profile.task)
    model = build_model(task, profile.model, torch.device("cpu"))
    remedy = "rerun the training"
    saved = _load_run(path, model, None, remedy)
    checkpoint.restore(model, saved["model"], path, "run checkpoint", remedy)
    return model.to(pick_device(device, profile.model.numerics)).eval()


def run_trial(
    profile: ProfileConfig,
    cfg: RLConfig,
    out_dir: str | Path,
    base_path: str | Path,
    *,
    owned_base: bool = False,
    fresh: bool = False,
    progress: bool = False,
    fresh_hint: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """One train run: the base of `profile` (pretrained into `base_path` unless it is there),
    then RL with `cfg` into `out_dir`. Returns (metrics, timings {"pretrain_s", "rl_s"}).

    owned_base: `base_path` is this run's own file (<out>/base.pt), which may be replaced when it
    holds another configuration; a base the user named is never overwritten. fresh_hint:
    whether errors may suggest --fresh (the caller has that flag)."""
    check_fits(profile, cfg)
    t0 = time.perf_counter()
    base = load_or_pretrain(
        profile, base_path, cfg.device, progress=progress, owned=owned_base, fresh=fresh,
        fresh_hint=fresh_hint,
    )  # fmt: skip
    t1 = time.perf_counter()
    metrics = train_rl(
        base, profile, cfg, out_dir, fresh=fresh, progress=progress, fresh_hint=fresh_hint
    )
    return metrics, {"pretrain_s": t1 - t0, "rl_s": time.perf_counter() - t1}
