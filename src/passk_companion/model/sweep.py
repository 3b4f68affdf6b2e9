"""Grids of train runs: `python -m passk_companion sweep GRID.yaml --backend local|ray --workers N
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

* Every trial is one `passk_companion.model.rl.run_trial` run (as the CLI's `train`) in its own
  folder under DIR, named from its variant and grid values. A finished trial (DIR/<trial>/done.json,
  which records the sha256 of the metrics.csv and prompts.csv it vouches for) is skipped, so
  rerunning the command costs seconds; an interrupted one resumes from its checkpoint. A
  finished trial whose files no longer match done.json (truncated, edited, missing), or whose
  done.json is not a JSON object, is run again from its checkpoint, and the summary says why.
* Bases are shared: each distinct (graph, base) is pretrained once, before any trial starts (in
  parallel on the workers), into DIR/bases/<hash of the base key>.pt (the key: task, model and
  pretraining configs with their seeds, the regime rule, threads); trials only read them.
* Names: a variant name is letters, digits, ``.``, ``_`` and ``-`` (no ``__``, not starting with
  a dot, not one of the sweep's own files: ``bases``, ``results.csv``); a trial folder is
  ``<variant>__<field>=<value>__...``, injective: a value that is not plain, or that looks like
  the digest form, is written with a digest of its JSON. Trials that are equal (the same
  configuration, graph and base, however spelt: ``seed: [0, 0]``, ``lr: [1, 1.0]``, two variants
  with the same fields) are refused, and the product is counted before it is built (at most
  MAX_TRIALS unless `max_trials` / --max-trials says otherwise). Trial folders and ``bases`` are
  real folders inside DIR, never symbolic links. Grid files are regular files of at most
  MAX_GRID_BYTES, without YAML aliases, of at most MAX_GRID_NODES values.
* DIR/results.csv has one row per trial and evaluation step, with every config field and every
  metric as columns (plus `trial`, `variant`, `status`, `error` and the timing column `wall_s`).
  It is rewritten atomically after each trial, so it is readable during a sweep.
* A failing trial is recorded with its error and the others go on; `run` reports which failed
  (and the command exits non-zero). A worker process that dies (killed, out of memory) fails only
  the trial it was running, named in the summary; a new worker takes its place.
* Interruption: the workers of the local backend die with the driver however it ends (SIGKILL
  included: a parent-death signal); SIGTERM, SIGHUP and Ctrl-C end the sweep in order (workers
  ended, a local Ray stopped, :class:`Interrupted` raised); and every lock dies with its holder,
  so rerunning the same command at once resumes: finished trials are kept, interrupted ones
  resume from their last checkpoint.
* Backends: "local" is a pool of `workers` processes, one torch thread each (on a machine with
  several GPUs, worker i sees GPU i mod n through CUDA_VISIBLE_DEVICES); "ray" submits trials as
  Ray tasks (num_cpus=1 each, optional fractional num_gpus) to a local Ray started here (and
  stopped here, also on SIGTERM or Ctrl-C), or to a cluster at `address` / $RAY_ADDRESS. Trial
  folders must then be on storage every node sees. Both backends run the same trial function, so
  their results.csv agree apart from `wall_s`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from passk_companion import profiles
from passk_companion.files import (
    atomic_write_text,
    exclusive,
    open_regular,
    own_folder,
    read_regular,
    remove_stale_temporaries,
    writable_dir,
)
from passk_companion.model import backends, config, rl
from passk_companion.model.backends import Interrupted
from passk_companion.model.pretrain import base_digest, load_or_pretrain
from passk_companion.repro import progress as progress_bar

__all__ = [
    "Grid",
    "Trial",
    "SweepResult",
    "Interrupted",
    "load_grid",
    "parse_grid",
    "run",
    "base_file",
    "BACKENDS",
]

BACKENDS = ("local", "ray")
BASE_AXES = ("graph", "base")  # grid fields: TaskConfig.seed and PretrainConfig.seed
MAX_TRIALS = 10_000  # a larger product is refused unless run(max_trials=...) allows it
MAX_GRID_BYTES = 2**20  # a grid file is text a person writes: 1 MiB is far more than enough
MAX_GRID_NODES = 100_000  # values (scalars, lists, mappings) in a parsed grid
RESERVED = ("bases", "results.csv")  # the sweep's own entries in DIR: never a trial folder
_RL_FIELDS = {f.name for f in dataclasses.fields(config.RLConfig)}
_TOP_KEYS = {"profile", "overrides", "grid", "variants"}
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]|_(?!_))*$")
_PLAIN = re.compile(r"[A-Za-z0-9-][A-Za-z0-9.-]{0,39}")
_DIGESTED = re.compile(r".*-h[0-9a-f]{10}")  # the form of a digest-suffixed value
VOUCHED = ("metrics.csv", "prompts.csv")  # the files done.json records checksums of
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
        _check_size({"overrides": self.overrides, "grid": self.grid, "v": self.variants})
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
            name = variant["name"]
            if not _NAME.match(name) or len(name) > 80:
                raise ValueError(
                    f"variants[{i}].name {name!r}: letters, digits, '.', '_' and '-', "
                    "starting with a letter or digit, no '__', at most 80 characters"
                )
            if name.lower() in RESERVED:
                raise ValueError(
                    f"variants[{i}].name {name!r} is the name of one of the sweep's own files "
                    f"({', '.join(RESERVED)}); choose another"
                )
            _check_fields({k: v for k, v in variant.items() if k != "name"}, f"variants[{i}]")
            labels.append(name)
        if len(set(labels)) != len(labels):
            raise ValueError(f"variant names must be unique, got {labels}")
        if self.size() <= MAX_TRIALS:
            self.trials()  # every combination must be a valid RLConfig (larger grids: at run)

    def size(self) -> int:
        """How many trials the grid expands to (computed without building them)."""
        return max(1, len(self.variants)) * math.prod(len(v) for v in self.grid.values())

    def trials(self, max_trials: int = MAX_TRIALS) -> list[Trial]:
        """variants x cross product of the grid, in file order; each config validated (and
        checked to fit the profile's model: config.check_fits). Refuses more than `max_trials`
        trials before building any, and equal trials."""
        if self.size() > max_trials:
            raise ValueError(
                f"the grid expands to {self.size()} trials, more than the limit of {max_trials}; "
                "pass --max-trials to allow it"
            )
        profile = config.for_profile(self.profile)
        task = config.build_task(profile.task)
        keys = list(self.grid)
        variants = self.variants or ({"name": ""},)
        out: list[Trial] = []
        names: set[str] = set()
        seen: dict[tuple, str] = {}
        for variant in variants:
            fixed = {k: v for k, v in variant.items() if k != "name"}
            for combo in itertools.product(*(self.grid[k] for k in keys)):
                values = dict(zip(keys, combo, strict=True))
                fields_ = {**self.overrides, **fixed, **values}
                seeds = {axis: fields_.pop(axis, 0) for axis in BASE_AXES}
                label = f"variant {variant['name']!r}, " if variant["name"] else ""
                try:
                    cfg = dataclasses.replace(profile.rl, **fields_)
                    config.check_fits(profile, cfg, task)
                except (ValueError, TypeError) as err:
                    raise ValueError(f"bad trial ({label}{values}): {err}") from None
                name = _trial_name(variant["name"], values)
                if name in names:
                    raise ValueError(f"two trials would share the folder {name!r}")
                same = (_normal(cfg), seeds["graph"], seeds["base"])
                if same in seen:
                    raise ValueError(
                        f"the trials {seen[same]!r} and {name!r} are the same run (equal "
                        "configuration, graph and base); remove one"
                    )
                names.add(name)
                seen[same] = name
                out.append(Trial(name, variant["name"], values, cfg, **seeds))
        return out


def _normal(cfg: config.RLConfig) -> str:
    """A configuration's identity (its device included: a grid may compare devices), whatever
    the spelling of its numbers (1 and 1.0 are equal)."""

    def norm(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: norm(v) for k, v in sorted(value.items())}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return value

    return json.dumps(norm(dataclasses.asdict(cfg)), sort_keys=True, default=str)


def _check_size(data: Any, limit: int = MAX_GRID_NODES) -> None:
    """Refuse a parsed grid of more than `limit` values (lists, mappings and scalars, counted
    as reached: a structure that repeats one list a million times counts a million), before
    anything walks it further."""
    stack, count = [data], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            raise ValueError(f"the grid holds more than {limit} values: refusing to expand it")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


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
    '.', '-', and not of the digest form below), else its other characters replaced by '-' and a
    digest of its JSON appended ("cuda:1" -> "cuda-1-h3f2a..."), so that names stay readable
    and injective."""
    parts = [variant] if variant else []
    for key, value in values.items():
        text = str(value)
        if not _PLAIN.fullmatch(text) or _DIGESTED.fullmatch(text):
            plain = re.sub(r"[^A-Za-z0-9.-]+", "-", text)[:30].lstrip(".")
            text = f"{plain}-h{_digest(json.dumps(value, sort_keys=True, default=str))}"
        parts.append(f"{key}={text}")
    name = "__".join(parts) or "trial"
    return name if len(name) <= 120 else f"{name[:90]}__h{_digest(name)}"


def parse_grid(data: Any, source: str = "grid") -> Grid:
    """A Grid from parsed YAML, refusing unknown top-level keys, fields, empty lists, bad values
    and unknown profiles with a message naming the key."""
    try:
        _check_size(data)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
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


class _GridLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases (``*name``, which let a few hundred bytes expand into
    billions of values) and with at most MAX_GRID_NODES nodes."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102
        if self.check_event(yaml.events.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in grid files", mark
            )
        self._nodes = getattr(self, "_nodes", 0) + 1
        if self._nodes > MAX_GRID_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_GRID_NODES} values", self.peek_event().start_mark
            )
        return super().compose_node(parent, index)


def load_grid(path: str | os.PathLike) -> Grid:
    """Read and validate a grid file (YAML, safe loader without aliases): a regular file of at
    most MAX_GRID_BYTES (a FIFO or /dev/zero is refused, not read)."""
    path = Path(path)
    raw = read_regular(path, "grid file", MAX_GRID_BYTES)
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_GridLoader)  # noqa: S506 - a safe loader
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        reason = " ".join(str(err).split())
        raise ValueError(f"cannot read grid file {path}: {reason}") from None
    return parse_grid(data, str(path))


@dataclass(frozen=True)
class SweepResult:
    """What a sweep did: the results table, the trials that ran, were skipped or failed, and
    the finished trials that were run again because their files did not match done.json."""

    results: Path
    trials: int
    ran: int
    skipped: int
    failed: dict  # trial name -> error message
    rerun: dict = field(default_factory=dict)  # trial name -> why its done.json was not trusted

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [
            f"{self.trials} trials: {self.ran} ran, {self.skipped} already done, "
            f"{len(self.failed)} failed; results in {self.results}"
        ]
        lines += [f"  RE-RUN {name}: {why}" for name, why in self.rerun.items()]
        lines += [f"  FAILED {name}: {error}" for name, error in self.failed.items()]
        return "\n".join(lines)


def _config_columns(cfg: config.RLConfig) -> dict:
    row = dataclasses.asdict(cfg)
    row.pop("device")
    row["objective_params"] = json.dumps(row["objective_params"], sort_keys=True, allow_nan=False)
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
        load_or_pretrain(
            _profile(profile_name, graph, base), base_path, progress=False, fresh_hint=False
        )
        return {"status": "done", "error": "", "wall_s": time.perf_counter() - t0}
    except Exception as err:  # noqa: BLE001 - reported with the trials that needed it
        return {"status": "failed", "error": f"{type(err).__name__}: {err}",
                "wall_s": time.perf_counter() - t0}  # fmt: skip


def _sha256(path: Path) -> str:
    """The sha256 of the regular file `path` (ValueError if it is not one)."""
    digest = hashlib.sha256()
    with open_regular(path, "result file") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_trial(
    profile_name: str, graph: int, base: int, base_path: str, cfg_fields: dict, trial_dir: str
) -> dict:
    """The trial function every backend runs (in a worker process):
    passk_companion.model.rl.run_trial from the shared base, then mark done (done.json with the
    checksums of the files it vouches
    for). Never raises: errors come back as {"status": "failed", "error": ...}."""
    import torch

    t0 = time.perf_counter()
    try:
        torch.set_num_threads(1)
        cfg = config.RLConfig(**cfg_fields)
        folder = Path(trial_dir)
        rl.run_trial(_profile(profile_name, graph, base), cfg, folder, base_path, fresh_hint=False)
        done = {
            "run_key": rl.run_key(cfg),
            "wall_s": time.perf_counter() - t0,
            "sha256": {name: _sha256(folder / name) for name in VOUCHED},
        }
        atomic_write_text(folder / "done.json", json.dumps(done))
        return {"status": "done", "error": "", "wall_s": done["wall_s"]}
    except Exception as err:  # noqa: BLE001 - a failing trial must not stop the others
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        return {"status": "failed", "error": f"{type(err).__name__}: {err} ({tb})",
                "wall_s": time.perf_counter() - t0}  # fmt: skip


def _finished(trial: Trial, trial_dir: Path) -> tuple[dict | None, str]:
    """(done.json's record, "") if the trial finished and its files match the checksums that
    done.json records; else (None, why not), with why "" when it simply has not finished (no
    done.json) and naming the file otherwise."""
    done_path = trial_dir / "done.json"
    if not os.path.lexists(done_path):
        return None, ""
    try:
        done = json.loads(read_regular(done_path, "done.json", 2**16).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"{done_path} cannot be read ({' '.join(str(err).split())})"
    if not isinstance(done, dict):
        return None, f"{done_path} is not a JSON object"
    if done.get("run_key") != rl.run_key(trial.config, 1):
        return None, f"{done_path} records another configuration"
    sums = done.get("sha256")
    if not isinstance(sums, dict):
        return None, f"{done_path} records no checksums (written by an older version)"
    for name in VOUCHED:
        try:
            actual = _sha256(trial_dir / name)
        except ValueError as err:
            return None, f"{trial_dir / name}: {err}"
        if actual != sums.get(name):
            return None, f"{trial_dir / name} does not match the checksum in {done_path}"
    return done, ""


def _rows(trial: Trial, trial_dir: Path, outcome: dict) -> pd.DataFrame:
    """The trial's rows of results.csv: its metrics.csv with the configuration and outcome in
    front. A metrics.csv that cannot be read (empty, truncated) turns a "done" outcome into a
    failure naming the file."""
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
    df = pd.DataFrame({"step": [float("nan")]})
    if outcome["status"] == "done":
        metrics = trial_dir / "metrics.csv"
        try:
            with open_regular(metrics, "metrics.csv") as f:
                df = pd.read_csv(f)
            if df.empty or "step" not in df.columns:
                raise ValueError("no rows")
        except (ValueError, OSError, pd.errors.ParserError) as err:
            meta["status"] = outcome["status"] = "failed"
            meta["error"] = outcome["error"] = f"cannot read {metrics}: {err}"
            df = pd.DataFrame({"step": [float("nan")]})
    for key, value in reversed(list(meta.items())):
        df.insert(0, key, value)
    return df


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

    with exclusive(out), backends.runner(backend, workers, address, gpus_per_trial) as jobs_:
        bases_dir = out / "bases"
        remove_stale_temporaries(out, bases_dir, *(out / t.name for t in trials))
        torch.set_num_threads(1)  # trials run with one thread, and the base key says so
        try:
            bases = {}
            for t in trials:
                if (t.graph, t.base) not in bases:
                    bases[t.graph, t.base] = base_file(out, grid.profile, t.graph, t.base)
        finally:
            torch.set_num_threads(threads)
        own_folder(out, "bases", "the bases folder")
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
                jobs_.run(_pretrain_base, base_jobs), total=len(base_jobs), desc="bases",
                disable=not progress,
            )  # fmt: skip
            for j, outcome in bar:
                if outcome["status"] != "done":
                    _, g, b, _ = base_jobs[j]
                    broken[g, b] = f"pretraining its base failed: {outcome['error']}"
        frames: dict[int, pd.DataFrame] = {}
        failed: dict[str, str] = {}
        rerun: dict[str, str] = {}
        jobs, todo = [], []
        for i, trial in enumerate(trials):
            trial_dir = out / trial.name
            if (trial.graph, trial.base) in broken:
                failed[trial.name] = broken[trial.graph, trial.base]
                outcome = {"status": "failed", "error": failed[trial.name]}
                frames[i] = _rows(trial, trial_dir, outcome)
                continue
            try:
                own_folder(out, trial.name, "trial folder")
            except ValueError as err:
                failed[trial.name] = str(err)
                frames[i] = _rows(trial, trial_dir, {"status": "failed", "error": str(err)})
                continue
            done, why = _finished(trial, trial_dir)
            if done is not None:
                outcome = {"status": "done", "error": "", "wall_s": done.get("wall_s")}
                frames[i] = _rows(trial, trial_dir, outcome)
                if outcome["status"] == "done":
                    continue
                why = outcome["error"]
                del frames[i]
            if why:
                rerun[trial.name] = f"{why}; run again"
                (trial_dir / "done.json").unlink(missing_ok=True)
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
                jobs_.run(_run_trial, jobs), total=len(jobs), desc="trials",
                disable=not progress,
            )  # fmt: skip
            for j, outcome in bar:
                i = todo[j]
                trial = trials[i]
                frames[i] = _rows(trial, out / trial.name, outcome)
                if outcome["status"] != "done":
                    failed[trial.name] = outcome["error"]
                _write(results, frames)
        return SweepResult(results, len(trials), len(jobs), skipped, failed, rerun)


def _write(path: Path, frames: dict[int, pd.DataFrame]) -> None:
    """results.csv from the trials' rows, atomically; a full disk (or any OSError) is a
    ValueError naming the file that says the trials' own files are kept."""
    if frames:
        table = pd.concat([frames[i] for i in sorted(frames)], ignore_index=True)
    else:
        table = pd.DataFrame(columns=["trial"])
    try:
        atomic_write_text(path, table.to_csv(index=False))
    except OSError as err:
        raise ValueError(
            f"cannot write {path} ({err.strerror or err}); every finished trial keeps its own "
            "files: make room and rerun the same command to rebuild it"
        ) from None
