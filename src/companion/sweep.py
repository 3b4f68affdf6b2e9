"""Grids of train runs: `python -m companion sweep GRID.yaml --backend local|ray --workers N
--out DIR`.

A grid file::

    profile: smoke            # any train profile
    overrides:                # RLConfig fields fixed for every trial
      steps: 5
    variants:                 # optional: named sets of fields, each crossed with `grid`
      - {name: rloo, objective: pass1_reinforce}
      - {name: pkpo_loo_k4, objective: pkpo_loo, k: 4}
    grid:                     # the cross product of these lists; any RLConfig field
      seed: [0, 1]

* Every trial is one `companion.train.train_rl` run in its own folder under DIR, named from its
  variant and grid values. A finished trial (DIR/<trial>/done.json) is skipped, so rerunning the
  command costs seconds; an interrupted one resumes from its checkpoint.
* The pretrained base is shared: it is pretrained once, before any trial starts, into
  DIR/bases/<hash of the base key>.pt (the key: task, model and pretraining configs, seed, threads);
  trials only read it.
* DIR/results.csv has one row per trial and evaluation step, with every config field and every
  metric as columns (plus `trial`, `variant`, `status`, `error` and the timing column `wall_s`).
  It is rewritten atomically after each trial, so it is readable during a sweep.
* A failing trial is recorded with its error and the others go on; `run` reports which failed
  (and the command exits non-zero).
* Backends: "local" is a process pool of `workers` processes, one torch thread each (on a machine
  with several GPUs, worker i sees GPU i mod n through CUDA_VISIBLE_DEVICES); "ray" submits trials
  as Ray tasks (num_cpus=1 each, optional fractional num_gpus) to a local Ray started here, or to a
  cluster at `address` / $RAY_ADDRESS. Trial folders must then be on storage every node sees. Both
  backends run the same trial function, so their results.csv agree apart from `wall_s`.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from . import checkpoint, train
from .atomic import atomic_write_text, remove_stale_temporaries
from .repro import progress as progress_bar

__all__ = ["Grid", "Trial", "SweepResult", "load_grid", "parse_grid", "run", "BACKENDS"]

BACKENDS = ("local", "ray")
_RL_FIELDS = {f.name for f in dataclasses.fields(train.RLConfig)}
_TOP_KEYS = {"profile", "overrides", "grid", "variants"}
TIMING_COLUMNS = ("wall_s",)


@dataclass(frozen=True)
class Trial:
    """One train run of the grid: its folder name, variant label, grid values and full config."""

    name: str
    variant: str
    values: dict
    config: train.RLConfig


@dataclass(frozen=True)
class Grid:
    """A validated grid (see the module docstring); `trials()` expands it."""

    profile: str
    overrides: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    variants: tuple = ()

    def __post_init__(self) -> None:
        train.get_profile(self.profile)  # unknown profile -> ValueError
        for where, fields_ in (("overrides", self.overrides), ("grid", self.grid)):
            if not isinstance(fields_, dict):
                raise ValueError(f"{where} must be a mapping of RLConfig fields")
            _check_fields(fields_, where)
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key} must be a non-empty list, got {values!r}")
        both = set(self.overrides) & set(self.grid)
        if both:
            raise ValueError(f"fields both in overrides and grid: {sorted(both)}")
        labels = []
        for i, variant in enumerate(self.variants):
            if not isinstance(variant, dict) or not isinstance(variant.get("name"), str):
                raise ValueError(f"variants[{i}] must be a mapping with a string 'name'")
            _check_fields({k: v for k, v in variant.items() if k != "name"}, f"variants[{i}]")
            labels.append(variant["name"])
        if len(set(labels)) != len(labels):
            raise ValueError(f"variant names must be unique, got {labels}")
        self.trials()  # every combination must be a valid RLConfig

    def trials(self) -> list[Trial]:
        """variants x cross product of the grid, in file order; each config validated."""
        profile = train.get_profile(self.profile)
        keys = list(self.grid)
        variants = self.variants or ({"name": ""},)
        out, names = [], set()
        for variant in variants:
            fixed = {k: v for k, v in variant.items() if k != "name"}
            for combo in itertools.product(*(self.grid[k] for k in keys)):
                values = dict(zip(keys, combo, strict=True))
                fields_ = {**self.overrides, **fixed, **values}
                try:
                    cfg = dataclasses.replace(profile.rl, **fields_)
                except (ValueError, TypeError) as err:
                    label = f"variant {variant['name']!r}, " if variant["name"] else ""
                    raise ValueError(f"bad trial ({label}{values}): {err}") from None
                name = _trial_name(variant["name"], values)
                if name in names:
                    name = f"{name}__{_digest(json.dumps([variant, values], default=str))}"
                names.add(name)
                out.append(Trial(name, variant["name"], values, cfg))
        return out


def _check_fields(fields_: dict, where: str) -> None:
    unknown = sorted(set(fields_) - _RL_FIELDS)
    if unknown:
        known = ", ".join(sorted(_RL_FIELDS))
        raise ValueError(f"unknown field(s) {unknown} in {where}; RLConfig fields: {known}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _trial_name(variant: str, values: dict) -> str:
    parts = ([variant] if variant else []) + [f"{k}={v}" for k, v in values.items()]
    name = re.sub(r"[^A-Za-z0-9._=-]+", "-", "__".join(parts)) or "trial"
    return name if len(name) <= 120 else f"{name[:100]}__{_digest(name)}"


def parse_grid(data: Any, source: str = "grid") -> Grid:
    """A Grid from parsed YAML, refusing unknown top-level keys, fields, empty lists, bad values
    and unknown profiles with a message naming the key."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a grid file is a mapping with profile, overrides and grid")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    if "profile" not in data:
        raise ValueError(f"{source}: the grid file needs a profile")
    try:
        return Grid(
            profile=data["profile"],
            overrides=data.get("overrides") or {},
            grid=data.get("grid") or {},
            variants=tuple(data.get("variants") or ()),
        )
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def load_grid(path: str | os.PathLike) -> Grid:
    """Read and validate a grid file (YAML, safe loader)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read grid file {path}: {err}") from None
    return parse_grid(data, str(path))


@dataclass(frozen=True)
class SweepResult:
    """What a sweep did: the results table, the trials that ran, were skipped or failed."""

    results: Path
    trials: int
    ran: int
    skipped: int
    failed: dict  # trial name -> error message

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [
            f"{self.trials} trials: {self.ran} ran, {self.skipped} already done, "
            f"{len(self.failed)} failed; results in {self.results}"
        ]
        lines += [f"  FAILED {name}: {error}" for name, error in self.failed.items()]
        return "\n".join(lines)


def _config_columns(cfg: train.RLConfig) -> dict:
    row = dataclasses.asdict(cfg)
    row.pop("device")
    row["objective_params"] = json.dumps(row["objective_params"], sort_keys=True)
    return row


def _run_trial(profile_name: str, base_path: str, cfg_fields: dict, trial_dir: str) -> dict:
    """The trial function every backend runs (in a worker process): load the shared base, train,
    mark done. Never raises: errors come back as {"status": "failed", "error": ...}."""
    import torch

    t0 = time.perf_counter()
    try:
        torch.set_num_threads(1)
        profile = train.get_profile(profile_name)
        cfg = train.RLConfig(**cfg_fields)
        base = train.load_or_pretrain(profile, base_path, cfg.device, progress=False, owned=False)
        task = train.build_task(profile.task)
        train.train_rl(base, task, cfg, trial_dir, progress=False)
        done = {"run_key": train.run_key(cfg), "wall_s": time.perf_counter() - t0}
        atomic_write_text(Path(trial_dir) / "done.json", json.dumps(done))
        return {"status": "done", "error": "", "wall_s": done["wall_s"]}
    except Exception as err:  # noqa: BLE001 - a failing trial must not stop the others
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        return {"status": "failed", "error": f"{type(err).__name__}: {err} ({tb})",
                "wall_s": time.perf_counter() - t0}  # fmt: skip


def _finished(trial: Trial, trial_dir: Path) -> bool:
    done = trial_dir / "done.json"
    if not (done.is_file() and (trial_dir / "metrics.csv").is_file()):
        return False
    try:
        return json.loads(done.read_text()).get("run_key") == train.run_key(trial.config, 1)
    except (OSError, ValueError):
        return False


def _rows(trial: Trial, trial_dir: Path, outcome: dict) -> pd.DataFrame:
    meta = {
        "trial": trial.name,
        "variant": trial.variant,
        **_config_columns(trial.config),
        "status": outcome["status"],
        "error": outcome["error"],
        "wall_s": outcome.get("wall_s", float("nan")),
    }
    metrics = trial_dir / "metrics.csv"
    if outcome["status"] == "done" and metrics.is_file():
        df = pd.read_csv(metrics)
    else:
        df = pd.DataFrame({"step": [float("nan")]})
    for key, value in reversed(list(meta.items())):
        df.insert(0, key, value)
    return df


def _init_local_worker(gpu_ids: Any) -> None:
    """Pin each local worker to one GPU (if any): CUDA_VISIBLE_DEVICES before CUDA starts."""
    if gpu_ids is not None:
        try:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_ids.get_nowait())
        except Exception:  # noqa: BLE001 - more workers than GPUs: share them
            pass
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _local(jobs: list[tuple], workers: int):
    """Yield (index, outcome) as local worker processes finish trials."""
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ctx = mp.get_context("spawn")
    gpu_ids = None
    if n_gpus > 1:
        gpu_ids = ctx.Queue()
        for i in range(workers):
            gpu_ids.put(i % n_gpus)
    with cf.ProcessPoolExecutor(workers, ctx, _init_local_worker, (gpu_ids,)) as pool:
        futures = {pool.submit(_run_trial, *job): i for i, job in enumerate(jobs)}
        for fut in cf.as_completed(futures):
            try:
                outcome = fut.result()
            except Exception as err:  # noqa: BLE001 - a worker that died (killed, OOM)
                outcome = {"status": "failed", "error": f"worker died: {err!r}"}
            yield futures[fut], outcome


def _ray(jobs: list[tuple], workers: int, address: str | None, gpus_per_trial: float | None):
    """Yield (index, outcome) as Ray tasks finish (a local Ray with `workers` CPUs unless an
    address is given)."""
    try:
        import ray
    except ImportError as err:
        raise ValueError(f"the ray backend needs ray installed ({err})") from None
    address = address or os.environ.get("RAY_ADDRESS")
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=workers, **kwargs)
    try:
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0}
        if gpus_per_trial:
            options["num_gpus"] = gpus_per_trial
        remote = ray.remote(**options)(_run_trial)
        pending = {remote.remote(*job): i for i, job in enumerate(jobs)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - a task whose worker died
                    outcome = {"status": "failed", "error": f"ray task failed: {err!r}"}
                yield i, outcome
    finally:
        if started:
            ray.shutdown()


def run(
    grid: Grid,
    out: str | os.PathLike,
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    gpus_per_trial: float | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run every trial of `grid` under `out` (see the module docstring)."""
    import torch

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if gpus_per_trial is not None and not gpus_per_trial > 0:
        raise ValueError(f"gpus_per_trial must be > 0, got {gpus_per_trial}")
    trials = grid.trials()
    out = checkpoint.writable_dir(out, "--out")
    threads = torch.get_num_threads()
    with checkpoint.exclusive(out):
        remove_stale_temporaries(out)
        profile = train.get_profile(grid.profile)
        torch.set_num_threads(1)  # trials run with one thread, and the base key says so
        base_path = out / "bases" / f"{train_digest(profile)}.pt"
        try:
            train.load_or_pretrain(profile, base_path, None, progress=progress)
        finally:
            torch.set_num_threads(threads)
        frames: dict[int, pd.DataFrame] = {}
        jobs, todo = [], []
        for i, trial in enumerate(trials):
            trial_dir = out / trial.name
            if _finished(trial, trial_dir):
                wall = json.loads((trial_dir / "done.json").read_text()).get("wall_s")
                frames[i] = _rows(trial, trial_dir, {"status": "done", "error": "", "wall_s": wall})
            else:
                cfg_fields = dataclasses.asdict(trial.config)
                jobs.append((grid.profile, str(base_path), cfg_fields, str(trial_dir)))
                todo.append(i)
        results = out / "results.csv"
        skipped = len(frames)
        failed: dict[str, str] = {}
        _write(results, frames)
        if jobs:
            stream = (
                _local(jobs, workers)
                if backend == "local"
                else _ray(jobs, workers, address, gpus_per_trial)
            )
            bar = progress_bar(stream, total=len(jobs), desc="trials", disable=not progress)
            for j, outcome in bar:
                i = todo[j]
                trial = trials[i]
                frames[i] = _rows(trial, out / trial.name, outcome)
                if outcome["status"] != "done":
                    failed[trial.name] = outcome["error"]
                _write(results, frames)
        return SweepResult(results, len(trials), len(jobs), skipped, failed)


def train_digest(profile: train.Profile) -> str:
    """The file name of the shared base: a hash of train.base_key at one thread."""
    return _digest(train.base_key(profile, threads=1))


def _write(path: Path, frames: dict[int, pd.DataFrame]) -> None:
    if frames:
        table = pd.concat([frames[i] for i in sorted(frames)], ignore_index=True)
    else:
        table = pd.DataFrame(columns=["trial"])
    atomic_write_text(path, table.to_csv(index=False))
