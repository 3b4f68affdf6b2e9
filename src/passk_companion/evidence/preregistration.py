"""Pre-registered decision rules: params/preregistered/<notebook>.yaml, read strictly.

A pre-registration fixes, before the run it decides, everything a decision depends on: the
primary measure, the matched levels, the equivalence margin, the family-wise level and its
multiplicity rule, the direction of every row, and the design (graphs, bases, seeds). It is
committed before the results, so the history shows the order. :func:`load` refuses a file with an
unknown, missing or mistyped key, naming it; the decisions
(passk_companion.evidence.analysis.decide) take their values from the returned object only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from passk_companion import validation as check
from passk_companion.files import load_yaml_strict

__all__ = [
    "Row",
    "Design",
    "GradCheck",
    "Preregistration",
    "Margin",
    "load",
    "load_margin",
    "CLAIMS",
    "MEASURES",
]

CLAIMS = ("equivalent", "greater", "less")
# the decided measures passk_companion.evidence.analysis knows
MEASURES = ("test_modes_eff", "hard_j1_gain")
MULTIPLICITY = ("holm",)


@dataclass(frozen=True)
class Row:
    """One pre-registered comparison: `arm` against `reference` (another arm, or "base": the
    same run at step 0) at the matched `level`, on `measure`, with the claimed direction."""

    id: str
    arm: str
    reference: str
    level: str
    claim: str
    measure: str


@dataclass(frozen=True)
class Design:
    """The units of one profile's run: the grid file and its graphs, bases and RL seeds."""

    grid: str
    graphs: tuple[int, ...]
    bases: tuple[int, ...]
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class GradCheck:
    """Theorem 3.1 at fixed parameters: slope 1 and intercept 0 of log(gradient-norm ratio) on
    log alpha_k, each an equivalence within its margin at level `alpha` (two one-sided tests)."""

    k: int
    groups: int
    margin_slope: float
    margin_intercept: float
    alpha: float


@dataclass(frozen=True)
class Preregistration:
    """A validated pre-registration (see params/preregistered/04.yaml for every field)."""

    path: str
    version: int
    question: str
    primary_measure: str
    secondary_measures: tuple[str, ...]
    levels: dict[str, float]
    equivalence_margin: float
    alpha: float
    multiplicity: str
    interval: str
    bootstrap_resamples: int
    bootstrap_seed: int
    reach_fraction: float
    kl_trained: float
    hard_j1: float
    min_hard_prompts: int
    family: tuple[Row, ...]
    grad_check: GradCheck
    design: dict[str, Design]
    rationale: dict[str, str]

    def row(self, row_id: str) -> Row:
        """The family row with this id (KeyError naming it otherwise)."""
        for r in self.family:
            if r.id == row_id:
                return r
        raise KeyError(f"{row_id!r} is not a row of {self.path}")

    def arms(self) -> list[str]:
        """Every arm the family compares (arms and references, "base" excluded), in order."""
        names = [n for r in self.family for n in (r.arm, r.reference) if n != "base"]
        return list(dict.fromkeys(names))


def _keys(data: Any, where: str, required: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - required - optional)
    missing = sorted(required - set(data))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}")
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    return data


def _ints(values: Any, name: str) -> tuple[int, ...]:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{name} must be a non-empty list of integers")
    out = tuple(check.integer(v, f"{name} entry", minimum=0) for v in values)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} repeats an entry: {list(out)}")
    return out


def _text(value: Any, name: str) -> str:
    return check.string(value, name, allow_empty=False, max_length=20_000)


_TOP = {
    "version", "question", "primary_measure", "secondary_measures", "levels",
    "equivalence_margin", "alpha", "multiplicity", "interval", "bootstrap_resamples",
    "bootstrap_seed", "reach_fraction", "kl_trained", "hard_j1", "min_hard_prompts", "family",
    "grad_check", "design", "rationale",
}  # fmt: skip


def _read(path: Path, what: str = "pre-registration") -> Any:
    """The YAML of a decision-rule file, read strictly (:func:`load_yaml_strict`)."""
    if not path.is_file():
        raise ValueError(f"no {what} file at {path}")
    return load_yaml_strict(path, what)


def load(path: str | Path) -> Preregistration:
    """Read and validate a pre-registration file (:func:`passk_companion.files.load_yaml_strict`:
    a key given twice is refused); ValueError naming the file and the key when it is not a valid
    one."""
    path = Path(path)
    data = _read(path)  # one line: duplicate keys, bad YAML
    try:
        return _parse(data, str(path))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


@dataclass(frozen=True)
class Margin:
    """The equivalence margin of one claim of a notebook, fixed in a params file: `claim` (its
    id), `measure` (what the margin is in), `margin` (> 0) and the `confidence` of the interval
    decided by passk_companion.evidence.verdicts.within_margin."""

    claim: str
    measure: str
    margin: float
    confidence: float


def load_margin(path: str | Path, claim: str) -> Margin:
    """The margin of `claim` in a params file of equivalence margins (params/preregistered/03.yaml:
    version, then `margins`, a mapping of claim ids to {measure, margin, confidence}, and a
    `rationale`); ValueError naming the file and the key when it is not a valid one."""
    path = Path(path)
    data = _read(path, "margins")
    try:
        d = _keys(data, "the file", {"version", "margins", "rationale"})
        check.integer(d["version"], "version", minimum=1, maximum=1)
        _text(d["rationale"], "rationale")
        margins = d["margins"]
        if not isinstance(margins, dict) or claim not in margins:
            raise ValueError(f"margins has no entry {claim!r}")
        entry = _keys(margins[claim], f"margins.{claim}", {"measure", "margin", "confidence"})
        return Margin(
            claim=claim,
            measure=check.string(entry["measure"], f"{claim}.measure", allow_empty=False),
            margin=check.number(entry["margin"], f"{claim}.margin", low=0, low_open=True),
            confidence=check.number(
                entry["confidence"], f"{claim}.confidence", low=0.5, high=1, high_open=True
            ),
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


# upper bounds: a value beyond them decides nothing (every equivalence row would hold, every
# pair would be dropped), so it is refused instead of being read
MAX_MARGIN = 1.0  # equivalence_margin and the gradient check's margins
MAX_KL_TRAINED = 1.0  # nats: a run whose KL to its base stays below this has not moved
MAX_SEED = 2**32 - 1
MAX_HARD_PROMPTS = 1_000_000
MAX_ROWS = 1_000


def _measures(d: dict) -> tuple[str, tuple[str, ...]]:
    """The primary measure (a decided one) and the secondary columns shown beside it."""
    primary = check.choice(d["primary_measure"], "primary_measure", MEASURES)
    secondary = d["secondary_measures"]
    if not isinstance(secondary, list) or not all(isinstance(s, str) and s for s in secondary):
        raise ValueError("secondary_measures must be a list of column names")
    if primary in secondary:
        raise ValueError(f"secondary_measures repeats the primary measure {primary!r}")
    return primary, tuple(secondary)


def _levels(raw: Any) -> dict[str, float]:
    """The matched levels: names to gains in (0, 1]."""
    levels = _keys(raw, "levels", set(raw) if isinstance(raw, dict) else set())
    if not levels:
        raise ValueError("levels must name at least one matched level")
    return {
        check.string(k, "levels key", allow_empty=False, max_length=120): check.number(
            v, f"levels.{k}", low=0, high=1, low_open=True
        )
        for k, v in levels.items()
    }


def _family(raw: Any, levels: dict[str, float], primary: str) -> tuple[Row, ...]:
    """The rows of the family: unique ids, an arm compared with another arm or with "base"."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("family must be a non-empty list of rows")
    if len(raw) > MAX_ROWS:
        raise ValueError(f"family must have at most {MAX_ROWS} rows, got {len(raw)}")
    rows = []
    for i, item in enumerate(raw):
        r = _keys(item, f"family[{i}]", {"id", "arm", "reference", "level", "claim"}, {"measure"})
        row = Row(
            id=check.string(r["id"], f"family[{i}].id", allow_empty=False, max_length=120),
            arm=check.string(r["arm"], f"family[{i}].arm", allow_empty=False, max_length=120),
            reference=check.string(
                r["reference"], f"family[{i}].reference", allow_empty=False, max_length=120
            ),
            level=check.choice(r["level"], f"family[{i}].level", list(levels)),
            claim=check.choice(r["claim"], f"family[{i}].claim", CLAIMS),
            measure=check.choice(r.get("measure", primary), f"family[{i}].measure", MEASURES),
        )
        if row.arm == "base":
            raise ValueError(f"family[{i}].arm: 'base' is a reference, not an arm")
        if row.arm == row.reference:
            raise ValueError(f"family[{i}]: arm and reference are both {row.arm!r}")
        if row.reference == "base" and row.claim == "equivalent":
            raise ValueError(f"family[{i}]: a change from the base is decided by direction")
        rows.append(row)
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"family ids must be unique, got {ids}")
    return tuple(rows)


def _grad_check(raw: Any) -> GradCheck:
    """Theorem 3.1's check at fixed parameters: k, groups, two margins and the level."""
    g = _keys(raw, "grad_check", {"k", "groups", "margin_slope", "margin_intercept", "alpha"})

    def margin(name: str) -> float:
        return check.number(g[name], f"grad_check.{name}", low=0, high=MAX_MARGIN, low_open=True)

    return GradCheck(
        k=check.integer(g["k"], "grad_check.k", minimum=2, maximum=1024),
        groups=check.integer(g["groups"], "grad_check.groups", minimum=2, maximum=100_000),
        margin_slope=margin("margin_slope"),
        margin_intercept=margin("margin_intercept"),
        alpha=check.number(
            g["alpha"], "grad_check.alpha", low=0, high=0.5, low_open=True, high_open=True
        ),
    )


def _design(raw: Any) -> dict[str, Design]:
    """Each profile's units: its grid file, graphs, bases and RL seeds."""
    if not isinstance(raw, dict) or not raw:
        raise ValueError("design must map profiles to their units")
    design = {}
    for name, item in raw.items():
        u = _keys(item, f"design.{name}", {"grid", "graphs", "bases", "seeds"})
        design[str(name)] = Design(
            grid=check.string(u["grid"], f"design.{name}.grid", allow_empty=False),
            graphs=_ints(u["graphs"], f"design.{name}.graphs"),
            bases=_ints(u["bases"], f"design.{name}.bases"),
            seeds=_ints(u["seeds"], f"design.{name}.seeds"),
        )
    return design


def _parse(data: Any, source: str) -> Preregistration:
    """The phases of reading a pre-registration: the keys, the measures and levels, the family,
    the gradient check, the design, then the scalar rules, each with its bounds."""
    d = _keys(data, "the file", _TOP)
    version = check.integer(d["version"], "version", minimum=1, maximum=1)
    primary, secondary = _measures(d)
    levels = _levels(d["levels"])
    family = _family(d["family"], levels, primary)
    grad = _grad_check(d["grad_check"])
    design = _design(d["design"])
    rationale = d["rationale"]
    if not isinstance(rationale, dict):
        raise ValueError("rationale must map topics to text")
    return Preregistration(
        path=source,
        version=version,
        question=_text(d["question"], "question"),
        primary_measure=primary,
        secondary_measures=secondary,
        levels=levels,
        equivalence_margin=check.number(
            d["equivalence_margin"], "equivalence_margin", low=0, high=MAX_MARGIN, low_open=True
        ),
        alpha=check.number(d["alpha"], "alpha", low=0, high=0.5, low_open=True, high_open=True),
        multiplicity=check.choice(d["multiplicity"], "multiplicity", MULTIPLICITY),
        interval=_text(d["interval"], "interval"),
        bootstrap_resamples=check.integer(
            d["bootstrap_resamples"], "bootstrap_resamples", minimum=100, maximum=1_000_000
        ),
        bootstrap_seed=check.integer(
            d["bootstrap_seed"], "bootstrap_seed", minimum=0, maximum=MAX_SEED
        ),
        reach_fraction=check.number(
            d["reach_fraction"], "reach_fraction", low=0, high=1, low_open=True
        ),
        kl_trained=check.number(d["kl_trained"], "kl_trained", low=0, high=MAX_KL_TRAINED),
        hard_j1=check.number(d["hard_j1"], "hard_j1", low=0, high=1, low_open=True),
        min_hard_prompts=check.integer(
            d["min_hard_prompts"], "min_hard_prompts", minimum=1, maximum=MAX_HARD_PROMPTS
        ),
        family=family,
        grad_check=grad,
        design=design,
        rationale={str(k): _text(v, f"rationale.{k}") for k, v in rationale.items()},
    )
