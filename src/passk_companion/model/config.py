"""The configuration of a tiny-GPT run, every knob visible (CleanRL-style): the task (a random
DAG), the model, pretraining, RL, and the regime rule a base must meet; one
:class:`ProfileConfig` of them per profile (passk_companion.profiles).

Each dataclass validates itself when built (passk_companion.validation), so a bad value fails before
any work, naming the field. Sizes have upper bounds as well as lower ones: a value no CPU or GPU of
this project could use (a 10^9-node graph) is refused before it reaches the allocator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from passk_companion import objectives, profiles
from passk_companion import validation as check
from passk_companion.model.evaluation import RegimeRule
from passk_companion.model.gpt import GPT, GPTConfig
from passk_companion.model.tasks import DagTask, make_dag_task
from passk_companion.objectives import SAMPLERS

__all__ = [
    "TaskConfig",
    "ModelConfig",
    "PretrainConfig",
    "RLConfig",
    "ProfileConfig",
    "PROFILE_CONFIGS",
    "NUMERICS",
    "OPTIMIZERS",
    "DEVICES",
    "for_profile",
    "with_base",
    "check_fits",
    "ensemble_limit",
    "step_bytes",
    "MAX_STEP_BYTES",
    "build_task",
    "build_model",
]

NUMERICS = ("portable", "float32")
OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("cpu", "cuda")  # a device is "cpu", "cuda" or "cuda:<index>"
MAX_NODES = 4096  # the largest DAG any profile uses is 64 nodes; these bounds refuse absurd sizes
MAX_WIDTH = 4096
MAX_BATCH = 65_536
MAX_STEPS = 1_000_000
MAX_STEP_BYTES = 16 * 2**30  # the most memory one RL step or evaluation may need (estimated)


def _fields(obj: object, names: tuple[str, ...], **bounds) -> None:
    for name in names:
        check.number(getattr(obj, name), f"{type(obj).__name__}.{name}", **bounds)


def _integers(obj: object, names: tuple[str, ...], minimum: int, maximum: int) -> None:
    for name in names:
        check.integer(
            getattr(obj, name), f"{type(obj).__name__}.{name}", minimum=minimum, maximum=maximum
        )


@dataclass(frozen=True)
class TaskConfig:
    """The DAG (passk_companion.model.tasks.dag): nodes, edge window and probability, the distances
    of the prompted pairs, the share of pairs held out for RL and, of those, for testing; `seed`
    picks the graph (a grid's `graph` axis)."""

    n_nodes: int = 40
    window: int = 6
    edge_prob: float = 0.4
    min_distance: int = 3
    max_distance: int = 12
    rl_fraction: float = 0.5
    test_fraction: float = 0.5  # of the RL pairs: held out from RL, reported on
    seed: int = 0

    def __post_init__(self) -> None:
        _integers(self, ("n_nodes", "window", "min_distance", "max_distance"), 1, MAX_NODES)
        _integers(self, ("seed",), 0, 2**63 - 1)
        _fields(self, ("edge_prob", "rl_fraction", "test_fraction"), low=0, high=1, low_open=True)


@dataclass(frozen=True)
class ModelConfig:
    """The GPT's size, and how it computes.

    numerics "portable" (the CPU profiles): float64 weights and the kernels of
    :mod:`passk_companion.model.portable`, which give the same bits under every CPU dispatch
    (AVX-512, AVX2, scalar; MKL's code paths), so the stored outputs are what any x86-64 machine
    computes.
    "float32": torch's own kernels in float32, for the GPU profile (fast, not portable)."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    numerics: str = "portable"

    def __post_init__(self) -> None:
        _integers(self, ("n_layer", "n_head"), 1, 64)
        _integers(self, ("n_embd",), 1, MAX_WIDTH)
        check.choice(self.numerics, "ModelConfig.numerics", NUMERICS)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.numerics == "portable" else torch.float32


@dataclass(frozen=True)
class PretrainConfig:
    """Supervised pretraining on random walks (passk_companion.model.pretrain); `seed` picks the
    base (a grid's `base` axis)."""

    steps: int = 400  # the most steps; regime selection usually stops earlier
    batch: int = 128
    lr: float = 3e-3
    seed: int = 0
    distance_lambda: float | None = 1.0  # pair weight exp(-(d - d_min)/lambda); None: uniform
    select_every: int = 50  # regime check every this many steps (0: only at the end)

    def __post_init__(self) -> None:
        _integers(self, ("steps",), 1, MAX_STEPS)
        _integers(self, ("batch",), 1, MAX_BATCH)
        _integers(self, ("seed",), 0, 2**63 - 1)
        _integers(self, ("select_every",), 0, MAX_STEPS)
        _fields(self, ("lr",), low=0, low_open=True)
        if self.distance_lambda is not None:
            _fields(self, ("distance_lambda",), low=0, low_open=True)


def _device(value: object) -> str | None:
    """None, "cpu", "cuda" or "cuda:<index>" (a string, nothing else: a grid file sets it)."""
    if value is None:
        return None
    text = check.string(value, "RLConfig.device", allow_empty=False, max_length=16)
    kind, _, index = text.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"RLConfig.device must be cpu, cuda or cuda:<index>, got {value!r}")
    return text


@dataclass(frozen=True)
class RLConfig:
    """One RL run (passk_companion.model.rl): objective and its parameters, k, n rollouts per
    prompt, sampler, entropy bonus, batch, steps, optimizer and its settings, evaluation cadence,
    seed."""

    objective: str = "pass1_reinforce"
    k: int = 8
    n: int = 16  # rollouts per prompt
    sampler: str = "iid"
    entropy: float = 0.0  # token-entropy bonus coefficient
    batch_prompts: int = 16
    steps: int = 100
    lr: float = 3e-4
    optimizer: str = "adamw"  # "adamw" or "sgd" (no momentum, no weight decay)
    temperature: float = 1.0
    grad_clip: float = 1.0  # clip the gradient norm here; 0 never clips
    eval_every: int = 5
    kl_samples: int = 8  # samples per test prompt for the KL-to-base estimate
    seed: int = 0
    device: str | None = None  # None: gpt.pick_device (not part of the run key)
    objective_params: dict = field(default_factory=dict)
    stop_gain: float | None = None  # end once test J_1 is this much above the base's (rl.py)
    stop_train_j1: float | None = None  # end once train J_1 reaches this (saturation, rl.py)
    eval_early_every: int = 0  # also evaluate every this many steps up to eval_early_until
    eval_early_until: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.objective_params, dict):
            raise ValueError(f"objective_params must be a dict, got {self.objective_params!r}")
        obj = objectives.get(self.objective, **self.objective_params)  # bad -> ValueError
        check.choice(self.sampler, "RLConfig.sampler", SAMPLERS)
        check.choice(self.optimizer, "RLConfig.optimizer", OPTIMIZERS)
        _integers(self, ("k", "n", "kl_samples"), 1, 4096)
        _integers(self, ("batch_prompts",), 1, MAX_BATCH)
        _integers(self, ("steps", "eval_every"), 1, MAX_STEPS)
        _integers(self, ("seed",), 0, 2**63 - 1)
        _fields(self, ("lr",), low=0, low_open=True, high=1e3)
        _fields(self, ("temperature",), low=0, low_open=True, high=1e3)
        _fields(self, ("entropy", "grad_clip"), low=0, high=1e6)
        object.__setattr__(self, "device", _device(self.device))
        if self.stop_gain is not None:
            _fields(self, ("stop_gain",), low=0, high=1, low_open=True)
        if self.stop_train_j1 is not None:
            _fields(self, ("stop_train_j1",), low=0, high=1, low_open=True)
        _integers(self, ("eval_early_every", "eval_early_until"), 0, MAX_STEPS)
        if (self.eval_early_every == 0) != (self.eval_early_until == 0):
            raise ValueError("eval_early_every and eval_early_until are set together (or neither)")
        if self.k > self.n:
            raise ValueError(f"k = {self.k} must be <= n = {self.n} (rollouts per prompt)")
        if self.n < obj.min_group:
            raise ValueError(f"objective {self.objective} needs n >= {obj.min_group}")
        if obj.sampler == "swor" and self.sampler != "swor":
            raise ValueError(f"objective {self.objective} is only valid with sampler='swor'")


@dataclass(frozen=True)
class ProfileConfig:
    """Everything that sizes a profile's runs: task, model, pretraining, RL defaults, and the
    regime rule its bases must meet."""

    task: TaskConfig
    model: ModelConfig
    pretrain: PretrainConfig
    rl: RLConfig
    regime: RegimeRule = field(default_factory=RegimeRule)


_CI = ProfileConfig(TaskConfig(), ModelConfig(), PretrainConfig(), RLConfig())
PROFILE_CONFIGS: dict[str, ProfileConfig] = {
    # unit tests: seconds (the regime rule is checked but not required of so small a model)
    "smoke": ProfileConfig(
        TaskConfig(n_nodes=16, window=4, edge_prob=0.5, max_distance=6, rl_fraction=0.5),
        ModelConfig(n_layer=1, n_head=2, n_embd=32),
        PretrainConfig(steps=60, batch=64, select_every=0),
        RLConfig(n=4, k=2, batch_prompts=4, steps=4, eval_every=2, kl_samples=2),
    ),
    # the notebook's default: CPU, minutes
    "ci": _CI,
    # the deciding runs: the ci sizes, with more graphs, bases, seeds and steps (its grid file)
    "full": _CI,
    # one GPU: a larger graph and model, float32
    "gpu": ProfileConfig(
        TaskConfig(n_nodes=64, window=6, max_distance=12, rl_fraction=0.5),
        ModelConfig(n_layer=4, n_head=8, n_embd=256, numerics="float32"),
        PretrainConfig(steps=3000, batch=512, lr=1e-3, select_every=100),
        RLConfig(n=32, batch_prompts=64, steps=300, eval_every=10, kl_samples=16),
    ),
}
assert set(PROFILE_CONFIGS) == set(profiles.PROFILES), "every profile has its configuration"


def for_profile(name: str) -> ProfileConfig:
    """The configuration of the named profile (passk_companion.profiles.PROFILES)."""
    return PROFILE_CONFIGS[profiles.check(name)]


def with_base(profile: ProfileConfig, graph: int | None = None, base: int | None = None):
    """`profile` with another graph (TaskConfig.seed) and/or base (PretrainConfig.seed)."""
    task = profile.task if graph is None else dataclasses.replace(profile.task, seed=graph)
    pre = profile.pretrain if base is None else dataclasses.replace(profile.pretrain, seed=base)
    return dataclasses.replace(profile, task=task, pretrain=pre)


def step_bytes(profile: ProfileConfig, cfg: RLConfig, task: DagTask) -> tuple[int, str]:
    """An estimate of the memory of the largest batch a run of `cfg` on `profile` (and its
    `task`) computes at once, and what that batch is: the RL step's batch_prompts x n rollouts
    (forward and backward), or the KL estimate's kl_samples per test prompt (forward only). Per
    token of a rollout: about 24 n_embd numbers per layer and 4 per vocabulary entry (within
    10% of the measured peak on the ci profile)."""
    tokens = 3 + task.max_new_tokens
    per_token = 24 * profile.model.n_layer * profile.model.n_embd + 4 * task.vocab_size
    itemsize = profile.model.dtype.itemsize
    rl_rollouts = cfg.batch_prompts * cfg.n
    kl_rollouts = cfg.kl_samples * len(task.rl_test_pairs)
    if 2 * rl_rollouts >= kl_rollouts:
        need, what = rl_rollouts, f"batch_prompts x n = {cfg.batch_prompts} x {cfg.n} rollouts"
    else:
        need = kl_rollouts // 2
        what = f"kl_samples x test prompts = {cfg.kl_samples} x {len(task.rl_test_pairs)}"
    return need * tokens * per_token * itemsize, what


def check_fits(
    profile: ProfileConfig,
    cfg: RLConfig,
    task: DagTask | None = None,
    limit: int = MAX_STEP_BYTES,
) -> None:
    """ValueError naming the parameters if one batch of a run of `cfg` on `profile` (whose task
    is built unless given) would need more than `limit` bytes (:func:`step_bytes`): sizes the
    profile cannot use are refused before they reach the allocator."""
    need, what = step_bytes(profile, cfg, task or build_task(profile.task))
    if need > limit:
        raise ValueError(
            f"n, batch_prompts or kl_samples too large for this profile's model: {what} would "
            f"need about {need / 2**30:.0f} GiB at once, more than the limit of "
            f"{limit / 2**30:.0f} GiB; lower n, batch_prompts or kl_samples"
        )


def ensemble_limit(
    profile: ProfileConfig, cfg: RLConfig, task: DagTask, limit: int = MAX_STEP_BYTES
) -> int:
    """The most runs of `cfg` one ensemble may hold: R runs compute R times :func:`step_bytes`
    at once, which must stay within `limit`."""
    need, _ = step_bytes(profile, cfg, task)
    return max(1, limit // max(need, 1))


def build_task(cfg: TaskConfig) -> DagTask:
    """The DAG task of `cfg` (deterministic in cfg.seed)."""
    return make_dag_task(
        cfg.n_nodes,
        cfg.window,
        cfg.edge_prob,
        cfg.rl_fraction,
        cfg.min_distance,
        cfg.max_distance,
        cfg.seed,
        cfg.test_fraction,
    )


def build_model(task: DagTask, cfg: ModelConfig, device: torch.device | str) -> GPT:
    """A freshly initialised GPT sized for `task` (vocabulary, prompt + answer length), in the
    dtype and kernels of cfg.numerics."""
    portable = cfg.numerics == "portable"
    gcfg = GPTConfig(
        task.vocab_size, 3 + task.max_new_tokens, cfg.n_layer, cfg.n_head, cfg.n_embd, portable
    )
    return GPT(gcfg).to(device=device, dtype=cfg.dtype)
