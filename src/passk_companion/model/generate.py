"""Batched samplers over the sequences of a GPT, both KV-cached.

`sample_iid`: n independent rollouts per prompt (ancestral sampling at temperature tau).
`sample_swor`: n DISTINCT rollouts per prompt, drawn without replacement by stochastic beam search
(Kool, van Hoof & Welling 2019, arXiv 1903.06059): every partial sequence carries a Gumbel-perturbed
log-probability G, children's perturbations are sampled conditionally on their maximum equalling the
parent's G (a truncated Gumbel), and the top n are kept at every step. The n finished sequences,
sorted by G, are an exact sample of n successive draws without replacement (Plackett-Luce order),
the law under which `passk_companion.objectives` "swor_ordered" is unbiased.

Both return answers (B, n, L) padded with `pad` after EOS and the sequence log-probabilities
(B, n) under softmax(logits / tau), detached; `sequence_logprob` recomputes them with gradients.

Work that rows share is done once (the RL step's cost, measured by benchmarks/rollout.py and
benchmarks/peer_trl.py): a prompt is encoded once for its n rollouts; `sample_iid` keeps one cache
row per distinct prefix drawn so far and drops finished rows; `sequence_logprob` scores identical
rows once, encodes each prompt once and stops each row at its last counted token. Each shortcut
is checked against the plain computation in tests/test_model.py.
"""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from passk_companion.model.gpt import GPT, KVCache

__all__ = [
    "sample_iid",
    "sample_swor",
    "sequence_logprob",
    "answer_mask",
    "distinct_rows",
    "forward_stages",
]


def _check(n: int, temperature: float, max_new: int) -> None:
    if n < 1 or max_new < 1:
        raise ValueError("n and max_new must be >= 1")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _draw(logp: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row from the probabilities p = exp(logp) (R, V), by inversion: with
    U ~ Uniform[0, 1), the first j with cdf_j > U * cdf_V (exact law up to float64 rounding; one
    uniform per row; a token of probability 0 is never drawn)."""
    cdf = logp.exp().cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(len(cdf), 1, dtype=cdf.dtype, device=cdf.device, generator=generator)
    tok = torch.searchsorted(cdf, u * total, right=True)[:, 0]
    return torch.minimum(tok, (cdf < total).sum(-1))  # U * cdf_V rounded up to cdf_V: last p > 0


def _first_logits(model: GPT, prompts: Tensor, n: int, cache: KVCache | None) -> Tensor:
    """Next-token logits after each prompt, for n rollouts per prompt (B * n, vocab). With a cache,
    each prompt is encoded once and the cache rows are repeated n times (rows b * n .. b * n + n - 1
    continue prompt b); without one (`cache` None), the whole batch is run."""
    if cache is None:
        return model(prompts.repeat_interleave(n, 0))[:, -1]
    logits = model(prompts, cache)[:, -1]
    cache.reorder(torch.arange(len(prompts), device=prompts.device).repeat_interleave(n))
    return logits.repeat_interleave(n, 0)


def _detached(sampler):
    """Run a sampler under torch.inference_mode (no autograd or version-counter bookkeeping, a
    large share of the per-token cost of small models) and return ordinary tensors, which the
    caller may modify in place or use in autograd later."""

    @functools.wraps(sampler)
    def run(*args, **kwargs):
        with torch.inference_mode():
            out = sampler(*args, **kwargs)
        return tuple(t.clone() for t in out)

    return run


@_detached
def sample_iid(
    model: GPT,
    prompts: Tensor,
    n: int,
    max_new: int,
    eos: int,
    pad: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> tuple[Tensor, Tensor]:
    """n i.i.d. rollouts per prompt (ancestral sampling from softmax(logits / tau)).

    With the cache, rollouts that share a prefix share its computation: the cache holds one row
    per distinct prefix drawn so far (a trie: each prompt once, then one row per distinct
    continuation of the rows still running), and rows that have emitted EOS leave it. Every row
    draws its own token at every step from its prefix's distribution, so the answers are exactly
    those of `use_cache=False`, which recomputes every row's whole prefix at every step (the
    reference for the cache test and the benchmark)."""
    _check(n, temperature, max_new)
    b = prompts.shape[0]
    r = b * n
    device = prompts.device
    out = torch.full((r, max_new), pad, dtype=torch.long, device=device)
    logp_sum = torch.zeros(r, dtype=torch.float64, device=device)
    done = torch.zeros(r, dtype=torch.bool, device=device)
    cache = model.new_cache(b) if use_cache else None
    if cache is None:
        seq = prompts.repeat_interleave(n, 0)
        logits, node = model(seq)[:, -1], torch.arange(r, device=device)
    else:
        logits = model(prompts, cache)[:, -1]  # per cache row; row j continues cache row node[j]
        node = torch.arange(b, device=device).repeat_interleave(n)
    for i in range(max_new):
        logp = model.ops.log_softmax(logits.double() / temperature, -1).index_select(0, node)
        tok = torch.where(done, pad, _draw(logp, generator))
        logp_sum += torch.where(done, 0.0, logp.gather(1, tok[:, None])[:, 0])
        out[:, i] = tok
        done = done | (tok == eos)
        if bool(done.all()) or i == max_new - 1:
            break
        if cache is None:
            seq = torch.cat([seq, tok[:, None]], 1)
            logits = model(seq)[:, -1]
        else:
            logits, node = _extend(model, cache, node, tok, done, pad)
    return out.view(b, n, max_new), logp_sum.view(b, n)


def _extend(
    model: GPT, cache: KVCache, node: Tensor, tok: Tensor, done: Tensor, pad: int
) -> tuple[Tensor, Tensor]:
    """Feed the tokens just drawn by the running rows. Rows whose (cache row, token) coincide get
    one new cache row. While no cache row has two continuations and at most a quarter have none,
    the rows stay in place (the idle ones are fed PAD, their output unused), which spares copying
    the cache; otherwise the cache is reordered to the distinct continuations. Returns the next
    logits per cache row and each row's cache row (0 for finished rows, whose draws are unused)."""
    vocab = model.cfg.vocab_size
    live = (~done).nonzero()[:, 0]
    child, inverse = torch.unique(node[live] * vocab + tok[live], return_inverse=True)
    parent, token = child // vocab, child % vocab
    node = torch.zeros_like(node)
    if 4 * len(parent) >= 3 * cache.rows and bool((parent[1:] > parent[:-1]).all()):
        feed = torch.full((cache.rows,), pad, dtype=token.dtype, device=token.device)
        feed[parent] = token
        node[live] = parent[inverse]
    else:
        cache.reorder(parent)
        feed = token
        node[live] = inverse
    return model(feed[:, None], cache)[:, -1], node


@_detached
def sample_swor(
    model: GPT,
    prompts: Tensor,
    n: int,
    max_new: int,
    eos: int,
    pad: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """n distinct rollouts per prompt by stochastic beam search, in Plackett-Luce order."""
    _check(n, temperature, max_new)
    vocab = model.cfg.vocab_size
    if n > vocab:
        raise ValueError(f"swor needs n <= vocab_size ({vocab}) for the first expansion")
    b = prompts.shape[0]
    device = prompts.device
    cache = model.new_cache(b)
    logits = _first_logits(model, prompts, n, cache)
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=device)
    phi = torch.zeros(b, n, dtype=torch.float64, device=device)
    g_beam = torch.full((b, n), float("-inf"), dtype=torch.float64, device=device)
    g_beam[:, 0] = 0.0  # one live beam (the prompt) per row; the root's G is a free constant
    done = torch.zeros(b, n, dtype=torch.bool, device=device)
    out = torch.full((b, n, max_new), pad, dtype=torch.long, device=device)
    for i in range(max_new):
        logp = model.ops.log_softmax(logits.double() / temperature, -1).view(b, n, vocab)
        only_pad = torch.full((vocab,), float("-inf"), dtype=torch.float64, device=device)
        only_pad[pad] = 0.0
        logp = torch.where(done[..., None], only_pad, logp)
        child_phi = phi[..., None] + logp
        u = torch.rand(child_phi.shape, generator=generator, dtype=torch.float64, device=device)
        g = child_phi - torch.log(-torch.log(u.clamp_min(1e-300)))
        z = g.amax(-1, keepdim=True)
        parent = g_beam[..., None]
        # truncated Gumbel G' = -log(exp(-T) - exp(-Z) + exp(-g)), stable form of Kool et al.
        v = parent - g + torch.log1p(-torch.exp(g - z))
        g_child = parent - F.relu(v) - torch.log1p(torch.exp(-v.abs()))
        g_child = torch.where(torch.isfinite(child_phi) & torch.isfinite(parent), g_child, neg_inf)
        top_g, top_idx = g_child.view(b, n * vocab).topk(n, dim=1)
        src, tok = top_idx // vocab, top_idx % vocab
        cache.reorder((torch.arange(b, device=device)[:, None] * n + src).view(-1))
        out = out.gather(1, src[..., None].expand(b, n, max_new)).clone()
        out[:, :, i] = tok
        phi = child_phi.view(b, n * vocab).gather(1, top_idx)
        g_beam = top_g
        done = done.gather(1, src) | (tok == eos)
        if bool(done.all()) or i == max_new - 1:
            break
        logits = model(tok.view(-1, 1), cache)[:, -1]
    return out, phi


def answer_mask(answers: Tensor, eos: int) -> Tensor:
    """True on the answer tokens that count: everything up to and including the first EOS."""
    is_eos = answers == eos
    after = (torch.cumsum(is_eos.to(torch.int64), -1) - is_eos.to(torch.int64)) > 0
    return ~after


def distinct_rows(x: Tensor, base: int) -> tuple[Tensor, Tensor]:
    """(the distinct rows of x in lexicographic order, `inverse` with x == distinct[inverse]).

    x (R, W) holds integers in [0, base). A radix sort: each row is packed into int64 words of
    floor(63 / bits) entries (bits = bits of base - 1), and the rows are ordered by one stable sort
    per word, last word first (torch.unique(dim=0) gives the same, at many times the cost)."""
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= base):
        raise ValueError(f"token ids must lie in [0, {base})")
    r, w = x.shape
    bits = max(1, (base - 1).bit_length())
    per = 63 // bits
    order = torch.arange(r, device=x.device)
    for start in reversed(range(0, w, per)):
        chunk = x[:, start : start + per]
        shifts = bits * torch.arange(chunk.shape[1] - 1, -1, -1, device=x.device)
        key = (chunk << shifts).sum(1)
        order = order[torch.sort(key[order], stable=True).indices]
    ordered = x[order]
    first = torch.ones(r, dtype=torch.bool, device=x.device)
    first[1:] = (ordered[1:] != ordered[:-1]).any(1)
    inverse = torch.empty_like(order)
    inverse[order] = first.cumsum(0) - 1
    return ordered[first], inverse


STAGE_COST = 256  # one more forward stage costs about this many (row, position) cells (CPU)


def forward_stages(need: Tensor) -> list[int]:
    """Cut points 0 = c_0 < c_1 < ... < c_m = max(need) of a staircase forward pass: stage
    [c_s, c_{s+1}) runs the rows with need > c_s at positions c_s .. c_{s+1} - 1 (so a row stops
    once it has its `need` positions). Chosen by dynamic programming to minimise the cells run,
    sum_s |{need > c_s}| (c_{s+1} - c_s), plus STAGE_COST per stage."""
    width = int(need.max()) if need.numel() else 0
    if width <= 0:
        return [0]
    positions = torch.arange(width, device=need.device)
    rows = (need[None, :] > positions[:, None]).sum(1).tolist()  # rows running at each position
    best, prev = [0.0] + [float("inf")] * width, [0] * (width + 1)
    for b in range(1, width + 1):
        for a in range(b):
            cost = best[a] + rows[a] * (b - a) + STAGE_COST
            if cost < best[b]:
                best[b], prev[b] = cost, a
    cuts = [width]
    while cuts[-1]:
        cuts.append(prev[cuts[-1]])
    return cuts[::-1]


def _token_scores(
    logits: Tensor, targets: Tensor, counted: Tensor, temperature: float, log_softmax
):
    """Per row: sum of log softmax(logits / tau)[target] and of the full-vocabulary entropy over
    the counted positions. logits (R, T, V), targets and counted (R, T); `log_softmax`: the
    model's kernel (passk_companion.model.portable)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> float32
    logits = logits / temperature if temperature != 1.0 else logits
    logp = log_softmax(logits, -1)
    tok_logp = logp.gather(-1, targets[..., None])[..., 0]
    ent = -(logp.exp() * logp).sum(-1)
    mask = counted.to(logp.dtype)
    return (tok_logp * mask).sum(-1), (ent * mask).sum(-1)


def sequence_logprob(
    model: GPT, prompts: Tensor, answers: Tensor, eos: int, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """(log pi(answer | prompt) per row, mean token entropy per row), with gradients.

    prompts (R, P), answers (R, L); tokens after the first EOS are excluded. The entropy is the
    full-vocabulary entropy of softmax(logits / tau) averaged over the counted answer tokens (the
    token-level entropy bonus of verl-style RLVR).

    No work is done twice or on tokens that do not count, and the result equals one forward of
    the concatenated sequences up to float rounding (tests/test_model.py):
      * identical rows (a group's repeated rollouts) are scored once (`distinct_rows`);
      * each distinct prompt is encoded once; its keys and values reach its rows through an
        autograd-safe KV cache (`GPT.new_cache(grow=True)`), which sums their gradients;
      * the answers run as a staircase (`forward_stages`): a row leaves the batch once its counted
        tokens are scored, so the long tail of a few long answers does not pad all the others."""
    if answers.shape[1] < 1:
        raise ValueError("answers must have at least one token")
    p = prompts.shape[1]
    width = int(answer_mask(answers, eos).sum(1).max())  # later tokens never count
    rows, inverse = distinct_rows(torch.cat([prompts, answers[:, :width]], 1), model.cfg.vocab_size)
    answers = rows[:, p:]
    counted = answer_mask(answers, eos)
    length = counted.sum(1)
    # the distinct rows are sorted, so the rows of one prompt are adjacent: encode each once
    first = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
    first[1:] = (rows[1:, :p] != rows[:-1, :p]).any(1)
    owner = first.cumsum(0) - 1
    cache = model.new_cache(int(first.sum()), grow=True)
    logits = model(rows[first, :p], cache)[:, -1:].index_select(0, owner)  # first answer token
    lsm = model.ops.log_softmax
    logp, ent = _token_scores(logits, answers[:, :1], counted[:, :1], temperature, lsm)
    cache.reorder(owner)
    live = torch.arange(len(rows), device=rows.device)  # the rows the cache holds
    need = length - 1  # answer tokens a row feeds back: all its counted ones but the last
    cuts = forward_stages(need)
    for a, b in itertools.pairwise(cuts):
        keep = (need[live] > a).nonzero()[:, 0]
        if len(keep) < len(live):
            cache.reorder(keep)
            live = live[keep]
        logits = model(answers[live, a:b], cache)  # predicts answer tokens a + 1 .. b
        lp, en = _token_scores(
            logits, answers[live, a + 1 : b + 1], counted[live, a + 1 : b + 1], temperature, lsm
        )
        logp, ent = logp.index_add(0, live, lp), ent.index_add(0, live, en)
    mean_ent = ent / length.clamp_min(1)
    return logp.index_select(0, inverse), mean_ent.index_select(0, inverse)
