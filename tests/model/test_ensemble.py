"""An ensemble of runs trained as one batched computation writes, for every run, the same bits as
the run trained alone: metrics.csv, prompts.csv and the final weights, for any number of runs and
any mix of arms (objectives, k, the entropy bonus, AdamW and SGD, runs that stop early), natively,
under another CPU dispatch, and after an interruption at any step."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from passk_companion.model import checkpoint, config, pretrain, rl

SMOKE = config.for_profile("smoke")
ROOT = Path(__file__).resolve().parents[2]
ARMS = (
    {"objective": "pass1_reinforce"},
    {"objective": "pkpo_loo", "k": 4},
    {"objective": "pkpo_loo", "k": 8},
    {"objective": "pass1_reinforce", "entropy": 0.3},
    {"objective": "unlikeliness"},
    {"objective": "pass1_reinforce", "optimizer": "sgd", "lr": 0.05, "grad_clip": 0.0},
    {"objective": "pkpo_loo", "k": 8, "optimizer": "sgd", "lr": 0.05},
    {"objective": "pass1_reinforce", "steps": 3},  # stops before the others
    {"objective": "pkpo_loo", "k": 4, "stop_gain": 0.01},  # stops at its first gain
)


def _graphs() -> list[int]:
    """Two graphs of the smoke profile with the same task shapes (they may share an ensemble)."""
    seen: dict[tuple, list[int]] = {}
    for g in range(8):
        task = config.build_task(dataclasses.replace(SMOKE.task, seed=g))
        seen.setdefault((task.vocab_size, task.max_new_tokens), []).append(g)
    return max(seen.values(), key=len)[:2]


def _runs(folder: Path) -> list[tuple[config.ProfileConfig, config.RLConfig, Path]]:
    """The runs of the test: every arm on its own graph, base and seed."""
    graphs = _graphs()
    rl_cfg = dataclasses.replace(SMOKE.rl, n=8, k=2, steps=6, eval_every=2)
    out = []
    for i, arm in enumerate(ARMS):
        profile = config.with_base(SMOKE, graphs[i % 2], (i // 2) % 2)
        out.append((profile, dataclasses.replace(rl_cfg, seed=i, **arm), folder / f"base{i}.pt"))
    return out


def _digest(out: Path) -> dict[str, str]:
    """sha256 of a run's metrics.csv, prompts.csv and final weights."""
    digests = {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in rl.RUN_FILES}
    state = checkpoint.load(out / "checkpoint.pt", {"model": dict}, "run checkpoint")["model"]
    weights = b"".join(state[k].numpy().tobytes() for k in sorted(state))
    return {**digests, "weights": hashlib.sha256(weights).hexdigest()}


def _train(runs, members, folder: Path, until: int | None = None) -> list[rl.RunResult]:
    group = []
    for i in members:
        profile, cfg, base_path = runs[i]
        base = pretrain.load_or_pretrain(profile, base_path, "cpu", progress=False)
        group.append(rl.Run(base, profile, cfg, folder / f"run{i}"))
    results = rl.train_ensemble(group, until=until, progress=False)
    assert [r.error for r in results] == [None] * len(results)
    return results


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """Each run trained alone: its digests."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("alone")
    runs = _runs(folder)
    for i in range(len(runs)):
        _train(runs, [i], folder)
    return folder, {i: _digest(folder / f"run{i}") for i in range(len(runs))}


@pytest.mark.parametrize(
    "members", [[0], [0, 1, 2], [0, 3, 4, 5, 6, 7, 8]], ids=lambda m: f"R={len(m)}"
)
def test_every_run_of_an_ensemble_writes_the_bits_it_writes_alone(alone, tmp_path, members):
    folder, want = alone
    runs = _runs(folder)  # the bases pretrained for the runs alone
    _train(runs, members, tmp_path)
    for i in members:
        assert _digest(tmp_path / f"run{i}") == want[i], (i, ARMS[i])
    steps = {i: json.loads((tmp_path / f"run{i}" / "timings.json").read_text()) for i in members}
    assert all(t["rollout_tokens"] > 0 for t in steps.values())


@pytest.mark.parametrize("until", [1, 3])
def test_an_interrupted_ensemble_resumes_to_the_same_bits(alone, tmp_path, until):
    """Interrupted at step `until` (between or at checkpoints), then resumed: by the ensemble, or
    each run alone (a run's checkpoint is its own)."""
    folder, want = alone
    runs = _runs(folder)
    members = [1, 3, 5, 7]
    _train(runs, members, tmp_path / "ens", until=until)
    _train(runs, members, tmp_path / "ens")
    for i in members:
        _train(runs, [i], tmp_path / "one", until=until)
    _train(runs, members[:2], tmp_path / "one")  # two resume together, two alone
    for i in members[2:]:
        _train(runs, [i], tmp_path / "one")
    for i in members:
        assert _digest(tmp_path / "ens" / f"run{i}") == want[i]
        assert _digest(tmp_path / "one" / f"run{i}") == want[i]


_OTHER_DISPATCH = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import test_ensemble as t
folder, out = Path(sys.argv[2]), Path(sys.argv[3])
runs = t._runs(folder)
members = list(range(len(runs)))
t._train(runs, members, out)
print(json.dumps({i: t._digest(out / f"run{i}") for i in members}))
"""


def test_the_ensemble_gives_the_same_bits_under_another_cpu_dispatch(alone, tmp_path):
    """All the runs as one ensemble under ATen's AVX2 kernels and MKL's compatible path, set from
    outside as a user's machine would pick them: the bits of each run alone, natively."""
    folder, want = alone
    env = {k: v for k, v in os.environ.items()
           if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}  # fmt: skip
    env.update(ATEN_CPU_CAPABILITY="avx2", MKL_CBWR="COMPATIBLE", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _OTHER_DISPATCH, str(Path(__file__).parent), str(folder),
         str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {int(k): v for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}
    assert got == want


def test_runs_of_other_shapes_are_not_packed_together(alone, tmp_path):
    folder, _ = alone
    profile, cfg, base_path = _runs(folder)[0]
    base = pretrain.load_or_pretrain(profile, base_path, "cpu", progress=False)
    other = dataclasses.replace(cfg, n=4)
    with pytest.raises(ValueError, match="share the model and task shapes"):
        rl.train_ensemble([rl.Run(base, profile, cfg, tmp_path / "a"),
                           rl.Run(base, profile, other, tmp_path / "b")])  # fmt: skip


def test_a_run_that_fails_fails_alone(alone, tmp_path):
    """A run whose objective raises ends with its error; the other runs of the ensemble write
    their bits."""
    folder, want = alone
    runs = _runs(folder)
    group = []
    for i in (0, 1):
        profile, cfg, base_path = runs[i]
        base = pretrain.load_or_pretrain(profile, base_path, "cpu", progress=False)
        group.append(rl.Run(base, profile, cfg, tmp_path / f"run{i}"))
    bad = dataclasses.replace(group[0].cfg, lr=1e3, optimizer="sgd", grad_clip=0.0,
                              objective="pkpo", seed=99)  # fmt: skip
    group.insert(1, rl.Run(group[0].base, group[0].profile, bad, tmp_path / "bad"))
    with torch.no_grad():
        huge = group[0].base.select([0])
        for p in huge.parameters():
            p.mul_(1e200)
    group[1] = dataclasses.replace(group[1], base=huge)
    results = rl.train_ensemble(group, progress=False)
    assert results[1].error is not None and "RL step" in str(results[1].error)
    assert results[0].error is None and results[2].error is None
    for i in (0, 1):
        assert _digest(tmp_path / f"run{i}") == want[i]
