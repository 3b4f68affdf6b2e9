"""Notebook conventions: parameters cells, profiles, validation, and that nbval can fail."""

import json
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"


def code_cells(nb_path):
    return [c for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_is_parameters_then_validation(nb):
    cells = code_cells(nb)
    assert cells[0]["metadata"].get("tags") == ["parameters"]
    assert 'profile = "ci"' in "".join(cells[0]["source"])
    assert "check_profile(profile)" in "".join(cells[1]["source"])


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_complete_and_clean(nb):
    data = json.loads(nb.read_text())
    assert "papermill" not in data["metadata"]
    assert data["metadata"]["kernelspec"]["name"] == "python3"
    for cell in code_cells(nb):
        assert cell["execution_count"], "every code cell must be stored executed (make execute)"
        assert "papermill" not in cell["metadata"]
        assert not any(o.get("output_type") == "error" for o in cell["outputs"])


@pytest.mark.parametrize("profile_file", sorted((ROOT / "params").glob("*/*.yaml")), ids=str)
def test_profile_files_name_known_parameters(profile_file):
    nb = ROOT / "notebooks" / f"{profile_file.stem}.ipynb"
    assert nb.is_file(), f"{profile_file} has no notebook"
    known = set(pm.inspect_notebook(str(nb)))
    given = yaml.safe_load(profile_file.read_text())
    assert set(given) <= known, f"unknown parameters: {set(given) - known}"
    assert given["profile"] == profile_file.parent.name


@pytest.mark.parametrize(
    ("params", "message"),
    [({"profile": "gpu"}, "profile must be one of"), ({"k_values": [0, 4]}, "must be >= 1")],
)
def test_bad_parameters_fail_in_the_validation_cell(tmp_path, params, message):
    nb = NOTEBOOKS[0]
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(
            str(nb),
            str(tmp_path / "out.ipynb"),
            parameters=params,
            progress_bar=False,
            cwd=str(nb.parent),
            kernel_name="python3",
        )
    assert err.value.ename == "ValueError" and message in err.value.evalue
    assert err.value.exec_count <= 3  # parameters, injected parameters, validation


def _run_nbval(path: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--nbval",
        "--nbval-current-env",
        "--nbval-sanitize-with",
        str(SANITIZE),
        str(path),
    ]
    return subprocess.run(cmd, cwd=path.parent, capture_output=True, text=True, timeout=600)


def test_nbval_catches_a_changed_stored_number(tmp_path):
    """Copy notebook 01 up to its gap-peak table, change one stored digit: nbval must fail."""
    data = json.loads(NOTEBOOKS[0].read_text())
    cut = next(
        i for i, c in enumerate(data["cells"]) if "gap_peak_symbolic" in "".join(c["source"])
    )
    data["cells"] = data["cells"][: cut + 1]
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    control = tmp_path / "control.ipynb"
    control.write_text(json.dumps(data))
    table = data["cells"][cut]["outputs"][-1]["data"]["text/plain"]
    joined = "".join(table)
    assert "0.3700" in joined
    data["cells"][cut]["outputs"][-1]["data"]["text/plain"] = joined.replace("0.3700", "0.3701")
    altered = tmp_path / "altered.ipynb"
    altered.write_text(json.dumps(data))
    ok = _run_nbval(control)
    assert ok.returncode == 0, ok.stdout[-3000:]
    bad = _run_nbval(altered)
    assert bad.returncode == 1, bad.stdout[-3000:]
    assert "1 failed" in bad.stdout and "0.3701" in bad.stdout


MARKERS = {
    "# NBVAL_IGNORE_OUTPUT",
    "# NBVAL_CHECK_OUTPUT",
    "# NBVAL_SKIP",
    "# NBVAL_RAISES_EXCEPTION",
}


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_nbval_markers_are_well_formed(nb):
    """nbval only honours a marker on a line of its own: trailing text silently disables it."""
    for cell in code_cells(nb):
        for line in "".join(cell["source"]).splitlines():
            if "NBVAL_" in line:
                assert line.strip() in MARKERS, f"malformed nbval marker: {line!r}"


def test_notebook_06_variant_is_a_working_objective():
    """The variant written in notebook 06 registers, validates and is zero without a success."""
    import torch

    from companion import objectives

    nb = next(p for p in NOTEBOOKS if p.stem.startswith("06"))
    source = next(
        "".join(c["source"])
        for c in code_cells(nb)
        if "@objectives.register" in "".join(c["source"])
    )
    namespace = {"beta_rank": 0.25}
    exec(compile(source, str(nb), "exec"), namespace)
    try:
        obj = objectives.get("unlikeliness")
        rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
        logprobs = torch.log(torch.tensor([[0.4, 0.1, 0.2, 0.3], [0.4, 0.1, 0.2, 0.3]]))
        w = obj.weights(rewards, 2, logprobs=logprobs)
        assert torch.count_nonzero(w[1]) == 0  # Situation I
        assert w[0, 1] > w[0, 0] > 0 > w[0, 2]  # the less likely correct rollout gets more
        with pytest.raises(ValueError, match="needs logprobs"):
            obj.weights(rewards, 2)
    finally:
        objectives.unregister("unlikeliness")
