"""Objective base class and registry (see the package docstring for the contract).

Parameters are checked where every caller passes: :func:`get` accepts only the keyword
parameters of the objective's constructor (never its `generator`, which is not configuration),
each a plain value (a finite number, a bool, a short string or None: what a grid file or a
results table can hold), and each constructor checks its own ranges with
:mod:`passk_companion.validation`, so ``{eps: .nan}`` or ``{beta: .inf}`` fails with one line naming
the parameter before any work starts.

Objectives of other packages join the registry on first use (the first :func:`get`,
:func:`names` or :func:`parameters`): every entry point of the group ``passk_companion.objectives``
is loaded (its module registers its classes; an entry point that names an unregistered
:class:`Objective` subclass is registered under the entry point's name), then every module named
in the environment variable ``PASSK_COMPANION_IMPORT`` (comma-separated) is imported. A plugin
that fails to load is reported in one line naming it (stderr, and in the error for an unknown
objective), and the others are still loaded. :func:`use` imports modules now and adds them to
``PASSK_COMPANION_IMPORT``, so that the processes this one starts (sweep workers, Ray workers)
import them too.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import math
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from passk_companion import validation

__all__ = [
    "Objective",
    "StdNormalized",
    "SAMPLERS",
    "register",
    "unregister",
    "get",
    "parameters",
    "names",
    "is_binary",
    "seeded",
    "use",
    "plugin_errors",
    "ENTRY_POINT_GROUP",
    "IMPORT_VARIABLE",
]

ENTRY_POINT_GROUP = "passk_companion.objectives"  # installed packages register objectives here
IMPORT_VARIABLE = "PASSK_COMPANION_IMPORT"  # modules every process imports (comma-separated)

SAMPLERS = ("iid", "swor")  # the values of Objective.sampler (and of the training config)


class Objective(ABC):
    """One objective variant: rewards (B, n) and k -> weights (B, n).

    Class attributes a variant sets:
      unbiased_for: "pass@1" (E_pi[r]), "pass@k" (0/1 rewards only), "max@k" (E[max of k
          rewards], whose 0/1 case is pass@k) or another target the harness knows, if
          E[sum_i w_i grad log pi(y_i)] equals that gradient exactly; None for shaped or
          heuristic variants (passk_companion.theory.harness.TARGETS lists the targets).
      binary_only: whether rewards must be 0/1 (otherwise any finite real rewards).
      stochastic: whether weights use randomness beyond the rollouts (then pass a generator).
      min_group: the smallest n the formula is defined for.
      sampler: the sampling law of the n rollouts under which `unbiased_for` holds: "iid"
          (independent draws) or "swor" (distinct draws in Plackett-Luce order, Gumbel-top-k).
      needs_logprobs: whether the weights also need log pi(y_i) of each rollout (detached).
    """

    name: ClassVar[str] = ""
    unbiased_for: ClassVar[str | None] = None
    binary_only: ClassVar[bool] = True
    stochastic: ClassVar[bool] = False
    min_group: ClassVar[int] = 1
    sampler: ClassVar[str] = "iid"
    needs_logprobs: ClassVar[bool] = False

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def weights(self, rewards: Tensor, k: int, logprobs: Tensor | None = None) -> Tensor:
        """Validate the inputs, then return the (B, n) float64 weights of `_weights`.

        `logprobs` (B, n), the log-probability of each rollout, is required by objectives with
        `needs_logprobs` (and ignored by the others)."""
        if not isinstance(rewards, Tensor) or rewards.ndim != 2:
            raise ValueError(f"{self.name}: rewards must be a (B, n) tensor")
        batch, n = rewards.shape
        if batch == 0 or n == 0:
            raise ValueError(
                f"{self.name}: rewards must be non-empty, got shape {tuple(rewards.shape)}"
            )
        if not validation.is_integer(k) or k < 1:
            raise ValueError(f"{self.name}: k must be an integer >= 1, got {k!r}")
        if k > n:
            raise ValueError(f"{self.name}: k = {k} exceeds the group size n = {n}")
        if n < self.min_group:
            raise ValueError(f"{self.name}: needs groups of n >= {self.min_group}, got n = {n}")
        rewards = _real(rewards, f"{self.name}: rewards")
        if self.binary_only and not is_binary(rewards):
            raise ValueError(f"{self.name}: rewards must be binary (0/1)")
        if self.needs_logprobs:
            if not isinstance(logprobs, Tensor) or logprobs.shape != rewards.shape:
                raise ValueError(f"{self.name}: needs logprobs of shape {tuple(rewards.shape)}")
            logprobs = _real(logprobs, f"{self.name}: logprobs")
            if bool(torch.any(logprobs > 0)):
                raise ValueError(f"{self.name}: logprobs must be <= 0")
            w = self._weights(rewards, k, logprobs=logprobs)
        else:
            w = self._weights(rewards, k)
        assert w.shape == rewards.shape, f"{self.name} returned shape {tuple(w.shape)}"
        return w

    @abstractmethod
    def _weights(self, rewards: Tensor, k: int, **extra: Tensor) -> Tensor:
        """The formula, on validated float64 rewards (B, n) (and `logprobs` if needed)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, unbiased_for={self.unbiased_for!r})"


_INTEGER_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def is_binary(rewards: Tensor) -> bool:
    """Whether every reward is 0 or 1 (the 0/1 verifier of Theorem 3.1): mapping nonzero values
    to 1 changes nothing (NaN maps to 1 and is not equal to it)."""
    return torch.equal(rewards, rewards.bool().to(rewards.dtype))


def _real(values: Tensor, what: str) -> Tensor:
    """`values` as float64, refusing what a silent cast would corrupt: complex or non-numeric
    dtypes (torch drops the imaginary part) and NaN or infinite entries."""
    if not (values.is_floating_point() or values.dtype in _INTEGER_DTYPES):
        raise ValueError(f"{what} must be real numbers, got dtype {values.dtype}")
    values = values.detach().to(torch.float64)
    low, high = torch.aminmax(values)  # NaN propagates to both
    if not (math.isfinite(low.item()) and math.isfinite(high.item())):
        raise ValueError(f"{what} must be finite (no NaN or inf)")
    return values


class StdNormalized(Objective):
    """An objective that divides by a group standard deviation plus `eps` (GRPO, Chen et al.)."""

    default_eps: ClassVar[float] = 1e-4

    def __init__(self, eps: float | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        eps = self.default_eps if eps is None else eps
        self.eps = validation.number(eps, f"{self.name}.eps", low=0, high=1e6)


_REGISTRY: dict[str, type[Objective]] = {}
T = TypeVar("T", bound=type[Objective])


def register(name: str) -> Callable[[T], T]:
    """Class decorator: register an Objective subclass under `name`."""

    def deco(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise TypeError("register() decorates Objective subclasses")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"objective {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def unregister(name: str) -> None:
    """Remove `name` from the registry (notebooks and tests that register throwaway variants)."""
    _REGISTRY.pop(name, None)


def parameters(name: str) -> list[str]:
    """The parameters that configuration may set for the objective `name` (the keyword
    parameters of its constructor, without `generator`)."""
    cls = _lookup(name)
    signature = inspect.signature(cls.__init__)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        p.name
        for p in list(signature.parameters.values())[1:]
        if p.kind in kinds and p.name != "generator"
    ]


def _lookup(name: object) -> type[Objective]:
    _load_plugins()
    try:
        return _REGISTRY[name]  # type: ignore[index]
    except (KeyError, TypeError):
        broken = "".join(f"; {line}" for line in _BROKEN.values())
        raise ValueError(
            f"unknown objective {name!r}; registered: {', '.join(names())}{broken}"
        ) from None


_BROKEN: dict[str, str] = {}  # entry-point name -> the line that reports its failure
_ENTRY_POINTS_LOADED = False
_IMPORTED: set[str] = set()  # modules of IMPORT_VARIABLE imported in this process


def plugin_errors() -> list[str]:
    """One line for each entry point of ENTRY_POINT_GROUP that failed to load."""
    _load_plugins()
    return list(_BROKEN.values())


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True  # first: a plugin that calls names() while loading is no loop
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=str):
        try:
            loaded = ep.load()
            if (
                isinstance(loaded, type)
                and issubclass(loaded, Objective)
                and loaded not in _REGISTRY.values()
            ):
                register(ep.name)(loaded)
        except Exception as err:  # noqa: BLE001 - any failure of a plugin is reported, not fatal
            line = (
                f"objective plugin {ep.name!r} ({ep.value}, entry point group "
                f"{ENTRY_POINT_GROUP}) failed to load: {type(err).__name__}: "
                + " ".join(str(err).split())
            )
            _BROKEN[ep.name] = line
            print(f"warning: {line}", file=sys.stderr)


def _modules(text: str) -> list[str]:
    return [m for m in (part.strip() for part in text.split(",")) if m]


def _import(module: str, where: str) -> None:
    if module in _IMPORTED:
        return
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - one line naming the module, whatever it raised
        reason = " ".join(str(err).split())
        raise ValueError(
            f"{where}: cannot import {module!r}: {type(err).__name__}: {reason}"
        ) from None
    _IMPORTED.add(module)


def _load_plugins() -> None:
    _load_entry_points()
    for module in _modules(os.environ.get(IMPORT_VARIABLE, "")):
        _import(module, IMPORT_VARIABLE)


def use(modules: list[str] | tuple[str, ...]) -> None:
    """Import `modules` (which register objectives) now, and add them to IMPORT_VARIABLE, with
    the folder each was found in added to PYTHONPATH, so that the processes started from this one
    (sweep workers, Ray workers on this machine) import them as well. ValueError (one line naming
    the module) if one cannot be imported."""
    for module in modules:
        validation.string(module, "--import", max_length=200)
        _import(module, "--import")
        listed = _modules(os.environ.get(IMPORT_VARIABLE, ""))
        if module not in listed:
            os.environ[IMPORT_VARIABLE] = ",".join([*listed, module])
        root = _import_root(module)
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root is not None and root not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])


def _import_root(module: str) -> str | None:
    """The folder on sys.path that holds the top-level package of `module` (None if unknown)."""
    top = sys.modules.get(module.split(".")[0])
    origin = getattr(top, "__file__", None)
    if origin is None:
        return None
    path = os.path.dirname(os.path.abspath(origin))
    if os.path.basename(origin) == "__init__.py":
        path = os.path.dirname(path)
    if path.startswith(os.path.abspath(sys.prefix) + os.sep):  # installed: every process finds it
        return None
    return path


def _plain(value: object, where: str) -> object:
    """A parameter value a grid file or a results table can hold: a finite number, a bool, a
    string of at most 64 characters, or None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return validation.string(value, where, max_length=64)
    if validation.is_number(value):
        validation.number(value, where)
        return value
    raise ValueError(f"{where} must be a number, a string, True/False or None, got {value!r}")


def get(name: str, **params: Any) -> Objective:
    """An instance of the objective registered as `name`, constructed with `params`, which are
    validated first (see the module docstring): ValueError naming the parameter."""
    cls = _lookup(name)
    allowed = parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"objective {name} has no parameter(s) {unknown}; its parameters: "
            f"{', '.join(allowed) or 'none'}"
        )
    for key, value in params.items():
        _plain(value, f"{name}.{key}")
    return cls(**params)


def names(sampler: str | None = None) -> list[str]:
    """Names of the registered objectives (those assuming `sampler`, if given), sorted."""
    _load_plugins()
    return sorted(n for n, cls in _REGISTRY.items() if sampler is None or cls.sampler == sampler)


def seeded(objective: str | Objective, seed: int) -> Objective:
    """`objective` itself if it is an instance, else a fresh one by name whose generator (for
    stochastic objectives) is seeded with seed + 1."""
    if isinstance(objective, Objective):
        return objective
    obj = get(objective)
    if obj.stochastic:
        obj.generator = torch.Generator().manual_seed(seed + 1)
    return obj
