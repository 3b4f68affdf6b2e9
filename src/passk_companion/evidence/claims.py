"""Claims: one row per claim checked, written by the notebook that checks it.

Each notebook owns one file, ``results/claims/<notebook>.csv``, so notebooks that run at the same
time (``make nbval`` runs two) never write the same file; ``report`` and ``html`` merge them.

Columns: id, claim, paper, notebook, kind, measured, verdict, seeds, interval, figure, fragile,
cell.

* ``kind``: ``identity`` (true by algebra: checking it verifies our code), ``numerical`` (an exact
  or deterministic computation) or ``empirical`` (sampled runs).
* ``verdict``: ``holds``, ``fails``, ``partly`` or ``inconclusive``, computed by
  :mod:`passk_companion.evidence.verdicts` from the notebook's own numbers, never typed by hand.
* ``seeds``: how many independent seeds stand behind the row; ``interval``: the 95% interval of the
  statistic that decides it. Empirical rows need at least 3 seeds and an interval.
* ``fragile``: "yes" when an empirical verdict's interval edge lies within
  ``verdicts.FRAGILE_SE`` standard errors of its null (or of an equivalence bound): another draw
  of seeds may decide otherwise. Notebooks name these rows (:func:`show`).
* ``cell``: the execution count of the notebook cell that recorded the claim (filled by
  :func:`record` inside a kernel; empty elsewhere): passk_companion.evidence.site links each claim
  to that cell. It says where a claim was printed, not what it says, and depends on how the
  notebook ran (papermill counts cells, nbval's kernel does not), so :func:`differences` skips it.
* ``paper``: what arXiv 2511.16231 itself states (e.g. "Thm 3.1"), or "raised by the companion:
  ...", "beyond the paper: ...", or another paper's citation.

Rows are keyed by (notebook, id): re-running a notebook replaces its rows.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from passk_companion.evidence.verdicts import FRAGILE_SE, KINDS, MIN_SEEDS, VERDICTS, Decision
from passk_companion.files import atomic_write_text, file_lock
from passk_companion.runtime import results_dir

__all__ = [
    "Claim",
    "COLUMNS",
    "from_decision",
    "record",
    "read",
    "read_all",
    "claims_dir",
    "differences",
    "show",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Claim:
    """One checked claim. `measured` is the number(s) behind the verdict, as text."""

    id: str
    claim: str
    paper: str
    notebook: str
    kind: str
    measured: str
    verdict: str
    seeds: int = 0
    interval: str = ""
    figure: str = ""
    fragile: str = ""
    cell: str = ""

    def __post_init__(self) -> None:
        if not self.id or not self.notebook:
            raise ValueError("a claim needs an id and a notebook")
        for name in ("id", "notebook"):
            if not _NAME.match(getattr(self, name)):
                raise ValueError(
                    f"claim {name} {getattr(self, name)!r}: letters, digits, _ . - only"
                )
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        seeds = int(self.seeds)
        object.__setattr__(self, "seeds", seeds)
        if seeds < 0:
            raise ValueError(f"seeds must be >= 0, got {seeds}")
        if self.kind == "empirical":
            if seeds < MIN_SEEDS:
                raise ValueError(f"claim {self.id}: an empirical claim needs >= {MIN_SEEDS} seeds")
            if not self.interval:
                raise ValueError(f"claim {self.id}: an empirical claim needs its interval")
        elif self.verdict == "inconclusive":
            raise ValueError(f"claim {self.id}: a {self.kind} check holds or fails")
        if self.fragile not in ("", "yes") or (self.fragile and self.kind != "empirical"):
            raise ValueError(f"claim {self.id}: fragile is 'yes' or '' (empirical claims only)")
        if self.cell and not str(self.cell).isdigit():
            raise ValueError(f"claim {self.id}: cell must be an execution count, got {self.cell!r}")


COLUMNS = [f.name for f in fields(Claim)]


def from_decision(
    id: str,
    claim: str,
    paper: str,
    notebook: str,
    decision: Decision,
    measured: str = "",
    figure: str = "",
) -> Claim:
    """A Claim whose kind, verdict, seeds and interval come from a verdicts.Decision.
    `measured` defaults to the decision's own description."""
    return Claim(
        id=id,
        claim=claim,
        paper=paper,
        notebook=notebook,
        kind=decision.kind,
        measured=measured or decision.describe(),
        verdict=decision.verdict,
        seeds=decision.seeds,
        interval=decision.interval,
        figure=figure,
        fragile="yes" if decision.fragile else "",
    )


def claims_dir(results: Path | None = None) -> Path:
    """results/claims/ (one CSV per notebook)."""
    return (results or results_dir()) / "claims"


def read(path: Path) -> list[Claim]:
    """The claims of one CSV file (empty list if it does not exist).
    Raises ValueError naming the file if it is not a claims file."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = set(COLUMNS) - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"missing columns {sorted(missing)}")
            return [Claim(**{c: row[c] for c in COLUMNS}) for row in reader]
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(
            f"{path} is not a valid claims file ({err}); delete it and rerun"
        ) from None


def read_all(results: Path | None = None) -> list[Claim]:
    """Every notebook's claims under results/claims/, sorted by (notebook, id)."""
    rows = [c for p in sorted(claims_dir(results).glob("*.csv")) for c in read(p)]
    return sorted(rows, key=lambda c: (c.notebook, c.id))


def _write(path: Path, rows: list[Claim]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(c) for c in sorted(rows, key=lambda c: c.id))
    atomic_write_text(path, buf.getvalue())


def _execution_count() -> str:
    """The execution count of the notebook cell running now ("" outside an IPython kernel)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return ""
    shell = get_ipython()
    count = getattr(shell, "execution_count", None)  # already the NEXT cell's number while a
    return str(count - 1) if isinstance(count, int) and count > 1 else ""  # cell runs


def record(claims: list[Claim], results: Path | None = None) -> list[Path]:
    """Upsert `claims` into results/claims/<notebook>.csv (atomically, one file per notebook,
    under a lock), keyed by (notebook, id); claims without a `cell` get the execution count of
    the cell calling this. Returns the files written."""
    cell = _execution_count()
    claims = [c if c.cell or not cell else dataclasses.replace(c, cell=cell) for c in claims]
    keys = [(c.notebook, c.id) for c in claims]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate (notebook, id) among the claims recorded together")
    folder = claims_dir(results)
    written = []
    with file_lock(folder / ".lock"):
        for notebook in sorted({c.notebook for c in claims}):
            path = folder / f"{notebook}.csv"
            new = [c for c in claims if c.notebook == notebook]
            ids = {c.id for c in new}
            try:
                kept = [c for c in read(path) if c.id not in ids]
            except ValueError as err:  # a file of an older format, or damaged: this run replaces it
                print(f"warning: replacing {path}: {err}", file=sys.stderr)
                kept = []
            _write(path, kept + new)
            written.append(path)
    return written


LOCATORS = ("cell",)  # columns that say where a claim was recorded, not what it says


def differences(a: list[Claim], b: list[Claim]) -> list[str]:
    """What differs between two sets of claims (two runs of the same notebooks), one line per
    claim: a claim on one side only, or a column other than LOCATORS that differs (verdict
    first). Empty when the two are the same; `python -m passk_companion compare-claims A B`
    fails on any line. A claim that one side holds more than once (in one file or two) is a
    difference of its own: its copies may disagree, and no copy is taken to stand for the
    others."""
    lines = []
    for side, rows in (("first", a), ("second", b)):
        counts = Counter((c.notebook, c.id) for c in rows)
        lines += [
            f"{'/'.join(key)}: held {count} times in the {side} run"
            for key, count in sorted(counts.items())
            if count > 1
        ]
    left = {(c.notebook, c.id): c for c in a}
    right = {(c.notebook, c.id): c for c in b}
    for key in sorted(set(left) | set(right)):
        name = "/".join(key)
        if key not in right or key not in left:
            lines.append(f"{name}: only in the {'first' if key in left else 'second'} run")
            continue
        x, y = asdict(left[key]), asdict(right[key])
        for column in ["verdict"] + [c for c in COLUMNS if c not in ("verdict", *LOCATORS)]:
            if x[column] != y[column]:
                lines.append(f"{name}: {column} {x[column]!r} != {y[column]!r}")
    return lines


def show(rows: list[Claim]) -> None:
    """Print the claims a notebook records, one block each (``[verdict] id: claim``, then what was
    measured), and name the fragile ones last."""
    for c in rows:
        print(f"[{c.verdict:>12}] {c.id}: {c.claim}\n    measured: {c.measured}")
    fragile = [c.id for c in rows if c.fragile]
    if fragile:
        print(
            f"fragile (an interval edge within {FRAGILE_SE:g} standard error of the null or of an "
            f"equivalence bound; other seeds may decide otherwise): {', '.join(fragile)}"
        )
