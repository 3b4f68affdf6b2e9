"""Companion library to "Pass@k Metric for RLVR: A Diagnostic Tool of Exploration, But Not an
Objective" (arXiv 2511.16231). Notebooks import from here; everything they compute is tested.

Three parts and a thin shell (DESIGN.md, "Layout"):

* ``companion.theory``: exact and tabular mathematics (Theorem 3.1 and 3.2, estimators, the
  exact-gradient harness, tabular dynamics);
* ``companion.model``: the tiny GPT, its task, portable kernels, training and sweeps;
* ``companion.evidence``: verdicts, claims, reports and the site (no torch);
* ``companion.objectives``: the registry of objective variants every part uses;
* ``companion.integrations``: adapters into verl and TRL, and the pass@k diagnostic;
* the shell: files (atomic writes, locks), repro (threads, seeds, paths), profiles, validation,
  reproduce (make targets), lab, cli.

Importing ``companion`` loads no torch: the names below are imported when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute" (attribute empty: the module itself)
_EXPORTS = {
    "theory": "companion.theory:",
    "model": "companion.model:",
    "evidence": "companion.evidence:",
    "objectives": "companion.objectives:",
    "integrations": "companion.integrations:",
    "pass_at_k": "companion.theory.passk:pass_at_k",
    "alpha_k": "companion.theory.passk:alpha_k",
    "pass_at_k_unbiased": "companion.theory.passk:pass_at_k_unbiased",
    "Objective": "companion.objectives:Objective",
    "register": "companion.objectives:register",
    "get_objective": "companion.objectives:get",
    "objective_names": "companion.objectives:names",
    "Decision": "companion.evidence.verdicts:Decision",
    "Claim": "companion.evidence.claims:Claim",
    "PROFILES": "companion.profiles:PROFILES",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'companion' has no attribute {name!r}")
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    value = getattr(module, attribute) if attribute else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
