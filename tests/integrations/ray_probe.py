"""A Ray actor for test_verl that imports nothing at module level: in its worker process only
`import verl` can load the companion (through the `verl.plugins` entry point), as in verl's
TaskRunner actor. The Ray cluster of conftest puts this folder on the workers' PYTHONPATH."""

from __future__ import annotations


class Runner:
    def advantages(self, rewards, uids, mask, estimator, settings):
        import os
        import sys

        loaded = [
            m for m in sys.modules if m == "passk_companion" or m.startswith("passk_companion.")
        ]
        import numpy as np
        import torch
        import verl
        from omegaconf import OmegaConf
        from verl.trainer.ppo.ray_trainer import compute_advantage

        data = verl.DataProto.from_dict(
            tensors={
                "token_level_rewards": torch.tensor(rewards),
                "response_mask": torch.tensor(mask),
            },
            non_tensors={"uid": np.array(uids, dtype=object)},
        )
        config = OmegaConf.create({"passk_companion": settings})
        out = compute_advantage(data, adv_estimator=estimator, config=config)
        plugin = "passk_companion.integrations.verl" in sys.modules
        return out.batch["advantages"].numpy(), loaded, plugin, os.getpid()
