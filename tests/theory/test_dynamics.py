"""Training dynamics: the update rule against autograd and closed forms, config validation."""

import numpy as np
import pytest
import torch

from passk_companion.evidence import matching
from passk_companion.theory import (
    contextual,
    dynamics,
    exact,
    policies,
    policy_metrics,
    stationary,
    tabular_matching,
)


def _policy():
    return policies.multimodal_tabular(5, 12, [1.0, 0.0], seed=3)


def test_grad_entropy_matches_autograd():
    logits, _ = _policy()
    torch.testing.assert_close(
        policy_metrics.grad_entropy(logits), exact.autograd(policy_metrics.entropy, logits)
    )


@pytest.mark.parametrize(("objective", "grad"), [("pass1_reinforce", "j1"), ("pkpo", "jk")])
def test_one_exact_step_is_gradient_ascent_on_the_target(objective, grad):
    logits, correct = _policy()
    cfg = dynamics.TabularConfig(
        objective=objective,
        mode="exact",
        n=8,
        k=4,
        lr=0.5,
        steps=1,
        ks=(4,),
        record_every=1,
        entropy=0.1,
    )
    run = dynamics.train_tabular(logits, correct, cfg)
    g = exact.grad_j1(logits, correct) if grad == "j1" else exact.grad_jk(logits, correct, 4)
    want = logits + 0.5 * (g + 0.1 * exact.autograd(policy_metrics.entropy, logits))
    torch.testing.assert_close(run.logits, want)
    assert list(run.history.step) == [0, 1]


def test_one_contextual_step_matches_autograd_on_w():
    pol = contextual.easy_hard_policy(6, 3, 5, spread=1.0, seed=2)
    cfg = dynamics.TabularConfig(
        objective="pkpo", mode="exact", n=8, k=3, lr=0.3, steps=1, ks=(3,), record_every=1
    )
    trained, _ = dynamics.train_contextual(pol, cfg)
    w = pol.weight.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(exact.pass_at_k(pol.logits(w), pol.correct, 3).mean(), w)
    torch.testing.assert_close(trained.weight, pol.weight + 0.3 * g)


def test_sampled_mode_records_first_signal_and_is_seeded():
    logits, correct = exact.logits_for_success(torch.tensor([1e-9, 0.5]), 6, 2)
    cfg = dynamics.TabularConfig(
        objective="pkpo", mode="sampled", n=4, k=2, steps=5, ks=(2,), record_every=5, seed=1
    )
    a = dynamics.train_tabular(logits, correct, cfg)
    b = dynamics.train_tabular(logits, correct, cfg)
    assert a.first_signal[0] == -1 and a.first_signal[1] >= 0
    torch.testing.assert_close(a.logits, b.logits)


def test_metrics_on_a_known_policy():
    probs = torch.tensor([[0.5, 0.3, 0.005, 0.195]], dtype=torch.float64)
    correct = torch.tensor([[True, True, True, False]])
    m = policy_metrics.policy_metrics(probs.log(), correct, [2])
    assert m["J1"] == pytest.approx(0.805)
    assert m["J2"] == pytest.approx(1 - 0.195**2)
    assert m["gap2"] == pytest.approx(1 - 0.195**2 - 0.805)
    assert m["modes"] == 2 and m["best_mode_mass"] == pytest.approx(0.5)


def test_late_slope_recovers_a_power_law():
    t = np.arange(1, 1001)
    assert tabular_matching.late_slope(t, 3.0 * t**-1.5) == pytest.approx(-1.5)
    with pytest.raises(ValueError, match="not enough"):
        tabular_matching.late_slope(t, np.zeros_like(t, dtype=float))


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"objective": "nope"}, "unknown objective"),
        ({"mode": "bogus"}, "mode must be one of"),
        ({"k": 9, "n": 8}, "must be <= n"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"entropy": -1.0}, "entropy must be >= 0"),
    ],
)
def test_config_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        dynamics.TabularConfig(**kwargs)


def _run_with_traces(j1_rows, modes_rows):
    cfg = dynamics.TabularConfig(steps=1)
    traces = {
        "step": torch.arange(len(j1_rows)),
        "J1": torch.tensor(j1_rows, dtype=torch.float64),
        "modes_eff": torch.tensor(modes_rows, dtype=torch.float64),
    }
    return dynamics.TabularRun(cfg, None, None, None, traces)


def test_per_prompt_matching_interpolates_and_marks_unreached_prompts():
    run = _run_with_traces([[0.1, 0.6, 0.1], [0.3, 0.8, 0.2], [0.5, 0.9, 0.25]],
                           [[4.0, 2.0, 3.0], [3.0, 1.0, 3.0], [2.0, 1.0, 3.0]])  # fmt: skip
    at = tabular_matching.per_prompt_at(run, [0.4, 0.5], "modes_eff")
    assert at[0, 0] == pytest.approx(2.5)  # halfway between steps 1 and 2
    assert at[0, 1] == 2.0 and at[1, 1] == 2.0  # starts above the level: its step-0 value
    assert torch.isnan(at[:, 2]).all()  # never reaches 0.4
    other = _run_with_traces([[0.1, 0.6, 0.5], [0.5, 0.8, 0.6], [0.6, 0.9, 0.7]],
                             [[5.0, 1.0, 2.0], [4.0, 1.0, 2.0], [3.0, 1.0, 2.0]])  # fmt: skip
    diff, used = tabular_matching.matched_difference_per_prompt(run, other, [0.4, 0.5], "modes_eff")
    assert used == [0.4, 0.5] and np.isnan(diff[2])
    assert diff[0] == pytest.approx(np.mean([2.5 - 4.25, 2.0 - 4.0]))
    change = tabular_matching.matched_change(run, 0.4, "modes_eff")
    assert change[0] == pytest.approx(2.5 - 4.0) and np.isnan(change[2])


def test_at_matched_on_a_history():
    import pandas as pd

    h = pd.DataFrame({"step": [0, 10, 20], "J1": [0.2, 0.4, 0.8], "m": [3.0, 2.0, 1.0]})
    assert matching.at_matched(h, 0.6, "m") == pytest.approx(1.5)
    assert matching.at_matched(h, 0.1, "m") == 3.0
    assert np.isnan(matching.at_matched(h, 0.9, "m"))


def test_entropy_fixed_point_and_stationary_point():
    from passk_companion.theory import symbolic

    j1 = stationary.entropy_fixed_point(lambda p: 1.0, 4, 60, 0.3)
    assert j1 == pytest.approx(float(symbolic.entropy_optimum_j1(4, 60, 0.3)), rel=1e-10)
    omega = lambda p: 8 * (1 - p) ** 7  # noqa: E731 - alpha_8
    j1k = stationary.entropy_fixed_point(omega, 4, 60, 0.3)
    a = omega(j1k) / 0.3
    assert j1k == pytest.approx(4 * np.exp(a) / (4 * np.exp(a) + 60), abs=1e-12)
    for objective in ("pass1_reinforce", "pkpo"):
        _, update = stationary.entropy_stationary_point(objective, 16, 8, 0.1, 5, 59)
        assert update < 1e-12
    with pytest.raises(ValueError, match="beta"):
        stationary.entropy_fixed_point(lambda p: 1.0, 4, 60, 0.0)


def test_rare_mode_metrics_on_a_known_policy():
    probs = torch.tensor([[0.5, 0.3, 0.005, 0.195]], dtype=torch.float64)
    correct = torch.tensor([[True, True, True, False]])
    rare = torch.tensor([[False, False, True, False]])
    m = policy_metrics.policy_metrics(probs.log(), correct, [2], rare=rare)
    q = np.array([0.5, 0.3, 0.005]) / 0.805
    assert m["modes_eff"] == pytest.approx(np.exp(-(q * np.log(q)).sum()))
    assert m["rare_mass"] == pytest.approx(0.005) and m["rare_share"] == pytest.approx(
        0.005 / 0.805
    )
