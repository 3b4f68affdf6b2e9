"""The verl plugin through verl's own code: `compute_advantage` on a DataProto (in this process
and inside a Ray actor), verl's config files and config conversion, its KL penalty, its v1
trainer's `_compute_advantage` over its TransferQueue and its validation metrics."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from integration_support import require

verl = require("verl", "verl")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.config import AlgoConfig  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.trainer.ppo.ray_trainer import apply_kl_penalty, compute_advantage  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402

from passk_companion import objectives  # noqa: E402
from passk_companion.integrations import diagnostics  # noqa: E402
from passk_companion.integrations import verl as plugin  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
SUPPORTED = [
    name
    for name in objectives.names()
    if not objectives.get(name).needs_logprobs and objectives.get(name).sampler == "iid"
]
REFUSED = sorted(set(objectives.names()) - set(SUPPORTED))


def verl_config(*overrides: str):
    """verl's own ppo_trainer.yaml composed by Hydra with command-line overrides."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def make_batch(groups: list[list[float]], seed: int = 0, length: int = 7) -> DataProto:
    """A DataProto as verl's trainer builds it: per response a random length, its reward on the
    last response token (token_level_rewards), the response mask, and the uid of its prompt;
    the responses of the groups are interleaved (uids need not be contiguous)."""
    gen = torch.Generator().manual_seed(seed)
    uids = [f"uid-{g}" for g, rs in enumerate(groups) for _ in rs]
    rewards = [r for rs in groups for r in rs]
    perm = torch.randperm(len(rewards), generator=gen).tolist()
    uids, rewards = [uids[i] for i in perm], [rewards[i] for i in perm]
    lengths = torch.randint(1, length + 1, (len(rewards),), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(torch.float32)
    token_rewards = torch.zeros(len(rewards), length)
    token_rewards[torch.arange(len(rewards)), lengths - 1] = torch.tensor(rewards).float()
    data = DataProto.from_dict(
        tensors={
            "token_level_rewards": token_rewards,
            "token_level_scores": token_rewards.clone(),
            "response_mask": mask,
        },
        non_tensors={"uid": np.array(uids, dtype=object)},
    )
    return data


def reference(name: str, data: DataProto, k: int, **params) -> torch.Tensor:
    """n_g x the registry's weights, group by group (one (1, n_g) call each), on the responses'
    summed token rewards, broadcast over the response mask."""
    scores = data.batch["token_level_rewards"].sum(-1).to(torch.float64)
    uids = data.non_tensor_batch["uid"]
    out = torch.zeros_like(scores)
    for uid in dict.fromkeys(uids.tolist()):
        rows = torch.from_numpy(np.flatnonzero(uids == uid))
        w = objectives.get(name, **params).weights(scores[rows][None, :], k)[0]
        out[rows] = len(rows) * w
    return out[:, None] * data.batch["response_mask"].to(torch.float64)


def queue_batch(data: DataProto):
    """The batch in verl's TransferQueue as its v1 trainer puts it there (uid, response mask and
    scores per response, keys `{uid}_{session}_0`): (its KVBatchMeta, the keys)."""
    import transfer_queue as tq
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    mask = data.batch["response_mask"]
    rows, keys = [], []
    for i, uid in enumerate(data.non_tensor_batch["uid"].tolist()):
        length = int(mask[i].sum())
        rows.append(
            {
                "uid": uid,
                "response_mask": mask[i, :length].to(torch.int64),
                "rm_scores": data.batch["token_level_scores"][i, :length],
            }
        )
        keys.append(f"{uid}_{i}_0")
    meta = tq.kv_batch_put(
        keys=keys,
        partition_id="train",
        fields=list_of_dict_to_tensordict(rows),
        tags=[{"status": "success"}] * len(keys),
    )
    return meta, keys


def algo(k: int, **params) -> OmegaConf:
    return OmegaConf.create(
        {"passk_companion": {"k": k, **params}, "norm_adv_by_std_in_grpo": True}
    )


BINARY = [[1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]]
REAL = [[0.3, -1.2, 0.9, 0.9, 0.1, 2.0], [0.5, 0.25, 0.0, 1.5, 0.75], [1.0, 0.2, 0.2, 0.4]]


def test_the_entry_point_names_the_plugin_and_import_verl_loads_it():
    eps = importlib.metadata.entry_points(group="verl.plugins")
    assert [ep.value for ep in eps if ep.name == "passk_companion"] == [
        "passk_companion.integrations.verl"
    ]
    assert "passk_companion.integrations.verl" in sys.modules  # loaded by `import verl` above
    for name in objectives.names():
        assert f"passk_companion.{name}" in core_algos.ADV_ESTIMATOR_REGISTRY


@pytest.mark.parametrize("name", SUPPORTED)
@pytest.mark.parametrize("rewards", ["binary", "real"])
def test_compute_advantage_equals_the_registry(name, rewards):
    obj = objectives.get(name)
    groups = BINARY if rewards == "binary" else REAL
    k = 4
    if rewards == "real" and obj.binary_only:  # refused, in one line
        with pytest.raises(ValueError, match=f"passk_companion.{name} needs 0/1 rewards") as err:
            compute_advantage(
                make_batch(groups), adv_estimator=f"passk_companion.{name}", config=algo(k)
            )
        assert "\n" not in str(err.value)
        return
    if obj.stochastic:
        groups = [g[:k] for g in groups]  # equal sizes: one draw for the whole batch
    data = make_batch(groups, seed=len(name))
    if obj.stochastic:  # one (G, n) call in order of first appearance, under the same seed
        scores = data.batch["token_level_rewards"].sum(-1).to(torch.float64)
        uids = data.non_tensor_batch["uid"]
        rows = [torch.from_numpy(np.flatnonzero(uids == u)) for u in dict.fromkeys(uids.tolist())]
        torch.manual_seed(0)
        w = k * obj.weights(torch.stack([scores[r] for r in rows]), k)
        want = torch.zeros_like(scores)
        for g, r in enumerate(rows):
            want[r] = w[g]
        want = want[:, None] * data.batch["response_mask"].to(torch.float64)
    else:
        want = reference(name, data, k)
    torch.manual_seed(0)
    got = compute_advantage(data, adv_estimator=f"passk_companion.{name}", config=algo(k))
    adv = got.batch["advantages"].to(torch.float64)
    assert torch.equal(got.batch["returns"], got.batch["advantages"])
    assert torch.all(adv[got.batch["response_mask"] == 0] == 0)
    torch.testing.assert_close(adv, want, rtol=1e-6, atol=1e-6)  # float32 in verl's batch


@pytest.mark.parametrize(
    ("ours", "params", "theirs", "norm"),
    [
        ("grpo", {"eps": 1e-6}, "grpo", True),
        ("dr_grpo", {}, "grpo", False),
        ("pass1_reinforce", {}, "rloo", True),
    ],
)
def test_scaling_convention_matches_verls_own_estimators(ours, params, theirs, norm):
    """A = n_g x weights: GRPO, Dr. GRPO and RLOO come back as verl computes them."""
    data = make_batch(BINARY[:2] + REAL[:2], seed=3)
    cfg = algo(1, **params)
    mine = compute_advantage(data, adv_estimator=f"passk_companion.{ours}", config=cfg)
    mine = mine.batch["advantages"].clone()
    other = compute_advantage(
        data, adv_estimator=theirs, norm_adv_by_std_in_grpo=norm, config=OmegaConf.create({})
    )
    torch.testing.assert_close(mine, other.batch["advantages"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", REFUSED)
def test_objectives_verl_cannot_feed_are_refused_in_one_line(name):
    with pytest.raises(ValueError, match="is not supported in verl") as err:
        compute_advantage(
            make_batch(BINARY), adv_estimator=f"passk_companion.{name}", config=algo(4)
        )
    assert "\n" not in str(err.value)


def test_a_binary_objective_refuses_rewards_with_a_kl_penalty():
    """verl's own apply_kl_penalty makes the rewards real: passk_chen says so in one line."""
    data = make_batch(BINARY)
    gen = torch.Generator().manual_seed(0)
    shape = data.batch["response_mask"].shape
    data.batch["old_log_probs"] = -torch.rand(shape, generator=gen)
    data.batch["ref_log_prob"] = -torch.rand(shape, generator=gen)
    data, _ = apply_kl_penalty(data, core_algos.FixedKLController(kl_coef=0.1), kl_penalty="kl")
    with pytest.raises(ValueError, match="needs 0/1 rewards.*KL penalty") as err:
        compute_advantage(data, adv_estimator="passk_companion.passk_chen", config=algo(4))
    assert "\n" not in str(err.value)
    # a real-valued objective takes them
    got = compute_advantage(data, adv_estimator="passk_companion.pkpo_loo", config=algo(4))
    torch.testing.assert_close(
        got.batch["advantages"].double(), reference("pkpo_loo", data, 4), rtol=1e-5, atol=1e-6
    )


def test_bad_settings_are_one_line():
    data = make_batch(BINARY)
    cases = [
        (OmegaConf.create({}), "needs k: add \\+algorithm.passk_companion.k=K"),
        (algo(0), "k must be an integer >= 1"),
        (algo(6), "has 5 response\\(s\\), fewer than k = 6"),
        (algo(4, betta=1.0), "bad parameter in algorithm.passk_companion \\(betta\\)"),
    ]
    for cfg, message in cases:
        name = "passk_companion.risk_seeking" if "betta" in str(cfg) else "passk_companion.pkpo"
        with pytest.raises(ValueError, match=message) as err:
            compute_advantage(data, adv_estimator=name, config=cfg)
        assert "\n" not in str(err.value)


def test_config_from_verls_yaml_survives_its_validation():
    """k and the parameters through verl's own config: a Hydra command line on ppo_trainer.yaml,
    and the conversion to the AlgoConfig dataclass, which refuses the extra key unless the
    section's _target_ is PassKAlgoConfig (a subclass)."""
    line = [
        "algorithm.adv_estimator=passk_companion.risk_seeking",
        "+algorithm.passk_companion.k=4",
        "+algorithm.passk_companion.beta=0.5",
    ]
    cfg = verl_config(*line)
    with pytest.raises(Exception, match="unexpected keyword argument 'passk_companion'"):
        omega_conf_to_dataclass(cfg.algorithm)  # verl's stock AlgoConfig
    cfg = verl_config(*line, "algorithm._target_=passk_companion.integrations.verl.PassKAlgoConfig")
    converted = omega_conf_to_dataclass(cfg.algorithm)
    assert isinstance(converted, AlgoConfig) and isinstance(converted, plugin.PassKAlgoConfig)
    assert converted.passk_companion == {"k": 4, "beta": 0.5}
    data = make_batch(REAL, seed=1)
    want = reference("risk_seeking", data, 4, beta=0.5)
    for config in (cfg.algorithm, converted):  # the DictConfig verl's trainer passes, and the
        got = compute_advantage(  # dataclass
            data, adv_estimator=cfg.algorithm.adv_estimator, config=config
        )
        torch.testing.assert_close(got.batch["advantages"].double(), want, rtol=1e-6, atol=1e-6)


def test_the_estimator_is_found_inside_a_ray_actor(ray_cluster):
    """In a Ray worker (a fresh process, as verl's TaskRunner) that has not imported the
    passk_companion, `import verl` loads the plugin, and compute_advantage finds the estimator."""
    import ray_probe

    ray = ray_cluster
    data = make_batch(BINARY, seed=5)
    runner = ray.remote(num_cpus=0)(ray_probe.Runner).remote()
    adv, loaded_before, plugin_after, pid = ray.get(
        runner.advantages.remote(
            data.batch["token_level_rewards"].tolist(),
            data.non_tensor_batch["uid"].tolist(),
            data.batch["response_mask"].tolist(),
            "passk_companion.pkpo_loo",
            {"k": 4},
        )
    )
    ray.kill(runner)
    assert pid != os.getpid()
    assert loaded_before == [] and plugin_after
    torch.testing.assert_close(
        torch.tensor(adv).double(), reference("pkpo_loo", data, 4), rtol=1e-6, atol=1e-6
    )


def test_the_trainer_puts_the_diagnostic_in_the_training_metrics(ray_cluster):
    """verl's v1 `_compute_advantage` on a batch in its TransferQueue, through the trainer the
    plugin registered (`trainer.v1.trainer_mode=passk_companion`): the advantages written back are
    the registry's, and the step's metrics carry the diagnostic."""
    import transfer_queue as tq
    from verl.trainer.ppo.v1 import get_trainer_cls

    cfg = verl_config(
        "algorithm.adv_estimator=passk_companion.pkpo_loo",
        "+algorithm.passk_companion.k=4",
        "actor_rollout_ref.rollout.n=8",
        "trainer.v1.trainer_mode=passk_companion",
    )
    cls = get_trainer_cls(cfg.trainer.v1.trainer_mode)
    assert issubclass(cls, plugin.PassKMetrics) and cls.__name__ == "PassKPPOTrainerSync"
    trainer = object.__new__(cls)  # _compute_advantage needs only the config and the queue
    trainer.config = cfg
    data = make_batch(BINARY, seed=7)
    uids = data.non_tensor_batch["uid"].tolist()
    meta, keys = queue_batch(data)
    metrics: dict = {}
    meta = trainer._compute_advantage(meta, metrics)
    back = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["advantages"])
    adv = back["advantages"].to_padded_tensor(0.0).double()
    want = reference("pkpo_loo", data, 4)[:, : adv.shape[1]]
    torch.testing.assert_close(adv, want, rtol=1e-6, atol=1e-6)
    scores = data.batch["token_level_scores"].sum(-1).numpy()
    expected = diagnostics.diagnose(uids, scores, [1, 2, 4, 8]).metrics("passk_companion/")
    assert expected and {k: metrics[k] for k in expected} == pytest.approx(expected)
    assert metrics["passk_companion/situation_I_share"] == pytest.approx(0.25)
    assert metrics["passk_companion/pass@8"] == pytest.approx(np.mean([1.0, 1.0]))  # n = 8 groups
    tq.kv_clear(keys=keys, partition_id="train")


def test_a_batch_padded_by_verl_gets_zero_advantage_on_its_padding_rows(ray_cluster):
    """verl's `upsample_batch_to_divisible_size` appends padding rows (one uid, an all-zero
    response mask), here fewer than k: they get advantage 0, and every real row keeps the
    registry's advantage."""
    import transfer_queue as tq
    from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
    from verl.trainer.ppo.v1 import get_trainer_cls

    cfg = verl_config(
        "algorithm.adv_estimator=passk_companion.pkpo_loo",
        "+algorithm.passk_companion.k=4",
        "actor_rollout_ref.rollout.n=8",
        "trainer.v1.trainer_mode=passk_companion",
    )
    trainer = object.__new__(get_trainer_cls(cfg.trainer.v1.trainer_mode))
    trainer.config = cfg
    data = make_batch(BINARY, seed=3)  # 26 responses
    meta, keys = queue_batch(data)
    meta = upsample_batch_to_divisible_size(meta, batch_multiple=28, eos_token_id=0)
    assert len(meta.keys) == 28  # 2 padding rows, fewer than k = 4
    metrics: dict = {}
    meta = trainer._compute_advantage(meta, metrics)
    back = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=["advantages"])
    adv = back["advantages"].to_padded_tensor(0.0).double()
    assert bool((adv[len(keys) :] == 0).all())
    want = reference("pkpo_loo", data, 4)[:, : adv.shape[1]]
    torch.testing.assert_close(adv[: len(keys), : want.shape[1]], want, rtol=1e-6, atol=1e-6)
    assert metrics["passk_companion/pass@8"] == pytest.approx(1.0)  # the padding is not a prompt
    tq.kv_clear(keys=meta.keys, partition_id="train")


def test_the_metrics_hooks_skip_what_they_cannot_use(caplog):
    """A group of one and a non-finite score are left out with a warning, never raised."""
    with caplog.at_level("WARNING"):
        got = plugin.train_metrics(["a", "a", "b"], [1.0, 0.0, 1.0])
        assert got["passk_companion/pass@1"] == 0.5
        got = plugin.train_metrics(["a", "a", "b", "b"], [1.0, 0.0, 1.0, float("inf")])
        assert got["passk_companion/pass@2"] == 1.0
        val = plugin.validation_metrics(
            ["s"] * 5, ["u", "u", "u", "v", "v"], [1.0, 0.0, None, 0.0, np.nan]
        )
        assert val["val-aux/s/passk_companion/pass@1"] == 0.25  # u: 1 of 2, v: 0 of 1
        assert val["val-core/s/passk_companion/pass@2"] == 1.0
    assert "not finite" in caplog.text and "groups of one" in caplog.text


def test_advantages_beyond_float32_are_one_line_not_infinite():
    data = make_batch([[3e38, -3e38], [0.0, 1.0]])
    with pytest.raises(ValueError, match="overflows float32: rescale the rewards") as err:
        compute_advantage(data, adv_estimator="passk_companion.pass1_reinforce", config=algo(1))
    assert "\n" not in str(err.value)


def test_validation_metrics_the_issue_example():
    """n = 8 samples, 1 correct: verl's bootstrap best@8 is 0.651 and best@4 0.412; the
    unbiased pass@8 is 1 and pass@4 0.5 (both through the trainer's _val_metrics_update)."""
    from verl.trainer.ppo.v1 import get_trainer_cls

    trainer = object.__new__(get_trainer_cls("passk_companion"))
    trainer.config = verl_config("+algorithm.passk_companion.k=4")
    scores = [1.0, 0, 0, 0, 0, 0, 0, 0]
    out = trainer._val_metrics_update(
        ["gsm8k"] * 8, ["u0"] * 8, {"reward": scores}, [1] * 8, expected_acc_counts=None
    )
    assert round(out["val-core/gsm8k/reward/best@8/mean"], 3) == 0.651
    assert round(out["val-aux/gsm8k/reward/best@4/mean"], 3) == 0.412
    assert out["val-core/gsm8k/passk_companion/pass@8"] == 1.0
    assert out["val-aux/gsm8k/passk_companion/pass@4"] == 0.5
    assert out["val-aux/gsm8k/passk_companion/pass@2"] == 0.25
    assert out["val-aux/gsm8k/passk_companion/situation_I_share"] == 0.0


def test_companion_diagnose_reads_the_validation_dump_verl_wrote(tmp_path, capsys):
    """Dumps written by verl's own writer (`PPOTrainer._write_generations`, with the arguments
    `_validate` passes: per output its decoded input and output, the session's score, and
    `reward_extra_infos_dict | {"uid": keys}`), at two steps; one session has two outputs
    (an agent loop's), which share the session's score and count once."""
    import uuid

    from verl.trainer.ppo.v1 import PPOTrainerSync

    from passk_companion import cli

    steps = {10: [[1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0]], 20: [[1, 1, 1, 0], [0, 1]]}
    for step, groups in steps.items():
        keys, inputs, outputs, scores = [], [], [], []
        for g, rewards in enumerate(groups):
            uid = str(uuid.UUID(int=1000 * step + g))
            for session, r in enumerate(rewards):
                for index in (0, 1) if (g, session) == (0, 0) else (0,):
                    keys.append(f"{uid}_{session}_{index}")
                    inputs.append(f"question {g}?")
                    outputs.append(f"answer {session}.{index}")
                    scores.append(float(r))
        PPOTrainerSync._write_generations(
            inputs=inputs,
            outputs=outputs,
            gts=[None] * len(keys),
            scores=scores,
            reward_extra_infos_dict={"reward": scores} | {"uid": keys},
            dump_path=str(tmp_path / "val"),
            global_steps=step,
        )
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == ["10.jsonl", "20.jsonl"]
    assert capsys.readouterr().out.count("Dumped generations to") == 2  # verl's writer ran
    assert cli.main(["diagnose", str(tmp_path / "val"), "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["input"]["format"] == "verl" and got["input"]["files"] == 2
    assert (
        got["input"]["columns"]["prompt"] == "uid" and got["input"]["columns"]["reward"] == "score"
    )
    groups = [g for gs in steps.values() for g in gs]
    assert got["n_prompts"] == 5 and got["n_rollouts"] == sum(map(len, groups))
    for k in (1, 2, 4, 8):
        per = [
            1 - math.comb(len(g) - sum(g), k) / math.comb(len(g), k) for g in groups if len(g) >= k
        ]
        assert got["pass_at_k"][str(k)] == pytest.approx(np.mean(per), abs=1e-12)
    assert got["pass_at_k"]["8"] == 1.0  # the issue's example: where verl's best@8 is 0.651
    assert got["situation_I_share"] == pytest.approx(1 / 5)
    assert got["steps"]["steps"] == [10, 20] and got["steps"]["k"] == 2


USER_SCRIPT = """
import numpy as np, torch
from omegaconf import OmegaConf
import verl  # loads the plugin, which registers every objective (PASSK_COMPANION_IMPORT's too)
from verl import DataProto
from verl.trainer.ppo.ray_trainer import compute_advantage

rewards = torch.zeros(8, 3)
rewards[:, -1] = torch.tensor([0, 0, 1.0, 0, 1, 1, 0, 1])
data = DataProto.from_dict(
    tensors={"token_level_rewards": rewards, "response_mask": torch.ones_like(rewards)},
    non_tensors={"uid": np.array(["a"] * 4 + ["b"] * 4, dtype=object)},
)
cfg = OmegaConf.create({"passk_companion": {"k": 1}, "norm_adv_by_std_in_grpo": True})
mine = compute_advantage(data, adv_estimator="passk_companion.mine", config=cfg)
rloo = compute_advantage(data, adv_estimator="passk_companion.pass1_reinforce", config=cfg)
assert torch.equal(mine.batch["advantages"], rloo.batch["advantages"])
print("equal", mine.batch["advantages"].abs().sum().item() > 0)
"""


def test_a_users_objective_is_a_verl_estimator(tmp_path):
    """A module that is not installed (tests/mine_objectives.py), named in PASSK_COMPANION_IMPORT:
    `import verl` registers its objective as the estimator passk_companion.mine, and
    compute_advantage runs it (RLOO's weights under another name, so it equals
    passk_companion.pass1_reinforce)."""
    import subprocess

    mine = Path(__file__).resolve().parents[1] / "mine_objectives.py"
    (tmp_path / "my_objectives.py").write_text(mine.read_text())
    env = {**os.environ, "PASSK_COMPANION_IMPORT": "my_objectives", "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", USER_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["equal", "True"]
