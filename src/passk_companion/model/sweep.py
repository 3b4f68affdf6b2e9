"""Grids of train runs: `python -m passk_companion sweep GRID.yaml --backend local|ray --workers N
--ensemble R --out DIR` runs every trial of a grid file (:mod:`passk_companion.model.grid`).

* Every trial is one train run (:mod:`passk_companion.model.rl`, as the CLI's `train`) in its own
  folder under DIR, named from its variant and grid values. Trials of one model and task shape
  are packed into ensembles of up to R runs (`--ensemble`, default ENSEMBLE; 1: one run per
  job), trained as one batched computation in one job: each run writes the same bits as alone,
  so results.csv does not depend on R (tests/model/test_sweep.py). R is lowered, with a note in
  the summary, where an ensemble of R would not fit the memory bound of
  :func:`passk_companion.model.config.ensemble_limit`.
* A finished trial (DIR/<trial>/done.json, which records the sha256 of the metrics.csv and
  prompts.csv it vouches for, and the code it was run with: a digest of the package's sources,
  :mod:`passk_companion.model.provenance`) is skipped, so rerunning the command costs seconds; an
  interrupted one resumes from its checkpoint. A finished trial whose files no longer match
  done.json (truncated, edited, missing), whose done.json is not a JSON object, or that ran under
  other code is run again, and the summary says why; so is an interrupted trial whose checkpoint
  other code wrote.
* Bases are shared: each distinct (graph, base) is pretrained once, before any trial starts (in
  parallel on the workers), into DIR/bases/<hash of the base key>.pt (the key: task, model and
  pretraining configs with their seeds, the regime rule, threads); trials only read them.
  Trial folders and ``bases`` are real folders inside DIR, never symbolic links.
* DIR/results.csv has one row per trial and evaluation step, with every config field and every
  metric as columns (plus `trial`, `variant`, `status`, `error` and the timing column `wall_s`,
  a trial's time in its job). It is rewritten atomically after each job, so it is readable during
  a sweep.
* A failing trial is recorded with its error and the others go on (in its ensemble too); `run`
  reports which failed (and the command exits non-zero). A worker process that dies (killed, out
  of memory) fails the unfinished trials of the job it was running, named in the summary; a new
  worker takes its place.
* Interruption: the workers of the local backend die with the driver however it ends (SIGKILL
  included: a parent-death signal); SIGTERM, SIGHUP and Ctrl-C end the sweep in order (workers
  ended, a local Ray stopped, :class:`Interrupted` raised); and every lock dies with its holder,
  so rerunning the same command at once resumes: finished trials are kept, interrupted ones
  resume from their last checkpoint.
* Backends: "local" is a pool of `workers` processes, one torch thread each (on a machine with
  several GPUs, worker i sees GPU i mod n through CUDA_VISIBLE_DEVICES); "ray" submits each job
  (an ensemble) as a Ray task (num_cpus=1, optional fractional num_gpus) to a local Ray started
  here (and stopped here, also on SIGTERM or Ctrl-C), or to a cluster at `address` /
  $RAY_ADDRESS. Trial folders must then be on storage every node sees. Both backends run the
  same job function, so their results.csv agree apart from `wall_s`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

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
from passk_companion.model.grid import MAX_TRIALS, Grid, Trial, load_grid, parse_grid
from passk_companion.model.pretrain import base_digest, load_or_pretrain
from passk_companion.model.provenance import code_digest
from passk_companion.runtime import progress as progress_bar
from passk_companion.validation import is_integer

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
    "ENSEMBLE",
]

BACKENDS = ("local", "ray")
ENSEMBLE = 16  # the most runs a job trains as one ensemble, unless run(ensemble=...) says
VOUCHED = rl.RUN_FILES  # the files done.json records checksums of
TIMING_COLUMNS = ("wall_s",)


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
    notes: list = field(default_factory=list)  # how the trials were packed, where R was lowered

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [
            f"{self.trials} trials: {self.ran} ran, {self.skipped} already done, "
            f"{len(self.failed)} failed; results in {self.results}"
        ]
        lines += [f"  NOTE {note}" for note in self.notes]
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


def _done_record(cfg: config.RLConfig, folder: Path, wall_s: float) -> dict:
    """done.json of a finished trial: its run key, the code it ran with, its wall time and the
    checksums of the files it vouches for."""
    return {
        "run_key": rl.run_key(cfg),
        "code": code_digest(),
        "wall_s": wall_s,
        "sha256": {name: _sha256(folder / name) for name in VOUCHED},
    }


def _run_pack(profile_name: str, members: list[tuple]) -> list[dict]:
    """The job every backend runs (in a worker process): the trials `members` (graph, base,
    base_path, cfg_fields, trial_dir) as one ensemble (passk_companion.model.rl.run_pack) from
    their shared bases, each marked done (done.json) as it ends, while the others go on. Never
    raises: errors come back as {"status": "failed", "error": ...}, one outcome per member."""
    import torch

    t0 = time.perf_counter()
    outcomes: dict[int, dict] = {}
    try:
        torch.set_num_threads(1)
        trials = [
            (_profile(profile_name, graph, base), config.RLConfig(**fields), Path(folder), path)
            for graph, base, path, fields, folder in members
        ]

        def mark(i: int, result: rl.RunResult) -> None:
            outcomes[i] = _settle(trials[i][1], trials[i][2], result)

        rl.run_pack(trials, on_finish=mark)
    except Exception as err:  # noqa: BLE001 - a failing job must not stop the others
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        failure = {"status": "failed", "error": f"{type(err).__name__}: {err} ({tb})",
                   "wall_s": time.perf_counter() - t0}  # fmt: skip
        return [outcomes.get(i, failure) for i in range(len(members))]
    return [outcomes[i] for i in range(len(members))]


def _settle(cfg: config.RLConfig, folder: Path, result: rl.RunResult) -> dict:
    """A run's outcome, with its done.json written if it finished."""
    if result.error is not None:
        error = f"{type(result.error).__name__}: {result.error}"
        return {"status": "failed", "error": error, "wall_s": result.wall_s}
    try:
        record = _done_record(cfg, folder, result.wall_s)
        atomic_write_text(folder / "done.json", json.dumps(record))
    except (OSError, ValueError) as err:
        return {"status": "failed", "error": f"cannot write done.json: {err}",
                "wall_s": result.wall_s}  # fmt: skip
    return {"status": "done", "error": "", "wall_s": result.wall_s, "note": result.note}


def _finished(trial: Trial, trial_dir: Path) -> tuple[dict | None, str]:
    """(done.json's record, "") if the trial finished under this code and its files match the
    checksums that done.json records; else (None, why not), with why "" when it simply has not
    finished (no done.json) and naming the file otherwise."""
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
    if done.get("code") != code_digest():
        return None, (f"{done_path} records other code (package digest {done.get('code')!r}, "
                      f"this one {code_digest()!r})")  # fmt: skip
    sums = done.get("sha256")
    if not isinstance(sums, dict):
        return None, f"{done_path} records no checksums"
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


def _check_arguments(backend: str, workers: int, gpus_per_trial: float | None,
                     ensemble: int) -> None:  # fmt: skip
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, value in (("workers", workers), ("ensemble", ensemble)):
        if not is_integer(value) or not 1 <= value <= 4096:
            raise ValueError(f"{name} must be an integer in 1..4096, got {value!r}")
    if gpus_per_trial is not None and not gpus_per_trial > 0:
        raise ValueError(f"gpus_per_trial must be > 0, got {gpus_per_trial}")


def _pretrain_bases(grid: Grid, trials: list[Trial], out: Path, jobs_, progress: bool,
                    threads: int) -> tuple[dict, dict]:  # fmt: skip
    """Pretrain each (graph, base) of `trials` once into out/bases (in parallel on the workers):
    returns ((graph, base) -> path, (graph, base) -> why its pretraining failed)."""
    import torch

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
    return bases, broken


def _plan(trials: list[Trial], out: Path, broken: dict) -> tuple[dict, dict, dict, list[int]]:
    """What each trial needs: (frames of the trials already settled, failed, rerun, the indices
    of the trials to run). Finished trials are skipped; damaged or stale ones are run again."""
    frames: dict[int, pd.DataFrame] = {}
    failed: dict[str, str] = {}
    rerun: dict[str, str] = {}
    todo: list[int] = []
    for i, trial in enumerate(trials):
        trial_dir = out / trial.name
        if (trial.graph, trial.base) in broken:
            failed[trial.name] = broken[trial.graph, trial.base]
            frames[i] = _rows(trial, trial_dir, {"status": "failed", "error": failed[trial.name]})
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
        todo.append(i)
    return frames, failed, rerun, todo


def _packs(grid: Grid, trials: list[Trial], todo: list[int], ensemble: int,
           notes: list[str]) -> list[list[int]]:  # fmt: skip
    """The trials to run grouped into ensembles: trials of one pack key (rl.pack_key) in grid
    order, at most `ensemble` of them, fewer where the memory bound allows fewer."""
    profile = config.for_profile(grid.profile)
    tasks: dict[int, object] = {}
    groups: dict[tuple, list[int]] = {}
    limits: dict[tuple, int] = {}
    for i in todo:
        t = trials[i]
        if t.graph not in tasks:
            tasks[t.graph] = config.build_task(dataclasses.replace(profile.task, seed=t.graph))
        key = rl.pack_key(profile, t.config, tasks[t.graph])
        groups.setdefault(key, []).append(i)
        limits[key] = min(limits.get(key, ensemble),
                          config.ensemble_limit(profile, t.config, tasks[t.graph]))  # fmt: skip
    packs = []
    for key, members in groups.items():
        size = limits[key]
        if size < ensemble and len(members) > size:
            notes.append(f"ensembles of {len(members)} trials hold at most {size} runs each "
                         f"(memory), fewer than --ensemble {ensemble}")  # fmt: skip
        packs += [members[s : s + size] for s in range(0, len(members), size)]
    return packs


def run(
    grid: Grid,
    out: str | os.PathLike,
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    gpus_per_trial: float | None = None,
    progress: bool = True,
    max_trials: int = MAX_TRIALS,
    ensemble: int = ENSEMBLE,
) -> SweepResult:
    """Run every trial of `grid` under `out`, in ensembles of up to `ensemble` runs (see the
    module docstring)."""
    import torch

    _check_arguments(backend, workers, gpus_per_trial, ensemble)
    trials = grid.trials(max_trials)
    out = writable_dir(out, "--out")
    threads = torch.get_num_threads()
    notes: list[str] = []
    with exclusive(out), backends.runner(backend, workers, address, gpus_per_trial) as jobs_:
        remove_stale_temporaries(out, out / "bases", *(out / t.name for t in trials))
        bases, broken = _pretrain_bases(grid, trials, out, jobs_, progress, threads)
        frames, failed, rerun, todo = _plan(trials, out, broken)
        results = out / "results.csv"
        skipped = len(frames) - len(failed)
        _write(results, frames)
        packs = _packs(grid, trials, todo, ensemble, notes)
        jobs = [
            (grid.profile, [(trials[i].graph, trials[i].base, str(bases[trials[i].graph,
                             trials[i].base]), dataclasses.asdict(trials[i].config),
                             str(out / trials[i].name)) for i in pack])
            for pack in packs
        ]  # fmt: skip
        bar = progress_bar(None, total=len(todo), desc="trials", disable=not progress)
        try:
            for j, outcome in jobs_.run(_run_pack, jobs):
                for i, one in zip(packs[j], _outcomes(outcome, packs[j], trials, out),
                                  strict=True):  # fmt: skip
                    frames[i] = _rows(trials[i], out / trials[i].name, one)
                    if one["status"] != "done":
                        failed[trials[i].name] = one["error"]
                    elif one.get("note"):
                        notes.append(f"{trials[i].name}: {one['note']}")
                _write(results, frames)
                bar.update(len(packs[j]))
        finally:
            bar.close()
        return SweepResult(results, len(trials), len(todo), skipped, failed, rerun, notes)


def _outcomes(outcome: list[dict] | dict, pack: list[int], trials: list[Trial],
              out: Path) -> list[dict]:  # fmt: skip
    """One outcome per trial of a job: the job's own, or, where its worker died (one outcome for
    the job), "done" for the trials whose done.json says they finished and that failure for the
    others."""
    if isinstance(outcome, list):
        return outcome
    settled = []
    for i in pack:
        done, _ = _finished(trials[i], out / trials[i].name)
        settled.append({"status": "done", "error": "", "wall_s": done.get("wall_s")}
                       if done is not None else outcome)  # fmt: skip
    return settled


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
