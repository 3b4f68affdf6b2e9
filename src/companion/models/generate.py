"""Batched samplers over the sequences of a GPT, both KV-cached.

`sample_iid`: n independent rollouts per prompt (ancestral sampling at temperature tau).
`sample_swor`: n DISTINCT rollouts per prompt, drawn without replacement by stochastic beam search
(Kool, van Hoof & Welling 2019, arXiv 1903.06059): every partial sequence carries a Gumbel-perturbed
log-probability G, children's perturbations are sampled conditionally on their maximum equalling the
parent's G (a truncated Gumbel), and the top n are kept at every step. The n finished sequences,
sorted by G, are an exact sample of n successive draws without replacement (Plackett-Luce order),
the law under which `companion.objectives` "swor_ordered" is unbiased.

Both return answers (B, n, L) padded with `pad` after EOS and the sequence log-probabilities
(B, n) under softmax(logits / tau), detached; `sequence_logprob` recomputes them with gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .gpt import GPT

__all__ = ["sample_iid", "sample_swor", "sequence_logprob", "answer_mask"]


def _check(n: int, temperature: float, max_new: int) -> None:
    if n < 1 or max_new < 1:
        raise ValueError("n and max_new must be >= 1")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@torch.no_grad()
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
    """n i.i.d. rollouts per prompt. `use_cache=False` recomputes the prefix at every step (the
    reference for the cache test and the benchmark)."""
    _check(n, temperature, max_new)
    b = prompts.shape[0]
    rows = prompts.repeat_interleave(n, 0)
    device = prompts.device
    cache = model.new_cache(b * n) if use_cache else None
    logits = model(rows, cache)[:, -1]
    out = torch.full((b * n, max_new), pad, dtype=torch.long, device=device)
    logp_sum = torch.zeros(b * n, dtype=torch.float64, device=device)
    done = torch.zeros(b * n, dtype=torch.bool, device=device)
    seq = rows
    for i in range(max_new):
        logp = F.log_softmax(logits.double() / temperature, -1)
        tok = torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        logp_sum += torch.where(done, 0.0, logp.gather(1, tok[:, None])[:, 0])
        out[:, i] = tok
        done = done | (tok == eos)
        if bool(done.all()) or i == max_new - 1:
            break
        if cache is not None:
            logits = model(tok[:, None], cache)[:, -1]
        else:
            seq = torch.cat([seq, tok[:, None]], 1)
            logits = model(seq)[:, -1]
    return out.view(b, n, max_new), logp_sum.view(b, n)


@torch.no_grad()
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
    rows = prompts.repeat_interleave(n, 0)
    cache = model.new_cache(b * n)
    logits = model(rows, cache)[:, -1]
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=device)
    phi = torch.zeros(b, n, dtype=torch.float64, device=device)
    g_beam = torch.full((b, n), float("-inf"), dtype=torch.float64, device=device)
    g_beam[:, 0] = 0.0  # one live beam (the prompt) per row; the root's G is a free constant
    done = torch.zeros(b, n, dtype=torch.bool, device=device)
    out = torch.full((b, n, max_new), pad, dtype=torch.long, device=device)
    for i in range(max_new):
        logp = F.log_softmax(logits.double() / temperature, -1).view(b, n, vocab)
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


def sequence_logprob(
    model: GPT, prompts: Tensor, answers: Tensor, eos: int, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """(log pi(answer | prompt) per row, mean token entropy per row), with gradients.

    prompts (R, P), answers (R, L); tokens after the first EOS are excluded. The entropy is the
    full-vocabulary entropy of softmax(logits / tau) averaged over the counted answer tokens (the
    token-level entropy bonus of verl-style RLVR)."""
    seq = torch.cat([prompts, answers], 1)
    logits = model(seq[:, :-1])[:, prompts.shape[1] - 1 :].float() / temperature
    logp = F.log_softmax(logits, -1)
    tok_logp = logp.gather(-1, answers[..., None])[..., 0]
    mask = answer_mask(answers, eos).to(logp.dtype)
    ent = -(logp.exp() * logp).sum(-1)
    return (tok_logp * mask).sum(-1), (ent * mask).sum(-1) / mask.sum(-1).clamp_min(1)
