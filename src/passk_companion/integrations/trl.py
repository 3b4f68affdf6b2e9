"""PassKGRPOTrainer: TRL's GRPOTrainer with the advantages of a registry objective and the pass@k
diagnostic in its metrics (trl 1.16.0; a subclass, since TRL has no advantage hook).

    from passk_companion.integrations.trl import PassKGRPOTrainer
    trainer = PassKGRPOTrainer(objective="pkpo_loo", k=8, model=..., reward_funcs=...,
                               args=GRPOConfig(num_generations=8, ...), train_dataset=...)

TRL computes advantages inline in `_generate_and_score_completions`: `_calculate_rewards` returns
the rewards of every reward function gathered over all processes, (B_global, F); TRL sums them
with `reward_weights`, normalises them per group of `num_generations` consecutive completions
(`scale_rewards`) and keeps this process's slice. The subclass keeps all of TRL's step and
replaces only the result: from the same gathered rewards (kept by `_calculate_rewards`), the same
weighted sum, the same (B_global / n, n) groups and the same process slice, it sets

    advantages = n * objective.weights(rewards.view(-1, n), k)   (flattened, this process's part)

the scaling convention of the verl plugin: GRPO's weights are A_i / n, so `objective="grpo"`
gives TRL's own advantages with `scale_rewards="group"`, `"dr_grpo"` those of `"none"`
(benchmarks/peer_trl.py checks both). `scale_rewards` is therefore not used, and a value other
than its default "group" is named in a warning at construction. The completions log
(`log_completions=True`) shows these advantages. The diagnostic of each generation batch (all
processes' rewards) goes into TRL's metrics as `passk/pass@k` for k = 1, 2, 4, ..., n and the
objective's k, `passk/gap@k`, `passk/alpha@k/mean`, `passk/situation_I_share`, ... and reaches
`log()` and every callback's `on_log` (with the `eval_` prefix in evaluation).

Refused at construction, with one line: an objective that needs per-rollout log-probabilities
(`needs_logprobs`) or draws without replacement (`sampler == "swor"`), k above num_generations
(or num_generations_eval), and `multi_objective_aggregation="normalize_then_sum"` (it normalises
the rewards before summing them, so the objective would not see them). During training a
completion with no reward (every reward function returned None) is an error, and a `binary_only`
objective refuses rewards that are not 0/1. `metric_ks` that are not integers >= 1 are refused at
construction.
"""

from __future__ import annotations

import warnings
from collections import deque
from typing import Any

import numpy as np
import torch
from trl import GRPOTrainer

from passk_companion import objectives, validation
from passk_companion.integrations import unfed_need
from passk_companion.integrations.diagnostics import default_ks, diagnose

__all__ = ["PassKGRPOTrainer", "METRIC_PREFIX"]

METRIC_PREFIX = "passk/"
SCALE_REWARDS_DEFAULT = "group"  # GRPOConfig's default: anything else is named in a warning


class PassKGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages are n x the weights of the registry objective `objective`
    at `k` (`objective_params` go to its constructor), with the pass@k diagnostic as metrics
    (at `metric_ks`, default 1, 2, 4, ..., n and k). All other arguments are GRPOTrainer's."""

    def __init__(
        self,
        *args: Any,
        objective: str = "pkpo_loo",
        k: int = 8,
        objective_params: dict[str, Any] | None = None,
        metric_ks: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        obj = objectives.get(objective, **(objective_params or {}))
        need = unfed_need(obj, "TRL")
        if need is not None:
            raise ValueError(f"PassKGRPOTrainer: objective {objective!r} needs {need}")
        if not validation.is_integer(k) or k < 1:
            raise ValueError(f"PassKGRPOTrainer: k must be an integer >= 1, got {k!r}")
        if metric_ks is not None and (
            not isinstance(metric_ks, (list, tuple))
            or not metric_ks
            or any(isinstance(q, bool) or not isinstance(q, int) or q < 1 for q in metric_ks)
        ):
            raise ValueError(
                f"PassKGRPOTrainer: metric_ks must be a non-empty list of integers >= 1, got "
                f"{metric_ks!r}"
            )
        super().__init__(*args, **kwargs)
        scale = getattr(self.args, "scale_rewards", SCALE_REWARDS_DEFAULT)
        if scale != SCALE_REWARDS_DEFAULT:
            warnings.warn(
                f"PassKGRPOTrainer: scale_rewards={scale!r} is not used: the advantages are n x "
                f"the weights of {obj.name!r} (objective='grpo' is scale_rewards='group', "
                "'dr_grpo' is 'none')",
                UserWarning,
                stacklevel=2,
            )
        for what, n in (
            ("num_generations", self.num_generations),
            ("num_generations_eval", self.num_generations_eval),
        ):
            if n < max(k, obj.min_group):
                raise ValueError(
                    f"PassKGRPOTrainer: {what} = {n} is below k = {k} (or the objective's "
                    f"minimum group {obj.min_group})"
                )
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "PassKGRPOTrainer: multi_objective_aggregation must be 'sum_then_normalize' "
                f"(the objective takes the weighted sum of the rewards), got "
                f"{self.multi_objective_aggregation!r}"
            )
        self.passk_objective, self.passk_k, self.passk_metric_ks = obj, k, metric_ks
        self._gathered_rewards: torch.Tensor | None = None

    def _calculate_rewards(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        rewards_per_func = super()._calculate_rewards(*args, **kwargs)
        self._gathered_rewards = rewards_per_func  # (B_global, F), gathered by TRL
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._gathered_rewards = None
        output = super()._generate_and_score_completions(inputs)
        if self._gathered_rewards is None:  # pragma: no cover - TRL changed its step
            raise RuntimeError("PassKGRPOTrainer: TRL did not call _calculate_rewards")
        mode = "train" if self.model.training else "eval"
        n = self.num_generations if mode == "train" else self.num_generations_eval
        rewards_per_func = self._gathered_rewards.detach()
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        if bool(unscorable.any()):
            row = int(torch.nonzero(unscorable)[0])
            raise ValueError(
                f"PassKGRPOTrainer: completion {row} of the batch has no reward (every reward "
                f"function returned None); {self.passk_objective.name} needs a reward for each"
            )
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1).to(torch.float64).cpu()  # TRL's sum
        table = rewards.view(-1, n)
        advantages = (n * self.passk_objective.weights(table, self.passk_k)).reshape(-1)
        local = len(inputs)
        start = self.accelerator.process_index * local
        ours = advantages[start : start + local]
        output["advantages"] = ours.to(output["advantages"].device, output["advantages"].dtype)
        logged = self._logs["advantages"]
        kept = list(logged)[: len(logged) - advantages.numel()] + advantages.tolist()
        self._logs["advantages"] = deque(kept, maxlen=logged.maxlen)
        groups = np.repeat(np.arange(table.shape[0]), n)
        ks = sorted(set(self.passk_metric_ks or default_ks(n)) | {self.passk_k})
        ks = [q for q in ks if q <= n]
        diag = diagnose(groups, rewards.numpy(), ks)
        for key, value in diag.metrics(METRIC_PREFIX).items():
            self._metrics[mode][key].append(value)
        return output
