"""Notebook conventions: parameters cells, profiles, validation of injected parameters, clean
stored outputs, progress bars kept out of them, and that nbval can fail."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml

from passk_companion.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"


def code_cells(nb_path):
    return [c for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]


def notebook(prefix):
    return next(p for p in NOTEBOOKS if p.name.startswith(prefix))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 7, NOTEBOOKS


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_is_parameters_then_validation(nb):
    cells = code_cells(nb)
    assert cells[0]["metadata"].get("tags") == ["parameters"]
    assert 'profile = "ci"' in "".join(cells[0]["source"])
    validation = "".join(cells[1]["source"])
    assert "par.Params(globals())" in validation and ".done()" in validation


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter(nb):
    """papermill parses the parameters cell line by line (an '=' in a comment hides the line)."""
    assigned = {
        target.id
        for node in ast.parse("".join(code_cells(nb)[0]["source"])).body
        for target in node.targets
    }
    assert assigned == set(pm.inspect_notebook(str(nb)))


# In a cell's code (strings and comments removed): a comparison with a decimal number, or the
# pass@k form 1 - (1 - p) ** k. Thresholds are parameters or named in the library, and pass@k
# comes from passk_companion.theory.passk.
_THRESHOLD = re.compile(r"(?<![=!<>])[<>]=?\s*-?(\d*\.\d+|\d+e-?\d+)")
_PASSK_FORM = re.compile(r"1\s*-\s*\(\s*1\s*-\s*[^()]+\)\s*\*\*")
_STRING = re.compile(r"[rbfu]*(\"[^\"\n]*\"|'[^'\n]*')")


def _code_without_strings(source: str) -> list[str]:
    return [_STRING.sub('""', line).split("#")[0] for line in source.splitlines()]


def test_the_threshold_and_formula_patterns_can_fail():
    assert _THRESHOLD.search("ok = err < 0.01") and _PASSK_FORM.search("j = 1 - (1 - p) ** k")
    assert not any(_THRESHOLD.search(ln) for ln in _code_without_strings('x = f"cos < 0.99"'))
    assert not any(_THRESHOLD.search(ln) for ln in _code_without_strings("y = 1  # p < 0.5"))
    assert not _THRESHOLD.search("keep = a >= b") and not _THRESHOLD.search("n > 2")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_cell_holds_a_threshold_or_a_passk_formula(nb):
    offenders = [
        line.strip()
        for cell in code_cells(nb)[2:]  # after the parameters and their validation
        for line in _code_without_strings("".join(cell["source"]))
        if _THRESHOLD.search(line) or _PASSK_FORM.search(line)
    ]
    assert not offenders, offenders


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.)\]>])/[A-Za-z_][\w.-]*/[\w./-]+")


def test_the_absolute_path_pattern_can_fail():
    assert _ABSOLUTE_PATH.search("pre-registration /work/main/params/x.yaml: 12 rows")
    assert not _ABSOLUTE_PATH.search("<results>/tables/04_runs.csv, k/(k + 1), 1/2")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_compared_outputs_name_no_folder_of_this_machine(nb):
    """nbval compares every output not marked NBVAL_IGNORE_OUTPUT: an absolute path there would
    fail in any other checkout."""
    found = [
        m.group(0)
        for cell in code_cells(nb)
        if "NBVAL_IGNORE_OUTPUT" not in "".join(cell["source"])
        for out in cell["outputs"]
        for m in _ABSOLUTE_PATH.finditer(
            "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
        )
    ]
    assert not found, found


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_complete_and_clean(nb):
    data = json.loads(nb.read_text())
    assert "papermill" not in data["metadata"]
    assert "widgets" not in data["metadata"], "a progress-bar widget leaked into the outputs"
    assert data["metadata"]["kernelspec"]["name"] == "passk_companion"
    for cell in code_cells(nb):
        assert cell["execution_count"], "every code cell must be stored executed (make execute)"
        assert "papermill" not in cell["metadata"] and "execution" not in cell["metadata"]
        for out in cell["outputs"]:
            assert out.get("output_type") != "error"
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {})
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            assert "it/s]" not in text, "a progress bar leaked into the stored outputs"


PROFILE_FILES = sorted(f for name in PROFILES for f in (ROOT / "params" / name).glob("*.yaml"))


def test_params_holds_profiles_and_the_preregistration_only():
    assert PROFILE_FILES
    assert {d.name for d in (ROOT / "params").iterdir()} <= set(PROFILES) | {"preregistered"}


@pytest.mark.parametrize("profile_file", PROFILE_FILES, ids=str)
def test_profile_files_name_known_parameters(profile_file):
    nb = ROOT / "notebooks" / f"{profile_file.stem}.ipynb"
    assert nb.is_file(), f"{profile_file} has no notebook"
    known = set(pm.inspect_notebook(str(nb)))
    given = yaml.safe_load(profile_file.read_text())
    assert set(given) <= known, f"unknown parameters: {set(given) - known}"
    assert given["profile"] == profile_file.parent.name


@pytest.mark.parametrize(
    "stem", sorted({p.stem for p in (ROOT / "params" / "full").glob("*.yaml")})
)
def test_full_profiles_use_at_least_five_seeds_where_seeds_exist(stem):
    given = yaml.safe_load((ROOT / "params" / "full" / f"{stem}.yaml").read_text())
    defaults = pm.inspect_notebook(str(ROOT / "notebooks" / f"{stem}.ipynb"))
    if "seeds" in defaults:
        assert len(given.get("seeds", [])) >= 5, f"{stem}: the full profile needs >= 5 seeds"
        assert len(ast.literal_eval(defaults["seeds"]["default"])) >= 3


@pytest.mark.parametrize(
    ("prefix", "params", "message"),
    [
        ("01", {"profile": "tpu"}, "profile must be one of"),
        ("01", {"k_values": [0, 4]}, "k_values entry must be >= 2"),
        ("01", {"n_group": 200}, "unknown parameter(s) ['n_group']"),
        ("01", {"seed": 1.5}, "seed must be an integer"),
        ("02", {"spreads": [float("nan")]}, "spreads entry must be finite"),
        ("02", {"seeds": [0, 1]}, "seeds must hold at least 3 entries"),
        ("03", {"context_answers": 0}, "context_answers must be >= 2"),
        ("03", {"lr": float("inf")}, "lr must be finite"),
        ("04", {"final_samples": 1}, "final_samples must be >= 2"),
        ("04", {"preregistration": 3}, "preregistration must be a string"),
        ("07", {"profile": "tpu"}, "profile must be one of"),
        # parameter combinations that cannot work (were late KeyErrors)
        ("05", {"seeds": [1, 101, 201]}, "seed = 0 must be one of seeds = [1, 101, 201]"),
        ("03", {"k_track": [4, 16, 64]}, "k = 8 must be one of k_track = [4, 16, 64]"),
        ("03", {"entropy_coefs": [0.01, 0.1]}, "entropy_coefs must include 0.0"),
        # sizes beyond what any profile uses
        ("01", {"n_groups": 10**12}, "n_groups must be <= 2000000"),
        ("02", {"groups": 10_000_000, "n": 4096}, "groups (10000000) x n (4096) x j1_values"),
        ("04", {"final_samples": 10**9}, "final_samples must be <= 1000000"),
        ("05", {"m_answers": 40}, "m_answers must be <= 17"),
        ("06", {"groups": 10**12}, "groups must be <= 10000000"),
        ("07", {"n_policies": 10**9}, "n_policies must be <= 10000000"),
        ("07", {"flow_steps": 10**9}, "flow_steps must be <= 10000000"),
    ],
)
def test_bad_parameters_fail_in_the_validation_cell(tmp_path, prefix, params, message):
    nb = notebook(prefix)
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(
            str(nb),
            str(tmp_path / "out.ipynb"),
            parameters=params,
            progress_bar=False,
            cwd=str(nb.parent),
            kernel_name="python3",
        )
    assert err.value.ename == "ValueError" and message in err.value.evalue, err.value.evalue
    assert err.value.exec_count <= 3  # parameters, injected parameters, validation


def test_progress_bars_stay_out_of_outputs_under_tqdm_disable(tmp_path, monkeypatch):
    """tqdm.auto's notebook bar ignores TQDM_DISABLE; passk_companion.runtime.progress honours
    it."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from passk_companion.runtime import progress\n"
            "for _ in progress(range(3), desc='x'):\n    pass"
        ),
        nbformat.v4.new_code_cell("from tqdm.auto import tqdm\nfor _ in tqdm(range(3)):\n    pass"),
    ]
    src = tmp_path / "bars.ipynb"
    nbformat.write(nb, src)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    pm.execute_notebook(str(src), str(tmp_path / "out.ipynb"), kernel_name="python3",
                        progress_bar=False)  # fmt: skip
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[0].outputs == []  # ours: nothing stored
    assert out.cells[1].outputs != []  # the control: plain tqdm.auto does leak a widget


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


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_ends_with_computed_verdicts(nb):
    """The last code cell records the claims, built from verdicts.Decision objects
    (claims.from_decision), never a Claim with a verdict typed by hand."""
    cells = ["".join(c["source"]) for c in code_cells(nb)]
    assert "claims.record(" in cells[-1]
    assert any("claims.from_decision(" in c for c in cells)
    assert not any("claims.Claim(" in c for c in cells), f"{nb.name} builds a Claim by hand"


def test_notebook_06_variant_is_a_working_objective_equal_to_the_library_one():
    """The variant written in notebook 06 registers, validates, is zero without a success, and
    equals the library's `unlikeliness` rule."""
    import torch

    from passk_companion import objectives

    nb = notebook("06")
    source = next(
        "".join(c["source"])
        for c in code_cells(nb)
        if "@objectives.register" in "".join(c["source"])
    )
    namespace = {}  # the notebook's parameters (its defaults), then the cell
    exec(compile("".join(code_cells(nb)[0]["source"]), str(nb), "exec"), namespace)  # noqa: S102
    exec(compile(source, str(nb), "exec"), namespace)  # noqa: S102 - our own notebook's cell
    try:
        obj = objectives.get("my_unlikeliness")
        rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
        logprobs = torch.log(torch.tensor([[0.4, 0.1, 0.2, 0.3], [0.4, 0.1, 0.2, 0.3]]))
        w = obj.weights(rewards, 2, logprobs=logprobs)
        assert torch.count_nonzero(w[1]) == 0  # Situation I
        assert w[0, 1] > w[0, 0] > 0 > w[0, 2]  # the less likely correct rollout gets more
        lib = objectives.get("unlikeliness", beta=0.25).weights(rewards, 2, logprobs=logprobs)
        torch.testing.assert_close(w, lib)
        with pytest.raises(ValueError, match="logprobs"):
            obj.weights(rewards, 2)
    finally:
        objectives.unregister("my_unlikeliness")
