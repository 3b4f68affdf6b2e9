"""Companion library to "Pass@k Metric for RLVR: A Diagnostic Tool of Exploration, But Not an
Objective" (arXiv 2511.16231). Notebooks import from here; everything they compute is tested.

Three parts and a thin shell:

* ``passk_companion.theory``: exact and tabular mathematics (Theorem 3.1 and 3.2, estimators, the
  exact-gradient harness, tabular dynamics);
* ``passk_companion.model``: the tiny GPT, its task, portable kernels, training and sweeps;
* ``passk_companion.evidence``: verdicts, claims, reports and the site (no torch);
* ``passk_companion.objectives``: the registry of objective variants every part uses;
* ``passk_companion.integrations``: adapters into verl and TRL, and the pass@k diagnostic;
* the shell: files (atomic writes, locks), runtime (threads, seeds, paths), profiles, validation,
  reproduce (make targets), lab, cli.

Importing ``passk_companion`` loads no torch: the names below are imported when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute" (attribute empty: the module itself)
_EXPORTS = {
    "theory": "passk_companion.theory:",
    "model": "passk_companion.model:",
    "evidence": "passk_companion.evidence:",
    "objectives": "passk_companion.objectives:",
    "integrations": "passk_companion.integrations:",
    "pass_at_k": "passk_companion.theory.passk:pass_at_k",
    "alpha_k": "passk_companion.theory.passk:alpha_k",
    "pass_at_k_unbiased": "passk_companion.objectives.estimators:pass_at_k_unbiased",
    "Objective": "passk_companion.objectives:Objective",
    "register": "passk_companion.objectives:register",
    "get_objective": "passk_companion.objectives:get",
    "objective_names": "passk_companion.objectives:names",
    "Decision": "passk_companion.evidence.verdicts:Decision",
    "Claim": "passk_companion.evidence.claims:Claim",
    "PROFILES": "passk_companion.profiles:PROFILES",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'passk_companion' has no attribute {name!r}")
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    value = getattr(module, attribute) if attribute else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
