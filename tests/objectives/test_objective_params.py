"""Objective parameters are validated in the registry, so non-finite or out-of-range values (and
anything that is not configuration) fail with one line naming the parameter, wherever they come
from (a grid file, RLConfig, the tabular dynamics, the bandit)."""

import pytest
import yaml

from passk_companion import cli, objectives
from passk_companion.model import config, sweep
from passk_companion.theory import dynamics


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("grpo", {"eps": float("nan")}, "grpo.eps must be finite, got nan"),
        ("grpo", {"eps": -1.0}, "grpo.eps must be >= 0"),
        ("passk_chen", {"eps": float("inf")}, "passk_chen.eps must be finite"),
        ("risk_seeking", {"beta": float("inf")}, "risk_seeking.beta must be finite, got inf"),
        ("risk_seeking", {"beta": 1e308}, "risk_seeking.beta must be <= 500"),
        ("risk_seeking", {"beta": True}, "risk_seeking.beta must be a number, got True"),
        ("unlikeliness", {"beta": float("nan")}, "unlikeliness.beta must be finite"),
        ("swor_ordered", {"baseline": float("nan")}, "swor_ordered.baseline must be finite"),
        ("swor_ordered", {"baseline": "mean"}, "swor_ordered.baseline must be one of"),
        ("grpo", {"epz": 0.1}, "objective grpo has no parameter(s) ['epz']; its parameters: eps"),
        ("pkpo", {"generator": [[0] * 9] * 9}, "objective pkpo has no parameter(s) ['generator']"),
        ("grpo", {"eps": [1e-4] * 1000}, "grpo.eps must be a number, a string"),
    ],
)
def test_bad_objective_parameters_are_refused_naming_them(name, params, message):
    with pytest.raises(ValueError) as err:
        objectives.get(name, **params)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="objective|must"):
        config.RLConfig(objective=name, objective_params=params, sampler="swor", k=2)
    with pytest.raises(ValueError):
        dynamics.TabularConfig(objective=name, params=params)


def test_good_parameters_still_work():
    assert objectives.get("grpo", eps=0.0).eps == 0.0
    assert objectives.get("risk_seeking", beta=64.0).beta == 64.0
    assert objectives.get("swor_ordered", baseline=0.5).baseline == 0.5
    assert objectives.parameters("unlikeliness") == ["beta", "eps"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"objective": "grpo", "objective_params": {"eps": float("nan")}}, "grpo.eps"),
        ({"objective": "risk_seeking", "objective_params": {"beta": float("inf")}}, "beta"),
        ({"lr": 1e308}, "lr must be <= 1000"),
    ],
)
def test_a_grid_with_non_finite_parameters_is_refused_before_any_work(tmp_path, capsys, fields,
                                                                       message):  # fmt: skip
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"profile": "smoke", "overrides": fields}))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(grid), "--out", str(out), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match=message):
        sweep.load_grid(grid)
