"""Validation of notebook parameters.

papermill only *warns* about an unknown or mistyped parameter, so every notebook validates its
parameters in the cell right after the `parameters` cell (papermill injects its values between the
two) and fails there with a ValueError that names the parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "PROFILES",
    "check_profile",
    "check_int",
    "check_ks",
    "check_fraction",
    "check_fractions",
]

PROFILES = ("ci", "full")


def check_profile(profile: str) -> str:
    """The profile must be one of PROFILES ("ci" is the default CPU profile, "full" for a GPU)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    return profile


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """An integer >= minimum (bool is rejected)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_ks(name: str, ks: Iterable[object], n: int | None = None) -> list[int]:
    """A non-empty list of integers k >= 1 (and k <= n when n is given)."""
    values = list(ks) if not isinstance(ks, (str, bytes)) else None
    if not values:
        raise ValueError(f"{name} must be a non-empty list of integers, got {ks!r}")
    out = [check_int(f"{name} entry", k, 1) for k in values]
    if n is not None and max(out) > n:
        raise ValueError(f"{name}: every k must be <= n = {n}, got {max(out)}")
    return out


def check_fraction(name: str, value: object, *, open_interval: bool = True) -> float:
    """A float in (0, 1) (or [0, 1] with open_interval=False)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    lo_ok = value > 0 if open_interval else value >= 0
    hi_ok = value < 1 if open_interval else value <= 1
    if not (lo_ok and hi_ok):
        raise ValueError(f"{name} must lie in {'(0, 1)' if open_interval else '[0, 1]'}")
    return float(value)


def check_fractions(name: str, values: Sequence[object], **kw: bool) -> list[float]:
    """A non-empty list of fractions (see check_fraction)."""
    if not values:
        raise ValueError(f"{name} must be a non-empty list")
    return [check_fraction(f"{name} entry", v, **kw) for v in values]
