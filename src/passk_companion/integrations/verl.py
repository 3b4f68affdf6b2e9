"""verl plugin: the companion's objectives as verl advantage estimators, and the pass@k diagnostic
in verl's training and validation metrics (verl 0.9.1; no fork).

Loaded by `import verl` itself: the package declares this module in the entry-point group
`verl.plugins` (pyproject.toml), and verl imports every entry point of that group unless
`VERL_USE_EXTERNAL_PLUGINS=none`. That holds in every process, Ray actors included (the TaskRunner,
where advantages are computed), wherever the package is installed.

Estimators. Every registered objective `name` (`passk_companion.objectives.names()`) becomes the
verl advantage estimator `passk_companion.<name>` (`core_algos.register_adv_est`):

    algorithm.adv_estimator=passk_companion.pkpo_loo +algorithm.passk_companion.k=8

The section `algorithm.passk_companion` holds k and the objective's own parameters (for example
`+algorithm.passk_companion.beta=2.0` for risk_seeking). verl hands `config=self.config.algorithm`
(a
DictConfig) to the estimator, so the keys arrive as they are. Where a program converts that
section into verl's dataclass `AlgoConfig` (`omega_conf_to_dataclass`), the unknown key
`passk_companion` is refused (TypeError); there, also set
`algorithm._target_=passk_companion.integrations.verl.PassKAlgoConfig`, the same dataclass plus the
field `passk_companion`.

Scaling convention. verl's outcome estimators return one advantage per response, broadcast over
its tokens. The registry's weights w_i (B, n) are defined by the surrogate
-(w * logprob).sum(1).mean(): the gradient estimate of a group is sum_i w_i grad log pi(y_i). The
estimator returns A_i = n_g w_i for each response i of a group of n_g, times the response mask:
then GRPO's A_i (its weights are A_i / n) and RLOO's come back exactly (passk_companion.grpo with
eps=1e-6 equals verl's grpo; passk_companion.pass1_reinforce equals verl's rloo), and with
`actor.loss_agg_mode=seq-mean-token-sum` verl's policy gradient at ratio 1 is
-(1/B) sum_g sum_i n_g w_i grad log pi(y_i), the registry's surrogate up to the constant mean
group size n (token-mean weights each response by its length as well). The scalar reward of a
response is the sum of its `token_level_rewards` (as verl's grpo); groups are the `uid`s (index)
and may be ragged, each with its own n_g (k <= n_g).

Refused, with one line: objectives that need the log-probability of each rollout
(`needs_logprobs`: unlikeliness, swor_ordered), since verl passes an estimator no log-probs, and
those whose unbiasedness assumes draws without replacement (`sampler == "swor"`), since verl's
rollouts are i.i.d. samples; a `binary_only` objective (passk_chen) given rewards that are not
0/1, which happens when a KL penalty is in the reward (`algorithm.use_kl_in_reward=True`).

Metrics. `trainer.v1.trainer_mode=passk_companion` (or `passk_companion_colocate_async`,
`passk_companion_separate_async`) selects verl's own trainer of that mode with two methods extended:
`_compute_advantage` adds the diagnostic of the step's verifier scores (`rm_scores`, before any
KL penalty) to the training metrics as `passk_companion/pass@k`, `passk_companion/gap@k`,
`passk_companion/alpha@k/mean`, `passk_companion/situation_I_share`, ...; `_val_metrics_update` adds
the unbiased pass@k of each data source to the validation metrics,
`val-core/<source>/passk_companion/
pass@<n>` and `val-aux/<source>/passk_companion/...` (next to verl's bootstrap `best@k`). Nothing
else of verl's trainer changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo import core_algos

from passk_companion import objectives, validation
from passk_companion.integrations import unfed_need
from passk_companion.integrations.diagnostics import default_ks, diagnose, group_codes, size_buckets
from passk_companion.integrations.rollout_logs import final_outputs

__all__ = [
    "PREFIX",
    "CONFIG_KEY",
    "PassKAlgoConfig",
    "estimator_name",
    "group_advantages",
    "make_estimator",
    "register",
    "register_all",
    "settings",
    "train_metrics",
    "validation_metrics",
]

PREFIX = "passk_companion."
CONFIG_KEY = "passk_companion"
METRIC_PREFIX = "passk_companion/"

_log = logging.getLogger(__name__)


@dataclass
class PassKAlgoConfig(AlgoConfig):
    """verl's AlgoConfig plus the section `passk_companion` (k and the objective's parameters), for
    programs that convert `algorithm` into a dataclass:
    `algorithm._target_=passk_companion.integrations.verl.PassKAlgoConfig`."""

    passk_companion: dict[str, Any] = field(default_factory=dict)


def estimator_name(objective: str) -> str:
    """The verl estimator name of a registry objective: `passk_companion.<objective>`."""
    return PREFIX + objective


def _plain(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(section, DictConfig):
            return dict(OmegaConf.to_container(section, resolve=True))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - omegaconf comes with verl
        pass
    if isinstance(section, Mapping):
        return dict(section)
    raise ValueError(f"algorithm.{CONFIG_KEY} must be a mapping, got {type(section).__name__}")


def settings(config: Any, objective: str) -> tuple[int, dict[str, Any]]:
    """k and the objective's parameters from `config.passk_companion` (config: verl's algorithm
    section as a DictConfig, a dict, an AlgoConfig or a PassKAlgoConfig)."""
    section = _plain(config.get(CONFIG_KEY, None) if config is not None else None)
    name = estimator_name(objective)
    if "k" not in section:
        raise ValueError(
            f"{name} needs k: add +algorithm.{CONFIG_KEY}.k=K to the command line (and "
            "algorithm._target_=passk_companion.integrations.verl.PassKAlgoConfig where the "
            "algorithm config is converted to a dataclass)"
        )
    k = section.pop("k")
    if not validation.is_integer(k) or k < 1:
        raise ValueError(f"{name}: algorithm.{CONFIG_KEY}.k must be an integer >= 1, got {k!r}")
    return k, section


def _objective(objective: str, params: dict[str, Any]) -> objectives.Objective:
    name = estimator_name(objective)
    need = unfed_need(objectives.get(objective), "verl")  # raises for an unknown name
    if need is not None:
        raise ValueError(f"{name} is not supported in verl: it needs {need}")
    try:
        return objectives.get(objective, **params)
    except (TypeError, ValueError) as err:  # the registry validates parameters first
        raise ValueError(
            f"{name}: bad parameter in algorithm.{CONFIG_KEY} ({', '.join(params)}): {err}"
        ) from None


def group_advantages(
    objective: objectives.Objective, scores: torch.Tensor, index: Any, k: int
) -> torch.Tensor:
    """A_i = n_g w_i for each response (bs,), float64: the registry's weights of each uid group
    (ragged groups: one dense (groups, n) call per group size), times the group size."""
    name = estimator_name(objective.name)
    codes, labels = group_codes(np.asarray(index, dtype=object), "uid (index)")
    if codes.size != scores.shape[0]:
        raise ValueError(f"{name}: {codes.size} uids for {scores.shape[0]} responses")
    values = scores.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(values).all()):
        row = int(torch.nonzero(~torch.isfinite(values))[0])
        raise ValueError(f"{name}: the reward of response {row} is not finite")
    if objective.binary_only and not objectives.is_binary(values):
        row = int(torch.nonzero((values != 0) & (values != 1))[0])
        raise ValueError(
            f"{name} needs 0/1 rewards, but response {row} (uid {labels[codes[row]]}) has "
            f"{float(values[row]):.6g}: a KL penalty in the reward (algorithm.use_kl_in_reward) "
            "or a real-valued reward makes them real; use a 0/1 reward or a real-valued objective"
        )
    sizes = np.bincount(codes, minlength=labels.size)
    smallest = int(sizes.min())
    if smallest < max(k, objective.min_group):
        g = int(np.argmin(sizes))
        need = f"k = {k}" if smallest < k else f"the objective's minimum {objective.min_group}"
        raise ValueError(
            f"{name}: uid {labels[g]} has {smallest} response(s), fewer than {need}; set "
            "actor_rollout_ref.rollout.n >= k"
        )
    out = torch.empty(codes.size, dtype=torch.float64)
    for size, rollouts, row, col in size_buckets(codes, sizes):
        idx = torch.from_numpy(rollouts)
        r, c = torch.from_numpy(row), torch.from_numpy(col)
        table = torch.empty(int(row.max()) + 1, size, dtype=torch.float64)
        table[r, c] = values[idx]
        out[idx] = size * objective.weights(table, k)[r, c]
    return out.to(scores.device)


def _cast(advantages: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """`advantages` (float64) in verl's dtype; ValueError in one line when one does not fit it
    (finite rewards near the dtype's limit give advantages beyond it)."""
    out = advantages.to(dtype)
    if not bool(torch.isfinite(out).all()):
        row = int(torch.nonzero(~torch.isfinite(out))[0])
        raise ValueError(
            f"{name}: the advantage of response {row} ({float(advantages[row]):.6g}) overflows "
            f"{str(dtype).removeprefix('torch.')}: rescale the rewards"
        )
    return out


def make_estimator(objective: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The verl advantage estimator of one registry objective (verl's estimator contract:
    token_level_rewards and response_mask (bs, L), index the uids, config the algorithm
    section; returns (advantages, returns), both (bs, L)). A response whose mask is all zero (a
    padding row of verl's `upsample_batch_to_divisible_size`) gets advantage 0 and does not count
    in its uid's group."""

    def estimator(
        token_level_rewards: torch.Tensor,
        response_mask: torch.Tensor,
        index: Any = None,
        config: Any = None,
        **_: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if index is None:
            raise ValueError(f"{estimator_name(objective)} needs the uid of each response")
        k, params = settings(config, objective)
        obj = _objective(objective, params)
        with torch.no_grad():
            scores = token_level_rewards.sum(dim=-1)
            live = (response_mask != 0).any(dim=-1)  # padding rows have an all-zero mask
            wide = torch.zeros(scores.shape[0], dtype=torch.float64, device=scores.device)
            if bool(live.any()):
                uids = np.asarray(index, dtype=object)
                if uids.shape[0] != scores.shape[0]:
                    raise ValueError(
                        f"{estimator_name(objective)}: {uids.shape[0]} uids for "
                        f"{scores.shape[0]} responses"
                    )
                rows = live.cpu().numpy()
                wide[live] = group_advantages(obj, scores[live], uids[rows], k)
            adv = _cast(wide, token_level_rewards.dtype, estimator_name(objective))
            adv = adv.unsqueeze(-1) * response_mask
        return adv, adv

    estimator.__name__ = f"companion_{objective}_advantage"
    estimator.__qualname__ = estimator.__name__
    estimator.__doc__ = f"verl estimator {estimator_name(objective)}: see {__name__}."
    return estimator


_ESTIMATORS: dict[str, Callable[..., Any]] = {}


def register(objective: str) -> str:
    """Register `passk_companion.<objective>` with verl (idempotent); returns the estimator name."""
    name = estimator_name(objective)
    if objective not in _ESTIMATORS:
        _ESTIMATORS[objective] = make_estimator(objective)
    core_algos.register_adv_est(name)(_ESTIMATORS[objective])
    return name


def register_all() -> list[str]:
    """Register every objective in the registry now (call again after registering your own)."""
    return [register(name) for name in objectives.names()]


# ---- metrics -----------------------------------------------------------------------------


def _ks(config: Any, n_max: int) -> list[int]:
    ks = set(default_ks(n_max))
    try:
        k = _plain(config.get(CONFIG_KEY, None)).get("k") if config is not None else None
    except (ValueError, AttributeError):
        k = None
    if isinstance(k, int) and 1 <= k <= n_max:
        ks.add(k)
    return sorted(ks)


def _usable(
    uids: Any, rewards: Any, what: str, min_group: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """The rows a diagnostic can use: a finite reward (None and NaN are not) in a group of at
    least `min_group` such rows. What is left out is logged as a warning, never raised: a metric
    must not stop a training run."""
    uids = np.asarray(uids, dtype=object)
    values = np.array([np.nan if r is None else r for r in rewards], dtype=object)
    try:
        values = values.astype(np.float64)
    except (TypeError, ValueError, OverflowError):
        values = np.array([_float_or_nan(r) for r in values], dtype=np.float64)
    if uids.shape[0] != values.shape[0]:
        _log.warning("passk_companion: %s: %d uids for %d rewards; no diagnostic", what,
                     uids.shape[0], values.shape[0])  # fmt: skip
        return uids[:0], values[:0]
    finite = np.isfinite(values)
    codes = group_codes(uids, "uid")[0] if uids.size else np.zeros(0, dtype=np.int64)
    sizes = np.bincount(codes[finite], minlength=int(codes.max(initial=-1)) + 1)
    keep = finite & (sizes[codes] >= min_group) if codes.size else finite
    if not finite.all():
        _log.warning("passk_companion: %s: %d reward(s) not finite, left out of the diagnostic",
                     what, int((~finite).sum()))  # fmt: skip
    singles = int((finite & ~keep).sum())
    if singles:
        _log.warning("passk_companion: %s: %d rollout(s) in groups of one, left out of the "
                     "diagnostic", what, singles)  # fmt: skip
    return uids[keep], values[keep]


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def train_metrics(uids: Any, scores: Any, config: Any = None) -> dict[str, float]:
    """The diagnostic of one training batch as flat metrics `passk_companion/...`: pass@k at
    k = 1, 2, 4, ..., n and the configured k, the gap, alpha_k, the shares. Rollouts without a
    finite score and groups of one are left out (with a warning in the log); an empty batch gives
    no metrics."""
    uids, values = _usable(uids, scores, "training batch")
    if uids.size == 0:
        return {}
    n_max = int(np.bincount(group_codes(uids, "uid")[0]).max())
    return diagnose(uids, values, _ks(config, n_max)).metrics(METRIC_PREFIX)


def validation_metrics(
    data_sources: Any, uids: Any, rewards: Any, config: Any = None
) -> dict[str, float]:
    """Per data source: the unbiased pass@k (max@k for real rewards) at the largest n in
    `val-core/<source>/passk_companion/`, everything else in `val-aux/<source>/passk_companion/`.
    Rollouts without a finite reward (None, NaN) and groups of one are left out, with a warning in
    the log."""
    sources = np.asarray(data_sources, dtype=object)
    uids = np.asarray(uids, dtype=object)
    out: dict[str, float] = {}
    if sources.shape[0] != uids.shape[0] or uids.shape[0] != len(rewards):
        _log.warning("passk_companion: validation: %d sources, %d uids, %d rewards; no diagnostic",
                     sources.shape[0], uids.shape[0], len(rewards))  # fmt: skip
        return out
    rewards = list(rewards)
    codes, labels = group_codes(sources, "data source") if sources.size else ([], [])
    for s, source in enumerate(list(labels)):
        pick = np.asarray(codes) == s
        keep_uids, values = _usable(
            uids[pick],
            [r for r, p in zip(rewards, pick, strict=True) if p],
            f"validation {source}",
            min_group=1,
        )
        if keep_uids.size == 0:
            continue
        n_max = int(np.bincount(group_codes(keep_uids, "uid")[0]).max())
        if n_max < 2:
            continue
        diag = diagnose(keep_uids, values, _ks(config, n_max), min_group=1)
        head = "pass" if diag.binary else "max"
        for key, value in diag.metrics().items():
            core = key == f"{head}@{n_max}"
            out[f"val-{'core' if core else 'aux'}/{source}/passk_companion/{key}"] = value
    return out


class PassKMetrics:
    """Mixin over a verl v1 PPOTrainer: the diagnostic in the training and validation metrics."""

    def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
        import transfer_queue as tq

        batch = super()._compute_advantage(batch, metrics)  # type: ignore[misc]
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["uid", "rm_scores"]
        )
        keep = final_outputs(list(batch.keys))
        if batch.tags:
            keep = keep & np.array([not t.get("is_padding", False) for t in batch.tags])
        scores = data["rm_scores"]
        scores = scores.to_padded_tensor(0.0) if scores.is_nested else scores
        uids = np.array(list(data["uid"]), dtype=object)
        config = self.config.algorithm  # type: ignore[attr-defined]
        try:
            metrics.update(train_metrics(uids[keep], scores.sum(-1).numpy()[keep], config))
        except Exception as err:  # noqa: BLE001 - a metric never stops the training run
            _log.warning("passk_companion: no pass@k metrics for this step: %s", err)
        return batch

    def _val_metrics_update(
        self,
        data_sources: list,
        sample_uids: list,
        reward_extra_infos_dict: dict[str, list],
        sample_turns: list,
        expected_acc_counts: dict | None = None,
    ) -> dict[str, float]:
        out = super()._val_metrics_update(  # type: ignore[misc]
            data_sources,
            sample_uids,
            reward_extra_infos_dict,
            sample_turns,
            expected_acc_counts=expected_acc_counts,
        )
        acc = reward_extra_infos_dict.get("acc")
        usable = acc is not None and len(acc) == len(sample_uids) and None not in acc
        rewards = acc if usable else reward_extra_infos_dict.get("reward", [])
        if len(rewards) == len(sample_uids) and sample_uids:
            config = getattr(getattr(self, "config", None), "algorithm", None)
            try:
                out.update(validation_metrics(data_sources, sample_uids, rewards, config))
            except Exception as err:  # noqa: BLE001 - a metric never stops the training run
                _log.warning("passk_companion: no pass@k validation metrics: %s", err)
        return out


TRAINER_MODES = {"sync": "passk_companion", "colocate_async": "passk_companion_colocate_async"}
TRAINER_MODES["separate_async"] = "passk_companion_separate_async"


def _register_trainers() -> dict[str, type]:
    """verl's v1 trainers with the PassKMetrics mixin, under
    `trainer.v1.trainer_mode=passk_companion` (sync), `passk_companion_colocate_async` and
    `passk_companion_separate_async`."""
    from verl.trainer.ppo.v1 import trainer_base

    made = {}
    for mode, name in TRAINER_MODES.items():
        base = trainer_base.get_trainer_cls(mode)
        existing = trainer_base.TRAINER_REGISTRY.get(name)
        cls = existing or type(f"PassK{base.__name__}", (PassKMetrics, base), {})
        cls.__module__ = __name__
        made[name] = trainer_base.register_trainer(name)(cls)
    return made


register_all()
try:
    TRAINERS = _register_trainers()
except Exception as err:  # noqa: BLE001 - the estimators stay usable without verl's v1 trainer
    TRAINERS = {}
    _log.warning("passk_companion: verl trainers with pass@k metrics not registered: %s", err)
