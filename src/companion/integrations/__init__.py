"""Adapters into the trainers users run, and the pass@k diagnostic they share.

    companion.integrations.diagnostics   the paper's diagnostic on a (groups x n) reward table
    companion.integrations.verl          verl plugin: registry objectives as advantage estimators
                                         (loaded by `import verl` through the `verl.plugins`
                                         entry point) and a trainer that logs the diagnostics
    companion.integrations.trl           PassKGRPOTrainer, a TRL GRPOTrainer with the
                                         registry's advantages and the diagnostics as metrics
    companion.integrations.diagnose      `python -m companion diagnose FILE`

Nothing is imported here: the adapters import torch, verl or TRL, and `import companion` stays
free of all three.
"""

__all__: list[str] = []
