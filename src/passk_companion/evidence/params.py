"""Validation of notebook parameters.

papermill only *warns* about an unknown or mistyped parameter (``-p n_group 200`` runs with the
default ``n_groups``), so every notebook validates its parameters in the cell right after the
``parameters`` cell (papermill injects its values between the two)::

    from passk_companion.evidence import params as par

    p = par.Params(globals())
    profile = p.profile()
    n = p.int("n", minimum=2)
    lr = p.number("lr", low=0, low_open=True)
    p.done()        # every injected name must be a validated parameter

Each method reads the current value from the notebook's namespace, raises a ValueError that names
the parameter when it is invalid (non-finite numbers included), and returns the normalised value.
``done()`` rejects names that papermill injected (the cell that starts with ``# Parameters``) but
that the notebook does not know, and lists the valid ones.

Sizes have upper bounds as well as lower ones (``maximum=``), and relations between parameters
are checked in the same cell, on the values already validated, so that a combination that cannot
work fails there, naming both parameters, instead of crashing cells later::

    seed = p.int("seed", minimum=0)
    p.member("seed", of="seeds")                   # the displayed seed is one of the seeds
    p.contains("entropy_coefs", [0.0])             # the reference value is in the list
    p.product("groups", "n", "j1_values")          # groups x n x len(j1_values) numbers at once
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence, Sized
from typing import Any

from passk_companion import profiles
from passk_companion import validation as check

__all__ = ["Params", "injected_names", "MAX_ELEMENTS"]

MAX_ELEMENTS = 10**8  # numbers one computation of a notebook may hold at once (800 MB of float64)
MAX_LIST = 10_000  # entries of a list parameter (k values, seeds, levels ...)


def injected_names(namespace: dict[str, Any]) -> set[str]:
    """Names assigned by papermill's injected-parameters cell(s), from the kernel's input history
    (IPython's ``In``); empty outside IPython or when nothing was injected."""
    history = namespace.get("In") or namespace.get("_ih") or []
    names: set[str] = set()
    for source in history:
        if not isinstance(source, str) or not source.lstrip().startswith("# Parameters"):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError as err:
            raise ValueError(f"the injected parameters do not parse: {err}") from None
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


class Params:
    """Validates the parameters of one notebook (see the module docstring)."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        self.values: dict[str, Any] = {}

    def _get(self, name: str) -> Any:
        if name not in self.namespace:
            raise ValueError(f"parameter {name!r} is missing from the parameters cell")
        return self.namespace[name]

    def _keep(self, name: str, value: Any) -> Any:
        self.values[name] = value
        return value

    # scalars ---------------------------------------------------------------------------------
    def profile(self, name: str = "profile") -> str:
        """One of passk_companion.profiles.PROFILES."""
        return self._keep(name, profiles.check(self._get(name), name))

    def int(self, name: str, minimum: int | None = 1, maximum: int | None = None) -> int:
        """An integer in [minimum, maximum] (bool is rejected)."""
        return self._keep(
            name, check.integer(self._get(name), name, minimum=minimum, maximum=maximum)
        )

    def number(
        self,
        name: str,
        low: float | None = None,
        high: float | None = None,
        *,
        low_open: bool = False,
        high_open: bool = False,
    ) -> float:
        """A finite number in [low, high] (open ends with low_open / high_open)."""
        value = check.number(
            self._get(name), name, low=low, high=high, low_open=low_open, high_open=high_open
        )
        return self._keep(name, value)

    def fraction(self, name: str, *, open_interval: bool = True) -> float:
        """A number in (0, 1), or [0, 1] with open_interval=False."""
        return self.number(name, 0, 1, low_open=open_interval, high_open=open_interval)

    def choice(self, name: str, choices: Sequence[object]) -> Any:
        """One of `choices`."""
        return self._keep(name, check.choice(self._get(name), name, choices))

    def string(self, name: str, *, allow_empty: bool = True) -> str:
        """A string (a path or a label); empty only if allow_empty."""
        return self._keep(name, check.string(self._get(name), name, allow_empty=allow_empty))

    def flag(self, name: str) -> bool:
        """True or False."""
        return self._keep(name, check.flag(self._get(name), name))

    # lists -----------------------------------------------------------------------------------
    def _list(self, name: str, min_len: int, max_len: int = MAX_LIST) -> list[Any]:
        value = self._get(name)
        if isinstance(value, (str, bytes, dict)) or not (
            isinstance(value, Sized) and isinstance(value, Iterable)
        ):
            raise ValueError(f"{name} must be a list, got {value!r}")
        if len(value) > max_len:
            raise ValueError(f"{name} must hold at most {max_len} entries, got {len(value)}")
        items = list(value)
        if len(items) < min_len:
            raise ValueError(f"{name} must hold at least {min_len} entries, got {items!r}")
        return items

    def ints(
        self,
        name: str,
        minimum: int | None = 1,
        maximum: int | None = None,
        *,
        min_len: int = 1,
        unique: bool = False,
    ) -> list[int]:
        """A list of integers in [minimum, maximum]."""
        items = self._list(name, min_len)
        out = [check.integer(v, f"{name} entry", minimum=minimum, maximum=maximum) for v in items]
        if unique and len(set(out)) != len(out):
            raise ValueError(f"{name} must not repeat entries, got {out}")
        return self._keep(name, out)

    def ks(self, name: str, n: int | None = None, *, min_len: int = 1) -> list[int]:
        """A list of k >= 1 (and k <= n when n is given)."""
        out = self.ints(name, 1, None, min_len=min_len)
        if n is not None and max(out) > n:
            raise ValueError(f"{name}: every k must be <= n = {n}, got {max(out)}")
        return out

    def seeds(self, name: str = "seeds", *, min_len: int = 3) -> list[int]:
        """Distinct non-negative integer seeds, at least `min_len` of them (3: empirical claims
        are decided from an interval over seeds)."""
        return self.ints(name, 0, None, min_len=min_len, unique=True)

    def numbers(
        self,
        name: str,
        low: float | None = None,
        high: float | None = None,
        *,
        low_open: bool = False,
        high_open: bool = False,
        min_len: int = 1,
    ) -> list[float]:
        """A list of finite numbers in [low, high]."""
        items = self._list(name, min_len)
        out = [
            check.number(
                v, f"{name} entry", low=low, high=high, low_open=low_open, high_open=high_open
            )
            for v in items
        ]
        return self._keep(name, out)

    def fractions(self, name: str, *, open_interval: bool = True, min_len: int = 1) -> list[float]:
        """A list of numbers in (0, 1) (or [0, 1])."""
        return self.numbers(
            name, 0, 1, low_open=open_interval, high_open=open_interval, min_len=min_len
        )

    def choices(self, name: str, choices: Sequence[object], *, min_len: int = 1) -> list[Any]:
        """A list whose entries are all in `choices`."""
        items = self._list(name, min_len)
        bad = [v for v in items if v not in choices]
        if bad:
            raise ValueError(f"{name}: unknown entries {bad}; valid: {list(choices)}")
        return self._keep(name, items)

    # relations between validated parameters -----------------------------------------------
    def _validated(self, name: str) -> Any:
        if name not in self.values:
            raise ValueError(f"parameter {name!r} must be validated before a relation uses it")
        return self.values[name]

    def member(self, name: str, of: str) -> Any:
        """The validated value of `name`, which must be one of the entries of the validated list
        `of` (e.g. the seed a notebook displays, among the seeds it runs)."""
        value, pool = self._validated(name), self._validated(of)
        if value not in pool:
            raise ValueError(f"{name} = {value!r} must be one of {of} = {pool!r}")
        return value

    def contains(self, name: str, required: Sequence[object]) -> list[Any]:
        """The validated list `name`, which must include every entry of `required` (values the
        notebook's comparisons use)."""
        items = self._validated(name)
        missing = [r for r in required if r not in items]
        if missing:
            raise ValueError(
                f"{name} must include {', '.join(map(repr, missing))} (the comparisons below use "
                f"it), got {items!r}"
            )
        return items

    def product(self, *names: str, times: int = 1, maximum: int = MAX_ELEMENTS) -> int:
        """The product of the validated sizes `names` (an integer, or a list's length), times
        `times`: what one computation holds at once. ValueError naming them above `maximum`."""
        sizes = []
        for name in names:
            value = self._validated(name)
            sizes.append(len(value) if isinstance(value, list) else int(value))
        total = times
        for size in sizes:
            total *= size
        if total > maximum:
            what = " x ".join(f"{n} ({v})" for n, v in zip(names, sizes, strict=True))
            extra = f" x {times}" if times != 1 else ""
            raise ValueError(
                f"{what}{extra} = {total} numbers at once, more than the limit of {maximum}: "
                f"lower {' or '.join(names)}"
            )
        return total

    def done(self) -> None:
        """Reject injected names the notebook does not know (the validated values stay in
        `self.values`). Returns None, so that a notebook cell ending with it displays nothing."""
        unknown = sorted(injected_names(self.namespace) - set(self.values))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown}; this notebook's parameters are: "
                f"{', '.join(sorted(self.values))}"
            )
