"""A tiny GPT (nanoGPT-style: pre-LayerNorm blocks, causal self-attention, ReLU MLP, tied
embeddings) with a KV cache: preallocated for batched sampling, or autograd-safe for scoring rows
that share a prefix."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from passk_companion.model.portable import NATIVE, PORTABLE, Kernels

__all__ = ["GPTConfig", "GPT", "KVCache", "causal_attention", "pick_device"]


def pick_device(device: str | None = None, numerics: str = "float32") -> torch.device:
    """`device` if given ("cpu", "cuda", "cuda:1", ...). Otherwise the CPU for "portable" numerics
    (their bits are defined on the CPU: a GPU's kernels and random generators give other
    numbers, so the stored outputs would not reproduce on a machine that has one), and for
    "float32" CUDA when available, else the CPU."""
    if device:
        return torch.device(device)
    if numerics == "portable":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int  # longest sequence (prompt + answer)
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    portable: bool = False  # float64 kernels with the same bits on every CPU (models.portable)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.n_embd % self.n_head:
            raise ValueError("n_embd must be divisible by n_head")


class KVCache:
    """Per-layer keys and values of the positions seen so far (`length` of them), stored together
    as (B, T, 2, H, D): [:, :, 0] keys, [:, :, 1] values.

    One interface, two storages: preallocated buffers of block_size positions written in place
    (the default, for decoding under torch.no_grad), or, with `grow=True`, tensors that grow by
    concatenation and are never written in place, so that gradients flow through the cache (a
    prompt encoded once and shared by many rows gets the sum of their gradients)."""

    def __init__(
        self,
        cfg: GPTConfig,
        batch: int,
        device: torch.device,
        dtype: torch.dtype,
        grow: bool = False,
    ):
        self.grow = grow
        self.length = 0
        shape = (batch, 0 if grow else cfg.block_size, 2, cfg.n_head, cfg.n_embd // cfg.n_head)
        self.kv = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]

    @property
    def rows(self) -> int:
        """Rows of the batch the cache holds."""
        return self.kv[0].shape[0]

    def append(self, layer: int, kv: Tensor) -> Tensor:
        """Store the keys and values (B, t, 2, H, D) of positions length .. length + t - 1 of
        `layer` (the caller advances `length` once all layers are done); return those of positions
        0 .. length + t - 1."""
        if self.grow:
            if self.length:
                kv = torch.cat([self.kv[layer], kv], 1)
            self.kv[layer] = kv
            return kv
        end = self.length + kv.shape[1]
        self.kv[layer][:, self.length : end] = kv
        return self.kv[layer][:, :end]

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` of the batch, in that order: beam search reorders its beams, and
        repeating a row lets several continuations share one encoded prefix."""
        self.kv = [kv.index_select(0, index) for kv in self.kv]


def causal_attention(q: Tensor, kv: Tensor, start: int, ops: Kernels = NATIVE) -> Tensor:
    """softmax(q k^T / sqrt(D) + M) v (Vaswani et al. 2017, eq. 1) per head, with the causal mask
    M[i, j] = 0 if j <= start + i, else -inf: the queries (B, t, H, D) sit at absolute positions
    start .. start + t - 1, the keys kv[:, :, 0] and values kv[:, :, 1] (B, start + t, 2, H, D) at
    0 .. start + t - 1. Returns (B, t, H, D).

    Plain tensor operations rather than the fused kernel, which for the short sequences and small
    heads of these models costs more (its CPU backward pass dominated the training step;
    benchmarks/rollout.py): one new token (t = 1) sees every key, a weighted sum with no mask;
    otherwise two batched matrix products. `ops`: the kernels (passk_companion.model.portable)."""
    b, t, h, d = q.shape
    s = kv.shape[1]
    q = q * d**-0.5
    k, v = kv[:, :, 0], kv[:, :, 1]
    if t == 1:
        weights = ops.softmax((q * k).sum(-1, keepdim=True), 1)  # (B, s, H, 1)
        return (weights * v).sum(1, keepdim=True)
    qh, kh, vh = (z.transpose(1, 2).reshape(b * h, -1, d) for z in (q, k, v))
    mask = torch.full((t, s), float("-inf"), device=q.device, dtype=q.dtype).triu(start + 1)
    y = ops.matmul(ops.softmax(ops.matmul(qh, kh.transpose(1, 2)) + mask, -1), vh)
    return y.view(b, h, t, d).transpose(1, 2)


@torch.no_grad()
def _normal_(param: Tensor, std: float) -> None:
    """param ~ N(0, std^2), drawn in float64 from the global generator and then cast.

    float32 `normal_` draws other numbers on CPUs without AVX2 (ATen's vectorised Box-Muller),
    so the same seed would give another initial model there; float64 `randn` is the same
    everywhere."""
    param.copy_(torch.randn(param.shape, dtype=torch.float64) * std)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.ReLU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        )

    def forward(self, x: Tensor, layer: int, cache: KVCache | None, ops: Kernels) -> Tensor:
        b, t, c = x.shape
        fc, out = self.mlp[0], self.mlp[2]
        h = ops.layer_norm(x, self.ln1.weight, self.ln1.bias, self.ln1.eps)
        qkv = ops.linear(h, self.qkv.weight, self.qkv.bias).view(b, t, 3, self.n_head, -1)
        q, kv = qkv[:, :, 0], qkv[:, :, 1:]
        start = 0
        if cache is not None:
            start = cache.length
            kv = cache.append(layer, kv)
        y = causal_attention(q, kv, start, ops).reshape(b, t, c)
        x = x + ops.linear(y, self.proj.weight, self.proj.bias)
        h = ops.layer_norm(x, self.ln2.weight, self.ln2.bias, self.ln2.eps)
        return x + ops.linear(torch.relu(ops.linear(h, fc.weight, fc.bias)), out.weight, out.bias)


class GPT(nn.Module):
    """logits = GPT(idx): (B, T) token ids -> (B, T, vocab) next-token logits."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # weight tying
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                _normal_(p, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            _normal_(module.weight, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            _normal_(module.weight, 0.02)

    @property
    def ops(self) -> Kernels:
        """The kernels this model computes with: PORTABLE (cfg.portable) or NATIVE."""
        return PORTABLE if self.cfg.portable else NATIVE

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, grow: bool = False) -> KVCache:
        """An empty cache for `batch` rows (grow=True: autograd-safe, see KVCache)."""
        p = next(self.parameters())
        return KVCache(self.cfg, batch, p.device, p.dtype, grow)

    def forward(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        """Full forward (cache=None), or the next tokens given a cache that holds the prefix."""
        b, t = idx.shape
        start = 0 if cache is None else cache.length
        if start + t > self.cfg.block_size:
            raise ValueError(
                f"sequence of {start + t} tokens exceeds block_size {self.cfg.block_size}"
            )
        x = self.tok(idx) + self.pos.weight[start : start + t]
        ops = self.ops
        for layer, block in enumerate(self.blocks):
            x = block(x, layer, cache, ops)
        if cache is not None:
            cache.length += t
        h = ops.layer_norm(x, self.ln_f.weight, self.ln_f.bias, self.ln_f.eps)
        return ops.linear(h, self.head.weight, None)
