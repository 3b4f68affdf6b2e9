"""Batched samplers over the sequences of a GPT ensemble, both KV-cached, and the scoring of
sequences with gradients.

`sample_iid`: n independent rollouts per prompt (ancestral sampling at temperature tau).
`sample_swor`: n DISTINCT rollouts per prompt, drawn without replacement by stochastic beam search
(Kool, van Hoof & Welling 2019, arXiv 1903.06059): every partial sequence carries a Gumbel-perturbed
log-probability G, children's perturbations are sampled conditionally on their maximum equalling the
parent's G (a truncated Gumbel), and the top n are kept at every step. The n finished sequences,
sorted by G, are an exact sample of n successive draws without replacement (Plackett-Luce order),
the law under which `passk_companion.objectives` "swor_ordered" is unbiased.

Both return answers (P, n, L) padded with `pad` after EOS and the sequence log-probabilities
(P, n) under softmax(logits / tau), detached; `sequence_logprob` recomputes them with gradients.

Ensembles: `prompt_run` (P,) names the run of each prompt (grouped by run, as
:class:`passk_companion.model.runs.Runs` needs), and `generator` is one random generator per run.
Each run draws its uniforms from its own generator, one block per call of
max_new x (its rows) numbers, so a run draws exactly what it draws alone.

Work that rows share is done once (the RL step's cost, measured by benchmarks/rollout.py and
benchmarks/ensemble.py): a prompt is encoded once for its n rollouts; `sample_iid` keeps one cache
row per distinct prefix drawn so far and drops finished rows; `sequence_logprob` scores identical
prefixes once (a trie), encodes each prompt once and stops each row at its last counted token.
With the portable kernels these shortcuts change no bit (a row's logits do not depend on the batch);
tests/model/test_gpt.py checks each against the plain computation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from passk_companion.model.gpt import GPT, Forest, KVCache
from passk_companion.model.runs import Runs

__all__ = [
    "sample_iid",
    "sample_swor",
    "sequence_logprob",
    "answer_mask",
    "distinct_rows",
    "prefix_forest",
]

Generators = torch.Generator | Sequence[torch.Generator | None] | None


def _check(n: int, temperature: float, max_new: int) -> None:
    if n < 1 or max_new < 1:
        raise ValueError("n and max_new must be >= 1")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _prompt_runs(model: GPT, prompts: Tensor, prompt_run: Tensor | None) -> Tensor:
    """The run of each prompt: `prompt_run`, or run 0 for every prompt of a single model."""
    if prompt_run is None:
        if model.runs != 1:
            raise ValueError(f"an ensemble of {model.runs} runs needs the run of each prompt")
        return torch.zeros(len(prompts), dtype=torch.long, device=prompts.device)
    if len(prompt_run) != len(prompts):
        raise ValueError(f"{len(prompt_run)} runs for {len(prompts)} prompts")
    return prompt_run.to(prompts.device)


def _uniforms(
    prompt_run: Tensor, runs: int, generator: Generators, shape: tuple[int, ...],
    steps: int, device: torch.device,
) -> Tensor:  # fmt: skip
    """U[0, 1) draws (steps, P, *shape): those of run r's P_r prompts drawn as one block
    (steps, P_r, *shape) from run r's generator (`generator` is one per run, or one generator
    or None for a single run)."""
    gens = list(generator) if isinstance(generator, Sequence) else [generator] * runs
    if len(gens) != runs:
        raise ValueError(f"{len(gens)} random generators for an ensemble of {runs} runs")
    counts = torch.bincount(prompt_run, minlength=runs).tolist()
    blocks = [
        torch.rand((steps, c, *shape), dtype=torch.float64, device=device, generator=g)
        for c, g in zip(counts, gens, strict=True)
        if c
    ]
    return torch.cat(blocks, 1)


def _draw(logp: Tensor, u: Tensor) -> Tensor:
    """One token per row from the probabilities p = exp(logp) (R, V), by inversion: with
    U ~ Uniform[0, 1) (u, one per row), the first j with cdf_j > U * cdf_V (exact law up to
    float64 rounding; a token of probability 0 is never drawn)."""
    cdf = logp.exp().cumsum(-1)
    total = cdf[:, -1:]
    tok = torch.searchsorted(cdf, u[:, None] * total, right=True)[:, 0]
    return torch.minimum(tok, (cdf < total).sum(-1))  # U * cdf_V rounded up to cdf_V: last p > 0


def _first_logits(model: GPT, prompts: Tensor, n: int, cache: KVCache) -> Tensor:
    """Next-token logits after each prompt, for n rollouts per prompt (P * n, vocab): each prompt
    is encoded once and the cache rows are repeated n times (rows p * n .. p * n + n - 1 continue
    prompt p)."""
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
    generator: Generators = None,
    use_cache: bool = True,
    prompt_run: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """n i.i.d. rollouts per prompt (ancestral sampling from softmax(logits / tau)).

    With the cache, rollouts that share a prefix share its computation: the cache holds one row
    per distinct prefix drawn so far (a trie: each prompt once, then one row per distinct
    continuation of the rows still running), and rows that have emitted EOS leave it. Every row
    draws its own token at every step from its prefix's distribution, so the answers are those of
    `use_cache=False`, which recomputes every row's whole prefix at every step (the reference for
    the cache test and the benchmark)."""
    _check(n, temperature, max_new)
    p = prompts.shape[0]
    r = p * n
    device = prompts.device
    prompt_run = _prompt_runs(model, prompts, prompt_run)
    u = _uniforms(prompt_run, model.runs, generator, (n,), max_new, device).view(max_new, r)
    row_run = prompt_run.repeat_interleave(n)
    out = torch.full((r, max_new), pad, dtype=torch.long, device=device)
    logp_sum = torch.zeros(r, dtype=torch.float64, device=device)
    done = torch.zeros(r, dtype=torch.bool, device=device)
    cache = model.new_cache(p, run=prompt_run) if use_cache else None
    if cache is None:
        seq = prompts.repeat_interleave(n, 0)
        logits, node = model(seq, run=row_run)[:, -1], torch.arange(r, device=device)
    else:
        logits = model(prompts, cache)[:, -1]  # per cache row; row j continues cache row node[j]
        node = torch.arange(p, device=device).repeat_interleave(n)
    for i in range(max_new):
        logp = model.ops.log_softmax(logits.double() / temperature, -1).index_select(0, node)
        tok = torch.where(done, pad, _draw(logp, u[i]))
        logp_sum += torch.where(done, 0.0, logp.gather(1, tok[:, None])[:, 0])
        out[:, i] = tok
        done = done | (tok == eos)
        if bool(done.all()) or i == max_new - 1:
            break
        if cache is None:
            seq = torch.cat([seq, tok[:, None]], 1)
            logits = model(seq, run=row_run)[:, -1]
        else:
            logits, node = _extend(model, cache, node, tok, done, pad)
    return out.view(p, n, max_new), logp_sum.view(p, n)


def _extend(
    model: GPT, cache: KVCache, node: Tensor, tok: Tensor, done: Tensor, pad: int
) -> tuple[Tensor, Tensor]:
    """Feed the tokens just drawn by the running rows. Rows whose (cache row, token) coincide get
    one new cache row. While no cache row has two continuations and at most a quarter have none,
    the rows stay in place (the idle ones are fed PAD, their output unused), which spares copying
    the cache; otherwise the cache is reordered to the distinct continuations (sorted by cache
    row, so they stay grouped by run). Returns the next logits per cache row and each row's cache
    row (0 for finished rows, whose draws are unused)."""
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
    generator: Generators = None,
    prompt_run: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """n distinct rollouts per prompt by stochastic beam search, in Plackett-Luce order."""
    _check(n, temperature, max_new)
    vocab = model.cfg.vocab_size
    if n > vocab:
        raise ValueError(f"swor needs n <= vocab_size ({vocab}) for the first expansion")
    b = prompts.shape[0]
    device = prompts.device
    prompt_run = _prompt_runs(model, prompts, prompt_run)
    uniforms = _uniforms(prompt_run, model.runs, generator, (n, vocab), max_new, device)
    cache = model.new_cache(b, run=prompt_run)
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
        u = uniforms[i]
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


def prefix_forest(
    seqs: Tensor, lengths: Tensor, run: Tensor, runs: int, vocab: int
) -> tuple[Forest, Tensor]:
    """The forest of the distinct prefixes of rows `seqs` (N, T) (the first lengths[i] tokens of
    row i count; `run` (N,) its run, grouped by run): one node per distinct (run, prefix), and
    `path` (N, T), the node of each row's prefix of length t + 1 (-1 past its length). The nodes
    are grouped by run, each run's in order of position and then of (parent, token)."""
    n, width = seqs.shape
    device = seqs.device
    path = torch.full((n, width), -1, dtype=torch.long, device=device)
    tokens, parents, depths = [], [], []
    node = run  # the key of a row's prefix so far: at level 0, its run
    total = previous = 0  # nodes so far; where the previous level's start
    for d in range(width):
        rows = (lengths > d).nonzero()[:, 0]
        if len(rows) == 0:
            break
        key = node.index_select(0, rows) * vocab + seqs.index_select(0, rows)[:, d]
        child, inverse = torch.unique(key, return_inverse=True)
        tokens.append(child % vocab)
        # level 0: the run; deeper: the global index of the parent node
        parents.append(child // vocab + (previous if d else 0))
        depths.append(torch.full_like(child, d))
        node = torch.zeros(n, dtype=torch.long, device=device)
        node[rows] = inverse
        path[rows, d] = inverse + total
        previous, total = total, total + len(child)
    token, depth = torch.cat(tokens), torch.cat(depths)
    parent = torch.cat(parents)  # global index of the parent (level 0: the run)
    root_run = torch.zeros(total, dtype=torch.long, device=device)
    ancestors = torch.full((total, len(tokens)), -1, dtype=torch.long, device=device)
    start = 0
    for d, level in enumerate(tokens):
        nodes = torch.arange(start, start + len(level), device=device)
        if d == 0:
            root_run[nodes] = parents[0]
        else:
            up = parent[nodes]
            root_run[nodes] = root_run[up]
            ancestors[nodes] = ancestors[up]
        ancestors[nodes, d] = nodes
        start += len(level)
    # group by run (stable: within a run, by position, then parent and token)
    order = torch.sort(root_run, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(total, device=device)
    ancestors = torch.where(ancestors >= 0, rank[ancestors.clamp_min(0)], -1).index_select(0, order)
    depth = depth.index_select(0, order)
    levels = [(depth == d).nonzero()[:, 0] for d in range(len(tokens))]
    forest = Forest(token.index_select(0, order), depth, ancestors, levels,
                    Runs.of(root_run.index_select(0, order), runs))  # fmt: skip
    return forest, torch.where(path >= 0, rank[path.clamp_min(0)], -1)


def sequence_logprob(
    model: GPT,
    prompts: Tensor,
    answers: Tensor,
    eos: int,
    temperature: float = 1.0,
    run: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(log pi(answer | prompt) per row, mean token entropy per row), with gradients.

    prompts (N, P), answers (N, L); tokens after the first EOS are excluded; `run` (N,): the run
    of each row of an ensemble (grouped by run; None: a single model). The entropy is the
    full-vocabulary entropy of softmax(logits / tau) averaged over the counted answer tokens (the
    token-level entropy bonus of verl-style RLVR).

    The rows are scored as the forest of their distinct prefixes (:func:`prefix_forest`) in one
    forward: identical rollouts, and rollouts that share their first tokens, share those nodes,
    every prompt is encoded once per run, and nothing after a row's EOS is computed. Each node
    attends to its ancestors with the operations of decoding it one token at a time, so its
    logits are those of its sequence decoded with the cache (the same bits with the portable
    kernels); the nodes a run holds depend only on its own rows, so a run's gradient is the same
    bits alone and in any ensemble. tests/model/test_gpt.py checks the values and gradients
    against one forward of the concatenated sequences."""
    if answers.shape[1] < 1:
        raise ValueError("answers must have at least one token")
    vocab = model.cfg.vocab_size
    for name, t in (("prompt", prompts), ("answer", answers)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab):
            raise ValueError(f"{name} token ids must lie in [0, {vocab})")
    run = _prompt_runs(model, prompts, run)
    p, length = prompts.shape[1], answers.shape[1]
    counted = answer_mask(answers, eos)
    seqs = torch.cat([prompts, answers], 1)
    forest, path = prefix_forest(seqs, p + counted.sum(1), run, model.runs, vocab)
    logits = model.forward_tree(forest)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> float32
    lsm = model.ops.log_softmax(logits / temperature if temperature != 1.0 else logits, -1)
    entropy = -(lsm.exp() * lsm).sum(-1)
    logp = torch.zeros(len(answers), dtype=lsm.dtype, device=answers.device)
    ent = torch.zeros(len(answers), dtype=lsm.dtype, device=answers.device)
    for j in range(length):  # answer token j is predicted at the row's node of position p - 1 + j
        here = counted[:, j]
        node = path[:, p - 1 + j].clamp_min(0)
        token_logp = lsm.index_select(0, node).gather(1, answers[:, j : j + 1])[:, 0]
        logp = logp + torch.where(here, token_logp, 0.0)
        ent = ent + torch.where(here, entropy.index_select(0, node), 0.0)
    return logp, ent / counted.sum(1).clamp_min(1)
