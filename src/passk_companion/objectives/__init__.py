"""The registry of objective variants.

An objective maps the verifier rewards of a group of n rollouts per prompt, a (B, n) tensor, and k
to per-rollout weights (B, n). The gradient estimate of one group is sum_i w_i grad log pi(y_i);
the surrogate loss is `-(weights.detach() * logprob_of_rollout).sum(1).mean()`.

    >>> from passk_companion import objectives
    >>> objectives.names()[:3]
    ['best_of_k_naive', 'dr_grpo', 'grpo']
    >>> w = objectives.get("pkpo").weights(rewards, k=4)

Add a variant in your own module, without touching this package:

    @objectives.register("my_variant")
    class MyVariant(objectives.Objective):
        unbiased_for = None
        def _weights(self, rewards, k):
            ...

Every registered objective is then picked up by the exact-gradient tests and the harness. To
reach `train`, `sweep`, verl and TRL from an installed package, declare the module in the
entry-point group `passk_companion.objectives` (pyproject.toml)::

    [project.entry-points."passk_companion.objectives"]
    my_variant = "my_package.objectives"

or, for a module that is not installed, pass `--import my_module` to `train` and `sweep` (or set
PASSK_COMPANION_IMPORT=my_module), which their workers import too.
"""

from passk_companion.objectives import group_baselines as _group_baselines  # noqa: F401 (registers)
from passk_companion.objectives import passk_family as _passk_family  # noqa: F401 (registers)
from passk_companion.objectives import without_replacement as _without_replacement  # noqa: F401
from passk_companion.objectives.base import (
    ENTRY_POINT_GROUP,
    IMPORT_VARIABLE,
    SAMPLERS,
    Objective,
    get,
    is_binary,
    names,
    parameters,
    plugin_errors,
    register,
    seeded,
    unregister,
    use,
)

__all__ = [
    "SAMPLERS",
    "Objective",
    "get",
    "is_binary",
    "names",
    "parameters",
    "register",
    "seeded",
    "unregister",
    "use",
    "plugin_errors",
    "ENTRY_POINT_GROUP",
    "IMPORT_VARIABLE",
]
