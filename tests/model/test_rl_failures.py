"""The RL loop's failures: a run whose model diverges or whose metrics turn non-finite fails with
one line naming the RL step, and no non-finite row reaches metrics.csv; sizes a profile's model
cannot use are refused before any work."""

import dataclasses
import math

import pandas as pd
import pytest
import torch

from passk_companion import objectives
from passk_companion.model import config, pretrain, rl

SMOKE = config.for_profile("smoke")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("base") / "base.pt"
    return pretrain.load_or_pretrain(SMOKE, path, "cpu", progress=False)


@pytest.fixture
def huge_weights():
    @objectives.register("test_huge_weights")
    class Huge(objectives.Objective):
        binary_only = False

        def _weights(self, rewards, k):
            return torch.full_like(rewards, 1e150)  # finite, but the step explodes the model

    yield "test_huge_weights"
    objectives.unregister("test_huge_weights")


def test_a_diverged_model_fails_naming_the_step(tmp_path, base, huge_weights):
    cfg = dataclasses.replace(SMOKE.rl, objective=huge_weights, optimizer="sgd", grad_clip=0.0,
                              lr=1e3, steps=2, eval_every=1)  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"^RL step 1: the model diverged \(the metrics train_j1, "
        r"train_pass@1, train_pass@2 and \d+ more are not finite\); lower lr",
    ):
        rl.train_rl(base, SMOKE, cfg, tmp_path / "run", progress=False)
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert rows.step.tolist() == [0] and math.isfinite(rows.test_j1.iloc[0])


def test_non_finite_metrics_fail_naming_the_step(tmp_path, base, monkeypatch):
    real = rl._evaluate

    def broken(ens, due):
        rows = real(ens, due)
        for i in due:
            if ens.members[i].step == 2:
                rows[i][0]["test_j1"] = math.nan
        return rows

    monkeypatch.setattr(rl, "_evaluate", broken)
    cfg = dataclasses.replace(SMOKE.rl, steps=4, eval_every=2)
    with pytest.raises(
        ValueError,
        match=r"RL step 2: the model diverged \(the metrics test_j1 "
        r"are not finite\)",
    ):
        rl.train_rl(base, SMOKE, cfg, tmp_path / "run", progress=False)
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert rows.step.tolist() == [0] and not rows.test_j1.isna().any()


def test_sizes_the_model_cannot_use_are_refused():
    ci = config.for_profile("ci")
    with pytest.raises(ValueError, match="16 x 4096 rollouts would need about 27 GiB"):
        config.check_fits(ci, dataclasses.replace(ci.rl, n=4096))
    with pytest.raises(ValueError, match="kl_samples x test prompts"):
        config.check_fits(ci, dataclasses.replace(ci.rl, kl_samples=4096))
    for name in ("smoke", "ci", "full", "gpu"):  # every profile's own sizes fit
        profile = config.for_profile(name)
        config.check_fits(profile, profile.rl)
