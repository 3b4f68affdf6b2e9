"""Adapters into the trainers users run, and the pass@k diagnostic they share.

    diagnostics    the paper's diagnostic on a (groups x n) reward table: the computation
    rollout_logs   `python -m passk_companion diagnose FILE`: reads a trainer's log of rollouts
                   (a table, verl's dump, TRL's completions log) and reports its diagnostic
    verl           verl plugin: registry objectives as advantage estimators (loaded by
                   `import verl` through the `verl.plugins` entry point) and a trainer that
                   logs the diagnostics
    trl            PassKGRPOTrainer, a TRL GRPOTrainer with the registry's advantages and the
                   diagnostics as metrics

Nothing is imported here: the adapters import torch, verl or TRL, and `import passk_companion` stays
free of all three.
"""

__all__ = ["unfed_need"]


def unfed_need(objective: object, trainer: str) -> str | None:
    """What `objective` (a registry objective or its class) needs that a trainer passing only
    i.i.d. rollouts and their rewards (verl, TRL) cannot give it, as words after "needs"; None
    when `trainer` can feed it. The one check both adapters make."""
    if getattr(objective, "needs_logprobs", False):
        return f"the log-probability of each rollout, which {trainer} does not pass to it"
    sampler = getattr(objective, "sampler", "iid")
    if sampler != "iid":
        return f"rollouts drawn by the {sampler!r} sampler, but {trainer}'s are i.i.d."
    return None
