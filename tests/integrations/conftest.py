"""Integration tests: the real verl and TRL code, in the venv `make test-integrations` builds.

Elsewhere (the main venv has neither library) each module is skipped with the reason; under
`make test-integrations` (PASSK_COMPANION_REQUIRE_INTEGRATIONS=1) a missing library is an error, so
the tests cannot be skipped silently there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from integration_support import require


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster and verl's TransferQueue for the session (4 logical CPUs: the
    queue's controller and storage unit take one each; the machine's 2 cores are shared)."""
    ray = require("ray", "verl")
    tq = require("transfer_queue", "verl")
    from omegaconf import OmegaConf

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    here = str(Path(__file__).resolve().parent)  # ray_probe.py, importable by the workers
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": here}},
    )
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield ray
    tq.close()
    ray.shutdown()
