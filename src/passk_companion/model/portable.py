"""Kernels whose results do not depend on the CPU they run on.

A CPU picks its kernels at run time: ATen dispatches AVX-512, AVX2 or scalar code
(`ATEN_CPU_CAPABILITY`), MKL picks a GEMM code path (`MKL_CBWR`). Reductions then add in
another order and round differently in the last bit. Training amplifies such a bit: measured on
notebook 04's RLOO arms in float64, a 1e-12 difference after one step reached 1e-4 within 27
steps of plain SGD (and within 40-60 steps of AdamW), when a sampled token flipped and the runs
parted (README, "Reproducible where"). Neither float64 nor rounding what is printed survives that,
so the tiny model on the CPU computes in float64 with these kernels, which give the same bits
under every dispatch (tests/model/test_portable.py runs them under ATEN_CPU_CAPABILITY=avx2 /
default and MKL_CBWR=COMPATIBLE):

* ``matmul``: the product of the operands rounded to a grid, accumulated exactly. Each operand
  is rounded to ``BITS`` = 20 significant bits relative to its largest entry (an absolute error of
  at most 2^-21 of that entry, float32-like). Every product of two entries is then an integer
  multiple of the two grids' unit below 2^40, and every partial sum of up to ``BLOCK`` = 4096 of
  them an integer multiple below 2^52: exact in float64, so the BLAS may add in any order, with
  or without FMA, and gives the same bits (the error-free splitting of Ozaki et al. 2012,
  "Error-free transformations of matrix multiplication", Numer. Algorithms 59, with one slice).
  Longer contractions are cut into blocks of BLOCK whose products are added in a fixed order.
  The backward pass multiplies the rounded gradient with the rounded operands of the forward
  pass (a straight-through rounding), so each operand is rounded once.
* ``softmax`` / ``log_softmax`` / ``layer_norm`` / ``cross_entropy``: written with max, exp,
  log, sqrt and sums, whose results ATen does not vary with the vector width (its fused softmax
  and layer-norm kernels do); the layer norm with its backward pass by hand (one autograd node).
* ``clip_grad_norm_``: the global norm from plain sums.
* ``AdamW`` and ``SGD``: torch's updates with one correctly rounded operation at a time (torch's
  fused ``addcdiv`` rounds differently with and without FMA, which the scalar path lacks).

Everything else the model does is elementwise IEEE arithmetic (correctly rounded everywhere) or
an exact gather. `NATIVE` holds torch's own kernels for the same calls (float32 on a GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Kernels",
    "NATIVE",
    "PORTABLE",
    "AdamW",
    "SGD",
    "matmul",
    "to_grid",
    "BITS",
    "BLOCK",
]

BITS = 20  # significant bits kept of each matmul operand, relative to its largest entry
BLOCK = 4096  # longest contraction added exactly: 2 BITS + log2(BLOCK) = 52 <= 53


def to_grid(x: Tensor) -> Tensor:
    """x rounded to the nearest multiple of 2^(e - BITS) (ties to even), where 2^e is the
    smallest power of two above max |x|: (x + c) - c with c = 1.5 * 2^(e - BITS + 52), two
    correctly rounded additions. Non-finite or all-zero tensors are returned as they are."""
    if x.numel() == 0:
        return x
    low, high = torch.aminmax(x)
    top = max(-float(low), float(high))
    if top == 0.0 or not math.isfinite(top):
        return x
    c = math.ldexp(1.5, math.frexp(top)[1] - BITS + 52)
    return (x + c).sub_(c)


def _blocked(a: Tensor, b: Tensor) -> Tensor:
    """a @ b of grid operands: exact within each block of BLOCK contraction terms, the blocks'
    products added in order."""
    k = a.shape[-1]
    out = torch.matmul(a[..., :BLOCK], b[..., :BLOCK, :])
    for start in range(BLOCK, k, BLOCK):
        out = out + torch.matmul(a[..., start : start + BLOCK], b[..., start : start + BLOCK, :])
    return out


class _PortableMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:  # noqa: D102
        a, b = to_grid(a), to_grid(b)
        ctx.save_for_backward(a, b)
        return _blocked(a, b)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        a, b = ctx.saved_tensors
        grad = to_grid(grad)
        grad_a = _blocked(grad, b.transpose(-1, -2)) if ctx.needs_input_grad[0] else None
        grad_b = _blocked(a.transpose(-1, -2), grad) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for float64 operands of shapes (..., m, k) and (..., k, n) with the same leading
    dimensions (or both 2-D), exactly accumulated on the rounded grid (module docstring)."""
    if a.dtype != torch.float64 or b.dtype != torch.float64:
        raise TypeError(f"portable matmul needs float64 operands, got {a.dtype} and {b.dtype}")
    if a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"batch shapes differ: {tuple(a.shape)} @ {tuple(b.shape)}")
    return _PortableMatmul.apply(a, b)


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x W^T + b over the last dimension of x."""
    y = matmul(x.reshape(-1, x.shape[-1]), weight.t()).view(*x.shape[:-1], weight.shape[0])
    return y if bias is None else y + bias


def _softmax(x: Tensor, dim: int) -> Tensor:
    z = (x - x.amax(dim, keepdim=True)).exp()
    return z / z.sum(dim, keepdim=True)


def _log_softmax(x: Tensor, dim: int) -> Tensor:
    z = x - x.amax(dim, keepdim=True)
    return z - z.exp().sum(dim, keepdim=True).log()


class _LayerNorm(torch.autograd.Function):
    """y = (x - mean) * rstd * weight + bias over the last dimension, rstd = 1 / sqrt(var + eps)
    (biased var). Backward, with xhat = (x - mean) rstd and gh = g * weight:
    dx = rstd (gh - mean(gh) - xhat mean(gh xhat)), dweight = sum g xhat, dbias = sum g."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:  # noqa: D102
        xhat = x - x.mean(-1, keepdim=True)
        rstd = ((xhat * xhat).mean(-1, keepdim=True) + eps).sqrt().reciprocal_()
        xhat.mul_(rstd)
        ctx.save_for_backward(xhat, rstd, weight)
        return (xhat * weight).add_(bias)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        xhat, rstd, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        d_weight = (rows * xhat.reshape(rows.shape)).sum(0)
        d_bias = rows.sum(0)
        gh = grad * weight
        inner = (gh * xhat).mean(-1, keepdim=True)
        d_x = (gh - gh.mean(-1, keepdim=True)).sub_(xhat * inner).mul_(rstd)
        return d_x, d_weight, d_bias, None


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    return _LayerNorm.apply(x, weight, bias, eps)


def _cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean negative log-likelihood of `target` (R,) under softmax(logits) (R, V)."""
    return -_log_softmax(logits, -1).gather(-1, target[:, None]).mean()


@torch.no_grad()
def _clip_grad_norm_(params, max_norm: float) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ with the norm from plain sums: scales the gradients by
    min(1, max_norm / (norm + 1e-6)); returns the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.stack([(g * g).sum() for g in grads]).sum().sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef)
    return total


class AdamW(torch.optim.Optimizer):
    """AdamW (Loshchilov & Hutter 2019), the update of torch.optim.AdamW:

        p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
        p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps),

    written as separate multiplications, additions, divisions and square roots, each correctly
    rounded in IEEE arithmetic, hence the same on every CPU (no fused multiply-add)."""

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        if not (lr > 0 and eps > 0 and weight_decay >= 0 and all(0 <= b < 1 for b in betas)):
            raise ValueError("AdamW needs lr > 0, eps > 0, weight_decay >= 0, betas in [0, 1)")
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        if closure is not None:
            raise ValueError("AdamW.step takes no closure")
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(
                        step=0, b1t=1.0, b2t=1.0,
                        exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p),
                    )  # fmt: skip
                state["step"] += 1
                state["b1t"] *= b1  # b1^t by repeated products: the same floats everywhere
                state["b2t"] *= b2
                g, m, v = p.grad, state["exp_avg"], state["exp_avg_sq"]
                if wd:
                    p.mul_(1.0 - lr * wd)
                m.mul_(b1).add_(g * (1.0 - b1))
                v.mul_(b2).add_((g * g) * (1.0 - b2))
                denom = v.sqrt() / math.sqrt(1.0 - state["b2t"]) + eps
                p.sub_((m / denom) * (lr / (1.0 - state["b1t"])))
        return None


class SGD(torch.optim.Optimizer):
    """Plain SGD, p <- p - lr g, as one multiplication and one subtraction (no fused
    multiply-add)."""

    def __init__(self, params, lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"SGD needs lr > 0, got {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        if closure is not None:
            raise ValueError("SGD.step takes no closure")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(p.grad * group["lr"])
        return None


def _native_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


@dataclass(frozen=True)
class Kernels:
    """The operations the GPT, its samplers and its training loop call: `PORTABLE` (the same
    bits on every CPU, float64 only) or `NATIVE` (torch's fused kernels, any dtype)."""

    name: str
    matmul: Callable[[Tensor, Tensor], Tensor]
    linear: Callable[[Tensor, Tensor, Tensor | None], Tensor]
    softmax: Callable[[Tensor, int], Tensor]
    log_softmax: Callable[[Tensor, int], Tensor]
    layer_norm: Callable[[Tensor, Tensor, Tensor, float], Tensor]
    cross_entropy: Callable[[Tensor, Tensor], Tensor]
    clip_grad_norm_: Callable[..., Tensor]
    adamw: Callable[..., torch.optim.Optimizer]
    sgd: Callable[..., torch.optim.Optimizer]


NATIVE = Kernels(
    "native",
    torch.matmul,
    F.linear,
    torch.softmax,
    torch.log_softmax,
    _native_layer_norm,
    F.cross_entropy,
    lambda params, max_norm: torch.nn.utils.clip_grad_norm_(params, max_norm),
    lambda params, lr, weight_decay: torch.optim.AdamW(
        params, lr=lr, weight_decay=weight_decay, foreach=True
    ),
    lambda params, lr: torch.optim.SGD(params, lr=lr),
)
PORTABLE = Kernels(
    "portable",
    matmul,
    _linear,
    _softmax,
    _log_softmax,
    _layer_norm,
    _cross_entropy,
    _clip_grad_norm_,
    lambda params, lr, weight_decay: AdamW(params, lr=lr, weight_decay=weight_decay),
    SGD,
)
