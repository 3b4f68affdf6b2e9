"""Shared by the integration tests: import an optional library or skip (fail when required)."""

from __future__ import annotations

import importlib
import os

import pytest

REQUIRED = os.environ.get("PASSK_COMPANION_REQUIRE_INTEGRATIONS") == "1"


REQUIRED = os.environ.get("PASSK_COMPANION_REQUIRE_INTEGRATIONS") == "1"


def require(module: str, extra: str):
    """Import `module`, or skip the test module (fail under
    PASSK_COMPANION_REQUIRE_INTEGRATIONS=1)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if REQUIRED:
            raise
        pytest.skip(
            f"needs the optional extra [{extra}] ({err}): run make test-integrations",
            allow_module_level=True,
        )
