"""results/claims.csv: one row per claim checked, written by the notebook that checks it.

Columns: id, claim, paper, notebook, figure, measured, holds. `holds` is "yes", "no" or
"partly", and must be computed from the notebook's own numbers, never typed by hand.
Rows are keyed by (notebook, id): re-running a notebook replaces its rows and leaves the others.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .atomic import atomic_write_text
from .repro import results_dir

__all__ = ["Claim", "verdict", "record", "read"]

VERDICTS = ("yes", "no", "partly")


@dataclass(frozen=True)
class Claim:
    """One checked claim. `measured` is the number(s) behind the verdict, as text."""

    id: str
    claim: str
    paper: str
    notebook: str
    measured: str
    holds: str
    figure: str = ""

    def __post_init__(self) -> None:
        if self.holds not in VERDICTS:
            raise ValueError(f"holds must be one of {VERDICTS}, got {self.holds!r}")
        if not self.id or not self.notebook:
            raise ValueError("a claim needs an id and a notebook")


COLUMNS = [f.name for f in fields(Claim)]


def verdict(ok: bool | None, partly: bool = False) -> str:
    """Map a computed check to the `holds` column: True -> yes, False -> no (partly -> partly)."""
    if partly:
        return "partly"
    return "yes" if ok else "no"


def read(path: Path | None = None) -> list[Claim]:
    """All claims in results/claims.csv (empty list if none yet)."""
    path = path or results_dir() / "claims.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [Claim(**{c: row.get(c, "") for c in COLUMNS}) for row in csv.DictReader(f)]


def record(claims: list[Claim], path: Path | None = None) -> Path:
    """Upsert `claims` into claims.csv atomically, keyed by (notebook, id); returns the path."""
    path = path or results_dir() / "claims.csv"
    keys = {(c.notebook, c.id) for c in claims}
    if len(keys) != len(claims):
        raise ValueError("duplicate (notebook, id) among the claims recorded together")
    rows = [c for c in read(path) if (c.notebook, c.id) not in keys] + list(claims)
    rows.sort(key=lambda c: (c.notebook, c.id))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(c) for c in rows)
    return atomic_write_text(path, buf.getvalue())
