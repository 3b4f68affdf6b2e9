"""Grid files of train runs: what `python -m passk_companion sweep GRID.yaml` expands into trials.

A grid file::

    profile: smoke            # any train profile
    overrides:                # RLConfig fields fixed for every trial
      steps: 5
    variants:                 # optional: named sets of fields, each crossed with `grid`
      - {name: rloo, objective: pass1_reinforce}
      - {name: pkpo_loo_k4, objective: pkpo_loo, k: 4}
    grid:                     # the cross product of these lists; any RLConfig field, and
      seed: [0, 1]            #   graph (the task's seed) and base (the pretraining seed)

* Names: a variant name is letters, digits, ``.``, ``_`` and ``-`` (no ``__``, not starting with
  a dot, not one of the sweep's own files: ``bases``, ``results.csv``); a trial folder is
  ``<variant>__<field>=<value>__...``, injective: a value that is not plain, or that looks like
  the digest form, is written with a digest of its JSON.
* Trials that are equal (the same configuration, graph and base, however spelt: ``seed: [0, 0]``,
  ``lr: [1, 1.0]``, two variants with the same fields) are refused, and the product is counted
  before it is built (at most MAX_TRIALS unless `max_trials` / --max-trials says otherwise).
* Grid files are regular files of at most MAX_GRID_BYTES, without YAML aliases, of at most
  MAX_GRID_NODES values. Every combination is validated (an RLConfig, and sizes the profile's
  model can use) before anything runs.

:mod:`passk_companion.model.sweep` runs the trials.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from passk_companion import profiles
from passk_companion.files import load_yaml_strict
from passk_companion.model import config
from passk_companion.validation import is_integer

__all__ = [
    "Grid",
    "Trial",
    "load_grid",
    "parse_grid",
    "BASE_AXES",
    "MAX_TRIALS",
    "MAX_GRID_BYTES",
    "MAX_GRID_NODES",
    "RESERVED",
]

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
                if not is_integer(v) or v < 0:
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


def load_grid(path: str | os.PathLike) -> Grid:
    """Read and validate a grid file, strictly (passk_companion.files.load_yaml_strict: no
    duplicate keys, aliases or deep nesting, at most MAX_GRID_NODES values): a regular file of
    at most MAX_GRID_BYTES (a FIFO or /dev/zero is refused, not read)."""
    path = Path(path)
    data = load_yaml_strict(path, "grid file", MAX_GRID_BYTES, MAX_GRID_NODES)
    return parse_grid(data, str(path))
