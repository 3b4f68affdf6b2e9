"""Issue 21, notebooks: sizes no profile can use (item 11) and parameter combinations that cannot
work (item 18) fail in the validation cell, naming the parameters, before any computation."""

from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _notebook(prefix: str) -> Path:
    return next((ROOT / "notebooks").glob(f"{prefix}_*.ipynb"))


@pytest.mark.parametrize(
    ("prefix", "params", "message"),
    [
        # item 18: notebook 05's displayed seed must be one of its seeds (was a late KeyError)
        ("05", {"seeds": [1, 101, 201]}, "seed = 0 must be one of seeds = [1, 101, 201]"),
        ("03", {"k_track": [4, 16, 64]}, "k = 8 must be one of k_track = [4, 16, 64]"),
        ("03", {"entropy_coefs": [0.01, 0.1]}, "entropy_coefs must include 0.0"),
        # item 11: sizes beyond what a profile can use
        ("01", {"n_groups": 10**12}, "n_groups must be <= 2000000"),
        ("02", {"groups": 10_000_000, "n": 4096}, "groups (10000000) x n (4096) x j1_values"),
        ("04", {"final_samples": 10**9}, "final_samples must be <= 1000000"),
        ("05", {"m_answers": 40}, "m_answers must be <= 17"),
        ("06", {"groups": 10**12}, "groups must be <= 10000000"),
        ("07", {"n_policies": 10**9}, "n_policies must be <= 10000000"),
    ],
)
def test_bad_combinations_and_sizes_fail_in_the_validation_cell(tmp_path, prefix, params,
                                                                message):  # fmt: skip
    nb = _notebook(prefix)
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(
            str(nb), str(tmp_path / "out.ipynb"), parameters=params, progress_bar=False,
            cwd=str(nb.parent), kernel_name="python3",
        )  # fmt: skip
    assert err.value.ename == "ValueError" and message in err.value.evalue, err.value.evalue
    assert err.value.exec_count <= 3  # parameters, injected parameters, validation
