"""Tiny GPT: KV cache, samplers (i.i.d. and stochastic beam search without replacement)."""

import itertools
import math

import pytest
import torch

from companion.models import GPT, GPTConfig, pick_device
from companion.models.generate import answer_mask, sample_iid, sample_swor, sequence_logprob


def tiny(vocab=5, block=8, scale=8.0, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=16))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def test_cached_and_uncached_logits_are_identical():
    model = tiny(vocab=11, block=12, scale=1.0)
    seq = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(0))
    full = model(seq)
    cache = model.new_cache(3)
    parts = [model(seq[:, :4], cache)] + [model(seq[:, i : i + 1], cache) for i in range(4, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


def test_iid_sampling_same_with_and_without_cache():
    model = tiny()
    prompts = torch.zeros(50, 2, dtype=torch.long)
    a1, l1 = sample_iid(model, prompts, 3, 3, 3, 4, generator=torch.Generator().manual_seed(1))
    a2, l2 = sample_iid(
        model, prompts, 3, 3, 3, 4, generator=torch.Generator().manual_seed(1), use_cache=False
    )
    assert torch.equal(a1, a2)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-5)
    lp, _ = sequence_logprob(model, prompts.repeat_interleave(3, 0), a1.view(150, 3), eos=3)
    torch.testing.assert_close(lp.double(), l1.view(-1), rtol=1e-4, atol=1e-4)


def exact_sequence_law(model, eos, pad, length=2):
    """Probabilities of every answer of `length` tokens after the prompt [0, 1]."""
    law = {}
    with torch.no_grad():
        for seq in itertools.product(range(model.cfg.vocab_size), repeat=length):
            if seq[0] == eos and seq[1] != pad:  # after EOS the samplers emit only PAD
                continue
            ans = torch.tensor([seq])
            lp, _ = sequence_logprob(model, torch.tensor([[0, 1]]), ans, eos)
            law[seq] = float(lp.exp())
    return law


def test_swor_matches_successive_draws_without_replacement():
    model, eos, pad, draws = tiny(), 3, 4, 60_000
    law = exact_sequence_law(model, eos, pad)
    assert sum(law.values()) == pytest.approx(1.0, abs=1e-5)
    out, phi = sample_swor(
        model,
        torch.tensor([[0, 1]]).expand(draws, 2),
        2,
        2,
        eos,
        pad,
        generator=torch.Generator().manual_seed(2),
    )
    rows = out.tolist()
    assert all(tuple(r[0]) != tuple(r[1]) for r in rows)
    for pos in (0, 1):
        counts = {}
        for r in rows:
            counts[tuple(r[pos])] = counts.get(tuple(r[pos]), 0) + 1
        for seq, p in law.items():
            want = p if pos == 0 else sum(q * p / (1 - q) for s, q in law.items() if s != seq)
            if want * draws < 20:  # too rare for a normal approximation
                continue
            z = (counts.get(seq, 0) / draws - want) / math.sqrt(want * (1 - want) / draws)
            assert abs(z) < 5, (pos, seq, want, z)
    lp, _ = sequence_logprob(model, torch.tensor([[0, 1]]).expand(10, 2), out[:10, 0], eos)
    torch.testing.assert_close(lp.double(), phi[:10, 0], rtol=1e-4, atol=1e-4)


def test_answer_mask_stops_after_eos():
    ans = torch.tensor([[1, 2, 3, 4, 4], [3, 4, 4, 4, 4], [1, 1, 1, 1, 1]])
    assert answer_mask(ans, 3).tolist() == [
        [True, True, True, False, False],
        [True, False, False, False, False],
        [True] * 5,
    ]


def test_errors_and_device():
    model = tiny()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        sample_iid(model, torch.zeros(1, 2, dtype=torch.long), 2, 2, 3, 4, temperature=0)
    with pytest.raises(ValueError, match="n <= vocab_size"):
        sample_swor(model, torch.zeros(1, 2, dtype=torch.long), 6, 2, 3, 4)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab_size=5, block_size=4, n_head=3, n_embd=16)
    assert pick_device("cpu").type == "cpu"
    assert pick_device().type in ("cpu", "cuda")
