"""The project describes itself as it is now: no process words in README.md, docs/ or src/.

A process word narrates how the project was made ("this session", "a helper agent", "no GPU was
lent", "an earlier version", "fixed a bug", "issue 21"), which a user cannot act on. The phrases
below are those uses, not the words alone, so "a margin fixed in advance", verl's "agent loop",
a POSIX session (`start_new_session`) and the TransferQueue key `{uid}_{session}_{index}` are
left alone. Each file is its own test, so a failure names the file and the line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# README.md is being rewritten; flip to False when it reads as the project is now.
README_PENDING = False

PROCESS_PHRASES = [
    # who made it, and when
    r"\b(this|that|an? earlier|the previous|a previous|the next|a later|another|each|every|"
    r"a helper|the helper|my|our) sessions?\b(?! of verl)",
    r"\bsessions? (ago|before|earlier)\b",
    r"\b(helper|coding|AI|LLM|an|the) agents?('s)?\b(?! loop)",
    r"\bagent's\b",
    r"\blent\b",
    r"\b(an? |the )?(earlier|previous|prior) (version|revision|draft|iteration)s?\b",
    r"\b(in|since) (v\d|version \d)",
    # repairs narrated rather than the behaviour stated
    r"\b(was|were|now|got|has been|have been|is) fixed\b(?! (in advance|before|and committed|"
    r"margin|level|at|to|by the pre))",
    r"\bfix(ed|es)? (a|an|the|this|that) (bug|crash|regression|problem|typo|test|failure)s?\b",
    r"\bbug ?fix(es|ed)?\b",
    # references to the tracker
    r"\b[Ii]ssue #?\d+\b",
    r"\(items? \d+(-\d+)?\)",
]
PATTERN = re.compile("|".join(f"(?:{p})" for p in PROCESS_PHRASES), re.IGNORECASE)


def _files() -> list[Path]:
    files = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "docs").rglob("*.md"))
    if not README_PENDING:
        files.insert(0, ROOT / "README.md")
    return files


def hits(text: str) -> list[str]:
    """The lines of `text` that use a process phrase, as "line N: ...: phrase"."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in PATTERN.finditer(line):
            out.append(f"line {number}: {line.strip()[:120]!r}: {match.group(0)!r}")
    return out


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_process_words(path):
    assert hits(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "text",
    [
        "this session measured it",
        "as an earlier session found",
        "a helper agent's review",
        "no GPU was lent to this task",
        "an earlier version of this notebook",
        "the crash was fixed",
        "fixed a bug in the sampler",
        "see issue 21",
        "refused (item 5)",
    ],
)
def test_the_phrases_are_found(text):
    assert hits(text)


@pytest.mark.parametrize(
    "text",
    [
        "a margin fixed in advance",
        "the rules were fixed and committed before the run",
        "verl's agent loop may emit several outputs per session",
        "the TransferQueue key {uid}_{session}_{index}",
        "start_new_session=True",
        "an equivalent formula",
        "after a fixed number of steps",
    ],
)
def test_legitimate_uses_are_not(text):
    assert hits(text) == []
