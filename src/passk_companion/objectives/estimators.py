"""The unbiased estimator of pass@k from n samples with c correct (Chen et al. 2021), and the
check of k it shares with the closed forms of passk_companion.theory.passk (which re-exports
both). The objectives' pass@k weights are built on it; it needs numpy (and torch only to return
a tensor for tensor inputs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = Any  # float | np.ndarray | torch.Tensor

__all__ = ["check_k", "pass_at_k_unbiased"]


def check_k(k: ArrayLike, n: ArrayLike | None = None, *, name: str = "k") -> None:
    """Raise ValueError unless every k is an integer >= 1 (and <= n when n is given)."""
    k_arr = np.asarray(k.detach().cpu() if isinstance(k, torch.Tensor) else k)
    if k_arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.equal(np.mod(k_arr, 1), 0)):
        raise ValueError(f"{name} must be an integer, got {k!r}")
    if np.any(k_arr < 1):
        raise ValueError(f"{name} must be >= 1, got min {k_arr.min()}")
    if n is not None:
        n_arr = np.asarray(n.detach().cpu() if isinstance(n, torch.Tensor) else n)
        if np.any(k_arr > n_arr):
            raise ValueError(f"{name} must be <= n (the number of samples); got {name} > n")


# Working memory of the blocked product, in float64 elements (32 MB).
_BLOCK_ELEMENTS = 1 << 22


_INT64_MAX = np.iinfo(np.int64).max


def _as_int_array(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)
    if arr.dtype.kind == "O" and all(isinstance(v, int) for v in arr.ravel().tolist()):
        raise ValueError(f"{name} is too large: every value must be below 2**63")
    if arr.dtype.kind == "u" and np.any(arr > _INT64_MAX):
        raise ValueError(f"{name} is too large: every value must be below 2**63")
    if arr.dtype.kind == "f":
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integers")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative")
    return arr.astype(np.int64)


def pass_at_k_unbiased(n: ArrayLike, c: ArrayLike, k: ArrayLike) -> ArrayLike:
    """Unbiased estimator of pass@k from n samples with c correct (Chen et al. 2021, Codex):

        rho(n, c, k) = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i=0}^{k-1} (n - c - i) / (n - i).

    It is the fraction of the C(n, k) size-k subsets of the n samples that contain a correct one;
    since c ~ Binomial(n, p), E[rho] = 1 - (1 - p)^k. The product form never overflows (every
    factor lies in [0, 1]); once n - c < k a factor is exactly 0 and rho = 1.

    n, c and k broadcast together (e.g. n, c of shape (P, 1) and k of shape (K,) give (P, K)).
    The product is computed blockwise along i, so memory stays bounded for n up to 10^5 and more.
    Torch inputs give a float64 tensor on the device of the first tensor argument.

    Raises ValueError for k < 1, k > n, c > n, negative or non-integer inputs.
    """
    device = next((x.device for x in (n, c, k) if isinstance(x, torch.Tensor)), None)
    n_a, c_a, k_a = (_as_int_array(x, name) for x, name in ((n, "n"), (c, "c"), (k, "k")))
    check_k(k_a)
    if np.any(c_a > n_a):
        raise ValueError("c (number of correct samples) must be <= n")
    n_b, c_b = np.broadcast_arrays(n_a, c_a)
    full_shape = np.broadcast_shapes(n_b.shape, k_a.shape)
    k_full = np.broadcast_to(k_a, full_shape)
    if np.any(k_full > np.broadcast_to(n_b, full_shape)):
        raise ValueError("k must be <= n (the number of samples)")

    base_shape = n_b.shape
    n_f, c_f = n_b.astype(np.float64), c_b.astype(np.float64)
    k_max = int(k_full.max()) if k_full.size else 0
    block = max(1, min(k_max, _BLOCK_ELEMENTS // max(1, int(np.prod(base_shape)))))
    survive = np.empty(full_shape, dtype=np.float64)  # C(n-c,k)/C(n,k)
    running = np.ones(base_shape, dtype=np.float64)
    for start in range(0, k_max, block):
        i = np.arange(start, min(start + block, k_max), dtype=np.float64)
        denom = n_f[..., None] - i
        valid = denom > 0  # i < n; factors with i >= n are never gathered since k <= n
        num = np.clip(n_f[..., None] - c_f[..., None] - i, 0.0, None)
        factors = np.where(valid, num / np.where(valid, denom, 1.0), 1.0)
        table = running[..., None] * np.cumprod(factors, axis=-1)
        offset = k_full - 1 - start
        in_block = (offset >= 0) & (offset < i.size)
        if np.any(in_block):
            idx = np.clip(offset, 0, i.size - 1)[..., None]
            table_full = np.broadcast_to(table, (*full_shape, i.size))
            vals = np.take_along_axis(table_full, idx, axis=-1)[..., 0]
            survive[in_block] = vals[in_block]
        running = table[..., -1]
    est = 1.0 - survive
    if device is not None:
        return torch.as_tensor(est, dtype=torch.float64, device=device)
    return est if est.ndim else float(est)
