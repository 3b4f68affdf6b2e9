"""Grids of train runs: `python -m companion sweep GRID.yaml --backend local|ray --workers N
--out DIR`.

A grid file::

    profile: smoke            # any train profile
    overrides:                # RLConfig fields fixed for every trial
      steps: 5
    variants:                 # optional: named sets of fields, each crossed with `grid`
      - {name: rloo, objective: pass1_reinforce}
      - {name: pkpo_loo_k4, objective: pkpo_loo, k: 4}
    grid:                     # the cross product of these lists; any RLConfig field, and
      seed: [0, 1]            #   graph (the task's seed) and base (the pretraining seed)

* Every trial is one `companion.model.rl.run_trial` run (as the CLI's `train`) in its own folder
  under DIR, named from its variant and grid values. A finished trial (DIR/<trial>/done.json)
  is skipped, so rerunning the command costs seconds; an interrupted one resumes from its
  checkpoint.
* Bases are shared: each distinct (graph, base) is pretrained once, before any trial starts (in
  parallel on the workers), into DIR/bases/<hash of the base key>.pt (the key: task, model and
  pretraining configs with their seeds, the regime rule, threads); trials only read them.
* Names: a variant name is letters, digits, ``.``, ``_`` and ``-`` (no ``__``, not starting with
  a dot); a trial folder is ``<variant>__<field>=<value>__...``. Two trials of one grid never
  share a folder (duplicate values are refused), and the product is counted before it is built
  (at most MAX_TRIALS unless `max_trials` says otherwise).
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
import math
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

from companion import profiles
from companion.files import atomic_write_text, exclusive, remove_stale_temporaries, writable_dir
from companion.model import config, rl
from companion.model.pretrain import base_digest, load_or_pretrain
from companion.repro import progress as progress_bar

__all__ = [
    "Grid",
    "Trial",
    "SweepResult",
    "load_grid",
    "parse_grid",
    "run",
    "base_file",
    "BACKENDS",
]

BACKENDS = ("local", "ray")
BASE_AXES = ("graph", "base")  # grid fields: TaskConfig.seed and PretrainConfig.seed
MAX_TRIALS = 10_000  # a larger product is refused unless run(max_trials=...) allows it
_RL_FIELDS = {f.name for f in dataclasses.fields(config.RLConfig)}
_TOP_KEYS = {"profile", "overrides", "grid", "variants"}
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]|_(?!_))*$")
TIMING_COLUMNS = ("wall_s",)


@dataclass(frozen=True)
class Trial:
    """One train run of the grid: its folder name, variant label, grid values, full RL config,
    and the graph and base seeds it starts from."""

    name: str
    variant: str
    values: dict
    config: config.RLConfig
    graph: int = 0
    base: int = 0


@dataclass(frozen=True)
class Grid:
    """A validated grid (see the module docstring); `trials()` expands it."""

    profile: str
    overrides: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    variants: tuple = ()

    def __post_init__(self) -> None:
        profiles.check(self.profile)
        for where, fields_ in (("overrides", self.overrides), ("grid", self.grid)):
            if not isinstance(fields_, dict):
                raise ValueError(f"{where} must be a mapping of RLConfig fields")
            _check_fields(fields_, where, base_axes=True)
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key} must be a non-empty list, got {values!r}")
            if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
                raise ValueError(f"grid.{key} repeats a value: {values!r}")
        for key in BASE_AXES:
            values = self.grid.get(key, [self.overrides.get(key, 0)])
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"{key} must be a non-negative integer seed, got {v!r}")
        both = set(self.overrides) & set(self.grid)
        if both:
            raise ValueError(f"fields both in overrides and grid: {sorted(both)}")
        labels = []
        for i, variant in enumerate(self.variants):
            if not isinstance(variant, dict) or not isinstance(variant.get("name"), str):
                raise ValueError(f"variants[{i}] must be a mapping with a string 'name'")
            if not _NAME.match(variant["name"]) or len(variant["name"]) > 80:
                raise ValueError(
                    f"variants[{i}].name {variant['name']!r}: letters, digits, '.', '_' and '-', "
                    "starting with a letter or digit, no '__', at most 80 characters"
                )
            _check_fields({k: v for k, v in variant.items() if k != "name"}, f"variants[{i}]")
            labels.append(variant["name"])
        if len(set(labels)) != len(labels):
            raise ValueError(f"variant names must be unique, got {labels}")
        if self.size() <= MAX_TRIALS:
            self.trials()  # every combination must be a valid RLConfig (larger grids: at run)

    def size(self) -> int:
        """How many trials the grid expands to (computed without building them)."""
        return max(1, len(self.variants)) * math.prod(len(v) for v in self.grid.values())

    def trials(self, max_trials: int = MAX_TRIALS) -> list[Trial]:
        """variants x cross product of the grid, in file order; each config validated. Refuses
        more than `max_trials` trials before building any."""
        if self.size() > max_trials:
            raise ValueError(
                f"the grid expands to {self.size()} trials, more than the limit of {max_trials}; "
                "pass --max-trials to allow it"
            )
        rl_defaults = config.for_profile(self.profile).rl
        keys = list(self.grid)
        variants = self.variants or ({"name": ""},)
        out, names = [], set()
        for variant in variants:
            fixed = {k: v for k, v in variant.items() if k != "name"}
            for combo in itertools.product(*(self.grid[k] for k in keys)):
                values = dict(zip(keys, combo, strict=True))
                fields_ = {**self.overrides, **fixed, **values}
                seeds = {axis: fields_.pop(axis, 0) for axis in BASE_AXES}
                try:
                    cfg = dataclasses.replace(rl_defaults, **fields_)
                except (ValueError, TypeError) as err:
                    label = f"variant {variant['name']!r}, " if variant["name"] else ""
                    raise ValueError(f"bad trial ({label}{values}): {err}") from None
                name = _trial_name(variant["name"], values)
                if name in names:
                    raise ValueError(f"two trials would share the folder {name!r}")
                names.add(name)
                out.append(Trial(name, variant["name"], values, cfg, **seeds))
        return out


def _check_fields(fields_: dict, where: str, base_axes: bool = False) -> None:
    allowed = _RL_FIELDS | (set(BASE_AXES) if base_axes else set())
    unknown = sorted(set(fields_) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed))
        raise ValueError(f"unknown field(s) {unknown} in {where}; allowed: {known}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _trial_name(variant: str, values: dict) -> str:
    """<variant>__<field>=<value>__...: each value as written when it is plain (letters, digits,
    '.', '-'), else its other characters replaced by '-' and a digest of its JSON appended
    ("cuda:1" -> "cuda-1-h3f2a..."), so that names stay readable and injective."""
    parts = [variant] if variant else []
    for key, value in values.items():
        text = str(value)
        if not re.fullmatch(r"[A-Za-z0-9-][A-Za-z0-9.-]{0,39}", text):
            plain = re.sub(r"[^A-Za-z0-9.-]+", "-", text)[:30].lstrip(".")
            text = f"{plain}-h{_digest(json.dumps(value, sort_keys=True, default=str))}"
        parts.append(f"{key}={text}")
    name = "__".join(parts) or "trial"
    return name if len(name) <= 120 else f"{name[:90]}__h{_digest(name)}"


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


def _config_columns(cfg: config.RLConfig) -> dict:
    row = dataclasses.asdict(cfg)
    row.pop("device")
    row["objective_params"] = json.dumps(row["objective_params"], sort_keys=True)
    return row


def _profile(name: str, graph: int, base: int) -> config.ProfileConfig:
    return config.with_base(config.for_profile(name), graph=graph, base=base)


def base_file(out: str | os.PathLike, profile: str, graph: int, base: int) -> Path:
    """Where a sweep into `out` keeps the shared base of (graph, base) of `profile`."""
    return Path(out) / "bases" / f"{base_digest(_profile(profile, graph, base))}.pt"


def _pretrain_base(profile_name: str, graph: int, base: int, base_path: str) -> dict:
    """The base job every backend runs first: pretrain (graph, base) into base_path. Never
    raises: errors come back as {"status": "failed", "error": ...}."""
    import torch

    t0 = time.perf_counter()
    try:
        torch.set_num_threads(1)
        load_or_pretrain(_profile(profile_name, graph, base), base_path, progress=False)
        return {"status": "done", "error": "", "wall_s": time.perf_counter() - t0}
    except Exception as err:  # noqa: BLE001 - reported with the trials that needed it
        return {"status": "failed", "error": f"{type(err).__name__}: {err}",
                "wall_s": time.perf_counter() - t0}  # fmt: skip


def _run_trial(
    profile_name: str, graph: int, base: int, base_path: str, cfg_fields: dict, trial_dir: str
) -> dict:
    """The trial function every backend runs (in a worker process): companion.model.rl.run_trial
    from the shared base, then mark done. Never raises: errors come back as {"status": "failed",
    "error": ...}."""
    import torch

    t0 = time.perf_counter()
    try:
        torch.set_num_threads(1)
        cfg = config.RLConfig(**cfg_fields)
        rl.run_trial(_profile(profile_name, graph, base), cfg, trial_dir, base_path)
        done = {"run_key": rl.run_key(cfg), "wall_s": time.perf_counter() - t0}
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
        return json.loads(done.read_text()).get("run_key") == rl.run_key(trial.config, 1)
    except (OSError, ValueError):
        return False


def _rows(trial: Trial, trial_dir: Path, outcome: dict) -> pd.DataFrame:
    meta = {
        "trial": trial.name,
        "variant": trial.variant,
        "graph": trial.graph,
        "base": trial.base,
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


def _local(fn, jobs: list[tuple], workers: int):
    """Yield (index, outcome) as local worker processes finish fn(*job) for each job."""
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ctx = mp.get_context("spawn")
    gpu_ids = None
    if n_gpus > 1:
        gpu_ids = ctx.Queue()
        for i in range(workers):
            gpu_ids.put(i % n_gpus)
    with cf.ProcessPoolExecutor(workers, ctx, _init_local_worker, (gpu_ids,)) as pool:
        futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        for fut in cf.as_completed(futures):
            try:
                outcome = fut.result()
            except Exception as err:  # noqa: BLE001 - a worker that died (killed, OOM)
                outcome = {"status": "failed", "error": f"worker died: {err!r}"}
            yield futures[fut], outcome


def _ray(fn, jobs: list[tuple], workers: int, address: str | None, gpus_per_trial: float | None):
    """Yield (index, outcome) as Ray tasks of fn(*job) finish (a local Ray with `workers` CPUs
    unless an address is given)."""
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
        remote = ray.remote(**options)(fn)
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
    max_trials: int = MAX_TRIALS,
) -> SweepResult:
    """Run every trial of `grid` under `out` (see the module docstring)."""
    import torch

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if gpus_per_trial is not None and not gpus_per_trial > 0:
        raise ValueError(f"gpus_per_trial must be > 0, got {gpus_per_trial}")
    trials = grid.trials(max_trials)
    out = writable_dir(out, "--out")
    threads = torch.get_num_threads()

    def stream(fn, jobs):
        if backend == "local":
            return _local(fn, jobs, workers)
        return _ray(fn, jobs, workers, address, gpus_per_trial)

    with exclusive(out):
        remove_stale_temporaries(out)
        torch.set_num_threads(1)  # trials run with one thread, and the base key says so
        try:
            bases = {}
            for t in trials:
                if (t.graph, t.base) not in bases:
                    bases[t.graph, t.base] = base_file(out, grid.profile, t.graph, t.base)
        finally:
            torch.set_num_threads(threads)
        base_jobs = [(grid.profile, g, b, str(path)) for (g, b), path in bases.items()]
        broken: dict[tuple[int, int], str] = {}
        if len(base_jobs) == 1:  # one base: pretrain it here (a pool would only add start-up)
            try:
                outcome = _pretrain_base(*base_jobs[0])
            finally:
                torch.set_num_threads(threads)
            if outcome["status"] != "done":
                raise ValueError(f"pretraining the base failed: {outcome['error']}")
        elif base_jobs:
            bar = progress_bar(
                stream(_pretrain_base, base_jobs), total=len(base_jobs), desc="bases",
                disable=not progress,
            )  # fmt: skip
            for j, outcome in bar:
                if outcome["status"] != "done":
                    _, g, b, _ = base_jobs[j]
                    broken[g, b] = f"pretraining its base failed: {outcome['error']}"
        frames: dict[int, pd.DataFrame] = {}
        failed: dict[str, str] = {}
        jobs, todo = [], []
        for i, trial in enumerate(trials):
            trial_dir = out / trial.name
            if (trial.graph, trial.base) in broken:
                failed[trial.name] = broken[trial.graph, trial.base]
                outcome = {"status": "failed", "error": failed[trial.name]}
                frames[i] = _rows(trial, trial_dir, outcome)
            elif _finished(trial, trial_dir):
                wall = json.loads((trial_dir / "done.json").read_text()).get("wall_s")
                outcome = {"status": "done", "error": "", "wall_s": wall}
                frames[i] = _rows(trial, trial_dir, outcome)
            else:
                base_path = str(bases[trial.graph, trial.base])
                cfg_fields = dataclasses.asdict(trial.config)
                jobs.append(
                    (grid.profile, trial.graph, trial.base, base_path, cfg_fields, str(trial_dir))
                )
                todo.append(i)
        results = out / "results.csv"
        skipped = len(frames) - len(failed)
        _write(results, frames)
        if jobs:
            bar = progress_bar(
                stream(_run_trial, jobs), total=len(jobs), desc="trials", disable=not progress
            )
            for j, outcome in bar:
                i = todo[j]
                trial = trials[i]
                frames[i] = _rows(trial, out / trial.name, outcome)
                if outcome["status"] != "done":
                    failed[trial.name] = outcome["error"]
                _write(results, frames)
        return SweepResult(results, len(trials), len(jobs), skipped, failed)


def _write(path: Path, frames: dict[int, pd.DataFrame]) -> None:
    if frames:
        table = pd.concat([frames[i] for i in sorted(frames)], ignore_index=True)
    else:
        table = pd.DataFrame(columns=["trial"])
    atomic_write_text(path, table.to_csv(index=False))
