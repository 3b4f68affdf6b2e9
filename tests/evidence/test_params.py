"""Notebook parameters (passk_companion.evidence.params): upper bounds on sizes and lists, and
relations between parameters checked in the validation cell."""

import pytest

from passk_companion.evidence import params as par


def _params(**values):
    p = par.Params(dict(values))
    return p


def test_member_names_both_parameters():
    p = _params(seed=0, seeds=[1, 101, 201])
    p.int("seed", minimum=0)
    p.seeds()
    with pytest.raises(ValueError, match=r"seed = 0 must be one of seeds = \[1, 101, 201\]"):
        p.member("seed", of="seeds")
    ok = _params(seed=101, seeds=[1, 101, 201])
    ok.int("seed", minimum=0)
    ok.seeds()
    assert ok.member("seed", of="seeds") == 101


def test_relations_use_validated_values_only():
    p = _params(seed=0, seeds=[0, 1, 2])
    p.int("seed", minimum=0)
    with pytest.raises(ValueError, match="'seeds' must be validated before a relation uses it"):
        p.member("seed", of="seeds")


def test_contains_lists_what_is_missing():
    p = _params(entropy_coefs=[0.1, 0.3], objectives_run=["grpo"])
    p.numbers("entropy_coefs", low=0, min_len=2)
    with pytest.raises(ValueError, match=r"entropy_coefs must include 0.0 .*got \[0.1, 0.3\]"):
        p.contains("entropy_coefs", [0.0])
    p.choices("objectives_run", ["grpo", "pkpo", "pkpo_loo"])
    with pytest.raises(ValueError, match="objectives_run must include 'pkpo', 'pkpo_loo'"):
        p.contains("objectives_run", ["grpo", "pkpo", "pkpo_loo"])


def test_product_bounds_what_one_computation_holds():
    p = _params(groups=10_000_000, n=4096, j1_values=[0.1, 0.2])
    p.int("groups", maximum=10**7)
    p.int("n", maximum=4096)
    p.fractions("j1_values")
    with pytest.raises(ValueError) as err:
        p.product("groups", "n", "j1_values")
    text = str(err.value)
    assert "groups (10000000) x n (4096) x j1_values (2) = 81920000000 numbers" in text
    assert f"more than the limit of {par.MAX_ELEMENTS}: lower groups or n or j1_values" in text
    small = _params(groups=20000, n=16)
    small.int("groups")
    small.int("n")
    assert small.product("groups", "n", times=5) == 1_600_000


def test_sizes_and_lists_have_upper_bounds():
    p = _params(n_groups=10**12, k_values=list(range(2, 20_000)))
    with pytest.raises(ValueError, match="n_groups must be <= 2000000, got 1000000000000"):
        p.int("n_groups", minimum=100, maximum=2_000_000)
    with pytest.raises(ValueError, match="k_values must hold at most 10000 entries, got 19998"):
        p.ints("k_values", minimum=2)
    with pytest.raises(ValueError, match="must be a list"):
        _params(seeds=iter([0, 1, 2])).seeds()  # an unsized iterable could be endless
