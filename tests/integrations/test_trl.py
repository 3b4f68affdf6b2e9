"""PassKGRPOTrainer: TRL's own GRPOTrainer loop, 2 steps on the CPU, on a GPT-2 of 2 layers built
from a config with a word-level tokenizer built in memory (nothing is downloaded)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from integration_support import require

trl = require("trl", "trl")

from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    TrainerCallback,
)
from transformers import logging as hf_logging  # noqa: E402
from transformers.trainer_callback import PrinterCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from passk_companion import objectives  # noqa: E402
from passk_companion.integrations import diagnostics  # noqa: E402
from passk_companion.integrations.trl import PassKGRPOTrainer  # noqa: E402

WORDS = ["a", "b", "c", "d", "e", "f", "SEP", "EOS", "PAD"]
N, PROMPTS = 8, 2  # generations per prompt, prompts per step


def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="PAD"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="EOS", pad_token="PAD", unk_token="PAD"
    )


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(WORDS),
            n_positions=32,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=WORDS.index("SEP"),
            eos_token_id=WORDS.index("EOS"),
            pad_token_id=WORDS.index("PAD"),
        )
    )


def contains_b(completions, **_):
    """A 0/1 verifier: the completion contains the word b."""
    return [1.0 if "b" in c.split() else 0.0 for c in completions]


class Logs(TrainerCallback):
    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


class Recording(PassKGRPOTrainer):
    """Keeps, per generation batch, TRL's gathered rewards and the advantages that go on to
    the loss (this subclass only reads them)."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self.seen.append((self._gathered_rewards.clone(), out["advantages"].clone()))
        return out


def config(tmp_path, **extra) -> GRPOConfig:
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=N * PROMPTS,
        num_generations=N,
        max_completion_length=4,
        max_steps=2,
        learning_rate=1e-3,
        beta=0.0,
        temperature=1.0,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        bf16=False,
        disable_tqdm=True,
    )
    return GRPOConfig(**(settings | extra))


def dataset() -> Dataset:
    """Eight distinct prompts, so that a prompt's text names its group within a step."""
    prompts = ["a c", "d e", "f a", "c d", "e f", "a d", "c f", "e a"]
    return Dataset.from_dict({"prompt": [f"{p} SEP" for p in prompts]})


def train(cls, tmp_path, **kwargs):
    hf_logging.set_verbosity_error()
    logs = Logs()
    extra = kwargs.pop("config", {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = cls(
            model=tiny_gpt2(),
            reward_funcs=contains_b,
            args=config(tmp_path, **extra),
            train_dataset=dataset(),
            processing_class=tokenizer(),
            callbacks=[logs],
            **kwargs,
        )
        trainer.remove_callback(PrinterCallback)
        trainer.seen = []
        trainer.train()
    return trainer, logs.logs


@pytest.fixture(scope="module")
def pkpo_run(tmp_path_factory):
    """2 steps of PassKGRPOTrainer with pkpo_loo at k = 8, TRL writing its completions log."""
    out = tmp_path_factory.mktemp("pkpo_loo")
    trainer, logs = train(
        Recording, out, objective="pkpo_loo", k=8, config={"log_completions": True}
    )
    return trainer, logs, out


def test_two_steps_with_pkpo_loo_use_the_registrys_advantages_and_log_pass_at_k(pkpo_run):
    trainer, logs, tmp_path = pkpo_run
    assert len(trainer.seen) == 2  # one generation batch per step
    step_logs = [log for log in logs if "passk/pass@8" in log]
    assert len(step_logs) == 2
    for (rewards_per_func, advantages), log in zip(trainer.seen, step_logs, strict=True):
        rewards = rewards_per_func.sum(1).double()
        table = rewards.view(-1, N)
        want = N * objectives.get("pkpo_loo").weights(table, 8).reshape(-1)
        torch.testing.assert_close(advantages.double(), want, rtol=1e-6, atol=1e-7)
        groups = np.repeat(np.arange(PROMPTS), N)
        expected = diagnostics.diagnose(groups, rewards.numpy(), [1, 2, 4, 8]).metrics("passk/")
        assert {key: log[key] for key in expected} == pytest.approx(expected)
    mixed = [
        bool(((t := r.sum(1).view(-1, N)).min(1).values < t.max(1).values).any())
        for r, _ in trainer.seen
    ]
    assert any(mixed), "no group with both outcomes: the check above compared only zeros"
    # the completions log TRL writes shows these advantages (not TRL's own)
    table = pd.read_parquet(tmp_path / "completions" / "completions_00002.parquet")
    np.testing.assert_allclose(table["advantage"], trainer.seen[-1][1].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(table["contains_b"], trainer.seen[-1][0][:, 0].numpy())


def test_grpo_through_the_subclass_is_trls_own_grpo(tmp_path):
    """The scaling convention: n x the registry's grpo weights are TRL's advantages
    (scale_rewards='group'), step for step from the same seed."""
    ours, _ = train(Recording, tmp_path / "ours", objective="grpo", k=1)

    class Plain(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            self.seen.append(out["advantages"].clone())
            return out

    theirs, _ = train(Plain, tmp_path / "theirs")
    assert len(theirs.seen) == len(ours.seen) == 2
    for (_, mine), other in zip(ours.seen, theirs.seen, strict=True):
        torch.testing.assert_close(mine, other, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objective": "unlikeliness", "k": 2}, "needs the log-probability of each rollout"),
        ({"objective": "swor_ordered", "k": 2}, "needs the log-probability of each rollout"),
        ({"objective": "pkpo_loo", "k": 2, "metric_ks": [0, -1, 100]}, "metric_ks must be"),
        ({"objective": "pkpo_loo", "k": 16}, "num_generations = 8 is below k = 16"),
        ({"objective": "pkpo_loo", "k": 0}, "k must be an integer >= 1"),
    ],
)
def test_refusals_are_one_line(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        PassKGRPOTrainer(
            model=tiny_gpt2(),
            reward_funcs=contains_b,
            args=config(tmp_path),
            train_dataset=dataset(),
            processing_class=tokenizer(),
            **kwargs,
        )
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("scale", ["none", "batch"])
def test_a_scale_rewards_the_trainer_does_not_use_is_named_in_a_warning(tmp_path, scale):
    with pytest.warns(UserWarning, match=f"scale_rewards='{scale}' is not used"):
        PassKGRPOTrainer(
            model=tiny_gpt2(),
            reward_funcs=contains_b,
            args=config(tmp_path, scale_rewards=scale),
            train_dataset=dataset(),
            processing_class=tokenizer(),
            objective="pkpo_loo",
            k=2,
        )


def test_companion_diagnose_reads_the_completions_log_trl_wrote(pkpo_run, capsys):
    """The parquet files TRL wrote, read back: the groups (a prompt's text within a step) are
    TRL's groups of N consecutive completions, and the curve is the brute-force one on the
    rewards TRL gathered."""
    from passk_companion import cli

    trainer, _, out = pkpo_run
    names = sorted(p.name for p in (out / "completions").glob("*.parquet"))
    assert names == ["completions_00001.parquet", "completions_00002.parquet"]
    assert cli.main(["diagnose", str(out), "--format", "json", "--resamples", "200"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["input"]["format"] == "trl" and got["input"]["files"] == 2
    assert got["input"]["columns"]["reward"] == "contains_b"
    groups = [g for rewards, _ in trainer.seen for g in rewards[:, 0].view(-1, N).tolist()]
    assert got["n_prompts"] == len(groups) == 2 * PROMPTS
    for k in (1, 2, 4, 8):
        want = np.mean([1 - math.comb(N - int(sum(g)), k) / math.comb(N, k) for g in groups])
        assert got["pass_at_k"][str(k)] == pytest.approx(want, abs=1e-12)
    assert got["steps"]["steps"] == [1, 2] and got["steps"]["k"] == 8
    assert cli.main(["diagnose", str(out / "completions"), "--resamples", "50"]) == 0
    assert "pass@k" in capsys.readouterr().out


def test_two_processes_gather_and_slice_as_trl_does(tmp_path):
    """torchrun, 2 CPU processes (gloo), 12 completions each: 24 per step, 3 groups of 8, the
    second split between the processes. Each process sees TRL's gathered rewards; the two local
    slices of advantages, end to end, are n x the registry's weights of the global groups; and
    both log the same diagnostic, that of all 24 rewards."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    here = Path(__file__).resolve().parent
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={port}",
            str(here / "trl_two_processes.py"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(here), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 2
    for step in range(2):
        (rewards0, local0), (rewards1, local1) = ranks[0]["seen"][step], ranks[1]["seen"][step]
        assert rewards0 == rewards1 and len(rewards0) == 24 and len(local0) == len(local1) == 12
        table = torch.tensor(rewards0, dtype=torch.float64).view(-1, N)
        want = N * objectives.get("pkpo_loo").weights(table, 4).reshape(-1)
        got = torch.tensor(local0 + local1, dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        groups = np.repeat(np.arange(3), N)
        expected = diagnostics.diagnose(groups, table.reshape(-1).numpy(), [1, 2, 4, 8])
        for r in ranks:
            log = r["logs"][step]
            assert {k: log[k] for k in expected.metrics("passk/")} == pytest.approx(
                expected.metrics("passk/")
            )


def test_a_users_objective_trains_through_the_trainer(tmp_path, monkeypatch):
    """An objective of a module that is not installed (tests/mine_objectives.py), named in
    PASSK_COMPANION_IMPORT, reaches PassKGRPOTrainer by name: its advantages are n x its weights
    (RLOO's, under the name `mine`)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    monkeypatch.setenv("PASSK_COMPANION_IMPORT", "mine_objectives")
    try:
        trainer, _ = train(Recording, tmp_path, objective="mine", k=1)
        for rewards_per_func, advantages in trainer.seen:
            table = rewards_per_func.sum(1).double().view(-1, N)
            want = N * objectives.get("pass1_reinforce").weights(table, 1).reshape(-1)
            torch.testing.assert_close(advantages.double(), want, rtol=1e-6, atol=1e-7)
    finally:
        objectives.unregister("mine")  # the other tests see the registry as installed
