"""The profiles: one registry of the names that size every run, shared by the notebooks
(``profile`` parameter, params/<profile>/<notebook>.yaml), ``make reproduce PROFILE=...``, the
tiny-GPT configurations (passk_companion.model.config.PROFILE_CONFIGS, keyed by these names) and
grid files.

No torch: the light commands (reproduce, report, html) and the notebook parameter checks read it.
"""

from __future__ import annotations

from passk_companion import validation

__all__ = ["PROFILES", "DEFAULT", "check"]

PROFILES: dict[str, str] = {
    "smoke": "seconds: unit tests and the seed-robustness reruns",
    "ci": "the default: minutes on a CPU; the stored notebook outputs, nbval and CI",
    "full": "the deciding runs: notebook 04 took 32 minutes on a 2-core CPU",
    "gpu": "one GPU: a larger graph and model in float32 (not portable across machines)",
}
DEFAULT = "ci"


def check(name: object, what: str = "profile") -> str:
    """`name` if it is a registered profile, else ValueError naming `what` and the profiles."""
    return validation.choice(name, what, list(PROFILES))
