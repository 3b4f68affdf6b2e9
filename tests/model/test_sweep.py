"""The grid runner: validation, the local and Ray backends, skipping, resuming, failures, CLI."""

import dataclasses

import pandas as pd
import pytest
import yaml

from passk_companion import cli
from passk_companion.model import checkpoint, config, grid, pretrain, rl, sweep
from passk_companion.model.provenance import code_digest

SMOKE_GRID = {
    "profile": "smoke",
    "overrides": {"steps": 4},
    "grid": {"objective": ["pass1_reinforce", "pkpo_loo"], "seed": [0, 1]},
}


def _strip_timing(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=list(sweep.TIMING_COLUMNS)).reset_index(drop=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grid": {"lrr": [1e-3]}}, "unknown field(s) ['lrr'] in grid"),
        ({"overrides": {"stepz": 3}}, "unknown field(s) ['stepz'] in overrides"),
        ({"grid": {"seed": []}}, "grid.seed must be a non-empty list"),
        ({"grid": {"lr": [-1.0]}}, "lr must be > 0"),
        ({"grid": {"k": [8]}}, "k = 8 must be <= n"),
        ({"profile": "tpu"}, "profile must be one of"),
        ({"extra": 1}, "unknown key(s) ['extra']"),
        ({"overrides": {"seed": 0}, "grid": {"seed": [1]}}, "both in overrides and grid"),
        ({"variants": [{"objective": "grpo"}]}, "with a string 'name'"),
    ],
)
def test_bad_grids_are_refused_before_anything_runs(tmp_path, change, message):
    data = {**SMOKE_GRID, **change}
    with pytest.raises(ValueError, match=None) as err:
        sweep.parse_grid(data)
    assert message in str(err.value)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert not (tmp_path / "out" / "bases").exists()


def test_variants_are_crossed_with_the_grid_and_named():
    grid = sweep.parse_grid(
        {
            "profile": "smoke",
            "variants": [{"name": "rloo", "objective": "pass1_reinforce"},
                         {"name": "ent", "objective": "pass1_reinforce", "entropy": 0.1}],
            "grid": {"seed": [0, 1]},
        }
    )  # fmt: skip
    trials = grid.trials()
    assert [t.name for t in trials] == [
        "rloo__seed=0",
        "rloo__seed=1",
        "ent__seed=0",
        "ent__seed=1",
    ]
    assert trials[2].config.entropy == 0.1 and trials[0].config.entropy == 0.0


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    result = sweep.run(sweep.parse_grid(SMOKE_GRID), out, workers=2, progress=False)
    return out, result


def test_local_backend_runs_the_grid_and_a_rerun_skips(local_run):
    out, result = local_run
    assert result.ok and (result.trials, result.ran, result.skipped) == (4, 4, 0)
    table = pd.read_csv(out / "results.csv")
    assert table.trial.nunique() == 4 and set(table.status) == {"done"}
    assert {"objective", "seed", "lr", "test_j1", "test_kl", "step"} <= set(table.columns)
    assert len(list((out / "bases").glob("*.pt"))) == 1  # one shared base
    again = sweep.run(sweep.parse_grid(SMOKE_GRID), out, workers=2, progress=False)
    assert (again.ran, again.skipped) == (0, 4)
    pd.testing.assert_frame_equal(
        _strip_timing(pd.read_csv(out / "results.csv")), _strip_timing(table)
    )


def test_ray_backend_gives_the_same_results(local_run, tmp_path):
    out, _ = local_run
    result = sweep.run(
        sweep.parse_grid(SMOKE_GRID), tmp_path, backend="ray", workers=2, progress=False
    )
    assert result.ok and result.ran == 4
    pd.testing.assert_frame_equal(
        _strip_timing(pd.read_csv(tmp_path / "results.csv")),
        _strip_timing(pd.read_csv(out / "results.csv")),
    )


@pytest.mark.parametrize("backend,ensemble", [("local", 1), ("local", 3), ("ray", 2)])
def test_packing_trials_into_ensembles_changes_no_result(local_run, tmp_path, backend, ensemble):
    """One run per job, or ensembles of 2 or 3 (the default packs all 4 into one), on either
    backend: the same results.csv."""
    out, _ = local_run
    result = sweep.run(sweep.parse_grid(SMOKE_GRID), tmp_path, backend=backend, workers=2,
                       progress=False, ensemble=ensemble)  # fmt: skip
    assert result.ok and result.ran == 4
    pd.testing.assert_frame_equal(
        _strip_timing(pd.read_csv(tmp_path / "results.csv")),
        _strip_timing(pd.read_csv(out / "results.csv")),
    )


def test_a_trial_finished_under_other_code_runs_again(local_run, tmp_path):
    """done.json records the code a trial ran with (a digest of the package's sources): under
    other code the trial is not reused, and a checkpoint other code wrote is not resumed."""
    import json
    import shutil

    out, _ = local_run
    shutil.copytree(out, tmp_path / "copy")
    copy = tmp_path / "copy"
    grid = sweep.parse_grid(SMOKE_GRID)
    first, second = grid.trials()[:2]
    done = json.loads((copy / first.name / "done.json").read_text())
    assert done["code"] == code_digest()
    done["code"] = "0123456789abcdef"
    (copy / first.name / "done.json").write_text(json.dumps(done))
    saved = checkpoint.load(copy / second.name / "checkpoint.pt", {"key": str})
    saved["code"] = "0123456789abcdef"
    checkpoint.save(copy / second.name / "checkpoint.pt", saved)
    (copy / second.name / "done.json").unlink()
    result = sweep.run(grid, copy, workers=2, progress=False)
    assert result.ok and (result.ran, result.skipped) == (2, 2)
    assert "records other code" in result.rerun[first.name]
    assert any(second.name in n and "written by other code" in n for n in result.notes)
    pd.testing.assert_frame_equal(
        _strip_timing(pd.read_csv(copy / "results.csv")),
        _strip_timing(pd.read_csv(out / "results.csv")),
    )


def test_an_interrupted_sweep_resumes_to_the_same_results(local_run, tmp_path):
    out, _ = local_run
    grid = sweep.parse_grid(SMOKE_GRID)
    first = grid.trials()[0]
    # interrupt the first trial after 2 of its 4 steps, as a kill would
    profile = config.for_profile("smoke")
    import torch

    torch.set_num_threads(1)
    base_path = tmp_path / "bases" / f"{pretrain.base_digest(profile)}.pt"
    base = pretrain.load_or_pretrain(profile, base_path, "cpu", progress=False)
    rl.train_rl(base, profile, first.config, tmp_path / first.name, until=2, progress=False)
    assert not (tmp_path / first.name / "done.json").exists()
    result = sweep.run(grid, tmp_path, workers=2, progress=False)
    assert result.ok and result.ran == 4
    pd.testing.assert_frame_equal(
        _strip_timing(pd.read_csv(tmp_path / "results.csv")),
        _strip_timing(pd.read_csv(out / "results.csv")),
    )


def test_a_failing_trial_is_reported_and_the_others_finish(tmp_path, capsys):
    data = {**SMOKE_GRID, "grid": {"device": ["cpu", "cuda:99"], "seed": [0]}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    rc = cli.main(["sweep", str(path), "--workers", "2", "--out", str(tmp_path / "o"), "--quiet"])
    printed = capsys.readouterr().out
    bad = sweep.parse_grid(data).trials()[1].name
    assert bad.startswith("device=cuda-99-h") and bad.endswith("__seed=0")
    assert rc == 1 and f"FAILED {bad}" in printed
    table = pd.read_csv(tmp_path / "o" / "results.csv")
    status = table.groupby("trial").status.first().to_dict()
    assert status == {"device=cpu__seed=0": "done", bad: "failed"}
    assert table[table.status == "failed"].error.str.len().min() > 0


def test_workers_and_backend_are_validated(tmp_path):
    grid = sweep.parse_grid(SMOKE_GRID)
    with pytest.raises(ValueError, match="backend"):
        sweep.run(grid, tmp_path, backend="slurm")
    with pytest.raises(ValueError, match="workers"):
        sweep.run(grid, tmp_path, workers=0)
    assert dataclasses.replace(grid.trials()[0].config, seed=3).seed == 3


def test_a_deeply_nested_or_duplicated_grid_file_is_one_line(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("profile: smoke\ngrid: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ValueError, match="nested deeper than") as err:
        grid.load_grid(deep)
    assert "\n" not in str(err.value)
    twice = tmp_path / "twice.yaml"
    twice.write_text("profile: smoke\ngrid: {seed: [0]}\nprofile: ci\n")
    with pytest.raises(ValueError, match="duplicate key 'profile'"):
        grid.load_grid(twice)
