"""The portable kernels: exact where they claim to be, close to torch's own kernels, and the same
bits under other CPU dispatch (ATEN_CPU_CAPABILITY, MKL_CBWR set from outside, as a user's
machine would pick them)."""

import io
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
from passk_companion.model.optim import RunOptimizer
from passk_companion.model.runs import Runs

ROOT = Path(__file__).resolve().parents[2]
DISPATCH_VARS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def _grid_integers(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / unit as int64, unit) for a tensor on to_grid's grid along `dim`: one unit per vector,
    2^(e - BITS) for 2^e the smallest power of two above the vector's largest |entry|."""
    top = x.abs().amax(dim, keepdim=True)
    unit = torch.ldexp(torch.ones_like(top), torch.frexp(top).exponent - P.BITS)
    ints = x / unit
    assert torch.equal(ints, ints.round()), "not on the grid"
    assert bool((ints.abs() <= 2**P.BITS).all())
    return ints.to(torch.int64), unit


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 9),
    k=st.integers(1, 40),
    n=st.integers(1, 9),
    scale=st.floats(1e-6, 1e6),
    seed=st.integers(0, 10_000),
)
def test_matmul_is_the_exact_product_of_operands_rounded_per_vector(m, k, n, scale, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g, dtype=torch.float64) * scale
    a = a * torch.rand(m, 1, generator=g, dtype=torch.float64).exp()  # rows of other magnitudes
    b = torch.randn(k, n, generator=g, dtype=torch.float64) / scale
    (ia, ua), (ib, ub) = _grid_integers(P.to_grid(a, -1), -1), _grid_integers(P.to_grid(b, -2), -2)
    exact = (ia @ ib).to(torch.float64) * (ua * ub)  # integer arithmetic: exact
    assert torch.equal(P.matmul(a, b), exact)


def test_a_rows_product_does_not_depend_on_the_other_rows():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(6, 50, generator=g, dtype=torch.float64)
    b = torch.randn(50, 7, generator=g, dtype=torch.float64)
    huge = torch.cat([a, 1e6 * torch.randn(3, 50, generator=g, dtype=torch.float64)])
    assert torch.equal(P.matmul(huge, b)[:6], P.matmul(a, b))
    assert torch.equal(P.matmul(a[2:4], b), P.matmul(a, b)[2:4])


def test_to_grid_keeps_20_bits_of_each_vectors_largest_entry_and_is_idempotent():
    x = torch.randn(200, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[0] *= 1e-9
    r = P.to_grid(x, -1)
    top = x.abs().amax(-1, keepdim=True)
    assert bool(((r - x).abs() <= torch.ldexp(top, torch.tensor(-P.BITS))).all())
    assert torch.equal(P.to_grid(r, -1), r)
    assert torch.equal(P.to_grid(torch.zeros(3, 3, dtype=torch.float64)), torch.zeros(3, 3))
    assert float((r[0] - x[0]).abs().max()) < 1e-14  # a small row keeps its own precision


def test_long_contractions_are_added_in_blocks_exactly():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 2 * P.BLOCK + 17, generator=g, dtype=torch.float64)
    b = torch.randn(2 * P.BLOCK + 17, 2, generator=g, dtype=torch.float64)
    ra, rb = P.to_grid(a, -1), P.to_grid(b, -2)
    expected = ra[:, : P.BLOCK] @ rb[: P.BLOCK]
    expected = expected + ra[:, P.BLOCK : 2 * P.BLOCK] @ rb[P.BLOCK : 2 * P.BLOCK]
    expected = expected + ra[:, 2 * P.BLOCK :] @ rb[2 * P.BLOCK :]
    assert torch.equal(P.matmul(a, b), expected)


def test_matmul_gradients_are_the_exact_products_with_the_incoming_gradient():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    (P.matmul(a, b) * up).sum().backward()
    bt, at = b.detach().transpose(-1, -2), a.detach().transpose(-1, -2)
    assert torch.equal(a.grad, P.to_grid(up, -1) @ P.to_grid(bt, -2))
    assert torch.equal(b.grad, P.to_grid(at, -1) @ P.to_grid(up, -2))
    torch.testing.assert_close(a.grad, up @ bt, rtol=1e-5, atol=1e-5)


def test_matmul_refuses_float32_and_mismatched_batches():
    with pytest.raises(TypeError, match="float64"):
        P.matmul(torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="batch shapes"):
        P.matmul(torch.ones(2, 2, 2, dtype=torch.float64), torch.ones(3, 2, 2, dtype=torch.float64))


@pytest.mark.parametrize("counts", [[5], [3, 0, 4], [2, 6, 1]])
def test_the_linear_of_each_run_is_its_own_and_its_gradients_sum_over_its_rows(counts):
    """Rows of runs with other row counts (one with none): each run's output and gradients are
    those of the run computed alone, bit for bit, and close to the unrounded ones."""
    g = torch.Generator().manual_seed(sum(counts))
    runs = Runs.repeat(counts)
    x = torch.randn(sum(counts), 2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(len(counts), 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(len(counts), 4, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(sum(counts), 2, 4, generator=g, dtype=torch.float64)
    (P.PORTABLE.linear(x, w, b, runs) * up).sum().backward()
    start = 0
    for r, c in enumerate(counts):
        xr = x.detach()[start : start + c].clone().requires_grad_()
        wr = w.detach()[r : r + 1].clone().requires_grad_()
        br = b.detach()[r : r + 1].clone().requires_grad_()
        y = P.PORTABLE.linear(xr, wr, br, Runs.one(c))
        (y * up[start : start + c]).sum().backward()
        assert torch.equal(y, P.PORTABLE.linear(x.detach(), w.detach(), b.detach(), runs)[
            start : start + c])  # fmt: skip
        assert torch.equal(x.grad[start : start + c], xr.grad)
        assert torch.equal(w.grad[r], wr.grad[0]) and torch.equal(b.grad[r], br.grad[0])
        if not c:
            assert not w.grad[r].any() and not b.grad[r].any()  # a run without rows: 0
            continue
        rows, xs = up[start : start + c], x.detach()[start : start + c]
        want = torch.einsum("nto,ntc->oc", rows, xs)
        # each of the 2c terms is off by at most 2^-BITS of the largest |g| |x| (both rounded)
        bound = 2 * c * float(rows.abs().max() * xs.abs().max()) * 2.0 ** (1 - P.BITS)
        assert float((w.grad[r] - want).abs().max()) <= bound
        start += c


def test_tree_sum_is_padding_invariant():
    x = torch.randn(3, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    padded = torch.cat([x, torch.zeros(3, 91, dtype=torch.float64)], 1)
    assert torch.equal(P.tree_sum(x), P.tree_sum(padded))
    assert torch.equal(P.tree_sum(x[1:2]), P.tree_sum(x)[1:2])
    torch.testing.assert_close(P.tree_sum(x), x.sum(-1), rtol=1e-14, atol=1e-14)


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
    ours = P.PORTABLE.layer_norm(xg, w[None], bias[None], 1e-5, Runs.one(len(xg)))
    grads = torch.autograd.grad((ours * up).sum(), (xg, w, bias))
    theirs = F.layer_norm(xg, (11,), w, bias, 1e-5)
    expected = torch.autograd.grad((theirs * up).sum(), (xg, w, bias))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], expected[0], rtol=1e-10, atol=1e-10)
    for got, want in zip(grads[1:], expected[1:], strict=True):  # sums of 20-bit roundings
        bound = float(up.abs().max()) * x.numel() / 11 * 2.0 ** (2 - P.BITS) * 4
        assert float((got - want).abs().max()) <= bound
    target = torch.randint(0, 11, (24,), generator=g)
    torch.testing.assert_close(
        P.PORTABLE.cross_entropy(x.view(24, 11), target), F.cross_entropy(x.view(24, 11), target)
    )


@pytest.mark.parametrize("kinds", [["adamw"], ["adamw", "sgd", "adamw"]])
def test_the_optimizer_of_each_run_follows_torch(kinds):
    """Each run of a stacked parameter follows torch's AdamW or SGD with its own learning rate;
    the gradient norms of the runs are torch's."""
    g = torch.Generator().manual_seed(4)
    runs = len(kinds)
    lrs = [1e-2 * (r + 1) for r in range(runs)]
    start = torch.randn(runs, 5, 3, generator=g, dtype=torch.float64)
    ours = start.clone().requires_grad_()
    theirs = [start[r].clone().requires_grad_() for r in range(runs)]
    opt = RunOptimizer([ours], kinds, lrs, weight_decay=0.01)
    ref = [
        torch.optim.AdamW([t], lr=lr, weight_decay=0.01) if k == "adamw"
        else torch.optim.SGD([t], lr=lr)
        for k, t, lr in zip(kinds, theirs, lrs, strict=True)
    ]  # fmt: skip
    for _ in range(20):
        grad = torch.randn(runs, 5, 3, generator=g, dtype=torch.float64) * 10
        ours.grad = grad.clone()
        norms = P.PORTABLE.grad_norms([ours.grad])
        for r in range(runs):
            theirs[r].grad = grad[r].clone()
            torch.testing.assert_close(norms[r], grad[r].norm(), rtol=1e-12, atol=1e-12)
        opt.step()
        for o in ref:
            o.step()
    for r in range(runs):
        torch.testing.assert_close(ours[r], theirs[r], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="lr > 0"):
        RunOptimizer([ours], kinds, [0.0] * runs)


def test_the_optimizer_state_of_a_run_moves_between_ensembles():
    g = torch.Generator().manual_seed(6)
    p = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    opt = RunOptimizer([p], ["adamw"] * 3, [1e-2] * 3)
    for _ in range(3):
        p.grad = torch.randn(3, 4, generator=g, dtype=torch.float64)
        opt.step()
    alone = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    single = RunOptimizer([alone], ["adamw"], [1e-2])
    single.load_run(0, opt.state_of(1))
    assert single.state_of(0)["step"] == 3
    assert torch.equal(single.state_of(0)["exp_avg"][0], opt.state_of(1)["exp_avg"][0])
    kept = opt.select([p[[2, 1]].detach().requires_grad_()], [2, 1])
    assert torch.equal(kept.state_of(1)["exp_avg_sq"][0], opt.state_of(1)["exp_avg_sq"][0])
    with pytest.raises(ValueError, match="optimizer state of 'adamw', the run uses 'sgd'"):
        RunOptimizer([alone], ["sgd"], [1e-2]).load_run(0, opt.state_of(0))
    bad = opt.state_of(0)
    bad["exp_avg"] = [torch.zeros(5)]
    with pytest.raises(ValueError, match="shape"):
        single.load_run(0, bad)


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
