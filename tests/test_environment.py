from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r requirements.txt" in pip and "-e ." in pip
    assert "python=3.11" in env["dependencies"]


def test_requirements_are_exact_pins():
    lines = [
        ln.strip()
        for ln in (ROOT / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith(("#", "-c"))
    ]
    assert "torch==2.13.0" in lines
    assert all("==" in ln for ln in lines), [ln for ln in lines if "==" not in ln]


def test_make_recipes_never_see_the_callers_mplbackend():
    import os
    import subprocess

    probe = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "--eval", 'probe: ; @echo "[$$MPLBACKEND]"', "probe"],
        env={**os.environ, "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "[]"
