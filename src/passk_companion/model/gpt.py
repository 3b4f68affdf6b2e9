"""A tiny GPT (nanoGPT-style: pre-LayerNorm blocks, causal self-attention, ReLU MLP, tied
embeddings) with a KV cache for decoding and a forward over prefix trees for scoring, as an
ensemble: every parameter has a leading run axis of R runs,
and one forward computes the rows of all of them (R = 1 is one model).

The rows of a batch are grouped by run (:class:`passk_companion.model.runs.Runs`); a row uses its
own run's parameters only, and with the portable kernels its logits are the same bits whatever
else the batch holds (other rows, other runs, a cache or none): every product is rounded per row
and accumulated exactly (:mod:`passk_companion.model.portable`). Only the parameter gradients sum
over rows, per run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from passk_companion.model.portable import NATIVE, PORTABLE, Kernels
from passk_companion.model.runs import Runs
from passk_companion.validation import is_integer

__all__ = [
    "GPTConfig",
    "GPT",
    "KVCache",
    "Forest",
    "causal_attention",
    "tree_attention",
    "pick_device",
]


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
    portable: bool = False  # float64 kernels with the same bits on every CPU (model.portable)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.n_embd % self.n_head:
            raise ValueError("n_embd must be divisible by n_head")


class KVCache:
    """Per-layer keys and values of the positions seen so far (`length` of them), in buffers of
    block_size positions written in place (for decoding under torch.no_grad), stored together as
    (B, T, 2, H, D): [:, :, 0] keys, [:, :, 1] values; `run` (B,) is the run of each row."""

    def __init__(self, cfg: GPTConfig, run: Tensor, runs: int, dtype: torch.dtype):
        self.length = 0
        self.run, self.runs = run, runs
        self._layout: Runs | None = None
        shape = (len(run), cfg.block_size, 2, cfg.n_head, cfg.n_embd // cfg.n_head)
        self.kv = [torch.zeros(shape, device=run.device, dtype=dtype) for _ in range(cfg.n_layer)]

    @property
    def rows(self) -> int:
        """Rows of the batch the cache holds."""
        return len(self.run)

    @property
    def layout(self) -> Runs:
        """The runs of the cache's rows."""
        if self._layout is None:
            self._layout = Runs.of(self.run, self.runs)
        return self._layout

    def append(self, layer: int, kv: Tensor) -> Tensor:
        """Store the keys and values (B, t, 2, H, D) of positions length .. length + t - 1 of
        `layer` (the caller advances `length` once all layers are done); return those of positions
        0 .. length + t - 1."""
        end = self.length + kv.shape[1]
        self.kv[layer][:, self.length : end] = kv
        return self.kv[layer][:, :end]

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` of the batch, in that order (which keeps the rows grouped by run):
        beam search reorders its beams, and repeating a row lets several continuations share
        one encoded prefix."""
        self.kv = [kv.index_select(0, index) for kv in self.kv]
        self.run = self.run.index_select(0, index)
        self._layout = None


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


class Linear(nn.Module):
    """x W_r^T + b_r for the rows of run r: weight (R, out, in), bias (R, out) or none."""

    def __init__(self, runs: int, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(runs, n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(runs, n_out)) if bias else None

    def forward(self, x: Tensor, runs: Runs, ops: Kernels) -> Tensor:
        return ops.linear(x, self.weight, self.bias, runs)


class LayerNorm(nn.Module):
    """Layer normalisation with a scale and shift per run: weight and bias (R, C)."""

    def __init__(self, runs: int, n: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(runs, n))
        self.bias = nn.Parameter(torch.zeros(runs, n))

    def forward(self, x: Tensor, runs: Runs, ops: Kernels) -> Tensor:
        return ops.layer_norm(x, self.weight, self.bias, self.eps, runs)


class Embedding(nn.Module):
    """A table per run: weight (R, rows, C); row i of run r is weight[r, i]."""

    def __init__(self, runs: int, n: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(runs, n, dim))

    def forward(self, index: Tensor, runs: Runs) -> Tensor:
        """index (B, t) of rows whose runs are `runs`: (B, t, C). A gather, whose gradient adds
        the rows that read an entry in their order (the same bits in any ensemble)."""
        r, n, dim = self.weight.shape
        flat = (runs.run[:, None] * n + index).reshape(-1)
        return self.weight.reshape(r * n, dim).index_select(0, flat).view(*index.shape, dim)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, runs: int):
        super().__init__()
        c = cfg.n_embd
        self.n_head = cfg.n_head
        self.ln1 = LayerNorm(runs, c)
        self.qkv = Linear(runs, c, 3 * c)
        self.proj = Linear(runs, c, c)
        self.ln2 = LayerNorm(runs, c)
        self.fc = Linear(runs, c, 4 * c)
        self.out = Linear(runs, 4 * c, c)

    def forward(self, x: Tensor, runs: Runs, ops: Kernels, attend: Callable) -> Tensor:
        """x (B, t, C) -> (B, t, C); attend(q (B, t, H, D), kv (B, t, 2, H, D)) -> (B, t, H, D)
        is the attention over the keys each query may see (a causal sequence or a tree)."""
        b, t, c = x.shape
        h = self.ln1(x, runs, ops)
        qkv = self.qkv(h, runs, ops).view(b, t, 3, self.n_head, -1)
        y = attend(qkv[:, :, 0], qkv[:, :, 1:]).reshape(b, t, c)
        x = x + self.proj(y, runs, ops)
        h = self.ln2(x, runs, ops)
        return x + self.out(torch.relu(self.fc(h, runs, ops)), runs, ops)


@dataclass(frozen=True)
class Forest:
    """Sequences that share prefixes, as a forest of tokens: node i holds `token[i]` at position
    `depth[i]`; `ancestors[i, e]` is its ancestor at position e (itself at e = depth[i]; -1 past
    it); `levels[d]` lists the nodes at position d. Nodes are grouped by run (`runs`)."""

    token: Tensor
    depth: Tensor
    ancestors: Tensor
    levels: list[Tensor]
    runs: Runs


class _TreeAttention(torch.autograd.Function):
    """Attention of every node over its ancestors, level by level, with one gradient buffer for
    all levels (autograd through per-level gathers would zero a full-size buffer per level).

    Per node, with q' = q / sqrt(D), s_j = q' . k_j over its keys j, w = softmax(s) and
    y = sum_j w_j v_j; backward from gy: dv_j = w_j gy, dw_j = gy . v_j,
    ds_j = w_j (dw_j - sum_i w_i dw_i), dq = (sum_j ds_j k_j) / sqrt(D), dk_j = ds_j q'."""

    @staticmethod
    def forward(ctx, q: Tensor, kv: Tensor, forest: Forest, ops: Kernels) -> Tensor:  # noqa: D102
        out = torch.empty_like(q)
        saved = []
        scale = q.shape[-1] ** -0.5
        for d, nodes in enumerate(forest.levels):
            keys = forest.ancestors.index_select(0, nodes)[:, : d + 1].reshape(-1)
            seen = kv.index_select(0, keys).view(len(nodes), d + 1, *kv.shape[1:])
            qs = q.index_select(0, nodes)[:, None] * scale  # (n, 1, H, D)
            w = ops.softmax((qs * seen[:, :, 0]).sum(-1, keepdim=True), 1)  # (n, d + 1, H, 1)
            out.index_copy_(0, nodes, (w * seen[:, :, 1]).sum(1))
            saved.append((keys, qs, w))
        ctx.forest, ctx.scale, ctx.saved_levels = forest, scale, saved
        ctx.save_for_backward(kv)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (kv,) = ctx.saved_tensors
        forest, scale = ctx.forest, ctx.scale
        d_q = torch.zeros_like(grad)
        d_kv = torch.zeros_like(kv)
        for d, (nodes, (keys, qs, w)) in enumerate(
            zip(forest.levels, ctx.saved_levels, strict=True)
        ):
            seen = kv.index_select(0, keys).view(len(nodes), d + 1, *kv.shape[1:])
            gy = grad.index_select(0, nodes)[:, None]  # (n, 1, H, D)
            d_v = w * gy
            d_w = (gy * seen[:, :, 1]).sum(-1, keepdim=True)
            d_s = w * (d_w - (w * d_w).sum(1, keepdim=True))
            d_q.index_add_(0, nodes, (d_s * seen[:, :, 0]).sum(1) * scale)
            d_k = d_s * qs
            d_kv.index_add_(0, keys, torch.stack([d_k, d_v], 2).view(-1, *kv.shape[1:]))
        return d_q, d_kv, None, None


def tree_attention(q: Tensor, kv: Tensor, forest: Forest, ops: Kernels) -> Tensor:
    """Attention of every node of `forest` over its ancestors and itself: q (M, 1, H, D),
    kv (M, 1, 2, H, D) -> (M, 1, H, D). The nodes of each position d are computed together over
    their d + 1 keys with the operations of :func:`causal_attention` decoding one token after a
    cache of d positions (so a node's value is that of its sequence decoded)."""
    # contiguous rows: gathering them is a copy per row (the views are strided slices of qkv)
    return _TreeAttention.apply(q[:, 0].contiguous(), kv[:, 0].contiguous(), forest, ops)[:, None]


class GPT(nn.Module):
    """logits = GPT(idx): (B, T) token ids -> (B, T, vocab) next-token logits, for an ensemble
    of `runs` models (module docstring)."""

    def __init__(self, cfg: GPTConfig, runs: int = 1, init: bool = True):
        super().__init__()
        if not is_integer(runs) or runs < 1:
            raise ValueError(f"an ensemble needs runs >= 1, got {runs!r}")
        self.cfg = cfg
        self.tok = Embedding(runs, cfg.vocab_size, cfg.n_embd)  # tied: also the output head
        self.pos = Embedding(runs, cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, runs) for _ in range(cfg.n_layer))
        self.ln_f = LayerNorm(runs, cfg.n_embd)
        if init:
            self._init()

    def _init(self) -> None:
        """N(0, 0.02^2) embeddings and weights, 0.02 / sqrt(2 n_layer) for the projections into
        the residual stream (GPT-2), zero biases, unit layer-norm scales."""
        _normal_(self.tok.weight, 0.02)
        _normal_(self.pos.weight, 0.02)
        for block in self.blocks:
            for lin in (block.qkv, block.fc):
                _normal_(lin.weight, 0.02)
            for lin in (block.proj, block.out):
                _normal_(lin.weight, 0.02 / math.sqrt(2 * self.cfg.n_layer))

    @property
    def runs(self) -> int:
        """R, the number of runs the parameters hold."""
        return self.tok.weight.shape[0]

    @property
    def ops(self) -> Kernels:
        """The kernels this model computes with: PORTABLE (cfg.portable) or NATIVE."""
        return PORTABLE if self.cfg.portable else NATIVE

    def n_params(self) -> int:
        """Parameters of one run."""
        return sum(p[0].numel() for p in self.parameters())

    @classmethod
    def stack(cls, models: Sequence[GPT]) -> GPT:
        """One ensemble of the runs of `models` (same configuration, dtype and device), in order:
        copies of their parameters."""
        if not models:
            raise ValueError("stack needs at least one model")
        cfg = models[0].cfg
        if any(m.cfg != cfg for m in models):
            raise ValueError("only models of one configuration can be stacked")
        first = next(models[0].parameters())
        out = cls(cfg, sum(m.runs for m in models), init=False).to(first.device, first.dtype)
        with torch.no_grad():
            for name, p in out.named_parameters():
                p.copy_(torch.cat([m.get_parameter(name) for m in models]))
        return out

    def select(self, index: Sequence[int]) -> GPT:
        """A new ensemble of runs `index` of this one (copies), in that order."""
        first = next(self.parameters())
        out = GPT(self.cfg, len(index), init=False).to(first.device, first.dtype)
        rows = torch.as_tensor(list(index), dtype=torch.long, device=first.device)
        with torch.no_grad():
            for name, p in out.named_parameters():
                p.copy_(self.get_parameter(name).index_select(0, rows))
        return out

    def new_cache(self, batch: int, run: Tensor | None = None) -> KVCache:
        """An empty cache for `batch` rows (of runs `run`, grouped by run; all of run 0 when
        None)."""
        p = next(self.parameters())
        if run is None:
            run = torch.zeros(batch, dtype=torch.long, device=p.device)
        if len(run) != batch:
            raise ValueError(f"{len(run)} runs for a cache of {batch} rows")
        return KVCache(self.cfg, run, self.runs, p.dtype)

    def forward(self, idx: Tensor, cache: KVCache | None = None, run: Tensor | None = None):
        """Full forward (cache=None), or the next tokens given a cache that holds the prefix.
        `run` (B,): the run of each row (grouped by run); the cache's when there is one, and run 0
        for every row of a single model."""
        b, t = idx.shape
        start = 0 if cache is None else cache.length
        if start + t > self.cfg.block_size:
            raise ValueError(
                f"sequence of {start + t} tokens exceeds block_size {self.cfg.block_size}"
            )
        if cache is not None:
            runs = cache.layout
        elif run is not None:
            runs = Runs.of(run, self.runs)
        elif self.runs == 1:
            runs = Runs.one(b, idx.device)
        else:
            raise ValueError(f"an ensemble of {self.runs} runs needs the run of each row")
        if runs.rows != b:
            raise ValueError(f"{runs.rows} runs for a batch of {b} rows")
        positions = torch.arange(start, start + t, device=idx.device).expand(b, t)
        x = self.tok(idx, runs) + self.pos(positions, runs)
        ops = self.ops
        for layer, block in enumerate(self.blocks):

            def attend(q: Tensor, kv: Tensor, layer: int = layer) -> Tensor:
                if cache is not None:
                    kv = cache.append(layer, kv)
                return causal_attention(q, kv, start, ops)

            x = block(x, runs, ops, attend)
        if cache is not None:
            cache.length += t
        return ops.linear(self.ln_f(x, runs, ops), self.tok.weight, None, runs)

    def forward_tree(self, forest: Forest) -> Tensor:
        """The next-token logits (M, vocab) at every node of `forest`: one forward over all its
        nodes, each attending to its ancestors (:func:`tree_attention`)."""
        if len(forest.levels) > self.cfg.block_size:
            raise ValueError(
                f"sequences of {len(forest.levels)} tokens exceed block_size {self.cfg.block_size}"
            )
        runs, ops = forest.runs, self.ops
        x = self.tok(forest.token[:, None], runs) + self.pos(forest.depth[:, None], runs)
        for block in self.blocks:
            x = block(x, runs, ops, lambda q, kv: tree_attention(q, kv, forest, ops))
        return ops.linear(self.ln_f(x, runs, ops), self.tok.weight, None, runs)[:, 0]
