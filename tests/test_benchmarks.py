"""Every benchmark script runs in its --quick mode, so none can rot (issue: benchmarks that run).

Speed is measured by the scripts themselves, as ratios against a baseline timed in the same run;
here only that they run to the end and print a ratio. peer_trl.py needs the optional `bench` extra
(TRL): it is run where TRL imports and skipped, with the reason, elsewhere."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
NEEDS_EXTRA = {"peer_trl.py": "trl"}


def test_every_benchmark_has_a_quick_mode():
    assert SCRIPTS
    for script in SCRIPTS:
        assert "--quick" in script.read_text(), f"{script.name} has no --quick mode"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_quick_mode_runs_and_prints_a_ratio(script, tmp_path):
    module = NEEDS_EXTRA.get(script.name)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{script.name} needs the optional extra: pip install '.[bench]' ({module})")
    proc = subprocess.run(
        [sys.executable, str(script), "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PASSK_COMPANION_RESULTS": str(tmp_path / "results")},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"\d\s*x\b", proc.stdout), proc.stdout[-2000:]  # a ratio, e.g. "1.93x"
