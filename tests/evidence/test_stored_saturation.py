"""The stored deciding run of notebook 08 (evidence/04_saturation): each row of its two
pre-registered families is re-decided from the stored tables by the registered rules, and must
be what the run recorded; the design and the analysis commit are the registered ones, and the
registration precedes the stored results in git history. Nothing is re-run."""

import subprocess
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from passk_companion.evidence import claims
from passk_companion.evidence import saturation as sat

ROOT = Path(__file__).resolve().parents[2]
EVIDENCE = ROOT / "evidence" / "04_saturation"
PLAN = ROOT / "params" / "preregistered" / "04_saturation.yaml"


@pytest.fixture(scope="module")
def stored():
    plan = sat.load_plan(PLAN)
    runs = pd.read_csv(EVIDENCE / "tables" / "08_runs.csv.gz")
    predicted = pd.read_csv(EVIDENCE / "tables" / "08_zero_predicted.csv.gz")
    rows = {c.id: c for c in claims.read(EVIDENCE / "claims.csv")}
    return plan, runs, predicted, rows


def test_the_evidence_is_complete():
    for name in ("08_saturation.ipynb", "claims.csv", "RUN.md"):
        assert (EVIDENCE / name).is_file(), name
    run = (EVIDENCE / "RUN.md").read_text()
    assert "--profile full" in run and "commit:" in run and "wall time:" in run
    nb = nbformat.read(EVIDENCE / "08_saturation.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and 'profile = "full"' in injected[0].source


@pytest.mark.parametrize("family", ["primary", "secondary"])
def test_each_family_is_re_decided_to_the_stored_verdicts(stored, family):
    plan, runs, predicted, rows = stored
    registered = getattr(plan, family)
    values = {
        row.id: sat.zero_update_pairs(runs, predicted[predicted.variant == row.arm], row.arm)
        if row.estimand == "zero_updates"
        else sat.pair_values(runs, row, plan)
        for row in registered
    }
    decided = sat.decide_rows(registered, values, plan)
    for row in registered:
        got, want = decided[row.id], rows[row.id]
        assert (want.verdict, want.interval, want.seeds) == (got.verdict, got.interval, got.seeds)


def test_the_stored_run_follows_the_registered_design(stored):
    plan, runs, _, _ = stored
    design = plan.designs["full"]
    units = runs.drop_duplicates("trial")
    assert sorted(units.graph.unique()) == list(design["graphs"])
    assert sorted(units.base.unique()) == list(design["bases"])
    assert sorted(units.seed.unique()) == list(design["seeds"])
    arms = {r.arm for r in plan.primary + plan.secondary}
    assert arms <= set(units.variant)
    assert (units.groupby("variant").size() == len(design["graphs"]) * len(design["bases"])).all()


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def test_the_registration_precedes_the_results_and_names_an_earlier_analysis_commit():
    if not (ROOT / ".git").exists() or not _git("rev-parse", "HEAD"):
        pytest.skip("not a git checkout: the history cannot be read")
    plan = sat.load_plan(PLAN)
    registered = _git("log", "--diff-filter=A", "--format=%H", "--", str(PLAN.relative_to(ROOT)))
    stored = _git(
        "log", "--diff-filter=A", "--format=%H", "--", "evidence/04_saturation/claims.csv"
    )
    assert registered and stored, "both files are committed"
    files = _git("show", "--name-only", "--format=", registered).split()
    assert files == [str(PLAN.relative_to(ROOT))], f"the registration is committed alone: {files}"
    for earlier, later in ((plan.analysis_commit, registered), (registered, stored)):
        done = subprocess.run(["git", "merge-base", "--is-ancestor", earlier, later], cwd=ROOT)
        assert done.returncode == 0, f"{earlier[:12]} does not precede {later[:12]}"
        assert earlier != later
