"""Supervised pretraining of the tiny GPT to a base in the right regime, cached on disk.

Pretraining (`pretrain`) trains on random valid walks between pretraining pairs, drawn with weight
exp(-(d - min_distance) / distance_lambda) for a pair at distance d = t - s (so long pairs are rare
and the base is weak on them). Every `select_every` steps it evaluates the RL train prompts exactly
(never the test prompts) and stops at the first checkpoint that meets the profile's
:class:`~passk_companion.model.evaluation.RegimeRule` (the rule is fixed before any run; if no
checkpoint meets it, the last one is used and the base file records that the rule failed).

`load_or_pretrain` caches the base in a weights-only file keyed by everything that determines its
weights (`base_key`); `base_digest` names the shared base of a sweep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from passk_companion.files import LockUnavailableError, file_lock, regular_file
from passk_companion.model import checkpoint
from passk_companion.model.config import (
    ModelConfig,
    PretrainConfig,
    ProfileConfig,
    build_model,
    build_task,
)
from passk_companion.model.evaluation import PathSet, RegimeRule, exact_metrics
from passk_companion.model.generate import answer_mask
from passk_companion.model.gpt import GPT, pick_device
from passk_companion.model.optim import RunOptimizer
from passk_companion.model.provenance import code_digest
from passk_companion.model.tasks import DagTask
from passk_companion.runtime import progress as progress_bar

__all__ = ["pretrain", "base_key", "base_digest", "load_or_pretrain", "base_selection"]


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
    dev = pick_device(device, model_cfg.numerics)
    torch.manual_seed(cfg.seed)
    model = build_model(task, model_cfg, dev)
    opt = RunOptimizer(list(model.parameters()), ["adamw"], [cfg.lr], weight_decay=0.01)
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
        opt.zero_grad()
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


def base_key(profile: ProfileConfig, threads: int | None = None) -> str:
    """What determines the base model's weights: task, model and pretraining configs (seed
    included), the regime rule, the number of torch CPU threads (float reductions differ) and the
    code (passk_companion.model.provenance: a base of other code is pretrained anew)."""
    threads = torch.get_num_threads() if threads is None else threads
    parts = [profile.task, profile.model, profile.pretrain, profile.regime]
    fields = [dataclasses.asdict(p) for p in parts] + [threads, code_digest()]
    return json.dumps(fields, sort_keys=True)


_BASE_FIELDS = {"key": str, "model": dict, "selection": dict}
_PICKLE_SLACK = 16 * 2**20  # what a checkpoint's data.pkl may hold beyond its tensors


def load_or_pretrain(
    profile: ProfileConfig,
    path: str | Path,
    device: str | None = None,
    progress: bool = True,
    *,
    owned: bool = True,
    fresh: bool = False,
    fresh_hint: bool = True,
) -> GPT:
    """The pretrained base model of `profile`, cached at `path` (written atomically, under a lock
    so that concurrent callers pretrain it once).

    A cached file of another configuration is replaced only if `owned` (the run's own default
    file); a file the user named (`owned=False`) is never overwritten: ValueError. A file that is
    not a base checkpoint raises CheckpointError, unless `fresh`, which pretrains anew over it if
    it is one of this program's checkpoints (:func:`passk_companion.model.checkpoint.is_ours`): any
    other file is never overwritten. `path` must be a regular file or not exist. In a folder that
    is not writable (no lock file can be made there) an existing base of this configuration is
    read without a lock, since readers need none (writers replace the file atomically); nothing
    is written there. `fresh_hint`: whether the caller has a --fresh flag to suggest in errors."""
    path = regular_file(path, "base file", must_exist=False)
    key = base_key(profile)
    dev = pick_device(device, profile.model.numerics)
    task = build_task(profile.task)
    model = build_model(task, profile.model, torch.device("cpu"))
    total, largest = checkpoint.state_bytes(model)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path.with_name(path.name + ".lock")))
            writable = True
        except LockUnavailableError:
            writable = False
        if path.exists():
            ours = checkpoint.is_ours(path)
            remedy = (
                "delete it, pass --fresh to pretrain a new base over it, or name another --base"
                if ours and fresh_hint and writable
                else "delete it or name another --base"
                if fresh_hint
                else "delete it to pretrain a new base"
            )
            try:
                saved = checkpoint.load(
                    path, _BASE_FIELDS, "base checkpoint", remedy,
                    max_bytes=total + _PICKLE_SLACK, max_tensor_bytes=largest,
                )  # fmt: skip
            except checkpoint.CheckpointError:
                if not (fresh and writable):
                    raise
                if not ours:
                    raise ValueError(
                        f"refusing to overwrite {path} with --fresh: it is not a checkpoint "
                        "written by this program; move it away or name another --base"
                    ) from None
                saved = None
            if saved is not None and saved["key"] == key:
                checkpoint.restore(model, saved["model"], path, "base checkpoint", remedy)
                model.eval()
                return model.to(dev)
            if saved is not None and not (owned and writable):
                raise ValueError(
                    f"refusing to overwrite {path}: it holds a base pretrained with another "
                    "configuration (profile, threads or pretraining settings differ); name a "
                    "new --base file"
                )
        if not writable:
            raise ValueError(
                f"cannot pretrain a base into {path}: its folder is not writable; name a --base "
                "file in a writable folder"
            )
        model, selection = pretrain(
            task, profile.model, profile.pretrain, profile.regime, device, progress
        )
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        checkpoint.save(path, {"key": key, "model": state, "selection": selection})
        return model


def base_digest(profile: ProfileConfig) -> str:
    """The file name of a sweep's shared base: a hash of base_key at one thread."""
    return hashlib.sha256(base_key(profile, threads=1).encode()).hexdigest()[:10]


def base_selection(path: str | Path) -> dict:
    """The pretraining selection recorded in a base file: chosen step, whether the regime rule
    held, and the checks made (step, mean J_1 of the RL train prompts, their hard fraction)."""
    return checkpoint.load(path, _BASE_FIELDS, "base checkpoint")["selection"]
