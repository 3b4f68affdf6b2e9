"""The pre-registration reader: every value bounded and cross-checked, every refusal one line
that names the file and the key."""

from pathlib import Path

import pytest
import yaml

from passk_companion.evidence import preregistration

ROOT = Path(__file__).resolve().parents[2]
PREREG = ROOT / "params" / "preregistered" / "04.yaml"


def _refused(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        preregistration.load(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_key_given_twice_is_refused_not_overridden(tmp_path):
    text = PREREG.read_text() + "equivalence_margin: 0.5\n"
    message = _refused(tmp_path, text)
    assert "duplicate key 'equivalence_margin'" in message
    line = text.count("\n")
    assert f"at line {line}" in message


def _with(change):
    data = yaml.safe_load(PREREG.read_text())
    return yaml.safe_dump({**data, **change})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"equivalence_margin": 1.0e300}, "equivalence_margin must be <= 1"),
        ({"kl_trained": 1.0e300}, "kl_trained must be <= 1"),
        ({"min_hard_prompts": 10**4000}, "min_hard_prompts must be <= 1000000, got an integer"),
        ({"bootstrap_seed": 10**5000}, "an integer of 5001 characters is too long"),
        ({"bootstrap_seed": 10**40}, "bootstrap_seed must be <= 4294967295, got an integer"),
        (
            {
                "grad_check": {
                    "k": 8,
                    "groups": 32,
                    "margin_slope": 0.25,
                    "margin_intercept": 0.25,
                    "alpha": 0.5,
                }
            },
            "grad_check.alpha must be < 0.5",
        ),  # fmt: skip
        (
            {
                "grad_check": {
                    "k": 8,
                    "groups": 32,
                    "margin_slope": 50.0,
                    "margin_intercept": 0.25,
                    "alpha": 0.05,
                }
            },
            "grad_check.margin_slope must be <= 1",
        ),  # fmt: skip
        (
            {
                "family": [
                    {
                        "id": "r",
                        "arm": "rloo",
                        "reference": "rloo",
                        "level": "early",
                        "claim": "greater",
                    }
                ]
            },
            "arm and reference are both 'rloo'",
        ),  # fmt: skip
        (
            {
                "family": [
                    {
                        "id": "r",
                        "arm": "base",
                        "reference": "rloo",
                        "level": "early",
                        "claim": "greater",
                    }
                ]
            },
            "'base' is a reference",
        ),  # fmt: skip
    ],
)
def test_values_that_decide_nothing_are_refused(tmp_path, change, message):
    import sys

    sys.set_int_max_str_digits(0)  # let yaml.safe_dump write the long integers
    try:
        text = _with(change)
    finally:
        sys.set_int_max_str_digits(4300)
    assert message in _refused(tmp_path, text)


def test_deep_nesting_is_one_line(tmp_path):
    text = PREREG.read_text().replace(
        "bootstrap_seed: 0", "bootstrap_seed: " + "[" * 50_000 + "]" * 50_000
    )
    assert "nested deeper than" in _refused(tmp_path, text)
