import os

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("PASSK_COMPANION_RESULTS", "build/test-results")


@pytest.fixture
def planted_lock(tmp_path):
    """An output folder whose .lock is a symbolic link to a user's file: (out, victim)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "planted"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    return out, victim
