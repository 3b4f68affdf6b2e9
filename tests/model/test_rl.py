"""The RL loop on the smoke profile: exact evaluation, resumption, run keys, validation, CLI."""

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from passk_companion import cli
from passk_companion.evidence import analysis
from passk_companion.model import config, evaluation, pretrain, rl
from passk_companion.model.portable import NATIVE

SMOKE = config.for_profile("smoke")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.pt"
    return pretrain.load_or_pretrain(SMOKE, path, device="cpu", progress=False)


@pytest.fixture(scope="module")
def task():
    return config.build_task(SMOKE.task)


def test_train_and_test_prompts_are_disjoint_and_held_out(task):
    train_pairs = {tuple(p) for p in task.rl_train_pairs.tolist()}
    test_pairs = {tuple(p) for p in task.rl_test_pairs.tolist()}
    pre = {tuple(p) for p in task.pretrain_pairs.tolist()}
    assert train_pairs and test_pairs and not train_pairs & test_pairs
    assert not (train_pairs | test_pairs) & pre


def test_valid_paths_enumerates_every_path_once(task):
    answers, owner = task.valid_paths(task.rl_pairs)
    counts = task.paths[task.rl_pairs[:, 0], task.rl_pairs[:, 1]]
    assert len(answers) == int(counts.sum())
    assert torch.equal(torch.bincount(owner, minlength=len(task.rl_pairs)), counts)
    assert torch.all(task.verify(task.rl_pairs[owner], answers) == 1)
    assert len(torch.unique(torch.cat([owner[:, None], answers], 1), dim=0)) == len(answers)


def test_exact_metrics_against_their_definitions(base, task):
    paths = evaluation.PathSet.build(task, task.rl_test_pairs)
    m = evaluation.exact_metrics(base, task, paths, (1, 8))
    p = evaluation.path_logprobs(base, task, paths).exp().numpy()
    owner = paths.owner.numpy()
    for x in range(len(paths)):
        q = p[owner == x]
        j1 = q.sum()
        assert m["j1"][x] == pytest.approx(j1, rel=1e-9)
        assert m["distinct@8"][x] == pytest.approx(np.sum(1 - (1 - q) ** 8), rel=1e-9)
        r = q / j1
        assert m["modes_eff"][x] == pytest.approx(np.exp(-np.sum(r * np.log(r))), rel=1e-9)
    assert torch.allclose(m["distinct@1"], m["j1"])  # one draw: expected distinct = J_1


def test_sampled_evaluation_agrees_with_the_exact_one(base, task):
    pairs = task.rl_test_pairs
    j1 = evaluation.exact_metrics(base, task, evaluation.PathSet.build(task, pairs), ())[
        "j1"
    ].numpy()
    n = 512
    c = evaluation.evaluate_sampled(base, task, pairs, n, seed=0)["correct"].numpy()
    se = np.sqrt(np.sum(j1 * (1 - j1) / n)) / len(j1)
    z = (c.mean() / n - j1.mean()) / se
    assert abs(z) < 4, z  # a 4-sigma band: fails only if exact and sampled disagree


@pytest.mark.parametrize(("n", "k"), [(16, 8), (32, 8), (32, 4), (8, 2)])
def test_zero_weight_counts_of_pkpo_loo_are_the_closed_form(n, k):
    # C(n - c, k - 1) = 0 exactly when n - c < k - 1, and c = 0 gives no correct rollout at all
    assert evaluation.zero_weight_counts("pkpo_loo", n, k) == [0, *range(n - k + 2, n + 1)]
    assert evaluation.zero_weight_counts("pass1_reinforce", n, k) == [0, n]


def test_batch_update_cosine_compares_the_summed_mean_gradients(base, task):
    pairs = task.rl_train_pairs[:6]

    def cosine(variants):
        return evaluation.batch_update_cosine(base, task, pairs, variants, 8, 2,
                                              torch.Generator().manual_seed(0))  # fmt: skip

    same = cosine({"a": ("pass1_reinforce", 4), "b": ("pass1_reinforce", 4)})
    assert same == pytest.approx(1.0, abs=1e-12)
    other = cosine({"rloo": ("pass1_reinforce", 8), "pkpo_loo": ("pkpo_loo", 8)})
    assert -1.0 <= other < 1.0 - 1e-6
    with pytest.raises(ValueError, match="two variants"):
        cosine({"a": ("pass1_reinforce", 4)})


def test_interrupted_run_resumes_to_the_same_metrics(base, task, tmp_path):
    cfg = dataclasses.replace(SMOKE.rl, objective="pkpo", entropy=0.05, steps=6, eval_every=2)
    full = rl.train_rl(base, SMOKE, cfg, tmp_path / "full", progress=False)
    part = rl.train_rl(base, SMOKE, cfg, tmp_path / "split", until=2, progress=False)
    assert list(part.step) == [0, 2]
    resumed = rl.train_rl(base, SMOKE, cfg, tmp_path / "split", progress=False)
    pd.testing.assert_frame_equal(full, resumed)
    on_disk = pd.read_csv(tmp_path / "split" / "metrics.csv")
    pd.testing.assert_frame_equal(on_disk, full, check_dtype=False)
    pd.testing.assert_frame_equal(
        analysis.read_prompts(tmp_path / "split"), analysis.read_prompts(tmp_path / "full")
    )
    assert full.grad_norm.dropna().gt(0).all()  # the policy really was updated
    moved = rl.load_trained(tmp_path / "full", SMOKE)
    assert any(
        not torch.equal(p, q) for p, q in zip(moved.parameters(), base.parameters(), strict=True)
    )
    assert not list((tmp_path / "split").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_prompt_table_has_both_splits_and_exact_j1(base, task, tmp_path):
    cfg = dataclasses.replace(SMOKE.rl, steps=2, eval_every=2)
    rl.train_rl(base, SMOKE, cfg, tmp_path, progress=False)
    table = analysis.read_prompts(tmp_path)
    assert set(table.split) == {"train", "test"} and set(table.step) == {0, 2}
    test0 = table[(table.split == "test") & (table.step == 0)]
    assert len(test0) == len(task.rl_test_pairs) and test0.j1.between(0, 1).all()
    assert table[table.split == "train"].kl.isna().all()


def test_run_key_ignores_the_device_spelling_and_includes_threads(base, task, tmp_path):
    cfg = dataclasses.replace(SMOKE.rl, steps=2)
    rl.train_rl(base, SMOKE, cfg, tmp_path, progress=False)
    same = dataclasses.replace(cfg, device="cpu")
    assert len(rl.train_rl(base, SMOKE, same, tmp_path, progress=False)) == 2
    assert rl.run_key(cfg, threads=1) != rl.run_key(cfg, threads=2)
    other = dataclasses.replace(cfg, lr=1e-2)
    with pytest.raises(ValueError, match="--fresh"):
        rl.train_rl(base, SMOKE, other, tmp_path, progress=False)
    assert len(rl.train_rl(base, SMOKE, other, tmp_path, fresh=True, progress=False)) == 2


def test_base_key_includes_threads_the_regime_rule_and_the_code(monkeypatch):
    before = pretrain.base_key(SMOKE, threads=1)
    monkeypatch.setattr(pretrain, "code_digest", lambda: "0123456789abcdef")
    assert pretrain.base_key(SMOKE, threads=1) != before
    monkeypatch.undo()
    assert pretrain.base_key(SMOKE, threads=1) != pretrain.base_key(SMOKE, threads=2)
    strict = dataclasses.replace(SMOKE, regime=evaluation.RegimeRule(mean_low=0.5))
    assert pretrain.base_key(SMOKE, threads=1) != pretrain.base_key(strict, threads=1)


def test_pretraining_stops_at_the_first_checkpoint_meeting_the_rule(task):
    lenient = evaluation.RegimeRule(mean_low=0.0, mean_high=1.0, hard_j1=0.99, hard_fraction=0.01)
    cfg = dataclasses.replace(SMOKE.pretrain, steps=40, select_every=10)
    _, sel = pretrain.pretrain(task, SMOKE.model, cfg, lenient, "cpu", progress=False)
    assert sel["step"] == 10 and sel["regime_met"] and len(sel["checks"]) == 1
    never = evaluation.RegimeRule(mean_low=0.999, mean_high=1.0)
    _, sel = pretrain.pretrain(task, SMOKE.model, cfg, never, "cpu", progress=False)
    assert (
        sel["step"] == 40
        and not sel["regime_met"]
        and [c[0] for c in sel["checks"]]
        == [
            10,
            20,
            30,
            40,
        ]
    )


def test_sgd_without_clipping_reports_the_raw_gradient_norm(base, task, tmp_path):
    cfg = dataclasses.replace(
        SMOKE.rl, optimizer="sgd", grad_clip=0.0, lr=1e-3, steps=2, eval_every=2
    )
    df = rl.train_rl(base, SMOKE, cfg, tmp_path, progress=False)
    assert math.isfinite(df.grad_norm.iloc[-1]) and df.grad_norm.iloc[-1] > 0


def test_swor_sampler_runs_with_the_swor_estimator(base, task, tmp_path):
    cfg = dataclasses.replace(SMOKE.rl, objective="swor_ordered", sampler="swor", steps=2)
    df = rl.train_rl(base, SMOKE, cfg, tmp_path, progress=False)
    assert list(df.step) == [0, 2] and df.zero_grad_frac.iloc[-1] <= 1


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"objective": "nope"}, "unknown objective"),
        ({"k": 5, "n": 4}, "must be <= n"),
        ({"sampler": "beam"}, "sampler must be one of"),
        ({"optimizer": "adam"}, "optimizer must be one of"),
        ({"batch_prompts": 0}, "batch_prompts must be >= 1"),
        ({"lr": -1.0}, "lr must be > 0"),
        ({"lr": math.inf}, "lr must be finite"),
        ({"entropy": math.nan}, "entropy must be finite"),
        ({"entropy": math.inf}, "entropy must be finite"),
        ({"grad_clip": -1.0}, "grad_clip must be >= 0"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"objective": "swor_ordered", "sampler": "iid"}, "only valid with sampler='swor'"),
        ({"entropy": -0.1}, "entropy must be >= 0"),
    ],
)
def test_config_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        dataclasses.replace(SMOKE.rl, **kwargs)


def test_profiles():
    from passk_companion import profiles

    with pytest.raises(ValueError, match="profile must be one of"):
        config.for_profile("tpu")
    assert set(config.PROFILE_CONFIGS) == set(profiles.PROFILES)
    assert config.for_profile("ci").model.numerics == "portable"  # the CPU profiles are portable
    assert config.for_profile("gpu").model.numerics == "float32"


def test_cli(tmp_path, capsys):
    argv = ["train", "--objective", "grpo", "--k", "2", "--profile", "smoke", "--steps", "2"]
    assert cli.main([*argv, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "metrics.csv").is_file()
    summary = json.loads(capsys.readouterr().out)
    assert summary["final"]["step"] == 2 and "test_j1" in summary["final"]
    assert cli.main(["train", "--objective", "nope", "--profile", "smoke", "--out", "x"]) == 2
    assert "unknown objective" in capsys.readouterr().err


def test_distinct_correct_counts_unique_valid_paths(task):
    """evaluate_sampled() against a brute-force count on a model that always answers one path."""

    class Fixed(torch.nn.Module):
        """Emits a fixed valid path for the first held-out pair, whatever the prompt."""

        ops = NATIVE

        def __init__(self, path):
            super().__init__()
            self.path = path
            self.anchor = torch.nn.Parameter(torch.zeros(1))
            self.cfg = type("C", (), {"vocab_size": task.vocab_size})()

        runs = 1

        def new_cache(self, batch, run=None):
            return None

        def forward(self, idx, cache=None, run=None):
            step = idx.shape[1] - 3
            logits = torch.full((idx.shape[0], idx.shape[1], task.vocab_size), -1e9)
            token = self.path[step] if step < len(self.path) else task.pad
            logits[:, -1, token] = 0.0
            return logits

    pairs = task.rl_test_pairs[:1]
    walk = task.random_walks(pairs, torch.Generator().manual_seed(0))[0, 3:]
    path = [t for t in walk.tolist() if t != task.pad]
    out = evaluation.evaluate_sampled(Fixed(path), task, pairs, 8, seed=0)
    assert out["distinct"].tolist() == [1.0] and out["pass@1"].tolist() == [1.0]


def test_prompts_at_matched_interpolates_like_the_aggregate():
    metrics = pd.DataFrame({"step": [0, 10, 20], "test_j1": [0.2, 0.4, 0.6]})
    rows = []
    for step, values in ((0, [0.1, 0.3]), (10, [0.3, 0.5]), (20, [0.5, 0.7])):
        rows += [
            {"step": step, "split": "test", "prompt": i, "j1": v} for i, v in enumerate(values)
        ]
        rows.append({"step": step, "split": "train", "prompt": 0, "j1": 0.9})
    prompts = pd.DataFrame(rows)
    at = analysis.prompts_at_matched(metrics, prompts, 0.5)
    assert at.tolist() == pytest.approx([0.4, 0.6])  # halfway between steps 10 and 20
    assert analysis.prompts_at_matched(metrics, prompts, 0.9) is None


def _rising(monkeypatch, column: str, start: float, per_step: float) -> None:
    """Every evaluation reports `column` = start + per_step * step, whatever the model does."""
    real = rl._evaluate

    def rising(ens, due):
        out = real(ens, due)
        for row, _ in out.values():
            row[column] = start + per_step * row["step"]
        return out

    monkeypatch.setattr(rl, "_evaluate", rising)


def test_a_run_with_stop_gain_ends_at_the_first_evaluation_past_it_and_stays_ended(
    base, tmp_path, monkeypatch
):
    _rising(monkeypatch, "test_j1", 0.1, 0.005)
    cfg = dataclasses.replace(SMOKE.rl, steps=40, eval_every=2, stop_gain=0.02)
    first = rl.train_rl(base, SMOKE, cfg, tmp_path, progress=False)
    assert first.step.tolist() == [0, 2, 4]  # gain 0.02 first reached at step 4
    again = rl.train_rl(base, SMOKE, cfg, tmp_path, progress=False)  # resumes: nothing to do
    pd.testing.assert_frame_equal(first, again)
    with pytest.raises(ValueError, match="stop_gain"):
        dataclasses.replace(cfg, stop_gain=1.5)


def test_early_evaluations_and_the_train_j1_stop(base, tmp_path, monkeypatch):
    cfg = dataclasses.replace(SMOKE.rl, steps=12, eval_every=5, eval_early_every=2,
                              eval_early_until=6)  # fmt: skip
    assert rl.evaluation_steps(cfg) == [0, 2, 4, 5, 6, 10, 12]
    _rising(monkeypatch, "train_j1", 0.5, 0.05)
    stopped = rl.train_rl(base, SMOKE, dataclasses.replace(cfg, stop_train_j1=0.9), tmp_path,
                          progress=False)  # fmt: skip
    assert stopped.step.tolist() == [0, 2, 4, 5, 6, 10]  # 0.5 + 0.05 * 10 >= 0.9
    with pytest.raises(ValueError, match="set together"):
        dataclasses.replace(cfg, eval_early_until=0)
