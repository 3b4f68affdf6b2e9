"""RLVR on a tiny GPT: supervised pretraining to a base in the right regime, then RL with any
registered objective, an optional token-entropy bonus, an i.i.d. or without-replacement sampler,
and AdamW or plain SGD.

Pretraining (`pretrain`) trains on random valid walks between pretraining pairs, drawn with weight
exp(-(d - min_distance) / distance_lambda) for a pair at distance d = t - s (so long pairs are rare
and the base is weak on them). Every `select_every` steps it evaluates the RL train prompts exactly
(never the test prompts) and stops at the first checkpoint that meets the profile's
:class:`~companion.evaluation.RegimeRule`
(the rule is fixed before any run; if no checkpoint meets it, the last one is used and the base
file records that the rule failed).

One RL step (CleanRL-style, every knob in `RLConfig`):
  1. draw `batch_prompts` RL *train* pairs;
  2. sample n rollouts per prompt (`sampler`: "iid", or "swor" = stochastic beam search);
  3. verify them: rewards r (B, n) in {0, 1};
  4. weights w = objective.weights(r, k, logprobs) (B, n);
  5. loss = -(w * log pi(rollout)).sum(1).mean() - entropy * mean token entropy;
     optimizer step (AdamW, or SGD without momentum), gradient clipped at `grad_clip` (0: never).

Every `eval_every` steps the train and test prompts are evaluated exactly
(:mod:`companion.evaluation`: J_1, pass@k for any k, expected distinct correct paths, effective
correct modes) and the KL to the base is estimated on the test prompts. Aggregates go to
metrics.csv, per-prompt values to prompts.csv, and a checkpoint (model, optimizer, RNG states,
tables) is written atomically, so an interrupted run resumes to exactly the metrics of an
uninterrupted one. Checkpoints hold plain data only and are loaded weights-only
(:mod:`companion.checkpoint`); a run holds an exclusive lock on its folder.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import checkpoint, objectives
from .atomic import atomic_write_text, file_lock, remove_stale_temporaries
from .dynamics import crossing
from .evaluation import PathSet, RegimeRule, exact_metrics, kl_to_reference
from .models import GPT, GPTConfig, pick_device
from .models.generate import answer_mask, sample_iid, sample_swor, sequence_logprob
from .objectives import SAMPLERS
from .passk import alpha_k, pass_at_k_unbiased
from .repro import progress as progress_bar
from .tasks import DagTask, make_dag_task

__all__ = [
    "TaskConfig",
    "ModelConfig",
    "PretrainConfig",
    "RLConfig",
    "Profile",
    "PROFILES",
    "OPTIMIZERS",
    "REPORT_KS",
    "get_profile",
    "build_task",
    "build_model",
    "pretrain",
    "base_key",
    "load_or_pretrain",
    "base_selection",
    "evaluate_sampled",
    "train_rl",
    "run_key",
    "read_prompts",
    "prompts_at_matched",
    "load_trained",
]

OPTIMIZERS = ("adamw", "sgd")
REPORT_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # exact pass@k columns in metrics.csv
SPLITS = ("train", "test")


def _number(obj: object, name: str) -> float:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{type(obj).__name__}.{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{type(obj).__name__}.{name} must be finite, got {value}")
    return float(value)


def _positive(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        if not _number(obj, name) > 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be > 0, got {getattr(obj, name)}")


def _non_negative(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        if not _number(obj, name) >= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be >= 0, got {getattr(obj, name)}")


def _integers(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{type(obj).__name__}.{name} must be an integer, got {value!r}")


@dataclass(frozen=True)
class TaskConfig:
    n_nodes: int = 40
    window: int = 6
    edge_prob: float = 0.4
    min_distance: int = 3
    max_distance: int = 12
    rl_fraction: float = 0.5
    test_fraction: float = 0.5  # of the RL pairs: held out from RL, reported on
    seed: int = 0


NUMERICS = ("portable", "float32")


@dataclass(frozen=True)
class ModelConfig:
    """The GPT's size, and how it computes.

    numerics "portable" (the CPU profiles): float64 weights and the kernels of
    :mod:`companion.models.portable`, which give the same bits under every CPU dispatch (AVX-512,
    AVX2, scalar; MKL's code paths), so the stored outputs are what any x86-64 machine computes.
    "float32": torch's own kernels in float32, for the GPU profile (fast, not portable)."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    numerics: str = "portable"

    def __post_init__(self) -> None:
        _integers(self, ("n_layer", "n_head", "n_embd"))
        _positive(self, ("n_layer", "n_head", "n_embd"))
        if self.numerics not in NUMERICS:
            raise ValueError(
                f"ModelConfig.numerics must be one of {NUMERICS}, got {self.numerics!r}"
            )

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.numerics == "portable" else torch.float32


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 400  # the most steps; regime selection usually stops earlier
    batch: int = 128
    lr: float = 3e-3
    seed: int = 0
    distance_lambda: float | None = 1.0  # pair weight exp(-(d - d_min)/lambda); None: uniform
    select_every: int = 50  # regime check every this many steps (0: only at the end)

    def __post_init__(self) -> None:
        _integers(self, ("steps", "batch", "seed", "select_every"))
        _positive(self, ("steps", "batch", "lr"))
        _non_negative(self, ("select_every",))
        if self.distance_lambda is not None:
            _positive(self, ("distance_lambda",))


@dataclass(frozen=True)
class RLConfig:
    objective: str = "pass1_reinforce"
    k: int = 8
    n: int = 16  # rollouts per prompt
    sampler: str = "iid"
    entropy: float = 0.0  # token-entropy bonus coefficient
    batch_prompts: int = 16
    steps: int = 100
    lr: float = 3e-4
    optimizer: str = "adamw"  # "adamw" or "sgd" (no momentum, no weight decay)
    temperature: float = 1.0
    grad_clip: float = 1.0  # clip the gradient norm here; 0 never clips
    eval_every: int = 5
    kl_samples: int = 8  # samples per test prompt for the KL-to-base estimate
    seed: int = 0
    device: str | None = None  # None: CUDA if available, else CPU (not part of the run key)
    objective_params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.objective_params, dict):
            raise ValueError(f"objective_params must be a dict, got {self.objective_params!r}")
        obj = objectives.get(self.objective, **self.objective_params)  # unknown -> ValueError
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _integers(self, ("k", "n", "batch_prompts", "steps", "eval_every", "kl_samples", "seed"))
        _positive(self, ("k", "n", "batch_prompts", "steps", "lr", "temperature"))
        _positive(self, ("eval_every", "kl_samples"))
        _non_negative(self, ("entropy", "grad_clip", "seed"))
        if self.k > self.n:
            raise ValueError(f"k = {self.k} must be <= n = {self.n} (rollouts per prompt)")
        if self.n < obj.min_group:
            raise ValueError(f"objective {self.objective} needs n >= {obj.min_group}")
        if obj.sampler == "swor" and self.sampler != "swor":
            raise ValueError(f"objective {self.objective} is only valid with sampler='swor'")


@dataclass(frozen=True)
class Profile:
    task: TaskConfig
    model: ModelConfig
    pretrain: PretrainConfig
    rl: RLConfig
    regime: RegimeRule = field(default_factory=RegimeRule)


PROFILES: dict[str, Profile] = {
    # unit tests: seconds (the regime rule is checked but not required of so small a model)
    "smoke": Profile(
        TaskConfig(n_nodes=16, window=4, edge_prob=0.5, max_distance=6, rl_fraction=0.5),
        ModelConfig(n_layer=1, n_head=2, n_embd=32),
        PretrainConfig(steps=60, batch=64, select_every=0),
        RLConfig(n=4, k=2, batch_prompts=4, steps=4, eval_every=2, kl_samples=2),
    ),
    # the notebook's default: CPU, minutes
    "ci": Profile(TaskConfig(), ModelConfig(), PretrainConfig(), RLConfig()),
    # one GPU: larger graph and model, more steps and prompts
    "full": Profile(
        TaskConfig(n_nodes=64, window=6, max_distance=12, rl_fraction=0.5),
        ModelConfig(n_layer=4, n_head=8, n_embd=256, numerics="float32"),
        PretrainConfig(steps=3000, batch=512, lr=1e-3, select_every=100),
        RLConfig(n=32, batch_prompts=64, steps=300, eval_every=10, kl_samples=16),
    ),
}


def get_profile(name: str) -> Profile:
    """The named profile ("smoke", "ci" or "full")."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
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
        cfg.test_fraction,
    )


def build_model(task: DagTask, cfg: ModelConfig, device: torch.device) -> GPT:
    """A freshly initialised GPT sized for `task` (vocabulary, prompt + answer length)."""
    portable = cfg.numerics == "portable"
    gcfg = GPTConfig(
        task.vocab_size, 3 + task.max_new_tokens, cfg.n_layer, cfg.n_head, cfg.n_embd, portable
    )
    return GPT(gcfg).to(device=device, dtype=cfg.dtype)


def _pair_weights(task: DagTask, cfg: PretrainConfig) -> torch.Tensor:
    d = (task.pretrain_pairs[:, 1] - task.pretrain_pairs[:, 0]).to(torch.float64)
    if cfg.distance_lambda is None:
        return torch.ones_like(d)
    return torch.exp(-(d - d.min()) / cfg.distance_lambda)


def pretrain(
    task: DagTask,
    model_cfg: ModelConfig,
    cfg: PretrainConfig,
    regime: RegimeRule | None = None,
    device: str | None = None,
    progress: bool = True,
) -> tuple[GPT, dict]:
    """Supervised next-token training on random valid walks between pretraining pairs only.

    Returns (model, selection): with `regime` and select_every > 0, training stops at the first
    checkpoint (every select_every steps) whose exact J_1 on the RL train prompts meets the rule
    (the test prompts are never looked at). `selection` holds the
    chosen step, whether the rule held, and the (step, mean J_1, hard fraction) of each check."""
    dev = pick_device(device)
    torch.manual_seed(cfg.seed)
    model = build_model(task, model_cfg, dev)
    opt = model.ops.adamw(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed)
    weights = _pair_weights(task, cfg)
    # the rule is checked on the RL *train* prompts: selection never looks at the test prompts
    select_paths = PathSet.build(task, task.rl_train_pairs) if regime is not None else None
    checks: list[list[float]] = []
    chosen, met = cfg.steps, False
    bar = progress_bar(range(1, cfg.steps + 1), desc="pretrain", disable=not progress, leave=False)
    for step in bar:
        idx = torch.multinomial(weights, cfg.batch, replacement=True, generator=gen)
        seq = task.random_walks(task.pretrain_pairs[idx], gen).to(dev)
        logits = model(seq[:, :-1])[:, 2:]
        target = seq[:, 3:]
        mask = answer_mask(target, task.eos)
        loss = model.ops.cross_entropy(logits[mask], target[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        due = cfg.select_every and step % cfg.select_every == 0
        if select_paths is not None and (due or step == cfg.steps):
            j1 = exact_metrics(model, task, select_paths, ())["j1"]
            checks.append([step, float(j1.mean()), float((j1 < regime.hard_j1).double().mean())])
            if cfg.select_every and regime.holds(j1):
                chosen, met = step, True
                break
            met = regime.holds(j1)
    model.eval()
    return model, {"step": chosen, "regime_met": met, "checks": checks}


def base_key(profile: Profile, threads: int | None = None) -> str:
    """What determines the base model's weights: task, model and pretraining configs (seed
    included), the regime rule, and the number of torch CPU threads (float reductions differ)."""
    threads = torch.get_num_threads() if threads is None else threads
    parts = [profile.task, profile.model, profile.pretrain, profile.regime]
    return json.dumps([dataclasses.asdict(p) for p in parts] + [threads], sort_keys=True)


_BASE_FIELDS = {"key": str, "model": dict, "selection": dict}


def load_or_pretrain(
    profile: Profile,
    path: str | Path,
    device: str | None = None,
    progress: bool = True,
    *,
    owned: bool = True,
    fresh: bool = False,
) -> GPT:
    """The pretrained base model of `profile`, cached at `path` (written atomically, under a lock
    so that concurrent callers pretrain it once).

    A cached file of another configuration is replaced only if `owned` (the run's own default
    file); a file the user named (`owned=False`) is never overwritten: ValueError. A file that is
    not a base checkpoint raises CheckpointError, unless `fresh`, which pretrains anew over it."""
    path = Path(path)
    key = base_key(profile)
    dev = pick_device(device)
    task = build_task(profile.task)
    with file_lock(path.with_name(path.name + ".lock")):
        if path.exists():
            try:
                saved = checkpoint.load(
                    path,
                    _BASE_FIELDS,
                    "base checkpoint",
                    "delete it, pass --fresh to pretrain a new base over it, or name another "
                    "--base",
                )
            except checkpoint.CheckpointError:
                if not fresh:
                    raise
                saved = None
            if saved is not None and saved["key"] == key:
                model = build_model(task, profile.model, torch.device("cpu"))
                model.load_state_dict(saved["model"])
                model.eval()
                return model.to(dev)
            if saved is not None and not owned:
                raise ValueError(
                    f"refusing to overwrite {path}: it holds a base pretrained with another "
                    "configuration (profile, threads or pretraining settings differ); name a "
                    "new --base file"
                )
        model, selection = pretrain(
            task, profile.model, profile.pretrain, profile.regime, device, progress
        )
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        checkpoint.save(path, {"key": key, "model": state, "selection": selection})
        return model


def base_selection(path: str | Path) -> dict:
    """The pretraining selection recorded in a base file: chosen step, whether the regime rule
    held, and the checks made (step, mean test J_1, hard fraction)."""
    return checkpoint.load(path, _BASE_FIELDS, "base checkpoint")["selection"]


@torch.no_grad()
def evaluate_sampled(
    model: GPT, task: DagTask, pairs: torch.Tensor, n: int, seed: int, temperature: float = 1.0
) -> dict[str, torch.Tensor]:
    """Per-prompt sampled evaluation with n i.i.d. samples (the check of the exact one):
    "correct" counts c (P,), "pass@1" = c / n, and "distinct" correct paths among the n."""
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(10_000 + seed)
    model.eval()
    answers, _ = sample_iid(
        model,
        task.prompts(pairs).to(dev),
        n,
        task.max_new_tokens,
        task.eos,
        task.pad,
        temperature,
        gen,
    )
    answers = answers.cpu()
    p = answers.shape[0]
    rewards = task.verify(pairs.repeat_interleave(n, 0), answers.view(p * n, -1)).view(p, n)
    c = rewards.sum(1).to(torch.int64)
    rows = torch.cat([torch.arange(p).repeat_interleave(n)[:, None], answers.view(p * n, -1)], 1)
    unique_ok = torch.unique(rows[rewards.view(-1) > 0], dim=0)
    distinct = torch.bincount(unique_ok[:, 0], minlength=p).to(torch.float64)
    return {"correct": c, "pass@1": pass_at_k_unbiased(n, c, 1), "distinct": distinct}


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

    def __init__(self, base: GPT, task: DagTask, cfg: RLConfig) -> None:
        self.base, self.task, self.cfg = base, task, cfg
        self.paths = {s: PathSet.build(task, getattr(task, f"rl_{s}_pairs")) for s in SPLITS}
        with torch.no_grad():
            base_j1 = exact_metrics(base, task, self.paths["test"], (), cfg.temperature)["j1"]
        self.hard = base_j1 < RegimeRule().hard_j1  # test prompts the base almost never solves

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
                row[f"{split}_pass@{k}"] = float((-torch.expm1(k * torch.log1p(-j1))).mean())
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
    task: DagTask,
    cfg: RLConfig,
    out_dir: str | Path,
    fresh: bool = False,
    until: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """RL from a copy of `base`; writes out_dir/metrics.csv, prompts.csv, checkpoint.pt and
    timings.json; resumable from the checkpoint; holds an exclusive lock on out_dir.

    fresh: ignore an existing checkpoint. until: stop after this step (to simulate an
    interruption; the run can be resumed by calling again)."""
    out = checkpoint.writable_dir(out_dir, "out_dir")
    with checkpoint.exclusive(out):
        remove_stale_temporaries(out, recursive=False)
        return _train_rl(base, task, cfg, out, fresh, until, progress)


def _train_rl(
    base: GPT,
    task: DagTask,
    cfg: RLConfig,
    out: Path,
    fresh: bool,
    until: int | None,
    progress: bool,
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
        saved = checkpoint.load(
            ckpt_path, _RUN_FIELDS, "run checkpoint", "delete it, or pass --fresh to start over"
        )
        if saved["key"] != key:
            raise ValueError(
                f"{ckpt_path} belongs to another run configuration (objective, sizes, seed or "
                "threads differ); pass --fresh (fresh=True) to start over, or use another --out"
            )
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["gen"])
        if obj.stochastic and saved.get("obj_gen") is not None:
            obj.generator.set_state(saved["obj_gen"])
        rows, prompt_rows, start = saved["rows"], saved["prompt_rows"], saved["step"]
    evaluate = _Evaluator(base, task, cfg)
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
                row, per = evaluate(model, step)
                if acc:
                    row.update({k: float(np.mean([a[k] for a in acc])) for k in acc[0]})
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
        if step == last:
            break
        acc.append(_rl_step(model, opt, task, cfg, obj, gen, timings))
    if timings:
        atomic_write_text(out / "timings.json", json.dumps(timings, indent=1))
    return pd.DataFrame(rows)


def read_prompts(out_dir: str | Path) -> pd.DataFrame:
    """The per-prompt exact table a run wrote (prompts.csv)."""
    return pd.read_csv(Path(out_dir) / "prompts.csv")


def prompts_at_matched(
    metrics: pd.DataFrame,
    prompts: pd.DataFrame,
    target: float,
    by: str = "test_j1",
    split: str = "test",
) -> pd.Series | None:
    """Each `split` prompt's exact J_1 where the run first reaches `by` >= target, interpolated
    between the two evaluations around the crossing with the weight of the aggregate (the same
    dynamics.crossing as dynamics.at_matched); None if the run never reaches it. metrics /
    prompts: one run's metrics.csv and prompts.csv tables."""
    m = metrics.sort_values("step")
    cross = crossing(m[by].to_numpy(dtype=float), target)
    if cross is None:
        return None
    i0, i1, w = cross
    steps = m.step.to_numpy()
    p = prompts[prompts.split == split]
    before = p[p.step == steps[i0]].set_index("prompt").j1
    after = p[p.step == steps[i1]].set_index("prompt").j1
    return before + w * (after - before)


def load_trained(out_dir: str | Path, profile: Profile, device: str | None = None) -> GPT:
    """The model of a run's latest checkpoint (out_dir/checkpoint.pt), loaded weights-only."""
    saved = checkpoint.load(Path(out_dir) / "checkpoint.pt", _RUN_FIELDS, "run checkpoint")
    model = build_model(build_task(profile.task), profile.model, torch.device("cpu"))
    model.load_state_dict(saved["model"])
    return model.to(pick_device(device)).eval()
