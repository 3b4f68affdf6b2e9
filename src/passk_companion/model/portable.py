"""Kernels whose results depend neither on the CPU they run on nor on the batch a row is in.

A CPU picks its kernels at run time: ATen dispatches AVX-512, AVX2 or scalar code
(`ATEN_CPU_CAPABILITY`), MKL picks a GEMM code path (`MKL_CBWR`). Reductions then add in another
order and round differently in the last bit, and so does a reduction over a longer or a padded
axis. Training amplifies such a bit until a sampled token flips and two runs part (measured on
notebook 04's RLOO arms in float64: a 1e-12 difference after one step reached 1e-4 within 27 steps
of plain SGD). So the tiny model on the CPU computes in float64 with these kernels, which give the
same bits under every dispatch (tests/model/test_portable.py runs them under
ATEN_CPU_CAPABILITY=avx2 / default and MKL_CBWR=COMPATIBLE) and the same bits for a run trained
alone or inside an ensemble of any size (:mod:`passk_companion.model.runs`):

* ``matmul``: the product of the operands rounded to grids, accumulated exactly. Each operand is
  rounded per contraction vector (the left one per row, the right one per column) to ``BITS`` = 20
  significant bits of that vector's largest entry (:func:`to_grid`). Every product of two entries
  is then an integer multiple of the two vectors' units below 2^40, and every partial sum of up to
  ``BLOCK`` = 4096 of them an integer multiple below 2^52: exact in float64, so the BLAS may add in
  any order, with or without FMA, and gives the same bits (the error-free splitting of Ozaki et
  al. 2012, "Error-free transformations of matrix multiplication", Numer. Algorithms 59, with one
  slice). Longer contractions are cut into blocks of BLOCK whose products are added in a fixed
  order. Rounding per vector makes a row's result independent of the other rows of its batch.
  The backward pass is the same product of the incoming gradient with the unrounded operands.
* ``linear``: x W_r^T + b_r for the rows of every run r, as one matmul over runs. Its weight
  gradient sum_i g_i x_i^T is a matmul over the run's rows, and its bias gradient the exact sum of
  the gradient rounded per column over those rows; a run that owns no row of a batch gets 0.
* ``layer_norm``: per row from means over the last axis; the gradients of the per-run scale and
  shift are exact sums over the run's rows of the rounded gradient (times the rounded normalised
  input), blocks of BLOCK rows added in order.
* ``softmax`` / ``log_softmax`` / ``cross_entropy``: max, exp, log and sums over the last axis of
  each row, whose results ATen varies neither with the vector width nor with the number of rows.
* ``grad_norms``: each run's gradient norm from a pairwise sum in a fixed order (:func:`tree_sum`).

Everything else the model does is elementwise IEEE arithmetic (correctly rounded everywhere) or
an exact gather (whose backward adds rows in order). `NATIVE` holds torch's own kernels for the
same calls (float32 on a GPU: fast, with none of these guarantees).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from passk_companion.model.runs import Runs

__all__ = [
    "Kernels",
    "NATIVE",
    "PORTABLE",
    "matmul",
    "to_grid",
    "tree_sum",
    "BITS",
    "BLOCK",
]

BITS = 20  # significant bits kept of each matmul operand, relative to its vector's largest entry
BLOCK = 4096  # longest contraction added exactly: 2 BITS + log2(BLOCK) = 52 <= 53
_EXPONENT = 0x7FF0000000000000  # the exponent bits of a float64
_SHIFT = 1.5 * 2.0 ** (53 - BITS)  # c = 2^floor(log2 top) * _SHIFT has ulp 2^(e - BITS)


def _shift(top: Tensor) -> Tensor:
    """c = 1.5 * 2^(e - BITS + 52) for 2^e the smallest power of two above `top` (>= 0):
    2^floor(log2 top) from the exponent bits, times 1.5 * 2^(53 - BITS); 0 for top = 0."""
    return (top.contiguous().view(torch.int64) & _EXPONENT).view(torch.float64) * _SHIFT


def _largest(x: Tensor, dim: int) -> Tensor:
    """max |x| along `dim` (kept), from the largest and the smallest entry: no |x| tensor."""
    return torch.maximum(x.amax(dim, keepdim=True), x.amin(dim, keepdim=True).neg_())


def to_grid(x: Tensor, dim: int = -1) -> Tensor:
    """x rounded, per vector along `dim`, to the nearest multiple of 2^(e - BITS) (ties to even),
    where 2^e is the smallest power of two above the vector's largest |entry|: (x + c) - c with
    c = 1.5 * 2^(e - BITS + 52), two correctly rounded additions. A zero vector stays zero; a
    vector with a non-finite entry becomes non-finite (a diverged run)."""
    if x.shape[dim] == 0 or x.numel() == 0:
        return x
    c = _shift(_largest(x, dim))
    return (x + c).sub_(c)


_ROUNDED: dict[tuple[int, bool], tuple[int, Tensor, Tensor]] = {}  # -> (version, weight, rounded)


def _rounded_weight(w: Tensor) -> Tensor:
    """:func:`_grid_per_run` of a parameter, computed again only after it changed (a sampler
    calls the same weights once per token)."""
    key = (id(w), torch.is_inference_mode_enabled())  # inference tensors stay in inference
    hit = _ROUNDED.get(key)
    if hit is not None and hit[1] is w and hit[0] == w._version:
        return hit[2]
    if len(_ROUNDED) > 256:
        _ROUNDED.clear()
    rounded = _grid_per_run(w.detach())
    _ROUNDED[key] = (w._version, w, rounded)
    return rounded


def _grid_per_run(w: Tensor) -> Tensor:
    """w (R, ...) rounded on one grid per run (its largest |entry|)."""
    c = _shift(_largest(w.reshape(len(w), -1), -1)).view(len(w), *([1] * (w.dim() - 1)))
    return (w + c).sub_(c)


def _blocked(a: Tensor, b: Tensor) -> Tensor:
    """a @ b of grid operands: exact within each block of BLOCK contraction terms, the blocks'
    products added in order."""
    k = a.shape[-1]
    out = torch.matmul(a[..., :BLOCK], b[..., :BLOCK, :])
    for start in range(BLOCK, k, BLOCK):
        out = out + torch.matmul(a[..., start : start + BLOCK], b[..., start : start + BLOCK, :])
    return out


def _exact(a: Tensor, b: Tensor) -> Tensor:
    """a @ b with a rounded per row and b per column (module docstring)."""
    return _blocked(to_grid(a, -1), to_grid(b, -2))


class _PortableMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(a, b)
        return _exact(a, b)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        a, b = ctx.saved_tensors
        grad_a = _exact(grad, b.transpose(-1, -2)) if ctx.needs_input_grad[0] else None
        grad_b = _exact(a.transpose(-1, -2), grad) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for float64 operands of shapes (..., m, k) and (..., k, n) with the same leading
    dimensions, exactly accumulated on per-vector grids (module docstring)."""
    if a.dtype != torch.float64 or b.dtype != torch.float64:
        raise TypeError(f"portable matmul needs float64 operands, got {a.dtype} and {b.dtype}")
    if a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"batch shapes differ: {tuple(a.shape)} @ {tuple(b.shape)}")
    return _PortableMatmul.apply(a, b)


def tree_sum(x: Tensor) -> Tensor:
    """The sum over the last axis by pairs in a fixed order (x[i] + x[i + h], halving h), with
    zeros up to a power of two: the same bits on every CPU and for any number of trailing zeros
    or leading rows."""
    n = x.shape[-1]
    if n == 0:
        return x.new_zeros(x.shape[:-1])
    width = 1 << (n - 1).bit_length()
    if width != n:
        x = F.pad(x, (0, width - n))
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def _grid_of_runs(x: Tensor) -> Tensor:
    """A padded x (R, M, C) rounded on one grid per run (the run's largest |entry|: the coarser
    grid that a sum over the run's rows needs). Padding zeros change no grid."""
    if x.numel() == 0:
        return x
    c = _shift(_largest(x.reshape(len(x), -1), -1)).view(len(x), 1, 1)
    return (x + c).sub_(c)


def _exact_sums(x: Tensor) -> Tensor:
    """Sums over axis 1 of a padded (R, M, C) tensor whose entries share one grid per run, each a
    product of at most two 20-bit integers: exact within blocks of BLOCK rows (in any order),
    the blocks added in order. Returns (R, C)."""
    out = x[:, :BLOCK].sum(1)
    for start in range(BLOCK, x.shape[1], BLOCK):
        out = out + x[:, start : start + BLOCK].sum(1)
    return out


def _per_row(values: Tensor, x: Tensor) -> Tensor:
    """values (N, C), one per row of x (N, ..., C), viewed to broadcast over x."""
    return values.view(len(x), *([1] * (x.dim() - 2)), values.shape[-1])


class _Linear(torch.autograd.Function):
    """y = x W_r^T (+ b_r) for the rows of each run r, as matmuls over the padded runs (module
    docstring): forward with x rounded per row (a row's output does not depend on its batch) and
    W per run, backward with one grid per run for the incoming gradient and for x (the sums over
    the run's rows that the parameter gradients are)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, runs: Runs) -> Tensor:  # noqa: D102
        padded = runs.pad(x)  # (R, M, C), zeros where a run has fewer rows
        wq = _rounded_weight(weight)
        y = runs.unpad(_blocked(to_grid(padded, -1), wq.transpose(-1, -2)), x.shape)
        if bias is not None:
            y = y + _per_row(runs.of_rows(bias), x)
        ctx.runs, ctx.shape, ctx.has_bias = runs, x.shape, bias is not None
        ctx.save_for_backward(padded, wq)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        padded, wq = ctx.saved_tensors
        runs = ctx.runs
        g = _grid_of_runs(runs.pad(grad))  # (R, M, O)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = runs.unpad(_blocked(g, wq), ctx.shape)
        if ctx.needs_input_grad[1]:
            grad_w = _blocked(g.transpose(-1, -2), _grid_of_runs(padded))
        if ctx.has_bias:
            grad_b = _exact_sums(g)
        return grad_x, grad_w, grad_b, None


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None, runs: Runs) -> Tensor:
    """x (N, ..., C) W_r^T + b_r per row of run r; weight (R, O, C), bias (R, O) or None."""
    if x.dtype != torch.float64 or weight.dtype != torch.float64:
        raise TypeError(f"portable linear needs float64, got {x.dtype} and {weight.dtype}")
    return _Linear.apply(x, weight, bias, runs)


class _LayerNorm(torch.autograd.Function):
    """y = (x - mean) * rstd * w_r + b_r over the last dimension, rstd = 1 / sqrt(var + eps)
    (biased var), for the rows of each run r. Backward, with xhat = (x - mean) rstd and
    gh = g * w_r: dx = rstd (gh - mean(gh) - xhat mean(gh xhat)); dw_r and db_r are the exact sums
    over run r's rows of g xhat and g, each rounded on one grid per run (module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float, runs: Runs) -> Tensor:  # noqa: D102
        xhat = x - x.mean(-1, keepdim=True)
        rstd = ((xhat * xhat).mean(-1, keepdim=True) + eps).sqrt().reciprocal_()
        xhat.mul_(rstd)
        w, b = _per_row(runs.of_rows(weight), x), _per_row(runs.of_rows(bias), x)
        ctx.runs = runs
        ctx.save_for_backward(xhat, rstd, w)
        return (xhat * w).add_(b)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        xhat, rstd, w = ctx.saved_tensors
        runs = ctx.runs
        g = _grid_of_runs(runs.pad(grad))
        d_weight = _exact_sums(g * _grid_of_runs(runs.pad(xhat)))
        d_bias = _exact_sums(g)
        gh = grad * w
        inner = (gh * xhat).mean(-1, keepdim=True)
        d_x = (gh - gh.mean(-1, keepdim=True)).sub_(xhat * inner).mul_(rstd)
        return d_x, d_weight, d_bias, None, None


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, runs: Runs) -> Tensor:
    return _LayerNorm.apply(x, weight, bias, eps, runs)


def _softmax(x: Tensor, dim: int) -> Tensor:
    z = (x - x.amax(dim, keepdim=True)).exp()
    return z / z.sum(dim, keepdim=True)


def _log_softmax(x: Tensor, dim: int) -> Tensor:
    z = x - x.amax(dim, keepdim=True)
    return z - z.exp().sum(dim, keepdim=True).log()


def _cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean negative log-likelihood of `target` (N,) under softmax(logits) (N, V)."""
    return -_log_softmax(logits, -1).gather(-1, target[:, None]).mean()


@torch.no_grad()
def _grad_norms(grads: Sequence[Tensor]) -> Tensor:
    """The gradient norm of each run: grads are (R, ...) tensors; returns (R,)."""
    flat = torch.cat([g.reshape(len(g), -1) for g in grads], 1)
    return tree_sum(flat * flat).sqrt()


def _native_linear(x: Tensor, weight: Tensor, bias: Tensor | None, runs: Runs) -> Tensor:
    y = runs.unpad(torch.matmul(runs.pad(x), weight.transpose(-1, -2)), x.shape)
    if bias is None:
        return y
    return y + _per_row(runs.of_rows(bias), x)


def _native_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, runs: Runs) -> Tensor:
    y = F.layer_norm(x, x.shape[-1:], None, None, eps)
    return y * _per_row(runs.of_rows(weight), x) + _per_row(runs.of_rows(bias), x)


@torch.no_grad()
def _native_grad_norms(grads: Sequence[Tensor]) -> Tensor:
    return torch.cat([g.reshape(len(g), -1) for g in grads], 1).norm(dim=1)


@dataclass(frozen=True)
class Kernels:
    """The operations the GPT, its samplers and its training loop call: `PORTABLE` (the same
    bits on every CPU and in every ensemble, float64 only) or `NATIVE` (torch's own kernels, any
    dtype). Parameters carry a leading run axis; `runs` says which run each row belongs to."""

    name: str
    matmul: Callable[[Tensor, Tensor], Tensor]
    linear: Callable[[Tensor, Tensor, Tensor | None, Runs], Tensor]
    softmax: Callable[[Tensor, int], Tensor]
    log_softmax: Callable[[Tensor, int], Tensor]
    layer_norm: Callable[[Tensor, Tensor, Tensor, float, Runs], Tensor]
    cross_entropy: Callable[[Tensor, Tensor], Tensor]
    grad_norms: Callable[[Sequence[Tensor]], Tensor]


NATIVE = Kernels(
    "native",
    torch.matmul,
    _native_linear,
    torch.softmax,
    torch.log_softmax,
    _native_layer_norm,
    F.cross_entropy,
    _native_grad_norms,
)
PORTABLE = Kernels(
    "portable",
    matmul,
    _linear,
    _softmax,
    _log_softmax,
    _layer_norm,
    _cross_entropy,
    _grad_norms,
)
