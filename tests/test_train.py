"""The RL loop on the smoke profile: resumption, validation, metrics, CLI."""

import dataclasses

import pandas as pd
import pytest

from companion import cli, train

SMOKE = train.get_profile("smoke")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.pt"
    return train.load_or_pretrain(SMOKE, path, device="cpu", progress=False)


@pytest.fixture(scope="module")
def task():
    return train.build_task(SMOKE.task)


def test_interrupted_run_resumes_to_the_same_metrics(base, task, tmp_path):
    cfg = dataclasses.replace(SMOKE.rl, objective="pkpo", entropy=0.05, steps=6, eval_every=2)
    full = train.train_rl(base, task, cfg, tmp_path / "full", progress=False)
    part = train.train_rl(base, task, cfg, tmp_path / "split", until=2, progress=False)
    assert list(part.step) == [0, 2]
    resumed = train.train_rl(base, task, cfg, tmp_path / "split", progress=False)
    pd.testing.assert_frame_equal(full, resumed)
    on_disk = pd.read_csv(tmp_path / "split" / "metrics.csv")
    pd.testing.assert_frame_equal(on_disk, full, check_dtype=False)
    assert full.grad_norm.dropna().gt(0).all()  # the policy really was updated
    assert not list((tmp_path / "split").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_checkpoint_of_another_config_is_refused(base, task, tmp_path):
    cfg = dataclasses.replace(SMOKE.rl, steps=2)
    train.train_rl(base, task, cfg, tmp_path, progress=False)
    other = dataclasses.replace(cfg, lr=1e-2)
    with pytest.raises(ValueError, match="another config"):
        train.train_rl(base, task, other, tmp_path, progress=False)
    assert len(train.train_rl(base, task, other, tmp_path, fresh=True, progress=False)) == 2


def test_metrics_are_consistent(base, task):
    m = train.evaluate(base, task, SMOKE.rl, 0)
    ks = SMOKE.rl.eval_ks
    values = [m[f"pass@{k}"] for k in ks]
    assert values == sorted(values) and 0 <= values[0] <= values[-1] <= 1
    assert 0 <= m["coverage"] <= m["coverage_capped"] <= 1
    assert m[f"gap@{ks[-1]}"] == pytest.approx(values[-1] - values[0])


def test_swor_sampler_runs_with_the_swor_estimator(base, task, tmp_path):
    cfg = dataclasses.replace(SMOKE.rl, objective="swor_ordered", sampler="swor", steps=2)
    df = train.train_rl(base, task, cfg, tmp_path, progress=False)
    assert list(df.step) == [0, 2] and df.zero_grad_frac.iloc[-1] <= 1


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"objective": "nope"}, "unknown objective"),
        ({"k": 5, "n": 4}, "must be <= n"),
        ({"sampler": "beam"}, "sampler must be one of"),
        ({"batch_prompts": 0}, "batch_prompts must be > 0"),
        ({"lr": -1.0}, "lr must be > 0"),
        ({"objective": "swor_ordered", "sampler": "iid"}, "only valid with sampler='swor'"),
        ({"entropy": -0.1}, "entropy must be >= 0"),
    ],
)
def test_config_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        dataclasses.replace(SMOKE.rl, **kwargs)


def test_profiles():
    with pytest.raises(ValueError, match="unknown profile"):
        train.get_profile("gpu")
    assert {"smoke", "ci", "full"} <= set(train.PROFILES)


def test_cli(tmp_path, capsys):
    argv = [
        "train",
        "--objective",
        "grpo",
        "--k",
        "2",
        "--profile",
        "smoke",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    ]
    assert cli.main(argv) == 0
    assert (tmp_path / "run" / "metrics.csv").is_file()
    assert '"rl_s"' in capsys.readouterr().out
    assert cli.main(["train", "--objective", "nope", "--profile", "smoke", "--out", "x"]) == 2
    assert "unknown objective" in capsys.readouterr().err


def test_distinct_correct_counts_unique_valid_paths(task):
    """evaluate() against a brute-force count on a model that always answers the same path."""
    import torch

    class Fixed(torch.nn.Module):
        """Emits a fixed valid path for the first held-out pair, whatever the prompt."""

        def __init__(self, path):
            super().__init__()
            self.path = path
            self.anchor = torch.nn.Parameter(torch.zeros(1))
            self.cfg = type("C", (), {"vocab_size": task.vocab_size})()

        def new_cache(self, batch):
            return None

        def forward(self, idx, cache=None):
            pos = idx.shape[1] - 3 if cache is None else None
            logits = torch.full((idx.shape[0], idx.shape[1], task.vocab_size), -1e9)
            step = pos if pos is not None else 0
            token = self.path[step] if step < len(self.path) else task.pad
            logits[:, -1, token] = 0.0
            return logits

    walk = task.random_walks(task.rl_pairs[:1], torch.Generator().manual_seed(0))[0, 3:]
    path = [t for t in walk.tolist() if t != task.pad]
    cfg = dataclasses.replace(SMOKE.rl, n_eval=8, eval_prompts=1)
    m = train.evaluate(Fixed(path), task, cfg, 0)
    assert m["distinct_correct"] == 1.0 and m["pass@1"] == 1.0
