"""RLVR on a tiny GPT: supervised pretraining to an imperfect base, then RL with any registered
objective, an optional token-entropy bonus, and an i.i.d. or without-replacement sampler.

One RL step (CleanRL-style, every knob in `RLConfig`):
  1. draw `batch_prompts` held-out (source, target) pairs;
  2. sample n rollouts per prompt (`sampler`: "iid", or "swor" = stochastic beam search);
  3. verify them: rewards r (B, n) in {0, 1};
  4. weights w = objective.weights(r, k, logprobs) (B, n);
  5. loss = -(w * log pi(rollout)).sum(1).mean() - entropy * mean token entropy; AdamW step.

Every `eval_every` steps the held-out pairs are evaluated with `n_eval` i.i.d. samples each:
pass@k for k = 1, 2, 4, ..., n_eval (unbiased estimator), the gap, the mean alpha_k(J_1 estimate),
distinct correct paths, and coverage of the exactly counted path set. Metrics go to metrics.csv and
a checkpoint (model, optimizer, RNG state, metrics) is written atomically at every evaluation, so
an interrupted run resumes to exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import objectives
from .atomic import atomic_write, atomic_write_text
from .models import GPT, GPTConfig, pick_device
from .models.generate import answer_mask, sample_iid, sample_swor, sequence_logprob
from .objectives import SAMPLERS
from .passk import alpha_k, pass_at_k_unbiased
from .tasks import DagTask, make_dag_task

__all__ = [
    "TaskConfig",
    "ModelConfig",
    "PretrainConfig",
    "RLConfig",
    "Profile",
    "PROFILES",
    "get_profile",
    "build_task",
    "build_model",
    "pretrain",
    "load_or_pretrain",
    "evaluate",
    "train_rl",
]


def _positive(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be > 0, got {value}")


@dataclass(frozen=True)
class TaskConfig:
    n_nodes: int = 40
    window: int = 6
    edge_prob: float = 0.4
    min_distance: int = 3
    max_distance: int = 12
    rl_fraction: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64

    def __post_init__(self) -> None:
        _positive(self, ("n_layer", "n_head", "n_embd"))


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 150  # short on purpose: an imperfect base (pass@1 well below pass@64)
    batch: int = 128
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        _positive(self, ("steps", "batch", "lr"))


@dataclass(frozen=True)
class RLConfig:
    objective: str = "pkpo"
    k: int = 8
    n: int = 16  # rollouts per prompt
    sampler: str = "iid"
    entropy: float = 0.0  # token-entropy bonus coefficient
    batch_prompts: int = 16
    steps: int = 100
    lr: float = 3e-4
    temperature: float = 1.0
    grad_clip: float = 1.0
    eval_every: int = 10
    n_eval: int = 64  # i.i.d. samples per held-out prompt at evaluation
    eval_prompts: int = 64  # held-out prompts evaluated (the first ones)
    seed: int = 0
    device: str | None = None  # None: CUDA if available, else CPU
    objective_params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        obj = objectives.get(self.objective, **self.objective_params)  # unknown -> ValueError
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        _positive(self, ("k", "n", "batch_prompts", "steps", "lr", "temperature", "grad_clip"))
        _positive(self, ("eval_every", "n_eval", "eval_prompts"))
        if self.k > self.n:
            raise ValueError(f"k = {self.k} must be <= n = {self.n} (rollouts per prompt)")
        if self.n < obj.min_group:
            raise ValueError(f"objective {self.objective} needs n >= {obj.min_group}")
        if obj.sampler == "swor" and self.sampler != "swor":
            raise ValueError(f"objective {self.objective} is only valid with sampler='swor'")
        if self.entropy < 0:
            raise ValueError(f"entropy must be >= 0, got {self.entropy}")

    @property
    def eval_ks(self) -> list[int]:
        """1, 2, 4, ..., up to n_eval."""
        return [2**i for i in range(int(np.log2(self.n_eval)) + 1)]


@dataclass(frozen=True)
class Profile:
    task: TaskConfig
    model: ModelConfig
    pretrain: PretrainConfig
    rl: RLConfig


PROFILES: dict[str, Profile] = {
    # unit tests: seconds
    "smoke": Profile(
        TaskConfig(n_nodes=16, window=4, edge_prob=0.5, max_distance=6, rl_fraction=0.4),
        ModelConfig(n_layer=1, n_head=2, n_embd=32),
        PretrainConfig(steps=60, batch=64),
        RLConfig(n=4, k=2, batch_prompts=4, steps=4, eval_every=2, n_eval=8, eval_prompts=4),
    ),
    # the notebook's default: CPU, minutes
    "ci": Profile(TaskConfig(), ModelConfig(), PretrainConfig(), RLConfig()),
    # one GPU: larger graph and model, more steps and samples
    "full": Profile(
        TaskConfig(n_nodes=64, window=6, max_distance=12, rl_fraction=0.2),
        ModelConfig(n_layer=4, n_head=8, n_embd=256),
        PretrainConfig(steps=4000, batch=512, lr=1e-3),
        RLConfig(
            n=32, k=8, batch_prompts=64, steps=400, eval_every=25, n_eval=256, eval_prompts=256
        ),
    ),
}


def get_profile(name: str) -> Profile:
    """The named profile ("smoke", "ci" or "full")."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {sorted(PROFILES)}") from None


def build_task(cfg: TaskConfig) -> DagTask:
    return make_dag_task(
        cfg.n_nodes,
        cfg.window,
        cfg.edge_prob,
        cfg.rl_fraction,
        cfg.min_distance,
        cfg.max_distance,
        cfg.seed,
    )


def build_model(task: DagTask, cfg: ModelConfig, device: torch.device) -> GPT:
    """A freshly initialised GPT sized for `task` (vocabulary, prompt + answer length)."""
    gcfg = GPTConfig(task.vocab_size, 3 + task.max_new_tokens, cfg.n_layer, cfg.n_head, cfg.n_embd)
    return GPT(gcfg).to(device)


def pretrain(
    task: DagTask,
    model_cfg: ModelConfig,
    cfg: PretrainConfig,
    device: str | None = None,
    progress: bool = True,
) -> GPT:
    """Supervised next-token training on random valid walks between pretraining pairs only."""
    dev = pick_device(device)
    torch.manual_seed(cfg.seed)
    model = build_model(task, model_cfg, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in tqdm(range(cfg.steps), desc="pretrain", disable=not progress, leave=False):
        idx = torch.randint(len(task.pretrain_pairs), (cfg.batch,), generator=gen)
        seq = task.random_walks(task.pretrain_pairs[idx], gen).to(dev)
        logits = model(seq[:, :-1])[:, 2:]
        target = seq[:, 3:]
        mask = answer_mask(target, task.eos)
        loss = F.cross_entropy(logits[mask], target[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def _save(path: Path, obj: object) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_or_pretrain(
    profile: Profile, path: str | Path, device: str | None = None, progress: bool = True
) -> GPT:
    """The pretrained base model of `profile`, cached at `path` (written atomically)."""
    path = Path(path)
    task = build_task(profile.task)
    key = json.dumps(
        [
            dataclasses.asdict(profile.task),
            dataclasses.asdict(profile.model),
            dataclasses.asdict(profile.pretrain),
        ],
        sort_keys=True,
    )
    dev = pick_device(device)
    if path.is_file():
        saved = torch.load(path, map_location=dev, weights_only=False)
        if saved["key"] == key:
            model = build_model(task, profile.model, dev)
            model.load_state_dict(saved["model"])
            return model
    model = pretrain(task, profile.model, profile.pretrain, device, progress)
    _save(path, {"key": key, "model": model.state_dict()})
    return model


@torch.no_grad()
def evaluate(model: GPT, task: DagTask, cfg: RLConfig, step: int) -> dict[str, float]:
    """Held-out metrics from cfg.n_eval i.i.d. samples per prompt (seeded by step)."""
    dev = next(model.parameters()).device
    pairs = task.rl_pairs[: cfg.eval_prompts]
    gen = torch.Generator(device=dev).manual_seed(10_000 + cfg.seed * 7919 + step)
    answers, _ = sample_iid(
        model,
        task.prompts(pairs).to(dev),
        cfg.n_eval,
        task.max_new_tokens,
        task.eos,
        task.pad,
        cfg.temperature,
        gen,
    )
    answers = answers.cpu()
    p, n = answers.shape[:2]
    rewards = task.verify(pairs.repeat_interleave(n, 0), answers.view(p * n, -1)).view(p, n)
    c = rewards.sum(1).to(torch.int64)
    out: dict[str, float] = {}
    pass1 = float(pass_at_k_unbiased(n, c, 1).mean())
    for k in cfg.eval_ks:
        pk = float(pass_at_k_unbiased(n, c, k).mean())
        out[f"pass@{k}"] = pk
        if k > 1:
            out[f"gap@{k}"] = pk - pass1
    out[f"alpha_{cfg.k}"] = float(alpha_k((c / n).numpy(), cfg.k).mean())
    # distinct correct answers per prompt: unique (prompt, answer) rows among the correct ones
    rows = torch.cat([torch.arange(p).repeat_interleave(n)[:, None], answers.view(p * n, -1)], 1)
    unique_ok = torch.unique(rows[rewards.view(-1) > 0], dim=0)
    distinct_t = torch.bincount(unique_ok[:, 0], minlength=p).to(torch.float64)
    n_paths = task.paths[pairs[:, 0], pairs[:, 1]].to(torch.float64)
    out["distinct_correct"] = float(distinct_t.mean())
    out["coverage"] = float((distinct_t / n_paths).mean())
    out["coverage_capped"] = float((distinct_t / n_paths.clamp_max(n)).mean())
    return out


def _rl_step(
    model: GPT,
    opt: torch.optim.Optimizer,
    task: DagTask,
    cfg: RLConfig,
    obj: objectives.Objective,
    gen: torch.Generator,
    timings: dict[str, float],
) -> dict:
    dev = next(model.parameters()).device
    t0 = time.perf_counter()
    idx = torch.randint(len(task.rl_pairs), (cfg.batch_prompts,), generator=gen, device=dev).cpu()
    pairs = task.rl_pairs[idx]
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
    loss = -(w.float() * logp.view(b, n)).sum(1).mean() - cfg.entropy * ent.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    opt.step()
    t4 = time.perf_counter()
    for key, dt in (
        ("sample", t1 - t0),
        ("verify", t2 - t1),
        ("weights", t3 - t2),
        ("backward", t4 - t3),
    ):
        timings[key] = timings.get(key, 0.0) + dt
    timings["rollout_tokens"] = timings.get("rollout_tokens", 0.0) + float(
        answer_mask(answers, task.eos).sum()
    )
    return {
        "reward": float(rewards.mean()),
        "zero_grad_frac": float((w == 0).all(1).float().mean()),
        "grad_norm": grad_norm,
        "token_entropy": float(ent.detach().mean()),
    }


def train_rl(
    base: GPT,
    task: DagTask,
    cfg: RLConfig,
    out_dir: str | Path,
    fresh: bool = False,
    until: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """RL from a copy of `base`; metrics in out_dir/metrics.csv; resumable (out_dir/checkpoint.pt).

    fresh: ignore an existing checkpoint. until: stop after this step (to simulate an
    interruption; the run can be resumed by calling again)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, csv_path = out / "checkpoint.pt", out / "metrics.csv"
    dev = next(base.parameters()).device
    model = GPT(base.cfg).to(dev)
    model.load_state_dict(base.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    obj = objectives.get(cfg.objective, **cfg.objective_params)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    if obj.stochastic:
        obj.generator = torch.Generator().manual_seed(cfg.seed + 1)
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    rows: list[dict] = []
    start = 0
    if ckpt_path.is_file() and not fresh:
        saved = torch.load(ckpt_path, map_location=dev, weights_only=False)
        if saved["key"] != key:
            raise ValueError(f"{ckpt_path} belongs to another config; pass fresh=True to overwrite")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["gen"])
        if obj.stochastic and saved.get("obj_gen") is not None:
            obj.generator.set_state(saved["obj_gen"])
        rows, start = saved["rows"], saved["step"]
    timings: dict[str, float] = {}
    acc: list[dict] = []
    last = cfg.steps if until is None else min(until, cfg.steps)
    bar = tqdm(
        range(start, last + 1),
        desc=f"rl {cfg.objective}/{cfg.sampler}",
        disable=not progress,
        leave=False,
    )
    for step in bar:
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            row = {"step": step, **evaluate(model, task, cfg, step)}
            if acc:
                row.update({k: float(np.mean([a[k] for a in acc])) for k in acc[0]})
            if step > start or not rows:
                rows.append(row)
            acc = []
            _save(
                ckpt_path,
                {
                    "key": key,
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "gen": gen.get_state(),
                    "rows": rows,
                    "step": step,
                    "obj_gen": obj.generator.get_state() if obj.stochastic else None,
                },
            )
            atomic_write_text(csv_path, pd.DataFrame(rows).to_csv(index=False))
        if step == last:
            break
        acc.append(_rl_step(model, opt, task, cfg, obj, gen, timings))
    if timings:
        atomic_write_text(out / "timings.json", json.dumps(timings, indent=1))
    return pd.DataFrame(rows)
