"""Input validation: one set of checks for every value a user can set (notebook parameters,
configuration fields, command-line flags, grid files, objective parameters).

Each check takes the value and the name the user knows it by, returns the normalised value, and
raises a ValueError whose message starts with that name, so an error reads "lr must be finite, got
inf" wherever it comes from. Booleans are never numbers; non-finite numbers are refused unless
`finite=False`. No torch: the light commands use these too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

__all__ = ["number", "integer", "flag", "choice", "string", "is_number", "is_integer", "shown"]


def is_integer(value: object) -> bool:
    """An integer (a Python or numpy integer) that is not a bool."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def is_number(value: object) -> bool:
    """An int or float that is not a bool."""
    return not isinstance(value, bool) and isinstance(value, (int, float))


def shown(value: object) -> str:
    """`value` as an error message shows it: repr, except that an integer of more than 30 digits
    is described by its length (Python refuses to print one of more than 4300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def number(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite number in [low, high] (open ends with low_open / high_open), as a float."""
    if not is_number(value):
        raise ValueError(f"{name} must be a number, got {shown(value)}")
    try:
        x = float(value)
    except OverflowError:  # an integer beyond the float range
        x = math.inf
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {shown(value)}")
    if low is not None and (x <= low if low_open else x < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {shown(value)}")
    if high is not None and (x >= high if high_open else x > high):
        raise ValueError(
            f"{name} must be {'<' if high_open else '<='} {high:g}, got {shown(value)}"
        )
    return x


def integer(
    value: object, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An integer (not a bool) in [minimum, maximum]."""
    if not is_integer(value):
        raise ValueError(f"{name} must be an integer, got {shown(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {shown(value)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {shown(value)}")
    return int(value)


def flag(value: object, name: str) -> bool:
    """True or False (not 0 / 1, not a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {shown(value)}")
    return value


def choice(value: Any, name: str, choices: Sequence[object]) -> Any:
    """One of `choices`."""
    try:
        ok = value in choices
    except TypeError:  # an unhashable value against a set or dict
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {list(choices)}, got {shown(value)}")
    return value


def string(value: object, name: str, *, allow_empty: bool = True, max_length: int = 4096) -> str:
    """A string (a path or a label) of at most `max_length` characters; empty only if
    allow_empty."""
    if not isinstance(value, str) or (not allow_empty and not value):
        raise ValueError(
            f"{name} must be a {'' if allow_empty else 'non-empty '}string, got {shown(value)}"
        )
    if len(value) > max_length:
        raise ValueError(f"{name} must be at most {max_length} characters, got {len(value)}")
    return value
