"""The portable kernels: exact where they claim to be, close to torch's own kernels, and the same
bits under other CPU dispatch (ATEN_CPU_CAPABILITY, MKL_CBWR set from outside, as a user's
machine would pick them)."""

import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from passk_companion.model import portable as P
from passk_companion.model.gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[2]
DISPATCH_VARS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def _grid_integers(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(x / unit as int64, unit) for a tensor on to_grid's grid."""
    top = float(x.abs().max())
    unit = math.ldexp(1.0, math.frexp(top)[1] - P.BITS)
    ints = x / unit
    assert torch.equal(ints, ints.round()), "not on the grid"
    return ints.to(torch.int64), unit


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 9),
    k=st.integers(1, 40),
    n=st.integers(1, 9),
    scale=st.floats(1e-6, 1e6),
    seed=st.integers(0, 10_000),
)
def test_matmul_is_the_exact_product_of_the_rounded_operands(m, k, n, scale, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g, dtype=torch.float64) * scale
    b = torch.randn(k, n, generator=g, dtype=torch.float64) / scale
    (ia, ua), (ib, ub) = _grid_integers(P.to_grid(a)), _grid_integers(P.to_grid(b))
    exact = (ia @ ib).to(torch.float64) * (ua * ub)  # integer arithmetic: exact
    assert torch.equal(P.matmul(a, b), exact)


def test_to_grid_keeps_20_bits_of_the_largest_entry_and_is_idempotent():
    x = torch.randn(200, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = P.to_grid(x)
    top = float(x.abs().max())
    assert float((r - x).abs().max()) <= math.ldexp(top, -P.BITS)  # half a unit, unit <= 2^-19 top
    assert torch.equal(P.to_grid(r), r)
    assert torch.equal(P.to_grid(torch.zeros(3, 3, dtype=torch.float64)), torch.zeros(3, 3))


def test_long_contractions_are_added_in_blocks_exactly():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 2 * P.BLOCK + 17, generator=g, dtype=torch.float64)
    b = torch.randn(2 * P.BLOCK + 17, 2, generator=g, dtype=torch.float64)
    ra, rb = P.to_grid(a), P.to_grid(b)
    expected = ra[:, : P.BLOCK] @ rb[: P.BLOCK]
    expected = expected + ra[:, P.BLOCK : 2 * P.BLOCK] @ rb[P.BLOCK : 2 * P.BLOCK]
    expected = expected + ra[:, 2 * P.BLOCK :] @ rb[2 * P.BLOCK :]
    assert torch.equal(P.matmul(a, b), expected)


def test_matmul_gradients_are_the_products_of_the_rounded_gradient():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    (P.matmul(a, b) * up).sum().backward()
    ra, rb, rg = P.to_grid(a.detach()), P.to_grid(b.detach()), P.to_grid(up)
    assert torch.equal(a.grad, rg @ rb.transpose(-1, -2))
    assert torch.equal(b.grad, ra.transpose(-1, -2) @ rg)
    torch.testing.assert_close(a.grad, up @ b.detach().transpose(-1, -2), rtol=1e-5, atol=1e-5)


def test_matmul_refuses_float32_and_mismatched_batches():
    with pytest.raises(TypeError, match="float64"):
        P.matmul(torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="batch shapes"):
        P.matmul(torch.ones(2, 2, 2, dtype=torch.float64), torch.ones(3, 2, 2, dtype=torch.float64))


def test_softmax_layer_norm_and_cross_entropy_match_torch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 11, generator=g, dtype=torch.float64) * 3
    for dim in (-1, 1):
        torch.testing.assert_close(P.PORTABLE.softmax(x, dim), torch.softmax(x, dim))
        torch.testing.assert_close(P.PORTABLE.log_softmax(x, dim), torch.log_softmax(x, dim))
    w = torch.randn(11, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, generator=g, dtype=torch.float64, requires_grad=True)
    xg = x.clone().requires_grad_()
    up = torch.randn(x.shape, generator=g, dtype=torch.float64)
    ours = P.PORTABLE.layer_norm(xg, w, bias, 1e-5)
    grads = torch.autograd.grad((ours * up).sum(), (xg, w, bias))
    theirs = F.layer_norm(xg, (11,), w, bias, 1e-5)
    expected = torch.autograd.grad((theirs * up).sum(), (xg, w, bias))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    target = torch.randint(0, 11, (24,), generator=g)
    torch.testing.assert_close(
        P.PORTABLE.cross_entropy(x.view(24, 11), target), F.cross_entropy(x.view(24, 11), target)
    )


def test_adamw_and_clipping_follow_torch():
    g = torch.Generator().manual_seed(4)
    start = torch.randn(5, 3, generator=g, dtype=torch.float64)
    grads = [torch.randn(5, 3, generator=g, dtype=torch.float64) * 10 for _ in range(20)]
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    opt_ours = P.AdamW([ours], lr=1e-2, weight_decay=0.01)
    opt_theirs = torch.optim.AdamW([theirs], lr=1e-2, weight_decay=0.01)
    for grad in grads:
        for p in (ours, theirs):
            p.grad = grad.clone()
        n_ours = P.PORTABLE.clip_grad_norm_([ours], 1.0)
        n_theirs = torch.nn.utils.clip_grad_norm_([theirs], 1.0)
        torch.testing.assert_close(n_ours, n_theirs, rtol=1e-12, atol=1e-12)
        opt_ours.step()
        opt_theirs.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="AdamW needs"):
        P.AdamW([ours], lr=0.0)


def test_a_portable_gpt_needs_float64_weights_and_matches_the_native_one():
    cfg = GPTConfig(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8, portable=True)
    torch.manual_seed(0)
    model = GPT(cfg)
    idx = torch.randint(0, 7, (4, 6), generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="float64"):
        model(idx)
    model = model.double()
    native = GPT(GPTConfig(7, 6, 2, 2, 8)).double()
    native.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(idx), native(idx), rtol=1e-5, atol=1e-5)
    assert model.ops is P.PORTABLE and native.ops is P.NATIVE


_RUN = """
import hashlib, tempfile, dataclasses, torch
from passk_companion.model import config, pretrain, rl
torch.set_num_threads(1)
prof = config.for_profile("smoke")
task = config.build_task(prof.task)
base, _ = pretrain.pretrain(task, prof.model, prof.pretrain, prof.regime, "cpu", progress=False)
adamw = dataclasses.replace(prof.rl, objective="pass1_reinforce", steps=6, eval_every=3)
sgd = dataclasses.replace(adamw, optimizer="sgd", grad_clip=0.0, lr=0.05)
h, tables = hashlib.sha256(), []
for cfg in (adamw, sgd):
    with tempfile.TemporaryDirectory() as out:
        tables.append(rl.train_rl(base, prof, cfg, out, progress=False))
        for p in rl.load_trained(out, prof).parameters():
            h.update(p.detach().numpy().tobytes())
metrics = tables[0].to_csv(index=False) + tables[1].iloc[1:].to_csv(index=False, header=False)
print(torch.backends.cpu.get_cpu_capability(), h.hexdigest(), metrics)
"""


def _run_under(env_overrides: dict[str, str]) -> tuple[str, str, pd.DataFrame]:
    env = {k: v for k, v in os.environ.items() if k not in DISPATCH_VARS}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env_overrides)
    proc = subprocess.run(
        [sys.executable, "-c", _RUN], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    capability, digest, metrics = proc.stdout.split(" ", 2)
    return capability, digest, pd.read_csv(io.StringIO(metrics))


@pytest.mark.parametrize(
    "dispatch",
    [
        {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"},
        {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"},
        {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
    ],
    ids=lambda d: "+".join(f"{k}={v}" for k, v in d.items()),
)
def test_pretraining_and_rl_give_the_same_bits_under_other_dispatch(dispatch):
    """Smoke pretraining, then 6 RL steps with AdamW and 6 with SGD: the weights (hashed) are the
    same bits. So are the
    metrics under AVX2; the scalar path (default) evaluates log1p / expm1 in the exact
    evaluation to the last bit differently, which no later step reads (within 1e-13)."""
    _, native_digest, native = _run_under({})
    capability, digest, other = _run_under(dispatch)
    assert capability.lower() == dispatch["ATEN_CPU_CAPABILITY"]  # the emulation took effect
    assert digest == native_digest
    if capability == "AVX2":
        pd.testing.assert_frame_equal(other, native, check_exact=True)
    else:
        pd.testing.assert_frame_equal(other, native, check_exact=False, rtol=1e-13, atol=1e-15)


def test_the_library_never_sets_the_dispatch_variables():
    """They stand in for a user's machine in these tests: the library must leave them alone."""
    pattern = re.compile(r"(environ|putenv|setdefault)\W.{0,60}(" + "|".join(DISPATCH_VARS) + ")")
    offenders = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in (ROOT / "src").rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders
