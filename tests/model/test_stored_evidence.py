"""The stored deciding run of notebook 04 (evidence/04_full): its verdicts and intervals are
re-decided from its stored tables with the pre-registered rules, and must be what it recorded.
Nothing is re-run (the run takes an hour); this checks that the stored claims follow from the
stored numbers by the committed rules, with values from the pre-registration file only."""

import ast
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from passk_companion.evidence import analysis, claims, preregistration

ROOT = Path(__file__).resolve().parents[2]
EVIDENCE = ROOT / "evidence" / "04_full"
PREREG = ROOT / "params" / "preregistered" / "04.yaml"


@pytest.fixture(scope="module")
def stored():
    pre = preregistration.load(PREREG)
    matched = pd.read_csv(EVIDENCE / "tables" / "04_matched.csv.gz")
    fits = pd.read_csv(EVIDENCE / "tables" / "04_grad_check.csv.gz")
    rows = {c.id: c for c in claims.read(EVIDENCE / "claims.csv")}
    return pre, matched, fits, rows


def test_the_evidence_is_complete():
    for name in ("04_train_small_model.ipynb", "claims.csv", "RUN.md"):
        assert (EVIDENCE / name).is_file(), name
    run = (EVIDENCE / "RUN.md").read_text()
    assert "--profile full" in run and "commit:" in run and "wall time:" in run
    nb = nbformat.read(EVIDENCE / "04_train_small_model.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and 'profile = "full"' in injected[0].source


def test_the_family_is_re_decided_to_the_stored_verdicts(stored):
    pre, matched, _, rows = stored
    decided = analysis.decide(matched, pre)
    assert set(decided) == {r.id for r in pre.family}
    for row_id, decision in decided.items():
        assert rows[row_id].verdict == decision.verdict, row_id
        assert rows[row_id].interval == decision.interval, row_id
        assert rows[row_id].seeds == decision.seeds, row_id


def test_the_gradient_check_is_re_decided(stored):
    pre, _, fits, rows = stored
    grad = analysis.decide_grad_check(fits, pre)
    for name, decision in grad.items():
        stored_row = rows[f"tiny_gpt_grad_norm_{name}"]
        assert (stored_row.verdict, stored_row.interval) == (decision.verdict, decision.interval)


def test_the_stored_run_follows_the_pre_registered_design(stored):
    pre, matched, _, _ = stored
    design = pre.design["full"]
    units = matched.drop_duplicates(analysis.RUN_KEYS)
    assert sorted(units.graph.unique()) == list(design.graphs)
    assert sorted(units.base.unique()) == list(design.bases)
    assert sorted(units.seed.unique()) == list(design.seeds)
    assert set(units.variant) == set(pre.arms())
    per_arm = units.groupby("variant").size()
    assert (per_arm == len(design.graphs) * len(design.bases) * len(design.seeds)).all()


def test_notebook_04_takes_no_decision_value_from_its_own_cells():
    """The margins, levels, alpha and thresholds live in the pre-registration: no cell of notebook
    04 writes one of them as a number."""
    pre = preregistration.load(PREREG)
    gc = pre.grad_check
    values = {pre.equivalence_margin, pre.alpha, pre.kl_trained, pre.hard_j1, pre.reach_fraction,
              *pre.levels.values(), gc.margin_slope, gc.margin_intercept}  # fmt: skip
    nb = nbformat.read(ROOT / "notebooks" / "04_train_small_model.ipynb", as_version=4)
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, float)
                and node.value in values
            ):
                found.append(node.value)
    assert not found, f"decision values written in notebook 04's cells: {found}"
