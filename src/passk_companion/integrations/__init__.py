"""Adapters into the trainers users run, and the pass@k diagnostic they share.

    passk_companion.integrations.diagnostics   the paper's diagnostic on a (groups x n) reward table
    passk_companion.integrations.verl          verl plugin: registry objectives as advantage
                                         estimators (loaded by `import verl` through the
                                         `verl.plugins`
                                         entry point) and a trainer that logs the diagnostics
    passk_companion.integrations.trl           PassKGRPOTrainer, a TRL GRPOTrainer with the
                                         registry's advantages and the diagnostics as metrics
    passk_companion.integrations.diagnose      `python -m passk_companion diagnose FILE`

Nothing is imported here: the adapters import torch, verl or TRL, and `import passk_companion` stays
free of all three.
"""

__all__: list[str] = []
